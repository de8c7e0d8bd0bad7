package nftables

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// UDP flows that outlive their endpoint, with real packets, on two nodes as
// in a cluster (the client's node does the DNAT, the endpoints live on the
// other node).
//
// IP plan:
//
//	node-a netns  bridge 10.244.0.1/24, n2n 192.168.10.1/24, uplink 192.168.100.1/24
//	node-b netns  bridge 10.244.1.1/24, n2n 192.168.10.2/24
//	node-a pods   a1 10.244.0.2 (the client), a2 .3, a3 .4 (local endpoints)
//	node-b pods   b1 10.244.1.2, b2 10.244.1.3 (endpoints; ports 8080 and 9090)
//	client        192.168.100.2 (outside the cluster, on node-a's uplink)
//	services      10.96.0.0/16; NodePorts 30000-32767
//
// Every pod answers on 8080 with its name and on 9090 with "<name>-9090".
// A flow sends from one source port every udpEvery; a scenario repeats a
// replacement udpReps times and counts the repetitions in which the flow
// reached the new endpoint within udpMove.

const (
	udpReps  = 20
	udpEvery = 100 * time.Millisecond
	udpMove  = 10 * time.Second
)

type twoNodeBed struct {
	t            *testing.T
	a, b         *netnstest.Node
	client       *netnstest.Client
	podsA, podsB []*netnstest.Pod
	trackers     [2]*model.Tracker
	proxiers     [2]*Proxier
	cfgs         [2]Config
	linkA, linkB netip.Addr
	nodeNames    [2]string
	slices       map[string]*discovery.EndpointSlice
	services     map[string]*v1.Service
}

func newTwoNodeBed(t *testing.T) *twoNodeBed { return newTwoNodeBedWith(t, nil) }

// newTwoNodeBedWith builds the bed; setup runs on each node's namespace and
// configuration before its kproxy starts.
func newTwoNodeBedWith(t *testing.T, setup func(i int, n *netnstest.Node, c *Config)) *twoNodeBed {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "bridge", "sysctl")
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	b := &twoNodeBed{t: t, slices: map[string]*discovery.EndpointSlice{}, services: map[string]*v1.Service{},
		nodeNames: [2]string{"node-a", "node-b"}}
	b.a, b.b = netnstest.NewNodeIndex(t, 0), netnstest.NewNodeIndex(t, 1)
	b.client = b.a.AddClient(t)
	b.linkA, b.linkB = netnstest.LinkNodes(t, b.a, b.b)
	b.client.MustExec("ip", "route", "add", "192.168.10.0/24", "via", "192.168.100.1")
	for i, name := range []string{"a1", "a2", "a3"} {
		p := b.a.AddPod(t, name)
		if i > 0 {
			p.Serve(t, name, 8080)
			p.Serve(t, name+"-9090", 9090)
		}
		b.podsA = append(b.podsA, p)
	}
	for _, name := range []string{"b1", "b2"} {
		p := b.b.AddPod(t, name)
		p.Serve(t, name, 8080)
		p.Serve(t, name+"-9090", 9090)
		b.podsB = append(b.podsB, p)
	}
	for i, n := range []*netnstest.Node{b.a, b.b} {
		tr := model.NewTracker(b.nodeNames[i], nil)
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: b.nodeNames[i]}}
		node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: []netip.Addr{b.linkA, b.linkB}[i].String()}}
		tr.OnNodeAdd(node)
		tr.OnServicesSynced()
		tr.OnEndpointSlicesSynced()
		tr.OnNodeSynced()
		b.trackers[i] = tr
		b.cfgs[i] = Config{
			TableName:    "kproxy",
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			IPFamilies:   []v1.IPFamily{v1.IPv4Protocol},
			NetNSPath:    n.Path(),
			// Passes at most every 250 ms instead of every second keep
			// the 20 repetitions of each scenario short.
			ConntrackInterval: 250 * time.Millisecond,
		}
		if setup != nil {
			setup(i, n, &b.cfgs[i])
		}
		b.startProxier(i)
	}
	return b
}

func (b *twoNodeBed) startProxier(i int) {
	b.t.Helper()
	p, err := New(b.cfgs[i], nil)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { p.Close() })
	b.proxiers[i] = p
	if err := p.Sync(context.Background(), b.trackers[i].Snapshot(), true); err != nil {
		b.t.Fatalf("%s: first sync: %v", b.nodeNames[i], err)
	}
}

// sync hands the changes to both nodes' proxiers (skipping a stopped one).
func (b *twoNodeBed) sync() {
	b.t.Helper()
	for i, p := range b.proxiers {
		if p == nil {
			continue
		}
		if err := p.Sync(context.Background(), b.trackers[i].Snapshot(), false); err != nil {
			b.t.Fatalf("%s: sync: %v", b.nodeNames[i], err)
		}
	}
}

func (b *twoNodeBed) addService(svc *v1.Service) {
	for _, tr := range b.trackers {
		tr.OnServiceAdd(svc.DeepCopy())
	}
	b.services[svc.Name] = svc
	b.sync()
}

// backend is one endpoint of a scenario: a pod, the port it is used on, and
// its conditions.
type backend struct {
	pod         *netnstest.Pod
	node        string
	port        int32
	notReady    bool
	terminating bool
}

func (e backend) name() string {
	if e.port == 9090 {
		return e.pod.PodName + "-9090"
	}
	return e.pod.PodName
}

// setEndpoints replaces the service's endpoints (one slice) and syncs.
func (b *twoNodeBed) setEndpoints(svc string, eps ...backend) {
	b.t.Helper()
	port := int32(8080)
	if len(eps) > 0 {
		port = eps[0].port
	}
	proto := v1.ProtocolUDP
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-1",
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr("p"), Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		ready, serving, term := !e.notReady && !e.terminating, !e.notReady, e.terminating
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.pod.V4.String()},
			NodeName:   ptr(e.node),
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term},
		})
	}
	old := b.slices[svc]
	for _, tr := range b.trackers {
		if old == nil {
			tr.OnEndpointSliceAdd(s.DeepCopy())
		} else {
			tr.OnEndpointSliceUpdate(old.DeepCopy(), s.DeepCopy())
		}
	}
	b.slices[svc] = s
	b.sync()
}

func udpService(name, ip string, mods ...func(*v1.Service)) *v1.Service {
	return makeService(name, combine(append([]func(*v1.Service){clusterIP(ip), func(s *v1.Service) {
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
	}}, mods...)...))
}

// rollingScenario replaces the endpoint a flow uses, reps times, alternating
// between two backends: in even repetitions with a moment without endpoints
// (old one terminating, then none, then the new one not ready, then ready),
// in odd ones as a surge (the new one added, the old one terminating, then
// removed). fixed endpoints stay throughout. It returns how many
// repetitions moved the flow to the new endpoint within udpMove.
func rollingScenario(t *testing.T, b *twoNodeBed, svc string, flow *netnstest.UDPFlow, pair [2]backend, fixed []backend, reps int) int {
	t.Helper()
	with := func(eps ...backend) []backend { return append(slices.Clone(fixed), eps...) }
	b.setEndpoints(svc, with(pair[0])...)
	if _, err := flow.WaitFor(pair[0].name(), udpMove); err != nil {
		t.Fatalf("before the first replacement: %v", err)
	}
	ok := 0
	var took []time.Duration
	for i := range reps {
		cur, next := pair[i%2], pair[(i+1)%2]
		curTerm, nextNotReady := cur, next
		curTerm.terminating, nextNotReady.notReady = true, true
		if i%2 == 0 {
			b.setEndpoints(svc, with(curTerm)...)
			b.setEndpoints(svc, fixed...)
			time.Sleep(3 * udpEvery) // datagrams sent while the port has no endpoints
			b.setEndpoints(svc, with(nextNotReady)...)
			b.setEndpoints(svc, with(next)...)
		} else {
			b.setEndpoints(svc, with(cur, nextNotReady)...)
			b.setEndpoints(svc, with(cur, next)...)
			b.setEndpoints(svc, with(curTerm, next)...)
			b.setEndpoints(svc, with(next)...)
		}
		d, err := flow.WaitFor(next.name(), udpMove)
		if err != nil {
			t.Errorf("repetition %d (%s → %s): %v", i+1, cur.name(), next.name(), err)
			continue
		}
		ok++
		took = append(took, d)
	}
	slices.Sort(took)
	med := time.Duration(0)
	if len(took) > 0 {
		med = took[len(took)/2]
	}
	t.Logf("%d of %d repetitions moved the flow (median %v after the last change, max %v)", ok, reps, med.Round(time.Millisecond), slices.Max(append(took, 0)).Round(time.Millisecond))
	return ok
}

func TestKernelUDPRollingClusterIP(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53"))
	flow := b.podsA[0].StartUDPFlow(t, 40053, ap("10.96.0.53:80"), udpEvery)
	pair := [2]backend{{pod: b.podsB[0], node: "node-b", port: 8080}, {pod: b.podsB[1], node: "node-b", port: 8080}}
	if n := rollingScenario(t, b, "dns", flow, pair, nil, udpReps); n != udpReps {
		t.Errorf("%d of %d repetitions moved the flow, want all", n, udpReps)
	}
}

func TestKernelUDPRollingNodePort(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53", nodePort(30053, false)))
	flow := b.client.StartUDPFlow(t, 40053, ap("192.168.100.1:30053"), udpEvery)
	pair := [2]backend{{pod: b.podsB[0], node: "node-b", port: 8080}, {pod: b.podsB[1], node: "node-b", port: 8080}}
	if n := rollingScenario(t, b, "dns", flow, pair, nil, udpReps); n != udpReps {
		t.Errorf("%d of %d repetitions moved the flow, want all", n, udpReps)
	}
}

// With internalTrafficPolicy Local a pod reaches only its own node's
// endpoints, so the replaced ones sit on the client's node; node-b's endpoint
// must never be used.
func TestKernelUDPRollingInternalLocal(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53", func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
	}))
	flow := b.podsA[0].StartUDPFlow(t, 40053, ap("10.96.0.53:80"), udpEvery)
	pair := [2]backend{{pod: b.podsA[1], node: "node-a", port: 8080}, {pod: b.podsA[2], node: "node-a", port: 8080}}
	fixed := []backend{{pod: b.podsB[0], node: "node-b", port: 8080}}
	if n := rollingScenario(t, b, "dns", flow, pair, fixed, udpReps); n != udpReps {
		t.Errorf("%d of %d repetitions moved the flow, want all", n, udpReps)
	}
	if n := flow.Answers()["b1"]; n != 0 {
		t.Errorf("node-b's endpoint answered %d times, want never (internalTrafficPolicy Local)", n)
	}
}

// A hostNetwork client: the node itself sends, through the output hook.
func TestKernelUDPRollingHostNetwork(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53"))
	flow := b.a.StartUDPFlow(t, 40053, ap("10.96.0.53:80"), udpEvery)
	pair := [2]backend{{pod: b.podsB[0], node: "node-b", port: 8080}, {pod: b.podsB[1], node: "node-b", port: 8080}}
	if n := rollingScenario(t, b, "dns", flow, pair, nil, udpReps); n != udpReps {
		t.Errorf("%d of %d repetitions moved the flow, want all", n, udpReps)
	}
}

// targetPortScenario flips the service's target port (the endpoints'
// port) between 8080 and 9090 on the same pod, reps times.
func targetPortScenario(t *testing.T, b *twoNodeBed, flow *netnstest.UDPFlow, reps int) int {
	t.Helper()
	ports := [2]int32{8080, 9090}
	ep := backend{pod: b.podsB[0], node: "node-b", port: ports[0]}
	b.setEndpoints("dns", ep)
	if _, err := flow.WaitFor(ep.name(), udpMove); err != nil {
		t.Fatalf("before the first change: %v", err)
	}
	ok := 0
	for i := range reps {
		svc := b.services["dns"]
		next := svc.DeepCopy()
		next.Spec.Ports[0].TargetPort.IntVal = ports[(i+1)%2]
		for _, tr := range b.trackers {
			tr.OnServiceUpdate(svc.DeepCopy(), next.DeepCopy())
		}
		b.services["dns"] = next
		b.sync()
		ep.port = ports[(i+1)%2]
		b.setEndpoints("dns", ep)
		if _, err := flow.WaitFor(ep.name(), udpMove); err != nil {
			t.Errorf("repetition %d (to port %d): %v", i+1, ep.port, err)
			continue
		}
		ok++
	}
	t.Logf("%d of %d target port changes moved the flow", ok, reps)
	return ok
}

func TestKernelUDPTargetPortClusterIP(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53"))
	flow := b.podsA[0].StartUDPFlow(t, 40053, ap("10.96.0.53:80"), udpEvery)
	if n := targetPortScenario(t, b, flow, udpReps); n != udpReps {
		t.Errorf("%d of %d target port changes moved the flow, want all", n, udpReps)
	}
}

func TestKernelUDPTargetPortNodePort(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53", nodePort(30053, false)))
	flow := b.client.StartUDPFlow(t, 40053, ap("192.168.100.1:30053"), udpEvery)
	if n := targetPortScenario(t, b, flow, udpReps); n != udpReps {
		t.Errorf("%d of %d target port changes moved the flow, want all", n, udpReps)
	}
}

// The endpoint is replaced while the client's node runs no kproxy (a
// restart, an upgrade, a switch from another proxy): the kproxy that starts
// finds the entry pinned to the old endpoint and must delete it, although
// no change it saw removed that endpoint.
func TestKernelUDPReplacedWhileStopped(t *testing.T) {
	b := newTwoNodeBed(t)
	b.addService(udpService("dns", "10.96.0.53"))
	flow := b.podsA[0].StartUDPFlow(t, 40053, ap("10.96.0.53:80"), udpEvery)
	pair := [2]backend{{pod: b.podsB[0], node: "node-b", port: 8080}, {pod: b.podsB[1], node: "node-b", port: 8080}}
	b.setEndpoints("dns", pair[0])
	if _, err := flow.WaitFor(pair[0].name(), udpMove); err != nil {
		t.Fatal(err)
	}
	const reps = 5
	ok := 0
	for i := range reps {
		cur, next := pair[i%2], pair[(i+1)%2]
		flow.Reset()
		b.proxiers[0].Close()
		b.proxiers[0] = nil
		b.setEndpoints("dns", next)
		time.Sleep(3 * udpEvery) // the flow keeps its entry to cur meanwhile
		if got := flow.Answers()[cur.name()]; got == 0 {
			t.Fatalf("repetition %d: no answer from %s while kproxy was stopped", i+1, cur.name())
		}
		b.startProxier(0)
		if _, err := flow.WaitFor(next.name(), udpMove); err != nil {
			// The flow is stuck: the next repetitions would start from
			// the wrong endpoint.
			t.Errorf("repetition %d (%s → %s): %v", i+1, cur.name(), next.name(), err)
			break
		}
		ok++
	}
	if ok != reps {
		t.Errorf("%d of %d restarts moved the flow, want all", ok, reps)
	}
}
