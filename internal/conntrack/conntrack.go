// Package conntrack deletes stale connection-tracking entries. UDP has no
// connection to close: after a service's endpoint goes away, a client that keeps
// its 5-tuple (DNS resolvers do) keeps hitting the conntrack entry that points at
// the dead endpoint until the entry is deleted. Likewise entries created while a
// service had no endpoints must go once it has some.
package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Filter selects conntrack entries; zero fields match anything.
type Filter struct {
	Proto uint8
	// OrigDst and OrigDstPort are the destination the client used (a service frontend).
	OrigDst     netip.Addr
	OrigDstPort uint16
	// ReplySrc is the address replies come from: after DNAT, the endpoint.
	ReplySrc netip.Addr
	// IPv6 selects the IPv6 table when neither address says the family.
	IPv6 bool
}

func (f Filter) String() string {
	return fmt.Sprintf("proto=%d orig-dst=%v orig-dport=%d reply-src=%v", f.Proto, f.OrigDst, f.OrigDstPort, f.ReplySrc)
}

// Cleaner deletes conntrack entries.
type Cleaner interface {
	// Delete removes every entry matching any filter and returns how many it removed.
	Delete(filters []Filter) (int, error)
}

// Netlink deletes entries through the kernel's ctnetlink interface.
type Netlink struct {
	h *netlink.Handle
}

// NewNetlink returns a Cleaner for the network namespace at nsPath ("" for the caller's).
func NewNetlink(nsPath string) (*Netlink, error) {
	if nsPath == "" {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return nil, fmt.Errorf("conntrack netlink: %w", err)
		}
		return &Netlink{h: h}, nil
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("conntrack netlink in %s: %w", nsPath, err)
	}
	return &Netlink{h: h}, nil
}

// Close releases the netlink socket.
func (n *Netlink) Close() { n.h.Close() }

// Delete implements Cleaner.
func (n *Netlink) Delete(filters []Filter) (int, error) {
	var v4, v6 []netlink.CustomConntrackFilter
	var errs []error
	for _, f := range filters {
		cf := &netlink.ConntrackFilter{}
		if f.Proto != 0 {
			if err := cf.AddProtocol(f.Proto); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if f.OrigDst.IsValid() {
			errs = append(errs, cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())))
		}
		if f.OrigDstPort != 0 {
			errs = append(errs, cf.AddPort(netlink.ConntrackOrigDstPort, f.OrigDstPort))
		}
		if f.ReplySrc.IsValid() {
			errs = append(errs, cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrc.AsSlice())))
		}
		is6 := f.IPv6 || (f.OrigDst.IsValid() && f.OrigDst.Is6()) || (f.ReplySrc.IsValid() && f.ReplySrc.Is6())
		if is6 {
			v6 = append(v6, cf)
		} else {
			v4 = append(v4, cf)
		}
	}
	total := 0
	for _, x := range []struct {
		fam netlink.InetFamily
		fs  []netlink.CustomConntrackFilter
	}{{unix.AF_INET, v4}, {unix.AF_INET6, v6}} {
		if len(x.fs) == 0 {
			continue
		}
		n, err := n.h.ConntrackDeleteFilters(netlink.ConntrackTable, x.fam, x.fs...)
		total += int(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("delete conntrack entries: %w", err))
		}
	}
	return total, errors.Join(errs...)
}

// Fake records the filters it is asked to delete.
type Fake struct {
	mu      sync.Mutex
	filters []Filter
}

// Delete implements Cleaner.
func (f *Fake) Delete(filters []Filter) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.filters = append(f.filters, filters...)
	return 0, nil
}

// Filters returns and forgets the recorded filters.
func (f *Fake) Filters() []Filter {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.filters)
	f.filters = nil
	return out
}
