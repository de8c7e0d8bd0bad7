package socketlb

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
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

func TestNodePortAndExternalIP(t *testing.T) {
	b := newBed(t, 2, false)
	svc := makeService("np", vip4.String(), vip6.String(), v1.ProtocolTCP, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalIPs = []string{ext4.String(), ext6.String()}
	})
	b.service(svc,
		b.slice("np", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}),
		b.slice("np", v1.IPv6Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}))
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(b.node.BridgeV4, 30080), netip.AddrPortFrom(b.node.BridgeV6, 30080),
		netip.AddrPortFrom(ext4, 80), netip.AddrPortFrom(ext6, 80),
	} {
		b.reachAll(b.client.NS, "tcp", dst, "poda", "podb")
	}
	// From the node itself (a process in the node's network namespace).
	b.reachAll(b.node.NS, "tcp", netip.AddrPortFrom(b.node.BridgeV4, 30080), "poda", "podb")
	b.reachAll(b.node.NS, "tcp", netip.AddrPortFrom(vip4, 80), "poda", "podb")

	// A node port on an address that is not the node's is left alone, and so
	// is a port the service does not serve: nothing answers there.
	before := b.translations()
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(b.pods[0].V4, 30080), netip.AddrPortFrom(vip4, 81), netip.AddrPortFrom(ext4, 30080),
	} {
		if r := b.request(b.client.NS, "tcp", dst); r.Err == "" || r.Refused() && dst.Addr() != b.pods[0].V4 {
			t.Errorf("tcp %s: %+v; want it left alone (not translated, not refused by the socket LB)", dst, r)
		}
	}
	if after := b.translations(); after != before {
		t.Errorf("translations went from %d to %d for frontends the service does not have", before, after)
	}
}

func (b *bed) translations() uint64 {
	var total uint64
	for _, n := range b.p.Translations() {
		total += n
	}
	return total
}

func TestAffinityPinsAClient(t *testing.T) {
	b := newBed(t, 3, false)
	svc := makeService("aff", vip4.String(), vip6.String(), v1.ProtocolTCP, func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(600))}}
	})
	b.service(svc, b.slice("aff", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}, ep{pod: 2}))
	dst := netip.AddrPortFrom(vip4, 80)
	first := b.request(b.client.NS, "tcp", dst)
	if first.Err != "" {
		t.Fatalf("first connect: %s", first.Err)
	}
	for i := 0; i < 8; i++ {
		if r := b.request(b.client.NS, "tcp", dst); r.Name != first.Name {
			t.Fatalf("connect %d reached %q, want the pinned %s", i, r.Name, first.Name)
		}
	}
	// The node (another client) is pinned on its own, and still reaches the
	// service; removing the pinned endpoint re-balances the client.
	if r := b.request(b.node.NS, "tcp", dst); r.Err != "" {
		t.Fatalf("from the node: %s", r.Err)
	}
	var rest []ep
	var names []string
	for i, p := range b.pods {
		if p.PodName != first.Name {
			rest = append(rest, ep{pod: i})
			names = append(names, p.PodName)
		}
	}
	old := b.slice("aff", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}, ep{pod: 2})
	b.endpoints(old, b.slice("aff", v1.IPv4Protocol, 8080, v1.ProtocolTCP, rest...))
	second := b.request(b.client.NS, "tcp", dst)
	if !contains(names, second.Name) {
		t.Fatalf("after its endpoint left, the client reached %q, want one of %v", second.Name, names)
	}
	for i := 0; i < 5; i++ {
		if r := b.request(b.client.NS, "tcp", dst); r.Name != second.Name {
			t.Fatalf("connect %d reached %q, want the newly pinned %s", i, r.Name, second.Name)
		}
	}
}

func TestNoEndpointsRefusesAndEndpointChangesFollow(t *testing.T) {
	b := newBed(t, 3, false)
	svc := makeService("chg", vip4.String(), vip6.String(), v1.ProtocolTCP, nil)
	all := b.slice("chg", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}, ep{pod: 2})
	b.service(svc, all)
	dst := netip.AddrPortFrom(vip4, 80)
	b.reachAll(b.client.NS, "tcp", dst, "poda", "podb", "podc")

	one := b.slice("chg", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 2})
	b.endpoints(all, one)
	for i := 0; i < 6; i++ {
		if r := b.request(b.client.NS, "tcp", dst); r.Name != "podc" {
			t.Fatalf("with one endpoint left, reached %+v, want podc", r)
		}
	}
	none := b.slice("chg", v1.IPv4Protocol, 8080, v1.ProtocolTCP)
	b.endpoints(one, none)
	if r := b.request(b.client.NS, "tcp", dst); !r.Refused() {
		t.Errorf("tcp without endpoints: %+v, want connection refused", r)
	}
	udp := makeService("chgu", "10.96.0.11", "fd00:10:96::11", v1.ProtocolUDP, nil)
	b.service(udp, b.slice("chgu", v1.IPv4Protocol, 8080, v1.ProtocolUDP))
	for _, mode := range []string{"udp", "udp-unconnected"} {
		if r := b.request(b.client.NS, mode, netip.MustParseAddrPort("10.96.0.11:80")); !r.Refused() {
			t.Errorf("%s without endpoints: %+v, want connection refused", mode, r)
		}
	}
	// IPv6 has no endpoints at all: refused too.
	if r := b.request(b.client.NS, "tcp", netip.AddrPortFrom(vip6, 80)); !r.Refused() {
		t.Errorf("IPv6 without endpoints: %+v, want connection refused", r)
	}
	// Only terminating endpoints: they serve (the fallback).
	term := b.slice("chg", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0, terminating: true}, ep{pod: 1})
	b.endpoints(none, term)
	for i := 0; i < 6; i++ {
		if r := b.request(b.client.NS, "tcp", dst); r.Name != "podb" {
			t.Fatalf("with a ready and a terminating endpoint, reached %+v, want the ready podb", r)
		}
	}
	termOnly := b.slice("chg", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0, terminating: true})
	b.endpoints(term, termOnly)
	if r := b.request(b.client.NS, "tcp", dst); r.Name != "poda" {
		t.Fatalf("with only a terminating endpoint, reached %+v, want poda", r)
	}
	b.endpoints(termOnly, all)
	b.reachAll(b.client.NS, "tcp", dst, "poda", "podb", "podc")
}

func TestTrafficPolicyLocal(t *testing.T) {
	b := newBed(t, 2, false)
	// Pod b is labelled as running on another node.
	svc := makeService("loc", vip4.String(), vip6.String(), v1.ProtocolTCP, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30081
		local := v1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &local
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	b.service(svc, b.slice("loc", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1, node: "node-b"}))
	// internalTrafficPolicy Local: the cluster IP reaches the local endpoint only.
	for i := 0; i < 6; i++ {
		if r := b.request(b.client.NS, "tcp", netip.AddrPortFrom(vip4, 80)); r.Name != "poda" {
			t.Fatalf("ITP Local: reached %+v, want the local poda", r)
		}
	}
	// externalTrafficPolicy Local, reached from a pod: the short-circuit to
	// every endpoint of the cluster.
	b.reachAll(b.client.NS, "tcp", netip.AddrPortFrom(b.node.BridgeV4, 30081), "poda", "podb")

	// No local endpoint under ITP Local: the socket LB leaves the cluster IP
	// to nftables (which drops it); it neither translates nor refuses.
	old := b.slice("loc", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1, node: "node-b"})
	b.endpoints(old, b.slice("loc", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 1, node: "node-b"}))
	before := b.translations()
	if r := b.request(b.client.NS, "tcp", netip.AddrPortFrom(vip4, 80)); r.Err == "" || r.Refused() {
		t.Errorf("ITP Local without a local endpoint: %+v, want it left alone", r)
	}
	if after := b.translations(); after != before {
		t.Errorf("translated %d connects, want none", after-before)
	}
}

func TestDNSAnswersComeFromTheServiceAddress(t *testing.T) {
	testenvCommand(t, "dig")
	b := newBed(t, 2, false)
	for _, p := range b.pods {
		serveDNS(t, p.NS)
	}
	svc := makeService("dns", "10.96.0.53", "fd00:10:96::53", v1.ProtocolUDP, func(s *v1.Service) {
		s.Spec.Ports[0].Port = 53
		s.Spec.Ports[0].TargetPort.IntVal = 53
	})
	b.service(svc,
		b.slice("dns", v1.IPv4Protocol, 53, v1.ProtocolUDP, ep{pod: 0}, ep{pod: 1}),
		b.slice("dns", v1.IPv6Protocol, 53, v1.ProtocolUDP, ep{pod: 0}, ep{pod: 1}))
	for _, server := range []string{"10.96.0.53", "fd00:10:96::53"} {
		for i := 0; i < 4; i++ {
			out, err := b.sb.Command(b.client.Name, "dig", "@"+server, "+tries=1", "+time=3", "x.example", "A").CombinedOutput()
			if err != nil {
				t.Fatalf("dig @%s: %v: %s", server, err, out)
			}
			s := string(out)
			if !strings.Contains(s, "192.0.2.7") || !strings.Contains(s, "SERVER: "+server+"#53") {
				t.Fatalf("dig @%s: no answer from the service address:\n%s", server, s)
			}
			if strings.Contains(s, "unexpected source") {
				t.Fatalf("dig @%s saw the reply from the endpoint's address:\n%s", server, s)
			}
		}
	}
	// Unconnected UDP: the datagram's source is the service address too
	// (checked by reachAll through recvfrom).
	echo := makeService("echo", vip4.String(), vip6.String(), v1.ProtocolUDP, nil)
	b.service(echo, b.slice("echo", v1.IPv4Protocol, 8080, v1.ProtocolUDP, ep{pod: 0}, ep{pod: 1}))
	b.reachAll(b.client.NS, "udp-unconnected", netip.AddrPortFrom(vip4, 80), "poda", "podb")
}

// With both data planes, as kproxy runs them: the socket LB picks the
// endpoint at connect, so the node's conntrack sees a plain pod-to-pod flow
// (no DNAT entry), and nftables still serves what the socket LB leaves alone.
func TestNoDNATBesideNFTables(t *testing.T) {
	testenvCommand(t, "conntrack")
	b := newBed(t, 2, true)
	svc := makeService("ct", vip4.String(), vip6.String(), v1.ProtocolTCP, nil)
	b.service(svc,
		b.slice("ct", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}),
		b.slice("ct", v1.IPv6Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1}))
	b.node.MustExec("conntrack", "-F")
	before := b.translations()
	for _, vip := range []netip.Addr{vip4, vip6} {
		b.reachAll(b.client.NS, "tcp", netip.AddrPortFrom(vip, 80), "poda", "podb")
	}
	if got := b.translations() - before; got < 4 {
		t.Errorf("the socket LB translated %d connects, want every one", got)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, _ := b.node.Exec("conntrack", "-L", "-f", fam, "--dst-nat")
		if strings.Contains(out, "dport=80 ") || strings.Contains(out, "10.96.") || strings.Contains(out, "fd00:10:96::") {
			t.Errorf("conntrack has DNAT entries for the service (%s):\n%s", fam, out)
		}
		all, _ := b.node.Exec("conntrack", "-L", "-f", fam, "-p", "tcp", "--dport", "8080")
		if !strings.Contains(all, "dport=8080") {
			t.Errorf("no conntrack entry of the pod-to-pod flow (%s), so the check above proves nothing:\n%s", fam, all)
		}
	}
	// Outside the test cgroup, the same connect goes through nftables DNAT.
	r, err := b.client.Request("tcp", netip.AddrPortFrom(vip4, 80), 0, 3*time.Second)
	if err != nil || (r.Name != "poda" && r.Name != "podb") {
		t.Fatalf("outside the socket LB's cgroup: %+v %v, want nftables to serve it", r, err)
	}
	out, _ := b.node.Exec("conntrack", "-L", "-f", "ipv4", "--dst-nat")
	if !strings.Contains(out, "dst=10.96.0.10") {
		t.Errorf("nftables path: no DNAT entry in conntrack:\n%s", out)
	}
}

// The pins keep serving after kproxy is gone (as after a SIGKILL: the
// process's handles just close), a new kproxy takes over the same links and
// maps, and Cleanup detaches everything.
func TestRestartAdoptsPinsAndCleanupDetaches(t *testing.T) {
	b := newBed(t, 2, false)
	svc := makeService("rs", vip4.String(), vip6.String(), v1.ProtocolTCP, nil)
	all := b.slice("rs", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 0}, ep{pod: 1})
	b.service(svc, all)
	dst := netip.AddrPortFrom(vip4, 80)
	b.reachAll(b.client.NS, "tcp", dst, "poda", "podb")
	links := b.linkIDs()
	b.p.Close()
	b.reachAll(b.client.NS, "tcp", dst, "poda", "podb")

	// The new kproxy starts with the old maps in force, in the same links
	// (their programs swapped in place, so no connect goes untranslated);
	// its first (full) sync replaces the maps' contents.
	b.p = b.open()
	if now := b.linkIDs(); !slices.Equal(now, links) {
		t.Errorf("links after the restart %v, want the pinned ones %v kept", now, links)
	}
	b.reachAll(b.client.NS, "tcp", dst, "poda", "podb")
	one := b.slice("rs", v1.IPv4Protocol, 8080, v1.ProtocolTCP, ep{pod: 1})
	b.tr.OnEndpointSliceUpdate(all, one)
	if err := b.p.Sync(context.Background(), b.tr.Snapshot(), true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if r := b.request(b.client.NS, "tcp", dst); r.Name != "podb" {
			t.Fatalf("after the restart and a change: %+v, want podb", r)
		}
	}
	if n := b.mapEntries(); n.backends != 1 || n.slots != 1 || n.frontends != 2 {
		t.Errorf("after the first full sync: %+v entries, want 1 backend and slot, 2 frontends (IPv6 refuses): the old ones collected", n)
	}
	b.p.Close()
	if err := Cleanup(b.sb.PinDir); err != nil {
		t.Fatal(err)
	}
	if r := b.request(b.client.NS, "tcp", dst); r.Err == "" {
		t.Fatalf("after cleanup the service is still reached: %+v", r)
	}
	if _, err := os.Stat(b.sb.PinDir); !os.IsNotExist(err) {
		t.Errorf("pin directory left after cleanup: %v", err)
	}
}

func (b *bed) linkIDs() []link.ID {
	b.t.Helper()
	var ids []link.ID
	for _, h := range hooks {
		l, err := link.LoadPinnedLink(linkPin(b.sb.PinDir, h.prog), nil)
		if err != nil {
			b.t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			b.t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	return ids
}

type entries struct{ frontends, slots, backends int }

func (b *bed) mapEntries() entries {
	b.t.Helper()
	var n entries
	count := func(m *ebpf.Map) int {
		var k, v []byte
		c := 0
		it := m.Iterate()
		for it.Next(&k, &v) {
			c++
		}
		if err := it.Err(); err != nil {
			b.t.Fatal(err)
		}
		return c
	}
	o := &b.p.k.objs.socketlbMaps
	n.frontends, n.slots, n.backends = count(o.KpFrontends), count(o.KpSlots), count(o.KpBackends)
	return n
}

// Connects running while the endpoints change under them never fail and never
// reach an endpoint outside the service: each sync flips the frontend to a
// fully written slot set in one update.
func TestConnectsDuringEndpointChanges(t *testing.T) {
	b := newBed(t, 3, false)
	svc := makeService("flip", vip4.String(), vip6.String(), v1.ProtocolTCP, nil)
	sets := [][]ep{{{pod: 0}, {pod: 1}}, {{pod: 1}, {pod: 2}}, {{pod: 2}}, {{pod: 0}, {pod: 1}, {pod: 2}}}
	cur := b.slice("flip", v1.IPv4Protocol, 8080, v1.ProtocolTCP, sets[0]...)
	b.service(svc, cur)
	wait, err := b.sb.Start(b.client.Name, "tcp", netip.AddrPortFrom(vip4, 80), 400)
	if err != nil {
		t.Fatal(err)
	}
	syncs := 0
	done := make(chan struct{})
	var r lbtest.Result
	var werr error
	go func() { r, werr = wait(); close(done) }()
loop:
	for i := 1; ; i++ {
		select {
		case <-done:
			break loop
		default:
		}
		next := b.slice("flip", v1.IPv4Protocol, 8080, v1.ProtocolTCP, sets[i%len(sets)]...)
		b.endpoints(cur, next)
		cur = next
		syncs++
		time.Sleep(5 * time.Millisecond)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	total := 0
	for name, n := range r.Counts {
		if !contains([]string{"poda", "podb", "podc"}, name) {
			t.Errorf("%d connects: %s", n, name)
		}
		total += n
	}
	if total != 400 || syncs < 10 {
		t.Errorf("%d connects counted over %d syncs, want 400 over at least 10: %v", total, syncs, r.Counts)
	}
	t.Logf("%d syncs during 400 connects: %v", syncs, r.Counts)
}
