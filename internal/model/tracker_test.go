package model

// IP plan: services in 10.96.0.0/16 and fd00:10:96::/112, pods in 10.244.0.0/16 and
// fd00:10:244::/64; this node is "node-a" in zone "z1", the other node "node-b" in "z2".

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

func makeService(ns, name string, mutate func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

type ep struct {
	ip                          string
	node                        string
	ready, serving, terminating bool
	zoneHints                   []string
}

func makeSlice(ns, svc, name string, family discovery.AddressType, port int32, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: family,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, e := range eps {
		de := discovery.Endpoint{
			Addresses: []string{e.ip},
			Conditions: discovery.EndpointConditions{
				Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating),
			},
			NodeName: ptr.To(e.node),
		}
		if e.zoneHints != nil {
			de.Hints = &discovery.EndpointHints{}
			for _, z := range e.zoneHints {
				de.Hints.ForZones = append(de.Hints.ForZones, discovery.ForZone{Name: z})
			}
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

func ready(ip, node string) ep { return ep{ip: ip, node: node, ready: true, serving: true} }
func terminating(ip, node string) ep {
	return ep{ip: ip, node: node, serving: true, terminating: true}
}

func newSyncedTracker(t *testing.T) *Tracker {
	t.Helper()
	tr := NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "z1"}}})
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	if !tr.Synced() {
		t.Fatal("tracker not synced after all sources said so")
	}
	return tr
}

func ips(eps []*Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

var webHTTP = ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "web"}, Port: "http", Protocol: v1.ProtocolTCP}

func TestCategorize(t *testing.T) {
	tests := []struct {
		name        string
		svc         func(*v1.Service)
		eps         []ep
		eps6        []ep     // an IPv6 slice too: a dual-stack service
		wantCluster []string // nil: cluster set unused
		wantLocal   []string // nil: local set unused
		wantHasAny  bool
		wantHasAny6 bool // HasAnyOf(IPv6); HasAnyOf(IPv4) is checked against wantHasAny when there is no IPv6 slice
		wantHasAny4 bool // HasAnyOf(IPv4) with an IPv6 slice
	}{
		{
			name:        "ready endpoints only",
			eps:         []ep{ready("10.244.1.1", "node-a"), {ip: "10.244.1.2", node: "node-b"}, ready("10.244.1.3", "node-b")},
			wantCluster: []string{"10.244.1.1:8080", "10.244.1.3:8080"},
			wantHasAny:  true,
		},
		{
			name:        "terminating serving endpoints when none is ready",
			eps:         []ep{terminating("10.244.1.1", "node-a"), {ip: "10.244.1.2", node: "node-b", terminating: true}},
			wantCluster: []string{"10.244.1.1:8080"},
			wantHasAny:  true,
		},
		{
			name:        "no endpoints",
			wantCluster: []string{},
		},
		{
			name: "internal traffic policy Local uses only this node",
			svc: func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			},
			eps:        []ep{ready("10.244.1.1", "node-a"), ready("10.244.1.3", "node-b")},
			wantLocal:  []string{"10.244.1.1:8080"},
			wantHasAny: true,
		},
		{
			name: "external traffic policy Local on a NodePort keeps both sets",
			svc: func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			},
			eps:         []ep{ready("10.244.1.3", "node-b")},
			wantCluster: []string{"10.244.1.3:8080"},
			wantLocal:   []string{},
			wantHasAny:  true,
		},
		{
			// Pods and the node reach the NodePort through the cluster-wide
			// set (kube-proxy's short-circuit), whatever the internal policy.
			name: "both policies Local on a NodePort: the cluster set is kept",
			svc: func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			},
			eps:         []ep{ready("10.244.1.3", "node-b")},
			wantCluster: []string{"10.244.1.3:8080"},
			wantLocal:   []string{},
			wantHasAny:  true,
		},
		{
			name: "local terminating endpoints when no local ready one",
			svc: func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			},
			eps:        []ep{terminating("10.244.1.1", "node-a"), ready("10.244.1.3", "node-b")},
			wantLocal:  []string{"10.244.1.1:8080"},
			wantHasAny: true,
		},
		{
			name: "zone hints filter when every endpoint has them",
			eps: []ep{
				{ip: "10.244.1.1", node: "node-a", ready: true, serving: true, zoneHints: []string{"z1"}},
				{ip: "10.244.1.3", node: "node-b", ready: true, serving: true, zoneHints: []string{"z2"}},
			},
			wantCluster: []string{"10.244.1.1:8080"},
			wantHasAny:  true,
		},
		{
			name: "zone hints ignored when one endpoint lacks them",
			eps: []ep{
				{ip: "10.244.1.1", node: "node-a", ready: true, serving: true, zoneHints: []string{"z1"}},
				ready("10.244.1.3", "node-b"),
			},
			wantCluster: []string{"10.244.1.1:8080", "10.244.1.3:8080"},
			wantHasAny:  true,
		},
		{
			// kube-proxy's IPv6 proxier sees only IPv6 endpoints: it falls back
			// to the terminating one although IPv4 has a ready endpoint.
			name:        "dual-stack: each family falls back on its own",
			eps:         []ep{ready("10.244.1.1", "node-a")},
			eps6:        []ep{terminating("fd00:10:244::1", "node-b"), {ip: "fd00:10:244::2", node: "node-b"}},
			wantCluster: []string{"10.244.1.1:8080", "[fd00:10:244::1]:8080"},
			wantHasAny:  true, wantHasAny4: true, wantHasAny6: true,
		},
		{
			name:        "dual-stack: no usable IPv6 endpoint",
			eps:         []ep{ready("10.244.1.1", "node-a")},
			eps6:        []ep{{ip: "fd00:10:244::2", node: "node-b"}},
			wantCluster: []string{"10.244.1.1:8080"},
			wantHasAny:  true, wantHasAny4: true,
		},
		{
			name: "dual-stack, internal traffic policy Local: has-any per family",
			svc: func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			},
			eps:        []ep{{ip: "10.244.1.1", node: "node-a"}},
			eps6:       []ep{ready("fd00:10:244::1", "node-b"), terminating("fd00:10:244::3", "node-a")},
			wantLocal:  []string{"[fd00:10:244::3]:8080"},
			wantHasAny: true, wantHasAny6: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newSyncedTracker(t)
			tr.OnServiceAdd(makeService("ns", "web", tc.svc))
			tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, 8080, tc.eps...))
			if tc.eps6 != nil {
				tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-2", discovery.AddressTypeIPv6, 8080, tc.eps6...))
			}
			pv := tr.Snapshot().Ports[webHTTP]
			if pv == nil {
				t.Fatal("port missing from snapshot")
			}
			check := func(what string, got []*Endpoint, want []string) {
				t.Helper()
				if (got == nil) != (want == nil) || !slices.Equal(ips(got), want) {
					t.Errorf("%s = %v (nil %v), want %v (nil %v)", what, ips(got), got == nil, want, want == nil)
				}
			}
			check("Cluster", pv.Cluster, tc.wantCluster)
			check("Local", pv.Local, tc.wantLocal)
			if pv.HasAny != tc.wantHasAny {
				t.Errorf("HasAny = %v, want %v", pv.HasAny, tc.wantHasAny)
			}
			want4 := tc.wantHasAny
			if tc.eps6 != nil {
				want4 = tc.wantHasAny4
			}
			if got4, got6 := pv.HasAnyOf(v1.IPv4Protocol), pv.HasAnyOf(v1.IPv6Protocol); got4 != want4 || got6 != tc.wantHasAny6 {
				t.Errorf("HasAnyOf IPv4, IPv6 = %v, %v; want %v, %v", got4, got6, want4, tc.wantHasAny6)
			}
		})
	}
}

func TestSnapshotChanges(t *testing.T) {
	tr := newSyncedTracker(t)
	tr.Snapshot()

	svc := makeService("ns", "web", func(s *v1.Service) {
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::a"}
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})
	})
	tr.OnServiceAdd(svc)
	tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-v4", discovery.AddressTypeIPv4, 8080, ready("10.244.1.1", "node-a")))
	tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-v6", discovery.AddressTypeIPv6, 8080, ready("fd00:10:244::1", "node-a")))
	if s, e := tr.Pending(); s != 1 || e != 2 {
		t.Fatalf("pending = %d services, %d endpoints; want 1, 2", s, e)
	}
	snap := tr.Snapshot()
	dnsPort := ServicePortName{NamespacedName: webHTTP.NamespacedName, Port: "dns", Protocol: v1.ProtocolUDP}
	if _, ok := snap.Changed[webHTTP]; !ok || len(snap.Changed) != 2 {
		t.Fatalf("changed = %v, want both ports of ns/web", snap.Changed)
	}
	pv := snap.Ports[webHTTP]
	if got := ips(ByFamily(pv.Cluster, v1.IPv6Protocol)); !slices.Equal(got, []string{"[fd00:10:244::1]:8080"}) {
		t.Errorf("IPv6 endpoints = %v", got)
	}
	if ip, ok := pv.ClusterIP(v1.IPv6Protocol); !ok || ip != netip.MustParseAddr("fd00:10:96::a") {
		t.Errorf("IPv6 cluster IP = %v %v", ip, ok)
	}
	if len(snap.Ports[dnsPort].Endpoints) != 0 {
		t.Errorf("dns port has endpoints %v, but no slice carries that port", ips(snap.Ports[dnsPort].Endpoints))
	}

	t.Run("no change gives an empty change set", func(t *testing.T) {
		if s := tr.Snapshot(); len(s.Changed) != 0 || len(s.Ports) != 2 {
			t.Fatalf("changed = %v ports = %d", s.Changed, len(s.Ports))
		}
	})
	t.Run("an identical update changes nothing", func(t *testing.T) {
		tr.OnServiceUpdate(svc, svc.DeepCopy())
		if s := tr.Snapshot(); len(s.Changed) != 0 {
			t.Fatalf("changed = %v", s.Changed)
		}
	})
	t.Run("a pod IP change moves the endpoint and touches only that port", func(t *testing.T) {
		tr.OnEndpointSliceUpdate(nil, makeSlice("ns", "web", "web-v4", discovery.AddressTypeIPv4, 8080, ready("10.244.1.9", "node-a")))
		s := tr.Snapshot()
		if _, ok := s.Changed[webHTTP]; !ok || len(s.Changed) != 1 {
			t.Fatalf("changed = %v, want only %v", s.Changed, webHTTP)
		}
		if got := ips(ByFamily(s.Ports[webHTTP].Cluster, v1.IPv4Protocol)); !slices.Equal(got, []string{"10.244.1.9:8080"}) {
			t.Fatalf("IPv4 endpoints = %v", got)
		}
		if _, ok := s.TriggerTimes[webHTTP.NamespacedName]; !ok {
			t.Errorf("no trigger time recorded for the change")
		}
		// The previous snapshot is immutable.
		if got := ips(ByFamily(snap.Ports[webHTTP].Cluster, v1.IPv4Protocol)); !slices.Equal(got, []string{"10.244.1.1:8080"}) {
			t.Errorf("old snapshot changed: %v", got)
		}
	})
	t.Run("removing a port reports it and drops it", func(t *testing.T) {
		svc2 := svc.DeepCopy()
		svc2.Spec.Ports = svc2.Spec.Ports[:1]
		tr.OnServiceUpdate(svc, svc2)
		s := tr.Snapshot()
		if _, ok := s.Changed[dnsPort]; !ok {
			t.Fatalf("changed = %v, want %v", s.Changed, dnsPort)
		}
		if _, ok := s.Ports[dnsPort]; ok {
			t.Fatal("removed port still in snapshot")
		}
	})
	t.Run("deleting the service removes its ports but the slices stay known", func(t *testing.T) {
		tr.OnServiceDelete(svc)
		s := tr.Snapshot()
		if len(s.Ports) != 0 || len(s.Changed) != 1 || s.Services[webHTTP.NamespacedName] != nil {
			t.Fatalf("ports = %d changed = %v", len(s.Ports), s.Changed)
		}
		if len(s.Slices[webHTTP.NamespacedName]) != 2 {
			t.Fatalf("slices = %d, want 2 (slices outlive their service until deleted)", len(s.Slices[webHTTP.NamespacedName]))
		}
	})
}

func TestHeadlessAndExternalNameAreNotProxied(t *testing.T) {
	tr := newSyncedTracker(t)
	tr.OnServiceAdd(makeService("ns", "headless", func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
	}))
	tr.OnServiceAdd(makeService("ns", "ext", func(s *v1.Service) {
		s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ServiceTypeExternalName, "", nil
		s.Spec.ExternalName = "example.org"
	}))
	s := tr.Snapshot()
	if len(s.Ports) != 0 {
		t.Fatalf("ports = %v, want none", s.Ports)
	}
	if len(s.Services) != 2 {
		t.Fatalf("services = %d, want both kept for DNS", len(s.Services))
	}
}

func TestServicePortsConversion(t *testing.T) {
	svc := makeService("ns", "lb", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
		s.Spec.LoadBalancerSourceRanges = []string{" 192.168.100.0/24 ", "fd00:100::/64"}
		s.Spec.ExternalIPs = []string{"192.0.2.7"}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
			{IP: "192.0.2.50"},
			{IP: "192.0.2.51", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
			{Hostname: "lb.example.org"},
		}
	})
	sps := ServicePorts(svc)
	if len(sps) != 1 {
		t.Fatalf("ports = %d", len(sps))
	}
	sp := sps[0]
	if sp.NodePort != 30080 || sp.HealthCheckNodePort != 32000 || !sp.ExternalPolicyLocal {
		t.Errorf("node port %d hc %d local %v", sp.NodePort, sp.HealthCheckNodePort, sp.ExternalPolicyLocal)
	}
	if !slices.Equal(sp.LoadBalancerIPs, []netip.Addr{netip.MustParseAddr("192.0.2.50")}) {
		t.Errorf("LB IPs = %v, want only the VIP-mode one", sp.LoadBalancerIPs)
	}
	if len(sp.LoadBalancerSourceRanges) != 2 || sp.AffinityTimeout != 3*time.Hour {
		t.Errorf("ranges %v affinity %v", sp.LoadBalancerSourceRanges, sp.AffinityTimeout)
	}
	if !sp.UsesClusterEndpoints() || !sp.UsesLocalEndpoints() {
		t.Errorf("ETP Local service must use both endpoint sets")
	}
	nilConfig := makeService("ns", "aff", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{}}
	})
	if got := ServicePorts(nilConfig)[0].AffinityTimeout; got != DefaultAffinityTimeout {
		t.Errorf("affinity with a nil timeout = %v, want the default", got)
	}
}

func TestNodeChangeRecomputesLocality(t *testing.T) {
	tr := NewTracker("node-a", nil)
	tr.OnServiceAdd(makeService("ns", "web", func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}))
	tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, 8080,
		ep{ip: "10.244.1.1", node: "node-a", ready: true, serving: true, zoneHints: []string{"z1"}}))
	tr.Snapshot()
	tr.OnNodeUpdate(nil, &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "z2"}},
		Spec:       v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint}}},
	})
	s := tr.Snapshot()
	if !s.NodeChanged || !s.Node.Deleting || s.Node.Zone != "z2" {
		t.Fatalf("node = %+v changed %v", s.Node, s.NodeChanged)
	}
	// Another node's object is not ours.
	tr.OnNodeUpdate(nil, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}})
	if s := tr.Snapshot(); s.NodeChanged {
		t.Fatal("another node's object changed this node")
	}
}

func TestUnassignedEndpointsAreLocalInStandalone(t *testing.T) {
	for _, standalone := range []bool{false, true} {
		tr := newSyncedTracker(t)
		if standalone {
			tr.AssumeUnassignedLocal()
		}
		tr.OnServiceAdd(makeService("ns", "web", func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}))
		tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, 8080, ready("10.244.1.1", "")))
		pv := tr.Snapshot().Ports[webHTTP]
		if got := len(pv.Local); got != map[bool]int{false: 0, true: 1}[standalone] {
			t.Errorf("standalone=%v: local endpoints = %v", standalone, ips(pv.Local))
		}
	}
}

// An address and port listed twice (two slices during a handover, or one slice
// twice) is one endpoint, with the conditions of the first slice by name.
func TestDuplicateEndpointsAreMerged(t *testing.T) {
	tr := newSyncedTracker(t)
	tr.OnServiceAdd(makeService("ns", "web", nil))
	notReady := ep{ip: "10.0.0.2", node: "node-b"}
	tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-b", discovery.AddressTypeIPv4, 8080, notReady, ready("10.0.0.3", "node-b")))
	tr.OnEndpointSliceAdd(makeSlice("ns", "web", "web-a", discovery.AddressTypeIPv4, 8080,
		ready("10.0.0.2", "node-a"), ready("10.0.0.1", "node-a"), ready("10.0.0.1", "node-a")))
	pv := tr.Snapshot().Ports[webHTTP]
	if pv == nil {
		t.Fatal("no port view")
	}
	if got, want := ips(pv.Endpoints), []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
	if e := pv.Endpoints[1]; !e.Ready || e.NodeName != "node-a" || !e.Local {
		t.Errorf("10.0.0.2 = %+v, want slice web-a's version (ready, node-a, local)", *e)
	}
}

// A slice labelled service.kubernetes.io/headless gives its service no
// endpoint, as kube-proxy's informers leave such slices out: labelling a
// ClusterIP service's only slice so (the upstream e2e spec "should implement
// service.kubernetes.io/headless" does) leaves the service with none; the
// slice stays in the snapshot for DNS.
func TestHeadlessLabelledSliceIsNotProxied(t *testing.T) {
	tr := newSyncedTracker(t)
	tr.OnServiceAdd(makeService("ns", "web", nil))
	slice := makeSlice("ns", "web", "web-a", discovery.AddressTypeIPv4, 8080, ready("10.0.0.1", "node-a"))
	tr.OnEndpointSliceAdd(slice)
	if pv := tr.Snapshot().Ports[webHTTP]; pv == nil || len(pv.Endpoints) != 1 {
		t.Fatalf("before the label: port view %+v, want one endpoint", pv)
	}
	labelled := slice.DeepCopy()
	labelled.Labels[v1.IsHeadlessService] = ""
	tr.OnEndpointSliceUpdate(slice, labelled)
	s := tr.Snapshot()
	pv := s.Ports[webHTTP]
	if pv == nil {
		t.Fatal("the service's port is gone: it must stay, with no endpoint")
	}
	if len(pv.Endpoints) != 0 {
		t.Errorf("endpoints %v from a slice labelled headless, want none", ips(pv.Endpoints))
	}
	if len(s.Slices[types.NamespacedName{Namespace: "ns", Name: "web"}]) != 1 {
		t.Error("the labelled slice left the snapshot (DNS reads headless services' slices)")
	}
}

// A Node's pod CIDRs come from spec.podCIDRs, or spec.podCIDR when that is all
// there is (old objects), masked; a change of them is a change of the node.
func TestNodePodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		spec v1.NodeSpec
		want []netip.Prefix
	}{
		{v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}},
			[]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}},
		{v1.NodeSpec{PodCIDR: "10.244.2.7/24"}, []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		{v1.NodeSpec{}, nil},
	} {
		n := NodeFrom(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: tc.spec})
		if !slices.Equal(n.PodCIDRs, tc.want) {
			t.Errorf("%+v: pod CIDRs %v, want %v", tc.spec, n.PodCIDRs, tc.want)
		}
	}
	tr := NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}}})
	tr.OnNodeUpdate(nil, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.2.0/24"}}})
	if got := tr.Node().PodCIDRs; !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}) {
		t.Errorf("after the update: %v", got)
	}
}
