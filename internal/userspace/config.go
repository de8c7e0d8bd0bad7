package userspace

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Config is the userspace data plane's configuration. Start from Defaults().
type Config struct {
	// NodePortAddresses limits NodePorts to addresses inside these prefixes, like
	// kube-proxy's nodePortAddresses. A single-address prefix (/32, /128) names that
	// address even when no interface carries it explicitly (any 127/8 address binds).
	// Empty: the node's addresses from the model (snap.Node.Addresses).
	NodePortAddresses []netip.Prefix
	// BindServiceIPs adds every cluster IP that is not already a loopback address
	// to LoopbackDevice (/32 or /128) so that it can be bound, and removes it when
	// the service goes or on Close. Needs root (CAP_NET_ADMIN).
	BindServiceIPs bool
	// LoopbackDevice is the device service IPs are added to ("lo").
	LoopbackDevice string

	// DialTimeout bounds one connection attempt to an endpoint.
	DialTimeout time.Duration
	// MaxDialAttempts bounds how many endpoints one client connection tries.
	MaxDialAttempts int
	// EndpointBackoff is how long an endpoint that failed a dial is skipped by
	// new connections (unless every endpoint is backing off).
	EndpointBackoff time.Duration
	// TCPIdleTimeout closes a TCP connection that moved no data either way for this long.
	TCPIdleTimeout time.Duration
	// UDPIdleTimeout ends a UDP flow that saw no packet either way for this long.
	UDPIdleTimeout time.Duration
	// MaxConnections caps the open TCP connections over all services (further
	// clients are reset) and, separately, the UDP flows (further clients'
	// datagrams are dropped until flows expire). 0 means no limit.
	MaxConnections int
	// GracePeriod is how long TCP connections to an endpoint that was deleted (or
	// to a service that was deleted) keep running before they are closed.
	GracePeriod time.Duration
	// BindRetryInterval is how often listeners that failed to bind are retried.
	BindRetryInterval time.Duration
	// BulkSocketBuffer is the receive buffer of the sending side and the send
	// buffer of the receiving side of a TCP direction once it carries bulk
	// data (it filled a 16 KiB read) and is spliced. 0 leaves the kernel's autotuning.
	BulkSocketBuffer int
	// EventLoops is the number of TCP event loops (goroutines, each with its
	// own epoll set of connections); 0 means one per GOMAXPROCS. The first
	// half (rounded up) are home loops, where long-lived connections settle;
	// the others help with bursts of short ones (see balance.go).
	EventLoops int
	// Logger receives the data plane's logs; nil means slog.Default() with a
	// dataplane=userspace attribute.
	Logger *slog.Logger
}

// Defaults returns the default configuration.
func Defaults() Config {
	return Config{
		LoopbackDevice:    "lo",
		DialTimeout:       2 * time.Second,
		MaxDialAttempts:   3,
		EndpointBackoff:   5 * time.Second,
		TCPIdleTimeout:    time.Hour,
		UDPIdleTimeout:    30 * time.Second,
		MaxConnections:    100000,
		GracePeriod:       10 * time.Second,
		BindRetryInterval: 5 * time.Second,
		BulkSocketBuffer:  256 << 10,
	}
}

// Validate reports configuration errors.
func (c *Config) Validate() error {
	var errs []error
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", name, d))
		}
	}
	positive("dial timeout", c.DialTimeout)
	positive("endpoint backoff", c.EndpointBackoff)
	positive("tcp idle timeout", c.TCPIdleTimeout)
	positive("udp idle timeout", c.UDPIdleTimeout)
	positive("bind retry interval", c.BindRetryInterval)
	if c.GracePeriod < 0 {
		errs = append(errs, fmt.Errorf("grace period must not be negative, got %v", c.GracePeriod))
	}
	if c.MaxDialAttempts < 1 {
		errs = append(errs, fmt.Errorf("max dial attempts must be at least 1, got %d", c.MaxDialAttempts))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("max connections must not be negative, got %d", c.MaxConnections))
	}
	if c.BulkSocketBuffer < 0 {
		errs = append(errs, fmt.Errorf("bulk socket buffer must not be negative, got %d", c.BulkSocketBuffer))
	}
	if c.EventLoops < 0 {
		errs = append(errs, fmt.Errorf("event loops must not be negative, got %d", c.EventLoops))
	}
	if c.BindServiceIPs && c.LoopbackDevice == "" {
		errs = append(errs, errors.New("binding service IPs needs a loopback device"))
	}
	for _, p := range c.NodePortAddresses {
		if !p.IsValid() {
			errs = append(errs, errors.New("invalid node port address prefix"))
		}
	}
	return errors.Join(errs...)
}
