package nftables

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Config is the nftables data plane's configuration.
type Config struct {
	// TableName names kproxy's tables (one "ip" and one "ip6" table). Default "kproxy".
	TableName string
	// IPFamilies are the families to program. Default: IPv4 and IPv6.
	IPFamilies []v1.IPFamily
	// ClusterCIDRs are the pod CIDRs (--cluster-cidr). Traffic to a cluster IP from a
	// source outside them is masqueraded so that replies come back through this node.
	// Empty: no source-based masquerade (kube-proxy does the same without --cluster-cidr).
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to service frontends.
	MasqueradeAll bool
	// NodePortAddresses restricts NodePorts to node addresses within these CIDRs.
	// Empty: every local address except loopback.
	NodePortAddresses []netip.Prefix
	// LocalhostNodePorts also serves IPv4 NodePorts on 127.0.0.0/8. It needs, and
	// therefore sets, net.ipv4.conf.all.route_localnet=1 (see CVE-2020-8558); off by default.
	LocalhostNodePorts bool
	// MasqueradeBit is the packet mark bit (0-31) that flags a connection for
	// masquerade between the DNAT and the SNAT hooks. Default 14 (0x4000, kube-proxy's).
	MasqueradeBit int
	// NetNSPath, if set, programs the network namespace at that path (for example
	// /run/netns/x or /proc/PID/ns/net) instead of the caller's.
	NetNSPath string
	// ConntrackCleanup reconciles the UDP conntrack entries of service
	// frontends with the serving endpoints after syncs; default true.
	ConntrackCleanup *bool
	// ConntrackInterval is the least time between two reconcile passes, and
	// the delay of the follow-up pass after a sync; default one second.
	ConntrackInterval time.Duration
	// AcceptInvalid leaves out the rule that drops forwarded packets
	// conntrack marks INVALID. New sets it when nf_conntrack_tcp_be_liberal
	// is on in the namespace (conntrack then marks almost nothing INVALID),
	// as kube-proxy's iptables mode does.
	AcceptInvalid bool
	// RebuildPeriod: a full sync at least this long after the last rebuild
	// flushes kproxy's sets and maps and loads every element again (in one
	// atomic transaction), instead of diffing against what kproxy wrote. That
	// repairs elements someone else deleted, as kube-proxy's hourly full sync
	// does. Default one hour; negative: only after a failure or at start.
	RebuildPeriod time.Duration
	// Logger receives one line per sync; default slog.Default().
	Logger *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.TableName == "" {
		c.TableName = "kproxy"
	}
	if len(c.IPFamilies) == 0 {
		c.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	}
	if c.MasqueradeBit == 0 {
		c.MasqueradeBit = 14
	}
	if c.RebuildPeriod == 0 {
		c.RebuildPeriod = time.Hour
	}
	if c.ConntrackInterval <= 0 {
		c.ConntrackInterval = time.Second
	}
	if c.ConntrackCleanup == nil {
		t := true
		c.ConntrackCleanup = &t
	}
}

var tableNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)

// Validate reports configuration errors.
func (c *Config) Validate() error {
	var errs []error
	if !tableNameRE.MatchString(c.TableName) {
		errs = append(errs, fmt.Errorf("table name %q: want letters, digits, '_' or '-', at most 32", c.TableName))
	}
	for _, f := range c.IPFamilies {
		if f != v1.IPv4Protocol && f != v1.IPv6Protocol {
			errs = append(errs, fmt.Errorf("unknown IP family %q", f))
		}
	}
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("masquerade bit %d: want 0-31", c.MasqueradeBit))
	}
	for _, p := range append(append([]netip.Prefix{}, c.ClusterCIDRs...), c.NodePortAddresses...) {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("invalid CIDR %v", p))
		}
	}
	return errors.Join(errs...)
}

func (c *Config) masqMark() uint32 { return 1 << uint(c.MasqueradeBit) }

func (c *Config) hasFamily(f v1.IPFamily) bool {
	for _, x := range c.IPFamilies {
		if x == f {
			return true
		}
	}
	return false
}
