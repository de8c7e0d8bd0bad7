package socketlb

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/cgroups"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// IP plan (netnstest): node bridge 10.244.0.1 / fd00:10:244::1, pods
// 10.244.0.2.. / fd00:10:244::2.. (the last pod of a bed is the client and
// serves nothing); services 10.96.0.0/16 and fd00:10:96::/112; external IPs
// 192.168.200.0/24; NodePorts 30000-32767 on the node's addresses.

const testNode = "node-a"

func TestMain(m *testing.M) {
	lbtest.ClientMain()
	os.Exit(m.Run())
}

type bed struct {
	t      *testing.T
	node   *netnstest.Node
	pods   []*netnstest.Pod
	client *netnstest.Pod
	sb     *lbtest.Sandbox
	p      *Proxier
	nft    *nftables.Proxier
	tr     *model.Tracker
}

// newBed makes a node with npods serving pods (TCP and UDP 8080) and one
// client pod, a test cgroup, and the socket LB attached to it. withNFT also
// runs the nftables data plane in the node, as kproxy does.
func newBed(t *testing.T, npods int, withNFT bool) *bed {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "bridge", "sysctl")
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	if _, err := cgroups.V2Root(); err != nil {
		testenv.Unavailable(t, "no cgroup v2: %v", err)
	}
	b := &bed{t: t, node: netnstest.NewNode(t)}
	for i := 0; i < npods; i++ {
		pod := b.node.AddPod(t, "pod"+string(rune('a'+i)))
		pod.Serve(t, pod.PodName, 8080)
		b.pods = append(b.pods, pod)
	}
	b.client = b.node.AddPod(t, "client")
	b.sb = lbtest.New(t)
	b.tr = model.NewTracker(testNode, nil)
	b.tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	b.tr.OnServicesSynced()
	b.tr.OnEndpointSlicesSynced()
	b.tr.OnNodeSynced()
	b.p = b.open()
	if withNFT {
		nft, err := nftables.New(nftables.Config{
			TableName:    "kproxy",
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")},
			NetNSPath:    b.node.Path(),
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nft.Close() })
		b.nft = nft
	}
	return b
}

func (b *bed) open() *Proxier {
	b.t.Helper()
	p, err := New(Config{
		CgroupPath: b.sb.Cgroup,
		PinDir:     b.sb.PinDir,
		NodeAddrs:  func() ([]netip.Addr, error) { return b.node.Addrs(), nil },
	}, NewMetrics(nil))
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { p.Close() })
	return p
}

func (b *bed) sync() {
	b.t.Helper()
	snap := b.tr.Snapshot()
	if b.nft != nil {
		if err := b.nft.Sync(context.Background(), snap, true); err != nil {
			b.t.Fatalf("nftables sync: %v", err)
		}
	}
	if err := b.p.Sync(context.Background(), snap, false); err != nil {
		b.t.Fatalf("socket LB sync: %v", err)
	}
}

func (b *bed) service(svc *v1.Service, slices ...*discovery.EndpointSlice) {
	b.tr.OnServiceAdd(svc)
	for _, s := range slices {
		b.tr.OnEndpointSliceAdd(s)
	}
	b.sync()
}

// endpoints replaces a service's slice of one family.
func (b *bed) endpoints(old, s *discovery.EndpointSlice) {
	b.tr.OnEndpointSliceUpdate(old, s)
	b.sync()
}

func (b *bed) request(ns *netnstest.NS, mode string, dst netip.AddrPort) lbtest.Result {
	b.t.Helper()
	name := ""
	if ns != nil {
		name = ns.Name
	}
	r, err := b.sb.Client(name, mode, dst)
	if err != nil {
		b.t.Fatal(err)
	}
	return r
}

// ep is one endpoint: a pod (by index), and the node it runs on ("" is this node).
type ep struct {
	pod         int
	node        string
	terminating bool
}

func (b *bed) slice(svc string, fam v1.IPFamily, port int32, proto v1.Protocol, eps ...ep) *discovery.EndpointSlice {
	at := discovery.AddressTypeIPv4
	if fam == v1.IPv6Protocol {
		at = discovery.AddressTypeIPv6
	}
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-" + string(at),
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: at,
		Ports:       []discovery.EndpointPort{{Name: ptr("p"), Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		addr := b.pods[e.pod].V4
		if fam == v1.IPv6Protocol {
			addr = b.pods[e.pod].V6
		}
		node := e.node
		if node == "" {
			node = testNode
		}
		ready, serving, term := !e.terminating, true, e.terminating
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{addr.String()},
			NodeName:   &node,
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term},
		})
	}
	return s
}

func ptr[T any](v T) *T { return &v }

// makeService is a dual-stack ClusterIP service, port 80 → 8080, both protocols
// are set by the caller through mod.
func makeService(name, v4, v6 string, proto v1.Protocol, mod func(*v1.Service)) *v1.Service {
	pol := v1.IPFamilyPolicyRequireDualStack
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:           v1.ServiceTypeClusterIP,
			ClusterIP:      v4,
			ClusterIPs:     []string{v4, v6},
			IPFamilies:     []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol},
			IPFamilyPolicy: &pol,
			Ports:          []v1.ServicePort{{Name: "p", Port: 80, Protocol: proto, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if mod != nil {
		mod(svc)
	}
	return svc
}

// serveDNS answers A queries for x.example. with 192.0.2.7 on UDP port 53 of
// the namespace.
func serveDNS(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	var srv *dns.Server
	err := ns.Do(func() error {
		pc, err := listenUDP("[::]:53")
		if err != nil {
			return err
		}
		srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
				rr, _ := dns.NewRR(r.Question[0].Name + " 5 IN A 192.0.2.7")
				m.Answer = append(m.Answer, rr)
			}
			_ = w.WriteMsg(m)
		})}
		go func() { _ = srv.ActivateAndServe() }()
		return nil
	})
	if err != nil {
		t.Fatalf("dns server in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
}

func testenvCommand(t *testing.T, names ...string) {
	t.Helper()
	testenv.RequireCommand(t, names...)
}
