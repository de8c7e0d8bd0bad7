package trace

// Does `kproxy trace` agree with where real packets go? The nftables data plane
// programs a real node namespace, the trace reads its tables back from the
// kernel, and real TCP connections from pods, the node and an outside client
// show where packets actually went and which source the endpoint saw.
//
// IP plan (netnstest's): node bridge 10.244.0.1, pods a/b/c at 10.244.0.2-4
// (all on this node, "node-a"), the uplink 192.168.100.1 with the client at
// 192.168.100.2; services in 10.96.0.0/16; load balancer IPs in
// 192.168.200.0/24 (the client routes it through the node).

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/testenv"
)

func TestTraceAgreesWithKernel(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "bridge", "sysctl")
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	ctx := context.Background()
	node := netnstest.NewNode(t)
	pods := []*netnstest.Pod{node.AddPod(t, "a"), node.AddPod(t, "b"), node.AddPod(t, "c")}
	client := node.AddClient(t)
	byIP := map[netip.Addr]string{}
	for _, p := range pods {
		p.Serve(t, p.PodName, 8080)
		byIP[p.V4], byIP[p.V6] = p.PodName, p.PodName
	}
	a, b, c := pods[0].V4.String(), pods[1].V4.String(), pods[2].V4.String()
	a6, b6 := pods[0].V6.String(), pods[1].V6.String()

	tr := model.NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: node.UplinkV4.String()},
			{Type: v1.NodeInternalIP, Address: node.BridgeV4.String()},
			{Type: v1.NodeInternalIP, Address: node.UplinkV6.String()},
			{Type: v1.NodeInternalIP, Address: node.BridgeV6.String()},
		}},
	})
	for _, s := range []*v1.Service{
		makeTestService("web", "10.96.0.10", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		}),
		makeTestService("dns", "10.96.0.15", func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}}
		}),
		makeTestService("sticky", "10.96.0.11", func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}),
		makeTestService("empty", "10.96.0.12", nil),
		makeTestService("lb-local", "10.96.0.13", lb("192.168.200.1", 30081, true, 32001)),
		// Load balancer VIPs also bound on the node (below): the node reaches
		// them from the VIP itself. The first one's source range covers the
		// node, the second one's does not.
		makeTestService("lb-ranges-node", "10.96.0.17", func(s *v1.Service) {
			lb("192.168.200.3", 30083, false, 0)(s)
			s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/24"}
		}),
		makeTestService("lb-ranges-other", "10.96.0.18", func(s *v1.Service) {
			lb("192.168.200.4", 30084, false, 0)(s)
			s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
		}),
		// Both traffic policies Local, the only endpoint (said to be) elsewhere.
		makeTestService("lb-all-local", "10.96.0.19", func(s *v1.Service) {
			lb("192.168.200.5", 30085, true, 32002)(s)
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		// Dual-stack with IPv4 endpoints only: its IPv6 address has none.
		makeTestService("dual-v4", "10.96.0.16", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.16", "fd00:10:96::16"}
		}),
		makeTestService("lb-ranges", "10.96.0.14", func(s *v1.Service) {
			lb("192.168.200.2", 30082, false, 0)(s)
			s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8"}
		}),
	} {
		tr.OnServiceAdd(s)
	}
	slice := func(svc string, eps ...testEP) *discovery.EndpointSlice {
		return makeTestSlice(svc, svc+"-1", "http", v1.ProtocolTCP, 8080, eps...)
	}
	for _, s := range []*discovery.EndpointSlice{
		slice("web", up(a, "node-a"), up(b, "node-a"), testEP{ip: c, node: "node-a"}),
		makeTestSlice("web", "web-6", "http", v1.ProtocolTCP, 8080, up(a6, "node-a"), up(b6, "node-a")),
		makeTestSlice("dns", "dns-1", "dns", v1.ProtocolUDP, 8080, up(a, "node-a"), up(c, "node-a")),
		slice("sticky", up(a, "node-a"), up(b, "node-a"), up(c, "node-a")),
		// lb-local's only endpoint is (said to be) on another node.
		slice("lb-local", up(c, "node-b")),
		slice("lb-ranges", up(c, "node-a")),
		slice("dual-v4", up(a, "node-a")),
		slice("lb-all-local", up(c, "node-b")),
		slice("lb-ranges-node", up(b, "node-a")),
		slice("lb-ranges-other", up(b, "node-a")),
	} {
		tr.OnEndpointSliceAdd(s)
	}
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	snap := tr.Snapshot()

	for _, vip := range []string{"192.168.200.3/32", "192.168.200.4/32"} {
		node.MustExec("ip", "addr", "add", vip, "dev", "lo")
	}

	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
	p, err := nftables.New(nftables.Config{
		NetNSPath: node.Path(), ClusterCIDRs: cidrs,
		Logger: slog.New(slog.DiscardHandler),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if err := p.Sync(ctx, snap, true); err != nil {
		t.Fatal(err)
	}
	opts := Options{ClusterCIDRs: cidrs, NodeAddresses: node.Addrs(), Kernel: NFTables(p)}

	// from names the namespace a source address lives in.
	from := func(src string) (*netnstest.NS, netip.Addr) {
		ip := netip.MustParseAddr(src)
		for _, p := range pods {
			if p.V4 == ip || p.V6 == ip {
				return p.NS, ip
			}
		}
		if ip == client.V4 || ip == client.V6 {
			return client.NS, ip
		}
		return node.NS, ip
	}

	tests := []struct {
		name     string
		src, dst string
		want     Verdict
		proto    string // "tcp" unless set
	}{
		{name: "UDP: pod to cluster IP", src: "10.244.0.3", dst: "10.96.0.15:53", want: VerdictDNAT, proto: "udp"},
		{name: "IPv6: pod to cluster IP", src: "fd00:10:244::4", dst: "[fd00:10:96::10]:80", want: VerdictDNAT},
		{name: "IPv6: hairpin", src: a6, dst: "[fd00:10:96::10]:80", want: VerdictDNAT},
		{name: "IPv6: client to NodePort", src: "fd00:100::2", dst: "[fd00:100::1]:30080", want: VerdictDNAT},
		{name: "IPv6: unserved cluster IP port", src: "fd00:10:244::4", dst: "[fd00:10:96::10]:81", want: VerdictReject},
		{name: "pod to cluster IP: ready endpoints, source kept", src: "10.244.0.4", dst: "10.96.0.10:80", want: VerdictDNAT},
		{name: "hairpin: pod a through its own service", src: a, dst: "10.96.0.10:80", want: VerdictDNAT},
		{name: "node to cluster IP: masqueraded", src: "192.168.100.1", dst: "10.96.0.10:80", want: VerdictDNAT},
		{name: "client to NodePort: masqueraded", src: "192.168.100.2", dst: "192.168.100.1:30080", want: VerdictDNAT},
		{name: "affinity: one endpoint per client", src: "10.244.0.4", dst: "10.96.0.11:80", want: VerdictDNAT},
		{name: "no endpoints: rejected", src: "10.244.0.4", dst: "10.96.0.12:80", want: VerdictReject},
		{name: "unserved cluster IP port: rejected", src: "10.244.0.4", dst: "10.96.0.10:81", want: VerdictReject},
		{name: "ETP Local without local endpoints, from outside: dropped", src: "192.168.100.2", dst: "192.168.200.1:80", want: VerdictDrop},
		{name: "source range refuses the client: dropped", src: "192.168.100.2", dst: "192.168.200.2:80", want: VerdictDrop},
		{name: "source range allows pods: masqueraded", src: "10.244.0.2", dst: "192.168.200.2:80", want: VerdictDNAT},
		// Pod traffic to an ETP Local address is short-circuited to the
		// cluster endpoints (this node has no local one).
		{name: "ETP Local from a pod: short-circuited to the cluster endpoints", src: "10.244.0.2", dst: "192.168.200.1:80", want: VerdictDNAT},
		{name: "ETP and ITP Local from a pod: short-circuited to the cluster endpoints", src: "10.244.0.2", dst: "192.168.200.5:80", want: VerdictDNAT},
		{name: "ETP and ITP Local from outside, no local endpoint: dropped", src: "192.168.100.2", dst: "192.168.200.5:80", want: VerdictDrop},
		{name: "ETP Local NodePort from the node: short-circuited, masqueraded", src: "192.168.100.1", dst: "192.168.100.1:30081", want: VerdictDNAT},
		// From the node to a VIP bound on it, the source is the VIP: allowed
		// when a source range covers the node, as kube-proxy allows it.
		{name: "source range covering the node allows the VIP as source", src: "192.168.200.3", dst: "192.168.200.3:80", want: VerdictDNAT},
		{name: "source range not covering the node: the VIP as source is dropped", src: "192.168.200.4", dst: "192.168.200.4:80", want: VerdictDrop},
		// Each family on its own: IPv4 endpoints do not make the IPv6 address
		// served; with none of its family it rejects, as kube-proxy's IPv6 proxier does.
		{name: "dual-stack, IPv4 endpoints only: IPv4 served", src: "10.244.0.3", dst: "10.96.0.16:80", want: VerdictDNAT},
		{name: "dual-stack, IPv4 endpoints only: IPv6 rejected", src: b6, dst: "[fd00:10:96::16]:80", want: VerdictReject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proto := tt.proto
			if proto == "" {
				proto = "tcp"
			}
			pkt, err := ParsePacket(tt.src, tt.dst, proto)
			if err != nil {
				t.Fatal(err)
			}
			r := Trace(ctx, snap, opts, pkt)
			if len(r.Disagreements) > 0 {
				t.Errorf("the kernel's rules disagree with the model: %q", r.Disagreements)
			}
			if r.Verdict != tt.want {
				t.Fatalf("trace says %s (%s), the test expects %s", r.Verdict, r.Reason, tt.want)
			}
			if r.Kernel == nil {
				t.Fatal("no kernel answer")
			}
			// Real packets must go where the kernel's answer says.
			kp := r.Kernel
			ns, srcIP := from(tt.src)
			dst := netip.MustParseAddrPort(tt.dst)
			switch kp.Verdict {
			case VerdictDrop:
				_, err := ns.Request(proto, dst, 0, time.Second)
				if !netnstest.IsTimeout(err) {
					t.Fatalf("trace says drop; the connection got %v", err)
				}
				return
			case VerdictReject:
				_, err := ns.Request(proto, dst, 0, 2*time.Second)
				if !netnstest.IsRefused(err) {
					t.Fatalf("trace says reject; the connection got %v", err)
				}
				return
			case VerdictNone:
				t.Fatalf("the kernel's rules do not match the packet: %q", kp.Rules)
			}
			traced := map[string]KernelEndpoint{}
			for _, ep := range kp.Endpoints {
				traced[byIP[ep.Address.Addr()]] = ep
			}
			reached := map[string]bool{}
			for i := range 10 * len(kp.Endpoints) {
				rep, err := ns.Request(proto, dst, 0, 2*time.Second)
				if err != nil {
					t.Fatalf("connection %d: %v (trace: %s)", i, err, r.Reason)
				}
				ep, ok := traced[rep.Name]
				if !ok {
					t.Fatalf("reached %s, not one of the traced endpoints %v", rep.Name, keys(traced))
				}
				reached[rep.Name] = true
				masqueraded := rep.Peer.Addr() != srcIP
				if want := kp.Masquerade || ep.Masquerade; masqueraded != want {
					t.Errorf("to %s the endpoint saw %s: masquerade %v, trace says %v (%s)",
						rep.Name, rep.Peer.Addr(), masqueraded, want, r.MasqueradeReason)
				}
			}
			switch {
			case kp.AffinityTimeoutSeconds > 0:
				if len(reached) != 1 {
					t.Errorf("affinity: reached %v, want one endpoint", keys(reached))
				}
			case len(reached) != len(traced):
				// 10n tries miss one of n ≤ 3 endpoints with probability < 2e-5.
				t.Errorf("reached %v, the trace says %v", keys(reached), keys(traced))
			}
		})
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
