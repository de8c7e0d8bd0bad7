package nftables

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/conntrack"
	"github.com/kproxy/kproxy/internal/metrics"
)

// Unit tests on the fake kernel: the Proxier writes sets, the Tracer runs
// packets through the rule program over what the fake holds.
// IP plan: see helpers_test.go. Pods on this node are 10.244.0.x, on another
// node 10.244.1.x; the client is 192.168.100.2; the node is 192.168.100.1.

type flow struct {
	name     string
	src      string
	proto    v1.Protocol
	dst      string
	port     uint16
	fromNode bool
	want     string // "DROP", "REJECT", "ACCEPT" (not DNATed) or a comma-separated endpoint list
	masq     bool
}

func newFake(t *testing.T, mod func(*Config)) (*Proxier, *Fake, *conntrack.FakeTable) {
	t.Helper()
	cfg := Config{ClusterCIDRs: clusterCIDRs, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	p, k, err := NewFake(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, k, p.ctTable.(*conntrack.FakeTable)
}

func traceFlow(t *testing.T, p *Proxier, f flow) TraceResult {
	t.Helper()
	states, err := p.States(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddr(f.dst)
	proto := f.proto
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	tr := &Tracer{Config: p.Config(), LocalAddrs: nodeAddrs}
	for _, st := range states {
		if familyOf(st.Family).contains(dst) {
			return tr.Trace(st, Packet{Src: netip.MustParseAddr(f.src), Proto: proto, Dst: dst, Port: f.port, FromNode: f.fromNode})
		}
	}
	t.Fatalf("no table for %s", dst)
	return TraceResult{}
}

func checkFlows(t *testing.T, p *Proxier, flows []flow) {
	t.Helper()
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			r := traceFlow(t, p, f)
			got := string(r.Verdict)
			if len(r.Endpoints) > 0 {
				var eps []string
				for _, e := range r.Endpoints {
					eps = append(eps, e.String())
				}
				got = strings.Join(eps, ",")
			}
			if got != f.want || (len(r.Endpoints) > 0 && r.Masquerade != f.masq) {
				t.Errorf("%s %s → %s:%d: got %s masquerade=%v, want %s masquerade=%v\nsteps: %s",
					f.proto, f.src, f.dst, f.port, got, r.Masquerade, f.want, f.masq, strings.Join(r.Steps, "; "))
			}
		})
	}
}

func nodePort(np int32, local bool) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = np
		if local {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
	}
}

func clusterIP(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
	}
}

func combine(mods ...func(*v1.Service)) func(*v1.Service) {
	return func(s *v1.Service) {
		for _, m := range mods {
			m(s)
		}
	}
}

func TestFlows(t *testing.T) {
	p, k, _ := newFake(t, nil)
	w := newWorld(t)
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	w.service(makeService("web", clusterIP("10.96.0.10")),
		makeSlice("web", 8080, tcp, ep{ip: "10.244.0.2"}, ep{ip: "10.244.1.2", node: "node-b"}))
	w.service(makeService("single", clusterIP("10.96.0.12")), makeSlice("single", 8080, tcp, ep{ip: "10.244.0.2"}))
	w.service(makeService("empty", combine(clusterIP("10.96.0.11"), func(s *v1.Service) { s.Spec.Ports[0].Protocol = udp })))
	w.service(makeService("np", combine(clusterIP("10.96.0.20"), nodePort(30080, false))),
		makeSlice("np", 8080, tcp, ep{ip: "10.244.0.3"}, ep{ip: "10.244.1.3", node: "node-b"}))
	w.service(makeService("np-local", combine(clusterIP("10.96.0.21"), nodePort(30081, true))),
		makeSlice("np-local", 8080, tcp, ep{ip: "10.244.0.4"}, ep{ip: "10.244.1.4", node: "node-b"}))
	w.service(makeService("np-local-none", combine(clusterIP("10.96.0.22"), nodePort(30082, true))),
		makeSlice("np-local-none", 8080, tcp, ep{ip: "10.244.1.5", node: "node-b"}))
	w.service(makeService("np-empty", combine(clusterIP("10.96.0.23"), nodePort(30083, false))))
	w.service(makeService("lb", combine(clusterIP("10.96.0.30"), nodePort(30090, false), func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/28"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.201.1"}}
	})), makeSlice("lb", 8080, tcp, ep{ip: "10.244.0.6"}))
	w.service(makeService("ext", combine(clusterIP("10.96.0.40"), func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"192.168.200.1"}
	})), makeSlice("ext", 8080, tcp, ep{ip: "10.244.1.7", node: "node-b"}))
	w.service(makeService("itp", combine(clusterIP("10.96.0.50"), func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
	})), makeSlice("itp", 8080, tcp, ep{ip: "10.244.1.8", node: "node-b"}))
	w.service(makeService("term", clusterIP("10.96.0.60")),
		makeSlice("term", 8080, tcp, ep{ip: "10.244.0.9", terminating: true}, ep{ip: "10.244.0.10", notReady: true}))
	w.service(makeService("sctp", combine(clusterIP("10.96.0.70"), func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolSCTP })),
		makeSlice("sctp", 9000, v1.ProtocolSCTP, ep{ip: "10.244.0.11"}))
	w.service(makeService("v6", combine(clusterIP("fd00:10:96::10"), func(s *v1.Service) {
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	})), makeSlice("v6", 8080, tcp, ep{ip: "fd00:10:244::2"}, ep{ip: "fd00:10:244:1::2", node: "node-b"}))
	w.service(makeService("aff", combine(clusterIP("10.96.0.80"), withAffinity(60), nodePort(30084, false))),
		makeSlice("aff", 8080, tcp, ep{ip: "10.244.0.12"}, ep{ip: "10.244.1.12", node: "node-b"}))
	w.service(makeService("affl", combine(clusterIP("10.96.0.82"), withAffinity(60), nodePort(30086, true))),
		makeSlice("affl", 8080, tcp, ep{ip: "10.244.0.14"}, ep{ip: "10.244.1.14", node: "node-b"}))

	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	k.SetAffinity(netip.MustParseAddr("10.244.0.99"), Frontend{Addr: netip.MustParseAddr("10.96.0.80"), Proto: protoTCP, Port: 80},
		netip.MustParseAddrPort("10.244.1.12:8080"))
	k.SetAffinity(netip.MustParseAddr("10.244.0.99"), Frontend{Addr: netip.MustParseAddr("10.96.0.82"), Proto: protoTCP, Port: 80},
		netip.MustParseAddrPort("10.244.1.14:8080"))

	pod, client, node := "10.244.0.5", "192.168.100.2", "192.168.100.1"
	checkFlows(t, p, []flow{
		{name: "pod to ClusterIP: every endpoint, no masquerade", src: pod, dst: "10.96.0.10", port: 80, want: "10.244.0.2:8080,10.244.1.2:8080"},
		{name: "node to ClusterIP: masquerade", src: node, dst: "10.96.0.10", port: 80, fromNode: true, want: "10.244.0.2:8080,10.244.1.2:8080", masq: true},
		{name: "outside cluster CIDR to ClusterIP: masquerade", src: client, dst: "10.96.0.10", port: 80, want: "10.244.0.2:8080,10.244.1.2:8080", masq: true},
		{name: "unserved ClusterIP port: reject", src: pod, dst: "10.96.0.10", port: 81, want: "REJECT"},
		{name: "hairpin: masquerade", src: "10.244.0.2", dst: "10.96.0.12", port: 80, want: "10.244.0.2:8080", masq: true},
		{name: "no endpoints: reject (udp)", src: pod, proto: udp, dst: "10.96.0.11", port: 80, want: "REJECT"},
		{name: "NodePort from client: masquerade", src: client, dst: node, port: 30080, want: "10.244.0.3:8080,10.244.1.3:8080", masq: true},
		{name: "NodePort on the bridge address", src: client, dst: "10.244.0.1", port: 30080, want: "10.244.0.3:8080,10.244.1.3:8080", masq: true},
		{name: "NodePort on localhost: off by default", src: "127.0.0.1", dst: "127.0.0.1", port: 30080, fromNode: true, want: "ACCEPT"},
		{name: "NodePort ETP Local: local endpoint, client IP kept", src: client, dst: node, port: 30081, want: "10.244.0.4:8080"},
		{name: "ETP Local ClusterIP still uses all", src: pod, dst: "10.96.0.21", port: 80, want: "10.244.0.4:8080,10.244.1.4:8080"},
		{name: "NodePort ETP Local without local endpoint: drop", src: client, dst: node, port: 30082, want: "DROP"},
		{name: "NodePort without endpoints: reject", src: client, dst: node, port: 30083, want: "REJECT"},
		{name: "ETP Local NodePort from a pod: all endpoints (short-circuit)", src: pod, dst: node, port: 30082, want: "10.244.1.5:8080"},
		{name: "ETP Local NodePort from the node: all endpoints, masquerade", src: node, dst: node, port: 30081, fromNode: true,
			want: "10.244.0.4:8080,10.244.1.4:8080", masq: true},
		{name: "not a NodePort: untouched", src: client, dst: node, port: 30099, want: "ACCEPT"},
		{name: "LB from allowed range", src: client, dst: "192.168.201.1", port: 80, want: "10.244.0.6:8080", masq: true},
		{name: "LB from outside the source ranges: drop", src: "192.168.100.100", dst: "192.168.201.1", port: 80, want: "DROP"},
		{name: "externalIP", src: client, dst: "192.168.200.1", port: 80, want: "10.244.1.7:8080", masq: true},
		{name: "ITP Local without local endpoint: drop", src: pod, dst: "10.96.0.50", port: 80, want: "DROP"},
		{name: "terminating endpoint serves when none is ready", src: pod, dst: "10.96.0.60", port: 80, want: "10.244.0.9:8080"},
		{name: "SCTP", src: pod, proto: v1.ProtocolSCTP, dst: "10.96.0.70", port: 80, want: "10.244.0.11:9000"},
		{name: "IPv6 ClusterIP", src: "fd00:10:244::5", dst: "fd00:10:96::10", port: 80, want: "[fd00:10:244::2]:8080,[fd00:10:244:1::2]:8080"},
		{name: "IPv6 from outside: masquerade", src: "fd00:100::2", dst: "fd00:10:96::10", port: 80, want: "[fd00:10:244::2]:8080,[fd00:10:244:1::2]:8080", masq: true},
		{name: "affinity: new client may go anywhere", src: pod, dst: "10.96.0.80", port: 80, want: "10.244.0.12:8080,10.244.1.12:8080"},
		{name: "affinity: known client is pinned", src: "10.244.0.99", dst: "10.96.0.80", port: 80, want: "10.244.1.12:8080"},
		{name: "affinity: pinned through the cluster IP, pinned through the NodePort", src: "10.244.0.99", dst: node, port: 30084,
			want: "10.244.1.12:8080", masq: true},
		{name: "affinity: new client through the NodePort may go anywhere", src: pod, dst: node, port: 30084,
			want: "10.244.0.12:8080,10.244.1.12:8080", masq: true},
		{name: "affinity, ETP Local: the short-circuit keeps the pin to a remote endpoint", src: "10.244.0.99", dst: node, port: 30086,
			want: "10.244.1.14:8080"},
		{name: "affinity, ETP Local: a new pod may go anywhere", src: pod, dst: node, port: 30086, want: "10.244.0.14:8080,10.244.1.14:8080"},
		{name: "affinity, ETP Local: an external client gets the local endpoint", src: client, dst: node, port: 30086, want: "10.244.0.14:8080"},
		{name: "affinity, ETP Local from the node: short-circuit, masquerade", src: node, dst: node, port: 30086, fromNode: true,
			want: "10.244.0.14:8080,10.244.1.14:8080", masq: true},
	})
}

func TestFlowsMasqueradeAllAndLocalhost(t *testing.T) {
	p, _, _ := newFake(t, func(c *Config) { c.MasqueradeAll = true; c.LocalhostNodePorts = true })
	w := newWorld(t)
	w.service(makeService("np", combine(clusterIP("10.96.0.20"), nodePort(30080, true))),
		makeSlice("np", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.3"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	checkFlows(t, p, []flow{
		{name: "pod to ClusterIP masqueraded", src: "10.244.0.5", dst: "10.96.0.20", port: 80, want: "10.244.0.3:8080", masq: true},
		{name: "ETP Local masqueraded too", src: "192.168.100.2", dst: "192.168.100.1", port: 30080, want: "10.244.0.3:8080", masq: true},
		{name: "localhost NodePort", src: "127.0.0.1", dst: "127.0.0.1", port: 30080, fromNode: true, want: "10.244.0.3:8080", masq: true},
	})
}

func TestIncrementalSyncTouchesOnlyTheChange(t *testing.T) {
	p, k, _ := newFake(t, nil)
	w := newWorld(t)
	for i := 0; i < 50; i++ {
		name := "svc" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		ip := netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}).String()
		w.service(makeService(name, clusterIP(ip)), makeSlice(name, 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}, ep{ip: "10.244.0.3"}))
	}
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	// One endpoint more: the frontend moves from dnat-2 to dnat-3 (1 replace)
	// and gets 3 backends-3 elements; the 2 backends-2 elements go; the new
	// local endpoint gets a hairpin element.
	w.tr.OnEndpointSliceUpdate(nil, makeSlice("svcaa", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}, ep{ip: "10.244.0.3"}, ep{ip: "10.244.0.4"}))
	if err := p.Sync(context.Background(), w.snap(), false); err != nil {
		t.Fatal(err)
	}
	if k.LastElements != 2+3+2+1 {
		t.Errorf("incremental sync changed %d elements, want 8", k.LastElements)
	}
	checkFlows(t, p, []flow{{name: "new endpoint", src: "10.244.0.5", dst: "10.96.1.0", port: 80,
		want: "10.244.0.2:8080,10.244.0.3:8080,10.244.0.4:8080"}})
	// A full resync of an unchanged model changes nothing.
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	if k.LastElements != 0 {
		t.Errorf("full resync of an unchanged model changed %d elements", k.LastElements)
	}
}

func TestFailedSyncKeepsRulesAndForcesFull(t *testing.T) {
	p, k, _ := newFake(t, nil)
	w := newWorld(t)
	w.service(makeService("web", clusterIP("10.96.0.10")), makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	k.FailNext(errors.New("injected"))
	w.tr.OnEndpointSliceUpdate(nil, makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.3"}))
	err := p.Sync(context.Background(), w.snap(), false)
	if !IsTransactionError(err) {
		t.Fatalf("sync error %v, want a transaction error", err)
	}
	checkFlows(t, p, []flow{{name: "old rules in force", src: "10.244.0.5", dst: "10.96.0.10", port: 80, want: "10.244.0.2:8080"}})
	// The next sync is full even though the caller asks for a partial one, and
	// it catches up with the change the failed one carried.
	if err := p.Sync(context.Background(), w.snap(), false); err != nil {
		t.Fatal(err)
	}
	checkFlows(t, p, []flow{{name: "caught up", src: "10.244.0.5", dst: "10.96.0.10", port: 80, want: "10.244.0.3:8080"}})
}

func TestRestartTakesOverAndRemovesLeftovers(t *testing.T) {
	p, k, _ := newFake(t, nil)
	w := newWorld(t)
	w.service(makeService("keep", clusterIP("10.96.0.10")), makeSlice("keep", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}))
	w.service(makeService("gone", clusterIP("10.96.0.11")), makeSlice("gone", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.3"}, ep{ip: "10.244.0.4"}, ep{ip: "10.244.0.5"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	// A new kproxy on the same kernel, whose model lost "gone".
	p2 := newProxier(p.Config(), nil, k, &conntrack.FakeTable{})
	w2 := newWorld(t)
	w2.service(makeService("keep", clusterIP("10.96.0.10")), makeSlice("keep", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}))
	if err := p2.Sync(context.Background(), w2.snap(), true); err != nil {
		t.Fatal(err)
	}
	if k.Transactions != 2 {
		t.Errorf("takeover took %d transactions, want 1", k.Transactions-1)
	}
	tables, _ := p2.Tables(context.Background())
	for _, tb := range tables {
		if _, ok := tb.Chains["dnat-3"]; ok {
			t.Errorf("leftover chain dnat-3 in %s table", tb.Family)
		}
		if _, ok := tb.Sets["backends-3"]; ok {
			t.Errorf("leftover set backends-3 in %s table", tb.Family)
		}
	}
	checkFlows(t, p2, []flow{
		{name: "kept", src: "10.244.0.9", dst: "10.96.0.10", port: 80, want: "10.244.0.2:8080"},
		{name: "gone", src: "10.244.0.9", dst: "10.96.0.11", port: 80, want: "ACCEPT"},
	})
}

func ctFlow(src, dst string, dport uint16, reply string, rport uint16) conntrack.Flow {
	return conntrack.Flow{Proto: protoUDP, OrigSrc: netip.MustParseAddr(src), OrigSrcPort: 40000,
		OrigDst: netip.MustParseAddr(dst), OrigDstPort: dport, ReplySrc: netip.MustParseAddr(reply), ReplySrcPort: rport}
}

// The reconcile keeps the UDP entries DNATed to a serving endpoint of their
// frontend's port, whatever the traffic policy or terminating state, and
// deletes the others: endpoints gone or not serving, an old target port,
// entries made while the port had no endpoints, entries of a removed service.
// It leaves alone what is not a service's.
func TestConntrackReconcile(t *testing.T) {
	p, _, ct := newFake(t, nil)
	w := newWorld(t)
	udp := v1.ProtocolUDP
	w.service(makeService("dns", combine(clusterIP("10.96.0.53"), nodePort(30053, true), func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].Protocol = udp
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Spec.ClusterIPs = []string{"10.96.0.53", "fd00:10:96::53"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.201.53"}}
	})), makeSlice("dns", 53, udp, ep{ip: "10.244.1.2", node: "node-b"}, ep{ip: "10.244.1.3", node: "node-b", terminating: true},
		ep{ip: "10.244.1.4", node: "node-b", notReady: true}),
		withName(makeSlice("dns", 53, udp, ep{ip: "fd00:10:244:1::2", node: "node-b"}), "dns-v6"))
	w.service(makeService("empty", combine(clusterIP("10.96.0.54"), func(s *v1.Service) { s.Spec.Ports[0].Protocol = udp })))
	w.service(makeService("web", clusterIP("10.96.0.10")), makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.1.2"}))
	w.service(makeService("old", combine(clusterIP("10.96.0.55"), func(s *v1.Service) { s.Spec.Ports[0].Protocol = udp })),
		makeSlice("old", 53, udp, ep{ip: "10.244.1.7"}))
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.100.1"}}
	w.tr.OnNodeUpdate(nil, node)
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	w.tr.OnServiceDelete(makeService("old", combine(clusterIP("10.96.0.55"), func(s *v1.Service) { s.Spec.Ports[0].Protocol = udp })))
	if err := p.Sync(context.Background(), w.snap(), false); err != nil {
		t.Fatal(err)
	}
	entries := []struct {
		name string
		f    conntrack.Flow
		keep bool
	}{
		{"cluster IP to a ready endpoint", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.2", 53), true},
		{"cluster IP to a serving terminating endpoint", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.3", 53), true},
		{"cluster IP to a not serving endpoint", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.4", 53), false},
		{"cluster IP to a gone endpoint", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.9", 53), false},
		{"cluster IP to the old target port", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.2", 5353), false},
		{"cluster IP, made without endpoints (not DNATed)", ctFlow("10.244.0.9", "10.96.0.53", 80, "10.96.0.53", 80), false},
		{"IPv6 cluster IP to a ready endpoint", ctFlow("fd00:10:244::9", "fd00:10:96::53", 80, "fd00:10:244:1::2", 53), true},
		{"IPv6 cluster IP to a gone endpoint", ctFlow("fd00:10:244::9", "fd00:10:96::53", 80, "fd00:10:244:1::9", 53), false},
		{"load-balancer IP to a gone endpoint", ctFlow("192.168.100.2", "192.168.201.53", 80, "10.244.1.9", 53), false},
		{"load-balancer IP to a ready endpoint", ctFlow("192.168.100.2", "192.168.201.53", 80, "10.244.1.2", 53), true},
		{"NodePort to a gone endpoint", ctFlow("192.168.100.2", "192.168.100.1", 30053, "10.244.1.9", 53), false},
		{"NodePort to a ready endpoint", ctFlow("192.168.100.2", "192.168.100.1", 30053, "10.244.1.2", 53), true},
		{"NodePort on the node, not DNATed", ctFlow("192.168.100.2", "192.168.100.1", 30053, "192.168.100.1", 30053), false},
		{"a remote host on the NodePort's number", ctFlow("10.244.0.9", "192.0.2.7", 30053, "192.0.2.7", 30053), true},
		{"a service without endpoints", ctFlow("10.244.0.9", "10.96.0.54", 80, "10.96.0.54", 80), false},
		{"a removed service", ctFlow("10.244.0.9", "10.96.0.55", 80, "10.244.1.7", 53), false},
		{"not a service", ctFlow("10.244.0.9", "10.96.0.99", 80, "10.244.1.9", 53), true},
		{"another port of the cluster IP", ctFlow("10.244.0.9", "10.96.0.53", 81, "10.244.1.9", 53), true},
	}
	for _, e := range entries {
		ct.Flows = append(ct.Flows, e.f)
	}
	tcp := ctFlow("10.244.0.9", "10.96.0.10", 80, "10.244.1.9", 8080)
	tcp.Proto = protoTCP
	ct.Flows = append(ct.Flows, tcp)
	// A targeted pass (after a change of one frontend) looks at its entries only.
	lb := ctKey{netip.MustParseAddr("192.168.201.53"), 80}
	if n, err := p.reconcile(map[ctKey]struct{}{lb: {}}); n != 1 || err != nil {
		t.Errorf("pass over %v: deleted %d, %v; want the 1 stale entry of that frontend", lb, n, err)
	}
	n, err := p.ReconcileConntrack()
	n++ // the load-balancer IP's, deleted by the targeted pass
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, e := range entries {
		if kept := slices.Contains(ct.Flows, e.f); kept != e.keep {
			t.Errorf("%s (%v): kept %v, want %v", e.name, e.f, kept, e.keep)
		}
		if !e.keep {
			want++
		}
	}
	if n != want {
		t.Errorf("deleted %d, want %d", n, want)
	}
	if !slices.Contains(ct.Flows, tcp) {
		t.Errorf("a TCP entry was deleted")
	}
	// A removed service's frontends are looked at for three passes only.
	gone := entries[len(entries)-3].f
	for pass := 3; pass <= 4; pass++ { // the targeted and the full pass above were 1 and 2
		ct.Flows = append(ct.Flows, gone)
		if _, err := p.ReconcileConntrack(); err != nil {
			t.Fatal(err)
		}
		if kept := slices.Contains(ct.Flows, gone); kept != (pass == 4) {
			t.Errorf("pass %d: a removed service's entry kept %v, want %v", pass, kept, pass == 4)
		}
	}
}

// The index follows partial syncs: a new endpoint keeps its entries, a
// changed target port drops the old ones, a NodePort taken away stops
// matching.
func TestConntrackIndexFollowsPartialSyncs(t *testing.T) {
	p, _, ct := newFake(t, nil)
	w := newWorld(t)
	udp := v1.ProtocolUDP
	svc := makeService("dns", combine(clusterIP("10.96.0.53"), nodePort(30053, false), func(s *v1.Service) { s.Spec.Ports[0].Protocol = udp }))
	w.service(svc, makeSlice("dns", 53, udp, ep{ip: "10.244.1.2"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	step := func(name string, flows []conntrack.Flow, wantLeft []conntrack.Flow) {
		t.Helper()
		if err := p.Sync(context.Background(), w.snap(), false); err != nil {
			t.Fatal(err)
		}
		ct.Flows = slices.Clone(flows)
		if _, err := p.ReconcileConntrack(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ct.Flows, wantLeft) {
			t.Errorf("%s: left %v, want %v", name, ct.Flows, wantLeft)
		}
	}
	a := ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.2", 53)
	b := ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.3", 53)
	b2 := ctFlow("10.244.0.9", "10.96.0.53", 80, "10.244.1.3", 5353)
	np := ctFlow("192.168.100.2", "192.168.100.1", 30053, "10.244.1.9", 53)
	w.tr.OnEndpointSliceUpdate(nil, makeSlice("dns", 53, udp, ep{ip: "10.244.1.3"}))
	step("endpoint replaced", []conntrack.Flow{a, b, np}, []conntrack.Flow{b})
	w.tr.OnEndpointSliceUpdate(nil, makeSlice("dns", 5353, udp, ep{ip: "10.244.1.3"}))
	step("target port changed", []conntrack.Flow{b, b2}, []conntrack.Flow{b2})
	svc2 := svc.DeepCopy()
	svc2.Spec.Type = v1.ServiceTypeClusterIP
	svc2.Spec.Ports[0].NodePort = 0
	w.tr.OnServiceUpdate(svc, svc2)
	// The NodePort went away with the change: its entries go, even to a
	// serving endpoint, as with a removed service.
	np2 := ctFlow("192.168.100.2", "192.168.100.1", 30053, "10.244.1.3", 5353)
	step("NodePort removed", []conntrack.Flow{b2, np2}, []conntrack.Flow{b2})
}

func TestDumpDecodesElements(t *testing.T) {
	p, _, _ := newFake(t, nil)
	w := newWorld(t)
	w.service(makeService("web", clusterIP("10.96.0.10")), makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	s, err := p.Dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.96.0.10 . tcp . 80 : goto dnat-1", "10.96.0.10 . tcp . 80 . 0 : 10.244.0.2 . 8080"} {
		if !strings.Contains(s, want) {
			t.Errorf("dump lacks %q:\n%s", want, s)
		}
	}
}

func TestMetrics(t *testing.T) {
	m := metrics.New(nil)
	cfg := Config{ClusterCIDRs: clusterCIDRs, Logger: slog.New(slog.DiscardHandler)}
	p, k, err := NewFake(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	w.service(makeService("web", clusterIP("10.96.0.10")), makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.1.2", node: "node-b"}))
	if err := p.Sync(context.Background(), w.snap(), true); err != nil {
		t.Fatal(err)
	}
	k.FailNext(errors.New("injected"))
	if err := p.Sync(context.Background(), w.snap(), false); err == nil {
		t.Fatal("sync did not fail")
	}
	// The runner counts sync failures for every data plane; nftables adds its own.
	for name, c := range map[string]prometheus.Metric{
		"nftables sync failures": m.NFTablesSyncFailuresTotal, "transaction failures": m.IPTablesRestoreFailuresTotal,
	} {
		if got := value(c); got != 1 {
			t.Errorf("%s = %v, want 1", name, got)
		}
	}
	if got := value(m.SyncFailuresTotal); got != 0 {
		t.Errorf("sync failures = %v, want 0 (the runner's to count)", got)
	}
}

func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// Like kube-proxy, a load balancer VIP is an allowed source of its own traffic
// when a source range covers the node (a VIP bound on the node is reached from
// the node with the VIP as source). That depends on the node's addresses, so
// a change of them alone, with no service changed, rewrites the elements.
func TestSourceRangesFollowNodeAddresses(t *testing.T) {
	ctx := context.Background()
	p, _, _ := newFake(t, nil)
	w := newWorld(t)
	w.service(makeService("lb", combine(clusterIP("10.96.0.30"), nodePort(30090, false), func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/28"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.201.1"}}
	})), makeSlice("lb", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.6"}))
	fromVIP := flow{name: "from the VIP", src: "192.168.201.1", dst: "192.168.201.1", port: 80, fromNode: true}
	setNode := func(addrs ...string) {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}
		for _, a := range addrs {
			n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
		}
		w.tr.OnNodeUpdate(nil, n)
	}
	steps := []struct {
		name  string
		addrs []string
		full  bool
		want  string
	}{
		{"no node address in a range", []string{"192.168.100.100"}, true, "DROP"},
		{"the node's address moves into the range", []string{"192.168.100.1"}, false, "10.244.0.6:8080"},
		{"and out again", []string{"192.168.100.100"}, false, "DROP"},
	}
	for _, st := range steps {
		setNode(st.addrs...)
		snap := w.snap()
		if !st.full && len(snap.Changed) != 0 {
			t.Fatalf("%s: %d ports changed, want none (only the node)", st.name, len(snap.Changed))
		}
		if err := p.Sync(ctx, snap, st.full); err != nil {
			t.Fatal(err)
		}
		fromVIP.name, fromVIP.want, fromVIP.masq = st.name, st.want, true
		checkFlows(t, p, []flow{fromVIP})
	}
}

// blockingReader is the fake kernel with reads that wait until released.
type blockingReader struct {
	kernel
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *blockingReader) Read(ctx context.Context, f family, elements bool) (*Table, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	return b.kernel.Read(ctx, f, elements)
}

// Trace and the debug endpoints read the tables back, which is slow at scale;
// syncs must not wait for them.
func TestSyncsGoOnDuringReads(t *testing.T) {
	ctx := context.Background()
	p, k, _ := newFake(t, nil)
	br := &blockingReader{kernel: k, entered: make(chan struct{}), release: make(chan struct{})}
	p.newReader = func() (kernel, error) { return br, nil }
	w := newWorld(t)
	w.service(makeService("web", clusterIP("10.96.0.10")), makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.2"}))
	if err := p.Sync(ctx, w.snap(), true); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := p.States(ctx)
		read <- err
	}()
	<-br.entered
	w.service(makeService("db", clusterIP("10.96.0.11")), makeSlice("db", 5432, v1.ProtocolTCP, ep{ip: "10.244.0.3"}))
	synced := make(chan error, 1)
	go func() { synced <- p.Sync(ctx, w.snap(), false) }()
	select {
	case err := <-synced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(br.release)
		t.Fatal("a sync waited for a read of the tables")
	}
	close(br.release)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	checkFlows(t, p, []flow{{name: "the service synced during the read", src: "10.244.0.9", dst: "10.96.0.11", port: 80, want: "10.244.0.3:5432"}})
}
