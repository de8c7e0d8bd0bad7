package nftables

import (
	"context"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// Real-kernel tests. Topology from netnstest: node (bridge 10.244.0.1,
// fd00:10:244::1; uplink 192.168.100.1, fd00:100::1), pods 10.244.0.2.. and
// fd00:10:244::2.., client 192.168.100.2 / fd00:100::2. Services in
// 10.96.0.0/16 and fd00:10:96::/112; external IPs 192.168.200.x, LB 192.168.201.x.

type bed struct {
	t      *testing.T
	node   *netnstest.Node
	pods   []*netnstest.Pod
	client *netnstest.Client
	p      *Proxier
	w      *world
}

func newBed(t *testing.T, npods int, mod func(*Config)) *bed {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "bridge", "sysctl")
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	b := &bed{t: t, node: netnstest.NewNode(t), w: newWorld(t)}
	for i := 0; i < npods; i++ {
		pod := b.node.AddPod(t, "pod"+string(rune('a'+i)))
		pod.Serve(t, pod.PodName, 8080)
		b.pods = append(b.pods, pod)
	}
	b.client = b.node.AddClient(t)
	cfg := Config{
		TableName:    "kproxy",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")},
		NetNSPath:    b.node.Path(),
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	b.p = p
	return b
}

func (b *bed) sync(full bool) {
	b.t.Helper()
	if err := b.p.Sync(context.Background(), b.w.snap(), full); err != nil {
		b.t.Fatalf("sync: %v", err)
	}
}

func (b *bed) podEps(port int32, fam v1.IPFamily, idx ...int) []ep {
	var out []ep
	for _, i := range idx {
		a := b.pods[i].V4
		if fam == v1.IPv6Protocol {
			a = b.pods[i].V6
		}
		out = append(out, ep{ip: a.String()})
	}
	return out
}

// reach sends n requests and returns the set of servers that answered.
func reach(t *testing.T, from *netnstest.NS, proto string, dst netip.AddrPort, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		r, err := from.Request(proto, dst, 0, 2*time.Second)
		if err != nil {
			t.Fatalf("%s %s from %s: %v", proto, dst, from.Name, err)
		}
		seen[r.Name]++
	}
	return seen
}

func TestKernelClusterIP(t *testing.T) {
	b := newBed(t, 3, nil)
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		name := "svc-" + string(proto)
		b.w.service(makeService(name, func(s *v1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "", []string{ip4(proto), ip6(proto)}
			s.Spec.ClusterIP = s.Spec.ClusterIPs[0]
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
			s.Spec.Ports[0].Protocol = proto
		}),
			withName(makeSlice(name, 8080, proto, b.podEps(8080, v1.IPv4Protocol, 0, 1, 2)...), name+"-v4"),
			withName(makeSlice(name, 8080, proto, b.podEps(8080, v1.IPv6Protocol, 0, 1, 2)...), name+"-v6"))
	}
	b.sync(true)
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		for _, vip := range []string{ip4(proto), ip6(proto)} {
			dst := netip.AddrPortFrom(netip.MustParseAddr(vip), 80)
			p := map[v1.Protocol]string{v1.ProtocolTCP: "tcp", v1.ProtocolUDP: "udp"}[proto]
			for _, from := range []*netnstest.NS{b.pods[0].NS, b.node.NS} {
				seen := reach(t, from, p, dst, 30)
				if len(seen) != 3 {
					t.Errorf("%s %s from %s: reached %v, want all 3 pods", p, dst, from.Name, seen)
				}
			}
		}
	}
}

func ip4(p v1.Protocol) string {
	if p == v1.ProtocolUDP {
		return "10.96.0.53"
	}
	return "10.96.0.80"
}

func ip6(p v1.Protocol) string {
	if p == v1.ProtocolUDP {
		return "fd00:10:96::53"
	}
	return "fd00:10:96::80"
}
