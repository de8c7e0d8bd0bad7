package userspace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addrManager puts service IPs on a local device so that they can be bound.
// It is an interface so that tests without root can use a fake.
type addrManager interface {
	// List returns the addresses the device carries.
	List() (map[netip.Addr]bool, error)
	Add(ip netip.Addr) error
	Remove(ip netip.Addr) error
}

// netlinkAddrs manages the addresses of one device (normally lo) over netlink.
type netlinkAddrs struct {
	device string
}

func (n *netlinkAddrs) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(n.device)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", n.device, err)
	}
	return l, nil
}

func (n *netlinkAddrs) List() (map[netip.Addr]bool, error) {
	l, err := n.link()
	if err != nil {
		return nil, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", n.device, err)
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

func hostNet(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

func (n *netlinkAddrs) Add(ip netip.Addr) error {
	l, err := n.link()
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: hostNet(ip)}
	if ip.Is6() {
		// A service address must be bindable at once: no duplicate address detection.
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", ip, n.device, err)
	}
	return nil
}

func (n *netlinkAddrs) Remove(ip netip.Addr) error {
	l, err := n.link()
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(l, &netlink.Addr{IPNet: hostNet(ip)}); err != nil &&
		!errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s from %s: %w", ip, n.device, err)
	}
	return nil
}

// alwaysLocal reports addresses that bind without being added to a device:
// the kernel routes all of 127.0.0.0/8 to lo, and ::1 is lo's own.
func alwaysLocal(ip netip.Addr) bool {
	return ip.Unmap().IsLoopback()
}

// syncAddrs adds the wanted service IPs that are missing and removes those
// kproxy added earlier that are no longer wanted. Addresses present before
// kproxy added them are never removed.
func (p *Proxier) syncAddrs(want map[netip.Addr]bool, phase string) error {
	if p.addrs == nil {
		return nil
	}
	var errs []error
	switch phase {
	case "add":
		have, err := p.addrs.List()
		if err != nil {
			return err
		}
		for ip := range want {
			if have[ip] {
				continue
			}
			if err := p.addrs.Add(ip); err != nil {
				errs = append(errs, err)
				continue
			}
			p.owned[ip] = true
		}
	case "remove":
		for ip := range p.owned {
			if want[ip] {
				continue
			}
			if err := p.addrs.Remove(ip); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(p.owned, ip)
		}
	}
	return errors.Join(errs...)
}
