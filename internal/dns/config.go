package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config.
const (
	// DefaultBindAddress is a loopback address and an unprivileged port, so that
	// standalone kproxy answers DNS without root.
	DefaultBindAddress     = "127.0.0.1:10053"
	DefaultClusterDomain   = "cluster.local"
	DefaultTTL             = 5 * time.Second
	DefaultUpstreamTimeout = 2 * time.Second
)

// Config configures the DNS server.
type Config struct {
	// BindAddress is the "host:port" the server listens on, over UDP and TCP.
	BindAddress string
	// ClusterDomain is the zone the server is authoritative for (--cluster-domain).
	ClusterDomain string
	// TTL is the time to live of every answer, and the negative-caching TTL in the SOA.
	TTL time.Duration
	// Upstream is a resolver ("host:port" or "host", port 53) that names outside the
	// cluster domain are forwarded to. Empty means such names get REFUSED: kproxy is
	// not an open resolver.
	Upstream string
	// UpstreamTimeout bounds one forwarded exchange.
	UpstreamTimeout time.Duration
	// UDPSockets is the number of SO_REUSEPORT UDP sockets, each served by its own
	// goroutine; 0 means GOMAXPROCS.
	UDPSockets int
	// Logger receives start-up and error logs; nil means slog.Default().
	Logger *slog.Logger
}

// Defaults fills in unset fields.
func (c *Config) Defaults() {
	if c.BindAddress == "" {
		c.BindAddress = DefaultBindAddress
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if c.UDPSockets == 0 {
		c.UDPSockets = runtime.GOMAXPROCS(0)
	}
	if c.Upstream != "" {
		c.Upstream = upstreamAddr(c.Upstream)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// upstreamAddr adds the default port 53 to a bare host or IP.
func upstreamAddr(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(ip, 53).String()
	}
	return net.JoinHostPort(s, "53")
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	var errs []error
	if err := validHostPort(c.BindAddress); err != nil {
		errs = append(errs, fmt.Errorf("dns bind address %q: %w", c.BindAddress, err))
	}
	if _, err := wireName(c.ClusterDomain); err != nil || strings.Trim(c.ClusterDomain, ".") == "" {
		errs = append(errs, fmt.Errorf("cluster domain %q is not a valid domain name", c.ClusterDomain))
	}
	if c.TTL < time.Second || c.TTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("dns ttl %v must be between 1s and 24h", c.TTL))
	}
	if c.UpstreamTimeout <= 0 {
		errs = append(errs, fmt.Errorf("dns upstream timeout %v must be positive", c.UpstreamTimeout))
	}
	if c.Upstream != "" {
		if err := validHostPort(c.Upstream); err != nil {
			errs = append(errs, fmt.Errorf("dns upstream %q: %w", c.Upstream, err))
		}
	}
	if c.UDPSockets < 0 || c.UDPSockets > 64 {
		errs = append(errs, fmt.Errorf("dns udp sockets %d must be between 1 and 64", c.UDPSockets))
	}
	return errors.Join(errs...)
}

// validHostPort checks a "host:port" with a numeric port and, when the host has
// colons, an IPv6 address.
func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return fmt.Errorf("invalid port %q", port)
	}
	if strings.Contains(host, ":") {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("invalid host %q: %w", host, err)
		}
	}
	return nil
}
