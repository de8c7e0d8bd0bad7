package trace

// IP plan:
//   this node "node-a": 192.168.0.10 and fd00:192:168::10; the other node "node-b".
//   pods (cluster CIDRs): 10.244.0.0/16 and fd00:10:244::/48;
//     node-a's pods in 10.244.0.0/24 and fd00:10:244::/64, node-b's in 10.244.1.0/24
//     and fd00:10:244:1::/64.
//   services: 10.96.0.0/16 and fd00:10:96::/112.
//   external IPs 192.0.2.0/24; load balancer IPs 198.51.100.0/24;
//   an outside client 203.0.113.7 (allowed by source ranges) and 198.18.0.1 (not).

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy/kproxy/internal/model"
)

func makeTestService(name, clusterIP string, mutate func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

type testEP struct {
	ip, node string
	ready    bool
	serving  bool // while terminating
}

func up(ip, node string) testEP { return testEP{ip: ip, node: node, ready: true} }

// draining is a terminating endpoint that still serves.
func draining(ip, node string) testEP { return testEP{ip: ip, node: node, serving: true} }

// makeTestSlice builds a slice for the service's "http" port (or the named port).
func makeTestSlice(svc, name, portName string, proto v1.Protocol, port int32, eps ...testEP) *discovery.EndpointSlice {
	family := discovery.AddressTypeIPv4
	if len(eps) > 0 && strings.Contains(eps[0].ip, ":") {
		family = discovery.AddressTypeIPv6
	}
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: family,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.ready || e.serving), Terminating: ptr.To(!e.ready)},
			NodeName:   ptr.To(e.node),
		})
	}
	return s
}

func lb(ingress string, nodePort int32, local bool, hc int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = nodePort
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ingress}}
		if local {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = hc
		}
	}
}

// testSnapshot is the fixture every trace test reads.
func testSnapshot(t *testing.T) *model.Snapshot {
	t.Helper()
	tr := model.NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.0.10"},
			{Type: v1.NodeInternalIP, Address: "fd00:192:168::10"},
		}},
	})
	services := []*v1.Service{
		makeTestService("web", "10.96.0.10", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})
		}),
		makeTestService("sticky", "10.96.0.11", func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
		}),
		makeTestService("empty", "10.96.0.12", nil),
		makeTestService("itp-local", "10.96.0.13", func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		makeTestService("lb-local", "10.96.0.14", lb("198.51.100.1", 30080, true, 32000)),
		makeTestService("lb-ranges", "10.96.0.15", func(s *v1.Service) {
			lb("198.51.100.2", 30443, false, 0)(s)
			s.Spec.Ports[0].Port = 443
			s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
		}),
		makeTestService("ext", "10.96.0.16", func(s *v1.Service) {
			s.Spec.Ports[0].Port = 8080
			s.Spec.ExternalIPs = []string{"192.0.2.10"}
		}),
		makeTestService("np", "10.96.0.17", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30081
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}),
		makeTestService("dual", "10.96.0.18", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.18", "fd00:10:96::18"}
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30082
		}),
		makeTestService("v6only", "fd00:10:96::19", func(s *v1.Service) {
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
		}),
		makeTestService("dual-v4eps", "10.96.0.22", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.22", "fd00:10:96::22"}
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		}),
		makeTestService("draining", "10.96.0.23", nil),
		makeTestService("udp-empty", "10.96.0.21", func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}}
		}),
		makeTestService("lb-ranges-node", "10.96.0.20", func(s *v1.Service) {
			lb("198.51.100.3", 30444, false, 0)(s)
			s.Spec.LoadBalancerSourceRanges = []string{"192.168.0.0/24"}
		}),
		makeTestService("sticky-local", "10.96.0.25", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30083
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
		}),
		// Both policies Local, the only endpoint on another node.
		makeTestService("lb-all-local", "10.96.0.24", func(s *v1.Service) {
			lb("198.51.100.4", 30445, true, 32001)(s)
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
	}
	for _, s := range services {
		tr.OnServiceAdd(s)
	}
	for _, s := range []*discovery.EndpointSlice{
		makeTestSlice("web", "web-1", "http", v1.ProtocolTCP, 8080,
			up("10.244.0.5", "node-a"), up("10.244.1.5", "node-b"), up("10.244.1.6", "node-b")),
		makeTestSlice("web", "web-2", "dns", v1.ProtocolUDP, 5353, up("10.244.1.5", "node-b")),
		makeTestSlice("sticky", "sticky-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.7", "node-b"), up("10.244.1.8", "node-b")),
		makeTestSlice("empty", "empty-1", "http", v1.ProtocolTCP, 8080, testEP{ip: "10.244.1.9", node: "node-b"}),
		makeTestSlice("itp-local", "itp-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.10", "node-b")),
		makeTestSlice("lb-local", "lbl-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.11", "node-b")),
		makeTestSlice("lb-ranges", "lbr-1", "http", v1.ProtocolTCP, 8443, up("10.244.0.12", "node-a")),
		makeTestSlice("ext", "ext-1", "http", v1.ProtocolTCP, 8080, up("10.244.0.13", "node-a")),
		makeTestSlice("np", "np-1", "http", v1.ProtocolTCP, 8080, up("10.244.0.14", "node-a"), up("10.244.1.14", "node-b")),
		makeTestSlice("dual", "dual-4", "http", v1.ProtocolTCP, 8080, up("10.244.0.15", "node-a")),
		makeTestSlice("dual", "dual-6", "http", v1.ProtocolTCP, 8080, up("fd00:10:244::15", "node-a"), up("fd00:10:244:1::15", "node-b")),
		makeTestSlice("v6only", "v6-1", "http", v1.ProtocolTCP, 8080, up("fd00:10:244:1::16", "node-b")),
		makeTestSlice("draining", "dr-1", "http", v1.ProtocolTCP, 8080,
			draining("10.244.0.19", "node-a"), draining("10.244.1.19", "node-b"), testEP{ip: "10.244.1.20", node: "node-b"}),
		makeTestSlice("dual-v4eps", "dv4-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.18", "node-b")),
		makeTestSlice("lb-ranges-node", "lbrn-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.17", "node-b")),
		makeTestSlice("lb-all-local", "lbal-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.19", "node-b")),
		makeTestSlice("sticky-local", "stl-1", "http", v1.ProtocolTCP, 8080, up("10.244.0.21", "node-a"), up("10.244.1.21", "node-b")),
	} {
		tr.OnEndpointSliceAdd(s)
	}
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	return tr.Snapshot()
}

var clusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}

// modelCase is one packet of the fixture with the answer kube-proxy's rules give.
type modelCase struct {
	name          string
	from, to      string
	opts          func(*Options)
	wantVerdict   Verdict
	wantService   string
	wantVia       string
	wantPolicy    string
	wantEndpoints []string
	wantMasq      bool
	wantHairpin   []string // endpoints masqueraded only for this source
	wantAffinity  int64
	wantReason    string // a substring of Reason
}

func modelCases() []modelCase {
	return []modelCase{
		{
			name: "ClusterIP from a pod: three endpoints, source kept",
			from: "10.244.0.99", to: "10.96.0.10:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
		},
		{
			name: "ClusterIP from the node (outside the cluster CIDRs) is masqueraded",
			from: "192.168.0.10", to: "10.96.0.10:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
			wantMasq:      true, wantReason: "3 endpoint",
		},
		{
			name: "ClusterIP without cluster CIDRs: off-cluster source not detected",
			from: "192.168.0.10", to: "10.96.0.10:80/tcp",
			opts:        func(o *Options) { o.ClusterCIDRs = nil },
			wantVerdict: VerdictDNAT, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
		},
		{
			name: "masquerade-all masquerades pods too",
			from: "10.244.0.99", to: "10.96.0.10:80/tcp",
			opts:        func(o *Options) { o.MasqueradeAll = true },
			wantVerdict: VerdictDNAT, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
			wantMasq:      true,
		},
		{
			name: "hairpin: a pod reaching its own service is masqueraded when it picks itself",
			from: "10.244.0.5", to: "10.96.0.10:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
			wantHairpin:   []string{"10.244.0.5:8080"},
		},
		{
			name: "UDP port of the same service",
			from: "10.244.0.99", to: "10.96.0.10:53/udp",
			wantVerdict: VerdictDNAT, wantService: "ns/web:dns", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.5:5353"},
		},
		{
			name: "unserved port on a cluster IP is rejected",
			from: "10.244.0.99", to: "10.96.0.10:81/tcp",
			wantVerdict: VerdictReject, wantReason: "no service serves port 81/TCP",
		},
		{
			name: "wrong protocol on a cluster IP is rejected",
			from: "10.244.0.99", to: "10.96.0.10:53/tcp",
			wantVerdict: VerdictReject, wantReason: "no service serves port 53/TCP",
		},
		{
			name: "a pod address is not a service",
			from: "10.244.0.99", to: "10.244.1.5:8080/tcp",
			wantVerdict: VerdictNone,
		},
		{
			name: "session affinity",
			from: "10.244.0.99", to: "10.96.0.11:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/sticky:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.7:8080", "10.244.1.8:8080"}, wantAffinity: 600,
		},
		{
			name: "no endpoints: reject",
			from: "10.244.0.99", to: "10.96.0.12:80/tcp",
			wantVerdict: VerdictReject, wantService: "ns/empty:http", wantVia: ViaClusterIP, wantReason: "no usable IPv4 endpoints",
		},
		{
			name: "internalTrafficPolicy Local without a local endpoint: drop",
			from: "10.244.0.99", to: "10.96.0.13:80/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/itp-local:http", wantVia: ViaClusterIP, wantPolicy: PolicyLocal,
			wantReason: "internalTrafficPolicy is Local",
		},
		{
			name: "ETP Local load balancer from outside without a local endpoint: drop",
			from: "203.0.113.7", to: "198.51.100.1:80/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyLocal,
			wantReason: "externalTrafficPolicy is Local",
		},
		{
			name: "ETP Local NodePort from outside without a local endpoint: drop",
			from: "203.0.113.7", to: "192.168.0.10:30080/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-local:http", wantVia: ViaNodePort, wantPolicy: PolicyLocal,
		},
		{
			name: "ETP Local load balancer from a pod: short-circuited to the cluster endpoints",
			from: "10.244.0.99", to: "198.51.100.1:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.11:8080"},
		},
		{
			// kube-proxy short-circuits to the cluster-wide endpoints whatever
			// the internal traffic policy.
			name: "ETP and ITP Local load balancer from a pod: short-circuited to the cluster endpoints",
			from: "10.244.0.99", to: "198.51.100.4:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-all-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.19:8080"},
		},
		{
			name: "ETP and ITP Local, cluster IP from a pod, no local endpoint: drop",
			from: "10.244.0.99", to: "10.96.0.24:80/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-all-local:http", wantVia: ViaClusterIP, wantPolicy: PolicyLocal,
		},
		{
			name: "ETP and ITP Local load balancer from outside, no local endpoint: drop",
			from: "203.0.113.7", to: "198.51.100.4:80/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-all-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyLocal,
		},
		{
			name: "ETP Local load balancer from the node: masqueraded, cluster endpoints",
			from: "192.168.0.10", to: "198.51.100.1:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.11:8080"}, wantMasq: true,
		},
		{
			name: "ETP Local NodePort with a local endpoint: only it, source kept",
			from: "203.0.113.7", to: "192.168.0.10:30081/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/np:http", wantVia: ViaNodePort, wantPolicy: PolicyLocal,
			wantEndpoints: []string{"10.244.0.14:8080"},
		},
		{
			name: "NodePort on an address that is not this node's",
			from: "203.0.113.7", to: "192.168.0.11:30081/tcp",
			wantVerdict: VerdictNone,
		},
		{
			name: "NodePort on an address excluded by --nodeport-addresses",
			from: "203.0.113.7", to: "192.168.0.10:30081/tcp",
			opts:        func(o *Options) { o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} },
			wantVerdict: VerdictNone,
		},
		{
			name: "NodePort on an extra node address from the options",
			from: "203.0.113.7", to: "172.16.0.10:30081/tcp",
			opts:        func(o *Options) { o.NodeAddresses = []netip.Addr{netip.MustParseAddr("172.16.0.10")} },
			wantVerdict: VerdictDNAT, wantService: "ns/np:http", wantVia: ViaNodePort, wantPolicy: PolicyLocal,
			wantEndpoints: []string{"10.244.0.14:8080"},
		},
		{
			name: "NodePort on localhost is off by default",
			from: "127.0.0.1", to: "127.0.0.1:30081/tcp",
			wantVerdict: VerdictNone,
		},
		{
			name: "NodePort on localhost is off even when loopback is among the node addresses",
			from: "127.0.0.1", to: "127.0.0.1:30081/tcp",
			opts:        func(o *Options) { o.NodeAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.1")} },
			wantVerdict: VerdictNone,
		},
		{
			name: "session affinity, ETP Local NodePort from a pod: short-circuit, still sticky",
			from: "10.244.0.99", to: "192.168.0.10:30083/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/sticky-local:http", wantVia: ViaNodePort, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.21:8080", "10.244.1.21:8080"}, wantAffinity: 300,
		},
		{
			name: "session affinity, ETP Local NodePort from outside: local endpoint, sticky",
			from: "203.0.113.7", to: "192.168.0.10:30083/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/sticky-local:http", wantVia: ViaNodePort, wantPolicy: PolicyLocal,
			wantEndpoints: []string{"10.244.0.21:8080"}, wantAffinity: 300,
		},
		{
			name: "NodePort on localhost when enabled: node traffic, masqueraded",
			from: "127.0.0.1", to: "127.0.0.1:30081/tcp",
			opts:        func(o *Options) { o.LocalhostNodePorts = true },
			wantVerdict: VerdictDNAT, wantService: "ns/np:http", wantVia: ViaNodePort, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.14:8080", "10.244.1.14:8080"}, wantMasq: true,
		},
		{
			name: "LB source range allows the client; ETP Cluster masquerades",
			from: "203.0.113.7", to: "198.51.100.2:443/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-ranges:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.12:8443"}, wantMasq: true,
		},
		{
			name: "LB source range does not allow the client: drop",
			from: "198.18.0.1", to: "198.51.100.2:443/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-ranges:http", wantVia: ViaLoadBalancer,
			wantReason: "not in the service's loadBalancerSourceRanges",
		},
		{
			name: "LB source ranges apply to pods too",
			from: "10.244.0.99", to: "198.51.100.2:443/tcp",
			wantVerdict: VerdictDrop, wantService: "ns/lb-ranges:http", wantVia: ViaLoadBalancer,
		},
		{
			name: "LB source ranges covering the node allow the VIP as source",
			from: "198.51.100.3", to: "198.51.100.3:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-ranges-node:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.1.17:8080"}, wantMasq: true,
		},
		{
			name: "NodePorts are not subject to LB source ranges",
			from: "198.18.0.1", to: "192.168.0.10:30443/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/lb-ranges:http", wantVia: ViaNodePort, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.12:8443"}, wantMasq: true,
		},
		{
			name: "external IP with ETP Cluster is masqueraded",
			from: "203.0.113.7", to: "192.0.2.10:8080/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/ext:http", wantVia: ViaExternalIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.13:8080"}, wantMasq: true,
		},
		{
			name: "external IP on the wrong port is not a service (only cluster IPs reject)",
			from: "203.0.113.7", to: "192.0.2.10:80/tcp",
			wantVerdict: VerdictNone,
		},
		{
			name: "IPv6 cluster IP of a dual-stack service uses the IPv6 endpoints",
			from: "fd00:10:244::99", to: "[fd00:10:96::18]:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/dual:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"[fd00:10:244::15]:8080", "[fd00:10:244:1::15]:8080"},
		},
		{
			name: "IPv4 cluster IP of a dual-stack service uses the IPv4 endpoints",
			from: "10.244.0.99", to: "10.96.0.18:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/dual:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.15:8080"},
		},
		{
			name: "IPv6 NodePort on the node's IPv6 address from outside",
			from: "2001:db8::7", to: "[fd00:192:168::10]:30082/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/dual:http", wantVia: ViaNodePort, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"[fd00:10:244::15]:8080", "[fd00:10:244:1::15]:8080"}, wantMasq: true,
		},
		{
			name: "IPv6-only service from an off-cluster IPv6 source is masqueraded",
			from: "2001:db8::7", to: "[fd00:10:96::19]:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/v6only:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"[fd00:10:244:1::16]:8080"}, wantMasq: true,
		},
		{
			name: "only terminating endpoints: the serving ones are used",
			from: "10.244.0.99", to: "10.96.0.23:80/tcp",
			wantVerdict: VerdictDNAT, wantService: "ns/draining:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.19:8080", "10.244.1.19:8080"},
		},
		{
			name: "dual-stack service with IPv4 endpoints only: IPv6 is rejected (each family on its own)",
			from: "fd00:10:244::99", to: "[fd00:10:96::22]:80/tcp",
			wantVerdict: VerdictReject, wantService: "ns/dual-v4eps:http", wantVia: ViaClusterIP, wantReason: "no usable IPv6 endpoints",
		},
		{
			name: "unserved IPv6 port on a cluster IP is rejected",
			from: "fd00:10:244::99", to: "[fd00:10:96::19]:443/tcp",
			wantVerdict: VerdictReject,
		},
		{
			name: "UDP service without endpoints: reject",
			from: "10.244.0.99", to: "10.96.0.21:53/udp",
			wantVerdict: VerdictReject, wantService: "ns/udp-empty:dns", wantVia: ViaClusterIP,
		},
		{
			name: "userspace: proxied, the endpoint sees the node",
			from: "10.244.0.5", to: "10.96.0.10:80/tcp",
			opts:        func(o *Options) { o.Userspace = true },
			wantVerdict: VerdictProxy, wantService: "ns/web:http", wantVia: ViaClusterIP, wantPolicy: PolicyCluster,
			wantEndpoints: []string{"10.244.0.5:8080", "10.244.1.5:8080", "10.244.1.6:8080"},
			wantMasq:      true, wantReason: "round-robin",
		},
		{
			name: "userspace: no pod short-circuit for ETP Local, the TCP connection is reset",
			from: "10.244.0.99", to: "198.51.100.1:80/tcp",
			opts:        func(o *Options) { o.Userspace = true },
			wantVerdict: VerdictReject, wantService: "ns/lb-local:http", wantVia: ViaLoadBalancer, wantPolicy: PolicyLocal,
		},
		{
			name: "userspace: source range refusal resets TCP",
			from: "198.18.0.1", to: "198.51.100.2:443/tcp",
			opts:        func(o *Options) { o.Userspace = true },
			wantVerdict: VerdictReject, wantService: "ns/lb-ranges:http", wantVia: ViaLoadBalancer,
		},
		{
			name: "userspace: UDP without endpoints gets no answer",
			from: "10.244.0.99", to: "10.96.0.21:53/udp",
			opts:        func(o *Options) { o.Userspace = true },
			wantVerdict: VerdictDrop, wantService: "ns/udp-empty:dns", wantVia: ViaClusterIP,
		},
		{
			name: "userspace: unserved port is refused by the kernel",
			from: "10.244.0.99", to: "10.96.0.10:81/tcp",
			opts:        func(o *Options) { o.Userspace = true },
			wantVerdict: VerdictReject,
		},
	}
}

func TestFromModel(t *testing.T) {
	snap := testSnapshot(t)
	for _, tt := range modelCases() {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ClusterCIDRs: clusterCIDRs}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			pkt, err := ParsePacket(tt.from, tt.to, "")
			if err != nil {
				t.Fatal(err)
			}
			r := FromModel(snap, opts, pkt)
			if r.Verdict != tt.wantVerdict {
				t.Fatalf("verdict %s (%s), want %s; steps %q", r.Verdict, r.Reason, tt.wantVerdict, r.Steps)
			}
			if !strings.Contains(r.Reason, tt.wantReason) {
				t.Errorf("reason %q, want it to contain %q", r.Reason, tt.wantReason)
			}
			var service, via, policy string
			if r.Match != nil {
				service, via, policy = r.Match.Service, r.Match.Via, r.Match.Policy
			}
			if service != tt.wantService || via != tt.wantVia || policy != tt.wantPolicy {
				t.Errorf("match %q via %q policy %q, want %q via %q policy %q",
					service, via, policy, tt.wantService, tt.wantVia, tt.wantPolicy)
			}
			var got, hairpin []string
			total := 0.0
			for _, ep := range r.Endpoints {
				got = append(got, ep.Address.String())
				total += ep.Probability
				if ep.Masquerade != (r.Masquerade || slices.Contains(tt.wantHairpin, ep.Address.String())) {
					t.Errorf("endpoint %s masquerade %v", ep.Address, ep.Masquerade)
				}
				if ep.Masquerade && !r.Masquerade {
					hairpin = append(hairpin, ep.Address.String())
				}
			}
			if !slices.Equal(got, tt.wantEndpoints) {
				t.Errorf("endpoints %v, want %v", got, tt.wantEndpoints)
			}
			if len(got) > 0 && (total < 0.999999 || total > 1.000001) {
				t.Errorf("probabilities sum to %v", total)
			}
			if !slices.Equal(hairpin, tt.wantHairpin) {
				t.Errorf("hairpin endpoints %v, want %v", hairpin, tt.wantHairpin)
			}
			if r.Masquerade != tt.wantMasq {
				t.Errorf("masquerade %v (%s), want %v", r.Masquerade, r.MasqueradeReason, tt.wantMasq)
			}
			var aff int64
			if r.Affinity != nil {
				aff = r.Affinity.TimeoutSeconds
			}
			if aff != tt.wantAffinity {
				t.Errorf("affinity %d, want %d", aff, tt.wantAffinity)
			}
			if len(r.Steps) == 0 {
				t.Error("no steps")
			}
		})
	}
}

func TestFromModelNoSnapshot(t *testing.T) {
	pkt, _ := ParsePacket("10.244.0.1", "10.96.0.10:80", "")
	if r := FromModel(nil, Options{}, pkt); r.Verdict != VerdictNone || r.Reason == "" {
		t.Fatalf("got %+v", r)
	}
}

func TestParsePacket(t *testing.T) {
	tests := []struct {
		name, from, to, proto string
		want                  string
		wantErr               bool
	}{
		{name: "tcp suffix", from: "10.244.0.5", to: "10.96.0.10:80/tcp", want: "10.244.0.5 -> 10.96.0.10:80/TCP"},
		{name: "default tcp", from: "10.244.0.5", to: "10.96.0.10:80", want: "10.244.0.5 -> 10.96.0.10:80/TCP"},
		{name: "proto param", from: "10.244.0.5", to: "10.96.0.10:53", proto: "UDP", want: "10.244.0.5 -> 10.96.0.10:53/UDP"},
		{name: "sctp", from: "10.244.0.5", to: "10.96.0.10:9/SCTP", want: "10.244.0.5 -> 10.96.0.10:9/SCTP"},
		{name: "ipv6", from: "fd00::5", to: "[fd00:10:96::a]:443/tcp", want: "fd00::5 -> [fd00:10:96::a]:443/TCP"},
		{name: "mapped v4 is v4", from: "::ffff:10.244.0.5", to: "10.96.0.10:80", want: "10.244.0.5 -> 10.96.0.10:80/TCP"},
		{name: "agreeing proto", from: "10.244.0.5", to: "10.96.0.10:80/udp", proto: "udp", want: "10.244.0.5 -> 10.96.0.10:80/UDP"},
		{name: "contradicting proto", from: "10.244.0.5", to: "10.96.0.10:80/udp", proto: "tcp", wantErr: true},
		{name: "mixed families", from: "fd00::5", to: "10.96.0.10:80", wantErr: true},
		{name: "no port", from: "10.244.0.5", to: "10.96.0.10", wantErr: true},
		{name: "port 0", from: "10.244.0.5", to: "10.96.0.10:0", wantErr: true},
		{name: "bad proto", from: "10.244.0.5", to: "10.96.0.10:80/icmp", wantErr: true},
		{name: "bad source", from: "pod-a", to: "10.96.0.10:80", wantErr: true},
		{name: "unbracketed ipv6", from: "fd00::5", to: "fd00::a:80", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePacket(tt.from, tt.to, tt.proto)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && p.String() != tt.want {
				t.Fatalf("got %s, want %s", p, tt.want)
			}
		})
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add("10.244.0.5", "10.96.0.10:80/tcp", "")
	f.Add("fd00::5", "[fd00::a]:53", "udp")
	f.Fuzz(func(t *testing.T, from, to, proto string) {
		p, err := ParsePacket(from, to, proto)
		if err != nil {
			return
		}
		if p.Src.Is4() != p.Dst.Addr().Is4() || p.Dst.Port() == 0 || p.Proto == "" {
			t.Fatalf("accepted an invalid packet %+v", p)
		}
	})
}
