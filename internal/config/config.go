// Package config holds kproxy's effective configuration: flags and a
// KubeProxyConfiguration file are turned into one Config, which is defaulted and
// validated before anything is constructed from it.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/conntrack"
)

// Proxy modes.
const (
	ModeAuto      = ""
	ModeNFTables  = "nftables"
	ModeUserspace = "userspace"
)

// Socket LB settings (--socket-lb).
const (
	SocketLBAuto = "auto"
	SocketLBOn   = "on"
	SocketLBOff  = "off"
)

// Local traffic detection modes (kube-proxy's --detect-local-mode).
const (
	DetectLocalClusterCIDR = "ClusterCIDR"
	DetectLocalNodeCIDR    = "NodeCIDR"
)

// Config is the whole effective configuration of `kproxy run`.
type Config struct {
	// Source: a manifest directory (standalone) or the Kubernetes API.
	Manifests  string
	StateDir   string
	Kubeconfig string
	Master     string
	// HostnameOverride is this node's name; defaults to the host name.
	HostnameOverride string
	ServiceProxyName string
	// KubeQPS, KubeBurst and KubeContentType tune the API client (0/empty: defaults).
	KubeQPS         float32
	KubeBurst       int
	KubeContentType string
	// KubeCompression asks the API server for gzip-compressed responses.
	KubeCompression bool
	// ConfigSyncPeriod is the informers' resync period (0: none).
	ConfigSyncPeriod time.Duration

	// Allocation in standalone mode.
	ServiceClusterIPRanges []netip.Prefix
	ServiceNodePortRange   allocator.PortRange

	Mode         string
	ClusterCIDRs []netip.Prefix
	// DetectLocalMode says how traffic from this node's pods is told from
	// the rest: by ClusterCIDRs (DetectLocalClusterCIDR, the default), or by
	// the Node's spec.podCIDRs (DetectLocalNodeCIDR), which run resolves into
	// ClusterCIDRs at start, as kube-proxy does.
	DetectLocalMode   string
	NodePortAddresses []netip.Prefix
	// NodePortPrimary (--nodeport-addresses=primary) limits NodePorts to the
	// node's primary address of each family; run resolves it into
	// NodePortAddresses at start, as kube-proxy does.
	NodePortPrimary bool
	MasqueradeAll   bool
	SyncPeriod      time.Duration
	MinSyncPeriod   time.Duration
	// NFTablesTable is the name of kproxy's own nftables tables (ip and ip6).
	NFTablesTable string
	// Conntrack holds the conntrack sysctls to set (nftables mode; only those set).
	Conntrack conntrack.Settings
	// LocalhostNodePorts makes NodePorts answer on 127.0.0.1 (sets route_localnet).
	LocalhostNodePorts bool

	// SocketLB turns the eBPF socket load balancer on beside nftables:
	// SocketLBAuto (where the kernel, a cgroup v2 hierarchy and a bpf
	// filesystem allow it; the default in cluster mode), SocketLBOn or
	// SocketLBOff (the default in standalone mode).
	SocketLB string
	// SocketLBCgroup is the cgroup v2 directory its programs attach to
	// (empty: the cgroup v2 root, from mountinfo).
	SocketLBCgroup string
	// SocketLBPinDir is where its maps and links are pinned, on a bpffs.
	SocketLBPinDir string

	// Userspace data plane.
	UserspaceIdleTimeout time.Duration
	UserspaceMaxConns    int
	UserspaceGracePeriod time.Duration

	HealthzBindAddress string
	MetricsBindAddress string
	// BindAddressHardFail makes a failure to serve on either address fatal
	// instead of retried.
	BindAddressHardFail bool
	Profiling           bool
	// OOMScoreAdj is written to /proc/self/oom_score_adj at start.
	OOMScoreAdj int

	DNSBindAddress  string
	ClusterDomain   string
	DNSTTL          time.Duration
	DNSUpstream     string
	DNSUpstreamWait time.Duration

	LogFormat string
	Verbosity int
}

// ParseCIDRs parses a comma-separated list of CIDRs and drops their host bits
// (cluster CIDRs and node port addresses, where those do not matter; a
// service range with host bits is an error, see allocator.ParseServiceCIDRs).
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	out, err := allocator.ParseCIDRList(s)
	for i, p := range out {
		out[i] = p.Masked()
	}
	return out, err
}

// Default values, kube-proxy's where they carry over.
const (
	DefaultServiceCIDR        = "10.96.0.0/16"
	DefaultUserspaceCIDR      = "127.10.0.0/16"
	DefaultNodePortRange      = "30000-32767"
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	// DefaultOOMScoreAdj is kube-proxy's: the kernel's OOM killer picks a node
	// proxy last.
	DefaultOOMScoreAdj       = -999
	DefaultDNSBindAddress    = "127.0.0.1:10053"
	DefaultClusterDomain     = "cluster.local"
	DefaultSyncPeriod        = 30 * time.Second
	DefaultMinSyncPeriod     = 1 * time.Second
	DefaultNFTablesTable     = "kproxy"
	DefaultUserspaceIdle     = time.Hour
	DefaultUserspaceMaxConns = 100000
	DefaultUserspaceGrace    = 10 * time.Second
	DefaultDNSTTL            = 5 * time.Second
	DefaultDNSUpstreamWait   = 2 * time.Second
	DefaultSocketLBPinDir    = "/sys/fs/bpf/kproxy"
)

// Defaults returns a Config with every default filled in.
func Defaults() Config {
	r, _ := allocator.ParsePortRange(allocator.DefaultNodePortRange)
	return Config{
		ServiceNodePortRange: r,
		SyncPeriod:           DefaultSyncPeriod,
		MinSyncPeriod:        DefaultMinSyncPeriod,
		NFTablesTable:        DefaultNFTablesTable,
		UserspaceIdleTimeout: DefaultUserspaceIdle,
		UserspaceMaxConns:    DefaultUserspaceMaxConns,
		UserspaceGracePeriod: DefaultUserspaceGrace,
		HealthzBindAddress:   DefaultHealthzBindAddress,
		MetricsBindAddress:   DefaultMetricsBindAddress,
		OOMScoreAdj:          DefaultOOMScoreAdj,
		ClusterDomain:        DefaultClusterDomain,
		DNSTTL:               DefaultDNSTTL,
		DNSUpstreamWait:      DefaultDNSUpstreamWait,
		SocketLB:             SocketLBAuto,
		SocketLBPinDir:       DefaultSocketLBPinDir,
		LogFormat:            "text",
	}
}

// Standalone reports whether the source is the manifest directory.
func (c *Config) Standalone() bool { return c.Manifests != "" }

// Validate checks the configuration; every problem is reported, with the flag name.
func (c *Config) Validate() error {
	var errs []error
	if c.Manifests != "" && (c.Kubeconfig != "" || c.Master != "") {
		errs = append(errs, errors.New("--manifests and --kubeconfig/--master are exclusive: choose standalone or cluster mode"))
	}
	switch c.Mode {
	case ModeAuto, ModeNFTables, ModeUserspace:
	default:
		errs = append(errs, fmt.Errorf("--proxy-mode %q: want nftables or userspace", c.Mode))
	}
	switch c.DetectLocalMode {
	case "", DetectLocalClusterCIDR:
	case DetectLocalNodeCIDR:
		if c.Standalone() {
			errs = append(errs, errors.New("--detect-local-mode NodeCIDR reads the Node's spec.podCIDRs: it needs cluster mode (standalone: use --cluster-cidr)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--detect-local-mode %q: want ClusterCIDR or NodeCIDR (kproxy has no BridgeInterface or InterfaceNamePrefix)", c.DetectLocalMode))
	}
	if c.Standalone() {
		ac := allocator.Config{ServiceCIDRs: c.ServiceClusterIPRanges, NodePortRange: c.ServiceNodePortRange}
		ac.Defaults()
		if err := ac.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.SyncPeriod <= 0 {
		errs = append(errs, errors.New("--sync-period must be positive"))
	}
	if c.MinSyncPeriod < 0 || c.MinSyncPeriod > c.SyncPeriod {
		errs = append(errs, errors.New("--min-sync-period must be between 0 and --sync-period"))
	}
	for _, a := range []struct{ flag, v string }{
		{"--healthz-bind-address", c.HealthzBindAddress},
		{"--metrics-bind-address", c.MetricsBindAddress},
		{"--dns-bind-address", c.DNSBindAddress},
	} {
		if a.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want HOST:PORT: %w", a.flag, a.v, err))
		}
	}
	if c.OOMScoreAdj < -1000 || c.OOMScoreAdj > 1000 {
		errs = append(errs, fmt.Errorf("--oom-score-adj %d: want -1000 to 1000", c.OOMScoreAdj))
	}
	if c.NFTablesTable == "" || strings.ContainsAny(c.NFTablesTable, " :;/") {
		errs = append(errs, fmt.Errorf("--nftables-table %q: want a plain name", c.NFTablesTable))
	}
	switch c.SocketLB {
	case SocketLBAuto, SocketLBOff:
	case SocketLBOn:
		if c.Mode == ModeUserspace {
			errs = append(errs, errors.New("--socket-lb=on runs beside the nftables data plane: not with --proxy-mode userspace"))
		}
	default:
		errs = append(errs, fmt.Errorf("--socket-lb %q: want auto, on or off", c.SocketLB))
	}
	if c.SocketLB != SocketLBOff && c.SocketLBPinDir == "" {
		errs = append(errs, errors.New("--socket-lb-pin-dir must not be empty"))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}
