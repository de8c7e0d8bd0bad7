package socketlb

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/netnstest"
)

var (
	vip4 = netip.MustParseAddr("10.96.0.10")
	vip6 = netip.MustParseAddr("fd00:10:96::10")
	ext4 = netip.MustParseAddr("192.168.200.10")
	ext6 = netip.MustParseAddr("fd00:200::10")
)

// reachAll connects until every wanted endpoint answered (bounded), and checks
// each answer: the endpoint saw the client's own address (no NAT) and the
// client's socket reports the service address as its peer.
func (b *bed) reachAll(from *netnstest.NS, mode string, dst netip.AddrPort, want ...string) {
	b.t.Helper()
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < len(want); i++ {
		r := b.request(from, mode, dst)
		if r.Err != "" {
			b.t.Fatalf("%s %s from %s: %s", mode, dst, nsName(from), r.Err)
		}
		if !contains(want, r.Name) {
			b.t.Fatalf("%s %s reached %s, want one of %v", mode, dst, r.Name, want)
		}
		if r.Peer != dst.String() {
			b.t.Errorf("%s %s: the client's socket reports peer %s, want the service address", mode, dst, r.Peer)
		}
		seen[r.Name] = true
	}
	if len(seen) < len(want) {
		b.t.Fatalf("%s %s from %s reached %v, want all of %v", mode, dst, nsName(from), seen, want)
	}
}

func nsName(ns *netnstest.NS) string {
	if ns == nil {
		return "kproxy's netns"
	}
	return ns.Name
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestClusterIPReachesEveryEndpoint(t *testing.T) {
	b := newBed(t, 3, false)
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		name := "web-" + strings.ToLower(string(proto))
		b.service(makeService(name, vip4.String(), vip6.String(), proto, nil),
			b.slice(name, v1.IPv4Protocol, 8080, proto, ep{pod: 0}, ep{pod: 1}, ep{pod: 2}),
			b.slice(name, v1.IPv6Protocol, 8080, proto, ep{pod: 0}, ep{pod: 1}, ep{pod: 2}))
		modes := []string{"tcp"}
		if proto == v1.ProtocolUDP {
			modes = []string{"udp", "udp-unconnected"}
		}
		for _, mode := range modes {
			for _, vip := range []netip.Addr{vip4, vip6} {
				dst := netip.AddrPortFrom(vip, 80)
				b.reachAll(b.client.NS, mode, dst, "poda", "podb", "podc")
				r := b.request(b.client.NS, mode, dst)
				if seen := netip.MustParseAddrPort(r.SeenAs).Addr(); seen != b.clientAddr(vip) {
					t.Errorf("%s %s: the endpoint saw the client as %s, want %s (no NAT)", mode, dst, seen, b.clientAddr(vip))
				}
			}
		}
		b.tr.OnServiceDelete(makeService(name, vip4.String(), vip6.String(), proto, nil))
		b.sync()
	}
	var total uint64
	for _, n := range b.p.Translations() {
		total += n
	}
	if total != 0 {
		t.Errorf("counters of deleted services still reported: %d", total)
	}
}

func (b *bed) clientAddr(vip netip.Addr) netip.Addr {
	if vip.Is6() {
		return b.client.V6
	}
	return b.client.V4
}
