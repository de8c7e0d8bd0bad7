package allocator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Defaults match kube-apiserver's (--service-cluster-ip-range is required there;
// 10.96.0.0/16 is what kubeadm and kind use).
const (
	DefaultServiceCIDR   = "10.96.0.0/16"
	DefaultNodePortRange = "30000-32767"
)

// StateFileName is the name of the allocation state file inside the state directory.
const StateFileName = "allocations.json"

// Config is the allocator's configuration.
type Config struct {
	// ServiceCIDRs holds at most one range per IP family, the primary family first,
	// like kube-apiserver's --service-cluster-ip-range.
	ServiceCIDRs []netip.Prefix
	// NodePortRange is --service-node-port-range.
	NodePortRange PortRange
	// StateDir is where allocations are saved; empty keeps them in memory only.
	StateDir string
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if len(c.ServiceCIDRs) == 0 {
		c.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix(DefaultServiceCIDR)}
	}
	if c.NodePortRange.Size == 0 {
		c.NodePortRange, _ = ParsePortRange(DefaultNodePortRange)
	}
}

// Validate checks the configuration the way kube-apiserver checks its flags.
func (c *Config) Validate() error {
	if len(c.ServiceCIDRs) == 0 || len(c.ServiceCIDRs) > 2 {
		return fmt.Errorf("service cluster IP range: want one or two CIDRs (one per IP family), got %d", len(c.ServiceCIDRs))
	}
	if len(c.ServiceCIDRs) == 2 && c.ServiceCIDRs[0].Addr().Is4() == c.ServiceCIDRs[1].Addr().Is4() {
		return fmt.Errorf("service cluster IP range: %s and %s are of the same IP family; dual-stack needs one of each",
			c.ServiceCIDRs[0], c.ServiceCIDRs[1])
	}
	for _, p := range c.ServiceCIDRs {
		if err := checkServiceCIDR(p); err != nil {
			return err
		}
	}
	if c.NodePortRange.Base < 1 || c.NodePortRange.Size < 1 || c.NodePortRange.Base+c.NodePortRange.Size-1 > 65535 {
		return fmt.Errorf("service node port range %q: must lie within 1-65535", c.NodePortRange)
	}
	return nil
}

func checkServiceCIDR(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("service cluster IP range: invalid CIDR")
	}
	if p.Masked() != p {
		return fmt.Errorf("service cluster IP range %s: has host bits set (did you mean %s?)", p, p.Masked())
	}
	hostBits := p.Addr().BitLen() - p.Bits()
	// kube-apiserver refuses IPv6 ranges larger than /108 (20 bits) and IPv4 ranges
	// with fewer than two usable addresses.
	if p.Addr().Is6() && hostBits > 20 {
		return fmt.Errorf("service cluster IP range %s: too large; for IPv6 the mask must be at least /108", p)
	}
	if hostBits < 2 {
		return fmt.Errorf("service cluster IP range %s: too small", p)
	}
	return nil
}

// ParseServiceCIDRs parses a comma-separated --service-cluster-ip-range value.
func ParseServiceCIDRs(s string) ([]netip.Prefix, error) {
	out, err := ParseCIDRList(s)
	if err != nil {
		return nil, fmt.Errorf("service cluster IP range: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("service cluster IP range %q: no CIDR given", s)
	}
	return out, nil
}

// ParseCIDRList parses a comma-separated list of CIDRs as written; empty
// entries are skipped.
func ParseCIDRList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("invalid CIDR %q: %w", part, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// PortRange is a contiguous range of ports, as kube-apiserver's --service-node-port-range.
type PortRange struct {
	Base int
	Size int
}

// ParsePortRange parses "30000-32767", "30000+2767" or a single port.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	bad := func() (PortRange, error) {
		return PortRange{}, fmt.Errorf("port range %q: want LOW-HIGH (e.g. 30000-32767)", s)
	}
	var lo, hi int
	var err error
	switch {
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		if lo, err = strconv.Atoi(a); err != nil {
			return bad()
		}
		if hi, err = strconv.Atoi(b); err != nil {
			return bad()
		}
	case strings.Contains(s, "+"):
		a, b, _ := strings.Cut(s, "+")
		n := 0
		if lo, err = strconv.Atoi(a); err != nil {
			return bad()
		}
		if n, err = strconv.Atoi(b); err != nil || n < 0 {
			return bad()
		}
		hi = lo + n
	default:
		if lo, err = strconv.Atoi(s); err != nil {
			return bad()
		}
		hi = lo
	}
	if lo < 1 || hi > 65535 || hi < lo {
		return PortRange{}, fmt.Errorf("port range %q: must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535", s)
	}
	return PortRange{Base: lo, Size: hi - lo + 1}, nil
}

// String gives "LOW-HIGH".
func (r PortRange) String() string {
	return fmt.Sprintf("%d-%d", r.Base, r.Base+r.Size-1)
}

// Contains reports whether port p is in the range.
func (r PortRange) Contains(p int32) bool {
	return int(p) >= r.Base && int(p) < r.Base+r.Size
}

// Set and Type make PortRange a pflag.Value.
func (r *PortRange) Set(s string) error {
	pr, err := ParsePortRange(s)
	if err != nil {
		return err
	}
	*r = pr
	return nil
}

// Type names the flag value type.
func (r *PortRange) Type() string { return "portRange" }

// familyOfPrefix returns the IP family of a prefix.
func familyOfPrefix(p netip.Prefix) v1.IPFamily {
	if p.Addr().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// DefaultStateDir returns where allocations for a manifest directory are kept when
// --state-dir is not given: /var/lib/kproxy for root, $XDG_STATE_HOME/kproxy (or
// ~/.local/state/kproxy) otherwise, in a subdirectory named after the manifest
// directory, so that two manifest directories never share (and prune) allocations.
func DefaultStateDir(manifestDir string) (string, error) {
	abs, err := filepath.Abs(manifestDir)
	if err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	var base string
	switch {
	case os.Geteuid() == 0:
		base = "/var/lib/kproxy"
	case os.Getenv("XDG_STATE_HOME") != "":
		base = filepath.Join(os.Getenv("XDG_STATE_HOME"), "kproxy")
	default:
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("state dir: %w", err)
		}
		base = filepath.Join(home, ".local", "state", "kproxy")
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(base, filepath.Base(abs)+"-"+hex.EncodeToString(sum[:])[:12]), nil
}
