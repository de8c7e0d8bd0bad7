package nftables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
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

func (b *bed) addService(name string, mod func(*v1.Service), proto v1.Protocol, fam v1.IPFamily, pods ...int) {
	b.w.service(makeService(name, combine(func(s *v1.Service) { s.Spec.Ports[0].Protocol = proto }, mod)),
		withName(makeSlice(name, 8080, proto, b.podEps(8080, fam, pods...)...), name+"-"+string(fam)))
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestKernelAffinityPins(t *testing.T) {
	b := newBed(t, 3, nil)
	b.addService("aff", combine(clusterIP("10.96.0.80"), withAffinity(60)), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1, 2)
	b.addService("aff6", combine(clusterIP("fd00:10:96::80"), withAffinity(60)), v1.ProtocolTCP, v1.IPv6Protocol, 0, 1, 2)
	b.sync(true)
	for _, dst := range []string{"10.96.0.80:80", "[fd00:10:96::80]:80"} {
		for _, from := range []*netnstest.NS{b.pods[0].NS, b.pods[1].NS} {
			if seen := reach(t, from, "tcp", ap(dst), 15); len(seen) != 1 {
				t.Errorf("%s from %s: reached %v, want one endpoint (affinity)", dst, from.Name, seen)
			}
		}
	}
	// The kernel remembers the client in the affinity map.
	states, err := b.p.States(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, st := range states {
		n += len(st.Affinity)
	}
	if n < 4 {
		t.Errorf("affinity map has %d entries, want at least 4", n)
	}
	// An endpoint removed: pinned clients move on instead of blackholing.
	b.w.tr.OnEndpointSliceUpdate(nil, withName(makeSlice("aff", 8080, v1.ProtocolTCP, b.podEps(8080, v1.IPv4Protocol, 2)...), "aff-IPv4"))
	b.sync(false)
	if seen := reach(t, b.pods[0].NS, "tcp", ap("10.96.0.80:80"), 5); len(seen) != 1 || seen["podc"] != 5 {
		t.Errorf("after removing endpoints: reached %v, want podc only", seen)
	}
}

// As with kube-proxy, the client sets belong to the service port: a client
// pinned through the cluster IP is pinned through the NodePort and the
// external IP too, and after its endpoint goes (a partial sync), all three
// agree on the new one.
func TestKernelAffinitySharedByFrontends(t *testing.T) {
	b := newBed(t, 3, nil)
	b.addService("aff", combine(clusterIP("10.96.0.81"), withAffinity(60), nodePort(30085, false),
		func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.168.200.5"} }), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1, 2)
	b.sync(true)
	frontends := []string{"10.96.0.81:80", "192.168.100.1:30085", "192.168.200.5:80"}
	pinned := func() string {
		t.Helper()
		var first string
		for _, dst := range frontends {
			seen := reach(t, b.pods[0].NS, "tcp", ap(dst), 8)
			if len(seen) != 1 {
				t.Fatalf("%s: reached %v, want one endpoint (affinity)", dst, seen)
			}
			for name := range seen {
				if first == "" {
					first = name
				} else if name != first {
					t.Fatalf("%s: pinned to %s, but %s pinned the client to %s", dst, name, frontends[0], first)
				}
			}
		}
		return first
	}
	before := pinned()
	var keep []int
	for i, pod := range b.pods {
		if pod.PodName != before {
			keep = append(keep, i)
		}
	}
	b.w.tr.OnEndpointSliceUpdate(nil, withName(makeSlice("aff", 8080, v1.ProtocolTCP, b.podEps(8080, v1.IPv4Protocol, keep...)...), "aff-IPv4"))
	b.sync(false)
	after := pinned()
	if after == before {
		t.Fatalf("still pinned to %s after its endpoint was removed", before)
	}
	// The NodePort and external IP go; the cluster IP keeps the pins.
	old := makeService("aff", combine(clusterIP("10.96.0.81"), withAffinity(60), nodePort(30085, false),
		func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.168.200.5"} }))
	b.w.tr.OnServiceUpdate(old, makeService("aff", combine(clusterIP("10.96.0.81"), withAffinity(60))))
	b.sync(false)
	if seen := reach(t, b.pods[0].NS, "tcp", ap(frontends[0]), 8); seen[after] != 8 {
		t.Fatalf("after the NodePort went: reached %v through the cluster IP, want %s only", seen, after)
	}
	b.w.tr.OnServiceUpdate(makeService("aff", combine(clusterIP("10.96.0.81"), withAffinity(60))), old)
	b.sync(false)
	// The tracer reads the shared sets back from the kernel.
	want := ""
	for _, pod := range b.pods {
		if pod.PodName == after {
			want = netip.AddrPortFrom(pod.V4, 8080).String()
		}
	}
	for _, dst := range frontends {
		a := ap(dst)
		r := b.traceV4(Packet{Src: b.pods[0].V4, Proto: v1.ProtocolTCP, Dst: a.Addr(), Port: a.Port()})
		if len(r.Endpoints) != 1 || r.Endpoints[0].String() != want {
			t.Errorf("trace to %s from the pinned pod: %v, want %s (%v)", dst, r.Endpoints, want, r.Steps)
		}
	}
}

// Pods and the node reaching an externalTrafficPolicy Local NodePort take the
// short-circuit to the cluster-wide endpoints; with ClientIP affinity they
// are pinned there too, in the port's shared sets (kube-proxy sends them
// through its service chain's affinity).
func TestKernelAffinityShortCircuit(t *testing.T) {
	b := newBed(t, 3, nil)
	// Not served by pod 0, the client: a pod reaching itself is masqueraded
	// (hairpin).
	b.addService("affl", combine(clusterIP("10.96.0.82"), withAffinity(60), nodePort(30086, true)), v1.ProtocolTCP, v1.IPv4Protocol, 1, 2)
	b.sync(true)
	for _, from := range []*netnstest.NS{b.pods[0].NS, b.node.NS} {
		cip := reach(t, from, "tcp", ap("10.96.0.82:80"), 6)
		np := reach(t, from, "tcp", ap("192.168.100.1:30086"), 8)
		if len(cip) != 1 || len(np) != 1 {
			t.Fatalf("from %s: cluster IP reached %v, NodePort %v; want one endpoint each (affinity)", from.Name, cip, np)
		}
		for name := range cip {
			if np[name] != 8 {
				t.Errorf("from %s: the cluster IP pinned %s, the NodePort went to %v", from.Name, name, np)
			}
		}
	}
	// The node's own connection is masqueraded (the endpoint may be on
	// another node); the pod's keeps its address.
	if r, err := b.node.Request("tcp", ap("192.168.100.1:30086"), 0, 2*time.Second); err != nil || r.Peer.Addr() == netip.MustParseAddr("192.168.100.1") {
		t.Errorf("node to its ETP Local NodePort: reply %+v, %v; want the connection masqueraded", r, err)
	}
	if r, err := b.pods[0].Request("tcp", ap("192.168.100.1:30086"), 0, 2*time.Second); err != nil || r.Peer.Addr() != b.pods[0].V4 {
		t.Errorf("pod to the ETP Local NodePort: reply %+v, %v; want its own address kept", r, err)
	}
	r := b.traceV4(Packet{Src: b.pods[0].V4, Proto: v1.ProtocolTCP, Dst: netip.MustParseAddr("192.168.100.1"), Port: 30086})
	if len(r.Endpoints) != 1 || !r.Short {
		t.Errorf("trace from the pinned pod to the ETP Local NodePort: %v short=%v, want one pinned endpoint (%v)", r.Endpoints, r.Short, r.Steps)
	}
}

// traceV4 traces p over the IPv4 state read back from the kernel.
func (b *bed) traceV4(p Packet) TraceResult {
	b.t.Helper()
	states, err := b.p.States(context.Background())
	if err != nil {
		b.t.Fatal(err)
	}
	tr := &Tracer{Config: b.p.Config(), LocalAddrs: b.node.Addrs()}
	for _, st := range states {
		if st.Family == v1.IPv4Protocol {
			return tr.Trace(st, p)
		}
	}
	b.t.Fatal("no IPv4 state")
	return TraceResult{}
}

func TestKernelNodePortAndExternal(t *testing.T) {
	b := newBed(t, 2, nil)
	b.addService("np", combine(clusterIP("10.96.0.20"), nodePort(30080, false)), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1)
	b.addService("np6", combine(clusterIP("fd00:10:96::20"), nodePort(30080, false)), v1.ProtocolTCP, v1.IPv6Protocol, 0, 1)
	b.addService("npu", combine(clusterIP("10.96.0.21"), nodePort(30081, false)), v1.ProtocolUDP, v1.IPv4Protocol, 0, 1)
	b.addService("ext", combine(clusterIP("10.96.0.22"), func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.168.200.1"} }),
		v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	for _, c := range []struct{ proto, dst string }{
		{"tcp", "192.168.100.1:30080"}, {"tcp", "[fd00:100::1]:30080"}, {"udp", "192.168.100.1:30081"},
		{"tcp", "10.244.0.1:30080"}, {"tcp", "192.168.200.1:80"},
	} {
		seen := reach(t, b.client.NS, c.proto, ap(c.dst), 20)
		want := 2
		if c.dst == "192.168.200.1:80" {
			want = 1
		}
		if len(seen) != want {
			t.Errorf("%s %s from the client: reached %v, want %d endpoints", c.proto, c.dst, seen, want)
		}
	}
	// ETP Cluster: the endpoint sees the node, not the client.
	r, err := b.client.Request("tcp", ap("192.168.100.1:30080"), 0, 2*time.Second)
	if err != nil || r.Peer.Addr() == b.client.V4 {
		t.Errorf("NodePort ETP Cluster: reply %+v, %v; want the client masqueraded", r, err)
	}
	// Not on loopback unless asked.
	if _, err := b.node.Request("tcp", ap("127.0.0.1:30080"), 0, 500*time.Millisecond); err == nil {
		t.Errorf("NodePort answered on 127.0.0.1 without LocalhostNodePorts")
	}
}

func TestKernelLocalhostNodePort(t *testing.T) {
	b := newBed(t, 1, func(c *Config) { c.LocalhostNodePorts = true })
	b.addService("np", combine(clusterIP("10.96.0.20"), nodePort(30080, false)), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	if seen := reach(t, b.node.NS, "tcp", ap("127.0.0.1:30080"), 3); seen["poda"] != 3 {
		t.Errorf("localhost NodePort: reached %v", seen)
	}
}

func TestKernelExternalTrafficPolicyLocal(t *testing.T) {
	b := newBed(t, 1, nil)
	b.addService("local", combine(clusterIP("10.96.0.30"), nodePort(30090, true)), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.addService("local6", combine(clusterIP("fd00:10:96::30"), nodePort(30090, true)), v1.ProtocolTCP, v1.IPv6Protocol, 0)
	// Only an endpoint on another node: external traffic is dropped here.
	b.w.service(makeService("remote", combine(clusterIP("10.96.0.31"), nodePort(30091, true))),
		makeSlice("remote", 8080, v1.ProtocolTCP, ep{ip: "10.244.9.9", node: "node-b"}))
	b.sync(true)
	for _, dst := range []string{"192.168.100.1:30090", "[fd00:100::1]:30090"} {
		r, err := b.client.Request("tcp", ap(dst), 0, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
		if want := ap(dst).Addr(); (want.Is4() && r.Peer.Addr() != b.client.V4) || (want.Is6() && r.Peer.Addr() != b.client.V6) {
			t.Errorf("%s: endpoint saw %s, want the client's own address", dst, r.Peer.Addr())
		}
	}
	_, err := b.client.Request("tcp", ap("192.168.100.1:30091"), 0, 700*time.Millisecond)
	if !netnstest.IsTimeout(err) {
		t.Errorf("ETP Local without a local endpoint: %v, want a timeout (dropped)", err)
	}
	// Pods and the node are not external clients: they reach every endpoint.
	if seen := reach(t, b.pods[0].NS, "tcp", ap("192.168.100.1:30090"), 3); seen["poda"] != 3 {
		t.Errorf("ETP Local NodePort from a pod: reached %v", seen)
	}
	// The tracer, over the state read back from the kernel, agrees.
	for _, c := range []struct {
		src  netip.Addr
		want string
	}{{b.pods[0].V4, "ACCEPT → 10.244.9.9:8080"}, {b.client.V4, "DROP"}} {
		r := b.traceV4(Packet{Src: c.src, Proto: v1.ProtocolTCP, Dst: netip.MustParseAddr("192.168.100.1"), Port: 30091})
		if r.String() != c.want {
			t.Errorf("trace from %s to the remote-only ETP Local NodePort: %s, want %s (%v)", c.src, r, c.want, r.Steps)
		}
	}
}

func TestKernelLoadBalancerSourceRanges(t *testing.T) {
	b := newBed(t, 1, nil)
	lb := func(name, ip, rng string) func(*v1.Service) {
		return func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 0
			s.Spec.LoadBalancerSourceRanges = []string{rng}
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
		}
	}
	b.addService("allow", combine(clusterIP("10.96.0.40"), lb("allow", "192.168.201.1", "192.168.100.0/30")), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.addService("deny", combine(clusterIP("10.96.0.41"), lb("deny", "192.168.201.2", "192.168.100.0/31")), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	if seen := reach(t, b.client.NS, "tcp", ap("192.168.201.1:80"), 3); seen["poda"] != 3 {
		t.Errorf("allowed source: reached %v", seen)
	}
	if _, err := b.client.Request("tcp", ap("192.168.201.2:80"), 0, 700*time.Millisecond); !netnstest.IsTimeout(err) {
		t.Errorf("source outside loadBalancerSourceRanges: %v, want a timeout (dropped)", err)
	}
}

func TestKernelRejectWithoutEndpoints(t *testing.T) {
	b := newBed(t, 1, nil)
	for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
		name := "empty-" + string(proto)
		b.w.service(makeService(name, combine(clusterIP(ip4(proto), ip6(proto)), func(s *v1.Service) {
			s.Spec.Ports[0].Protocol = proto
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		})))
	}
	b.addService("web", clusterIP("10.96.0.90"), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	for _, c := range []struct {
		from  *netnstest.NS
		proto string
		dst   string
	}{
		{b.pods[0].NS, "tcp", "10.96.0.80:80"}, {b.pods[0].NS, "udp", "10.96.0.53:80"},
		{b.pods[0].NS, "tcp", "[fd00:10:96::80]:80"}, {b.pods[0].NS, "udp", "[fd00:10:96::53]:80"},
		{b.node.NS, "tcp", "10.96.0.80:80"}, {b.node.NS, "udp", "10.96.0.53:80"},
		{b.pods[0].NS, "tcp", "10.96.0.90:81"}, // a port the service does not serve
	} {
		_, err := c.from.Request(c.proto, ap(c.dst), 0, 2*time.Second)
		// A packet the output hook rejects fails the node's own sendmsg with
		// EPERM (the kernel reports the drop to the local sender at once).
		if c.from == b.node.NS && errors.Is(err, syscall.EPERM) {
			continue
		}
		if !netnstest.IsRefused(err) {
			t.Errorf("%s %s from %s: %v, want connection refused", c.proto, c.dst, c.from.Name, err)
		}
	}
}

func TestKernelHairpin(t *testing.T) {
	b := newBed(t, 1, nil)
	b.addService("self", clusterIP("10.96.0.100"), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.addService("self6", clusterIP("fd00:10:96::100"), v1.ProtocolTCP, v1.IPv6Protocol, 0)
	b.sync(true)
	for _, dst := range []string{"10.96.0.100:80", "[fd00:10:96::100]:80"} {
		r, err := b.pods[0].Request("tcp", ap(dst), 0, 2*time.Second)
		if err != nil {
			t.Fatalf("pod to its own service %s: %v", dst, err)
		}
		if r.Peer.Addr() == b.pods[0].V4 || r.Peer.Addr() == b.pods[0].V6 {
			t.Errorf("hairpin %s: endpoint saw itself (%s), want the node (masqueraded)", dst, r.Peer)
		}
	}
}

func TestKernelStaleUDP(t *testing.T) {
	b := newBed(t, 3, nil)
	b.addService("dns", clusterIP("10.96.0.53"), v1.ProtocolUDP, v1.IPv4Protocol, 0)
	b.addService("dns6", clusterIP("fd00:10:96::53"), v1.ProtocolUDP, v1.IPv6Protocol, 0)
	b.sync(true)
	client := b.pods[2]
	for _, c := range []struct {
		svc string
		fam v1.IPFamily
		dst string
	}{{"dns", v1.IPv4Protocol, "10.96.0.53:80"}, {"dns6", v1.IPv6Protocol, "[fd00:10:96::53]:80"}} {
		r, err := client.Request("udp", ap(c.dst), 40053, 2*time.Second)
		if err != nil || r.Name != "poda" {
			t.Fatalf("%s before: %+v %v", c.dst, r, err)
		}
		b.w.tr.OnEndpointSliceUpdate(nil, withName(makeSlice(c.svc, 8080, v1.ProtocolUDP, b.podEps(8080, c.fam, 1)...), c.svc+"-"+string(c.fam)))
		b.sync(false)
		// Same 5-tuple: without the conntrack reconcile this still reaches
		// poda. The reconcile runs after the sync, off its path: poll.
		deadline := time.Now().Add(10 * time.Second)
		for {
			r, err = client.Request("udp", ap(c.dst), 40053, time.Second)
			if err == nil && r.Name == "podb" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s after removing poda: %+v %v, want podb", c.dst, r, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// failingKernel slips an invalid element into an otherwise good transaction:
// the kernel must refuse all of it.
type failingKernel struct {
	kernel
	fail bool
}

func (k *failingKernel) Apply(ctx context.Context, tx *transaction) error {
	if k.fail {
		for _, ft := range tx.fams {
			if ft.adds == nil {
				ft.adds = map[string][]Element{}
			}
			ft.adds[setClusterIPs] = append(ft.adds[setClusterIPs], Element{Key: []byte{1, 2, 3}})
		}
	}
	return k.kernel.Apply(ctx, tx)
}

func TestKernelBadSyncKeepsTraffic(t *testing.T) {
	b := newBed(t, 2, nil)
	b.addService("web", clusterIP("10.96.0.10"), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	fk := &failingKernel{kernel: b.p.k, fail: true}
	b.p.k = fk
	b.w.tr.OnEndpointSliceUpdate(nil, withName(makeSlice("web", 8080, v1.ProtocolTCP, b.podEps(8080, v1.IPv4Protocol, 1)...), "web-IPv4"))
	err := b.p.Sync(context.Background(), b.w.snap(), false)
	if !IsTransactionError(err) {
		t.Fatalf("sync with an invalid element: %v, want a transaction error", err)
	}
	t.Logf("refused: %v", err)
	// The error names the refused message; the others were acknowledged.
	var errno syscall.Errno
	if !strings.Contains(err.Error(), "add elements to "+setClusterIPs+": ") || !errors.As(err, &errno) {
		t.Errorf("sync with an invalid element: %q, want one \"add elements to %s: <errno>\"", err, setClusterIPs)
	}
	if seen := reach(t, b.pods[1].NS, "tcp", ap("10.96.0.10:80"), 5); seen["poda"] != 5 {
		t.Errorf("after a failed sync: reached %v, want the old endpoint poda", seen)
	}
	fk.fail = false
	b.sync(false) // forced full
	if seen := reach(t, b.pods[1].NS, "tcp", ap("10.96.0.10:80"), 5); seen["podb"] != 5 {
		t.Errorf("after recovery: reached %v, want podb", seen)
	}
}

func TestKernelRestartTakeover(t *testing.T) {
	b := newBed(t, 2, nil)
	b.addService("web", clusterIP("10.96.0.10"), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1)
	b.addService("old", clusterIP("10.96.0.11"), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	if err := b.p.Close(); err != nil {
		t.Fatal(err)
	}
	// Rules stay after Close.
	if seen := reach(t, b.pods[0].NS, "tcp", ap("10.96.0.10:80"), 10); len(seen) != 2 {
		t.Errorf("after Close: reached %v", seen)
	}
	p2, err := New(b.p.Config(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p2.Close() })
	w2 := newWorld(t)
	w2.service(makeService("web", clusterIP("10.96.0.10")),
		withName(makeSlice("web", 8080, v1.ProtocolTCP, b.podEps(8080, v1.IPv4Protocol, 0, 1)...), "web-IPv4"))
	if err := p2.Sync(context.Background(), w2.snap(), true); err != nil {
		t.Fatal(err)
	}
	if seen := reach(t, b.pods[0].NS, "tcp", ap("10.96.0.10:80"), 10); len(seen) != 2 {
		t.Errorf("after takeover: reached %v", seen)
	}
	if _, err := b.pods[0].Request("tcp", ap("10.96.0.11:80"), 0, 700*time.Millisecond); err == nil {
		t.Errorf("leftover service still answers after takeover")
	}
	if err := Cleanup(context.Background(), b.p.Config()); err != nil {
		t.Fatal(err)
	}
	if ts, err := p2.Tables(context.Background()); err != nil || len(ts) != 0 {
		t.Errorf("after Cleanup: %d tables, %v", len(ts), err)
	}
}

// The nft tool must be able to list the ruleset kproxy writes (operators and
// other software run "nft list ruleset"; nft 1.0.6 aborts on expressions it
// cannot print, for the whole ruleset).
func TestKernelNftListsTheRuleset(t *testing.T) {
	testenv.RequireCommand(t, "nft")
	b := newBed(t, 2, func(c *Config) { c.LocalhostNodePorts = true })
	b.addService("aff", combine(clusterIP("10.96.0.10"), withAffinity(30), nodePort(30010, false)), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1)
	b.addService("aff6", combine(clusterIP("fd00:10:96::10"), withAffinity(30)), v1.ProtocolUDP, v1.IPv6Protocol, 0, 1)
	b.addService("np", combine(clusterIP("10.96.0.11"), nodePort(30011, true)), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.w.service(makeService("lb", combine(clusterIP("10.96.0.30"), func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/28"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.201.1"}}
	})), makeSlice("lb", 8080, v1.ProtocolTCP, b.podEps(8080, v1.IPv4Protocol, 0)...))
	b.w.service(makeService("empty", clusterIP("10.96.0.40")))
	b.sync(true)
	if _, err := b.pods[1].Request("tcp", ap("10.96.0.10:80"), 0, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := b.node.Exec("nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset: %v", err)
	}
	for _, want := range []string{"table ip kproxy", "table ip6 kproxy", "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @backends-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	t.Logf("%s", out)
}

func TestKernelProbeAndTrace(t *testing.T) {
	b := newBed(t, 2, nil)
	if err := Probe(Config{NetNSPath: b.node.Path()}); err != nil {
		t.Fatalf("Probe as root: %v", err)
	}
	b.addService("web", clusterIP("10.96.0.10"), v1.ProtocolTCP, v1.IPv4Protocol, 0)
	b.sync(true)
	r, err := b.p.Trace(context.Background(), Packet{Src: b.pods[1].V4, Proto: v1.ProtocolTCP,
		Dst: netip.MustParseAddr("10.96.0.10"), Port: 80}, b.node.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	if want := "ACCEPT → 10.244.0.2:8080"; r.String() != want {
		t.Errorf("trace: %s, want %s", r, want)
	}
}

// A periodic resync diffs against what kproxy wrote; every RebuildPeriod it
// loads every element afresh instead, which repairs elements someone else
// deleted from kproxy's sets.
func TestKernelRebuildRepairsDeletedElements(t *testing.T) {
	testenv.RequireCommand(t, "nft")
	b := newBed(t, 2, nil)
	b.addService("web", clusterIP("10.96.0.10"), v1.ProtocolTCP, v1.IPv4Protocol, 0, 1)
	b.sync(true)
	if seen := reach(t, b.pods[0].NS, "tcp", ap("10.96.0.10:80"), 10); len(seen) != 2 {
		t.Fatalf("reached %v, want both pods", seen)
	}
	b.node.MustExec("nft", "flush", "map", "ip", "kproxy", mapFrontends)
	refused := func() bool {
		_, err := b.pods[0].Request("tcp", ap("10.96.0.10:80"), 0, time.Second)
		return netnstest.IsRefused(err)
	}
	if !refused() {
		t.Fatal("the service still answers without its frontend element")
	}
	b.sync(true) // within the rebuild period: a diff, which trusts what kproxy wrote
	if !refused() {
		t.Fatal("a resync within the rebuild period repaired the element; the test assumes it does not")
	}
	b.p.cfg.RebuildPeriod = time.Nanosecond
	b.sync(true)
	if seen := reach(t, b.pods[0].NS, "tcp", ap("10.96.0.10:80"), 10); len(seen) != 2 {
		t.Fatalf("after the rebuild: reached %v, want both pods", seen)
	}
}
