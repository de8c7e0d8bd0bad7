package describe

// IP plan: cluster IPs from 10.96.0.0/16 and fd00:10:96::/112, pods in
// 10.244.0.0/16 and fd00:10:244::/64, external and load-balancer addresses from
// TEST-NET-3 (203.0.113.0/24) and 2001:db8::/32.

import (
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// testNow is the clock of the golden files.
var testNow = time.Date(2026, time.November, 25, 12, 0, 0, 0, time.UTC)

// describeCase is one service with what kubectl would find next to it.
type describeCase struct {
	name   string // golden file stem
	svc    *v1.Service
	slices []*discovery.EndpointSlice
	events []v1.Event
}

func makeTestService(ns, name string, tweak func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         ns,
			Name:              name,
			Labels:            map[string]string{"app": name},
			CreationTimestamp: metav1.NewTime(testNow.Add(-26 * time.Hour)),
		},
		Spec: v1.ServiceSpec{
			Type:                  v1.ServiceTypeClusterIP,
			Selector:              map[string]string{"app": name},
			SessionAffinity:       v1.ServiceAffinityNone,
			InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyCluster),
			IPFamilyPolicy:        ptr.To(v1.IPFamilyPolicySingleStack),
			IPFamilies:            []v1.IPFamily{v1.IPv4Protocol},
		},
	}
	if tweak != nil {
		tweak(svc)
	}
	return svc
}

// makeTestSlice builds a slice of service ns/svc named svc-suffix.
func makeTestSlice(ns, svc, suffix string, family discovery.AddressType, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns,
			Name:      svc + "-" + suffix,
			Labels:    map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: family,
		Endpoints:   eps,
		Ports:       ports,
	}
}

func endpoint(ip string, ready *bool) discovery.Endpoint {
	return discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ready}}
}

func slicePort(name string, port int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

func describeCases() []describeCase {
	var cases []describeCase

	cases = append(cases, describeCase{
		name: "clusterip",
		svc: makeTestService("default", "web", func(s *v1.Service) {
			s.Annotations = map[string]string{
				"kproxy.io/owner":              "team-a",
				v1.LastAppliedConfigAnnotation: `{"apiVersion":"v1","kind":"Service"}`,
			}
			s.Labels["tier"] = "frontend"
			s.Spec.ClusterIP = "10.96.0.10"
			s.Spec.ClusterIPs = []string{"10.96.0.10"}
			s.Spec.Ports = []v1.ServicePort{
				{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromString("http"), AppProtocol: ptr.To("http")},
				{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8443)},
			}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("default", "web", "b", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("http", 8080, v1.ProtocolTCP), slicePort("https", 8443, v1.ProtocolTCP)},
				endpoint("10.244.1.5", ptr.To(true)), endpoint("10.244.1.6", nil), endpoint("10.244.1.7", ptr.To(false))),
			makeTestSlice("default", "web", "a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("http", 8080, v1.ProtocolTCP), slicePort("https", 8443, v1.ProtocolTCP)},
				endpoint("10.244.0.5", ptr.To(true)), endpoint("10.244.0.6", ptr.To(true))),
			// Another service's slice in the same namespace is not this one's.
			makeTestSlice("default", "other", "a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("http", 9090, v1.ProtocolTCP)},
				endpoint("10.244.9.9", ptr.To(true))),
		},
	})

	cases = append(cases, describeCase{
		name: "headless",
		svc: makeTestService("db", "postgres", func(s *v1.Service) {
			s.Spec.ClusterIP = v1.ClusterIPNone
			s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
			s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
			s.Spec.Ports = []v1.ServicePort{{Name: "pg", Port: 5432, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(5432)}}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("db", "postgres", "v4", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("pg", 5432, v1.ProtocolTCP)},
				endpoint("10.244.0.20", nil), endpoint("10.244.0.21", ptr.To(false))),
			makeTestSlice("db", "postgres", "v6", discovery.AddressTypeIPv6,
				[]discovery.EndpointPort{slicePort("pg", 5432, v1.ProtocolTCP)},
				endpoint("fd00:10:244::20", nil)),
		},
	})

	// A headless service without ports: its slices have no ports either, and
	// kubectl lists bare addresses (but only under a port line, so none here).
	cases = append(cases, describeCase{
		name: "headless-portless",
		svc: makeTestService("db", "peers", func(s *v1.Service) {
			s.Spec.ClusterIP = v1.ClusterIPNone
			s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("db", "peers", "x", discovery.AddressTypeIPv4, nil, endpoint("10.244.0.22", nil)),
		},
	})

	// The reference case of the issue: UDP and TCP on port 53 behind node ports,
	// IPv6 endpoints.
	cases = append(cases, describeCase{
		name: "nodeport-dns-ipv6",
		svc: makeTestService("kube-system", "dns6", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
			s.Spec.ClusterIP = "fd00:10:96::a"
			s.Spec.ClusterIPs = []string{"fd00:10:96::a"}
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
			s.Spec.Ports = []v1.ServicePort{
				{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, TargetPort: intstr.FromInt32(5353), NodePort: 30053},
				{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(5353), NodePort: 30053},
			}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("kube-system", "dns6", "v6", discovery.AddressTypeIPv6,
				[]discovery.EndpointPort{slicePort("dns", 5353, v1.ProtocolUDP), slicePort("dns-tcp", 5353, v1.ProtocolTCP)},
				endpoint("fd00:10:244::5", ptr.To(true)), endpoint("fd00:10:244::6", ptr.To(true))),
		},
	})

	manyEndpoints := make([]discovery.Endpoint, 0, 5)
	for i := range 5 {
		manyEndpoints = append(manyEndpoints, endpoint(fmt.Sprintf("10.244.2.%d", 10+i), ptr.To(true)))
	}
	cases = append(cases, describeCase{
		name: "loadbalancer-local",
		svc: makeTestService("prod", "edge", func(s *v1.Service) {
			s.Annotations = map[string]string{
				"kproxy.io/description": "first line\nsecond line\n",
				"kproxy.io/long":        "x" + fmt.Sprintf("%0150d", 7),
			}
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ClusterIP = "10.96.0.20"
			s.Spec.ClusterIPs = []string{"10.96.0.20"}
			s.Spec.ExternalIPs = []string{"203.0.113.7", "203.0.113.8"}
			s.Spec.LoadBalancerIP = "203.0.113.10"
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 32000
			s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", "198.51.100.0/24"}
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
			s.Spec.AllocateLoadBalancerNodePorts = ptr.To(true)
			s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
			s.Spec.Ports = []v1.ServicePort{{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8443), NodePort: 31443}}
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
				{IP: "203.0.113.10", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
				{IP: "203.0.113.11"},
				{Hostname: "edge.lb.example.com"},
			}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("prod", "edge", "a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("https", 8443, v1.ProtocolTCP)}, manyEndpoints...),
		},
		events: []v1.Event{
			{
				ObjectMeta:     metav1.ObjectMeta{Namespace: "prod", Name: "edge.1"},
				InvolvedObject: v1.ObjectReference{Kind: "Service", Namespace: "prod", Name: "edge"},
				Type:           v1.EventTypeNormal,
				Reason:         "EnsuredLoadBalancer",
				Message:        "Ensured load balancer\n",
				Source:         v1.EventSource{Component: "service-controller"},
				FirstTimestamp: metav1.NewTime(testNow.Add(-50 * time.Hour)),
				LastTimestamp:  metav1.NewTime(testNow.Add(-2 * time.Hour)),
				Count:          3,
			},
			{
				ObjectMeta:     metav1.ObjectMeta{Namespace: "prod", Name: "edge.0"},
				InvolvedObject: v1.ObjectReference{Kind: "Service", Namespace: "prod", Name: "edge"},
				Type:           v1.EventTypeNormal,
				Reason:         "EnsuringLoadBalancer",
				Message:        "Ensuring load balancer",
				Source:         v1.EventSource{Component: "service-controller"},
				FirstTimestamp: metav1.NewTime(testNow.Add(-50 * time.Hour)),
				LastTimestamp:  metav1.NewTime(testNow.Add(-50 * time.Hour)),
				Count:          1,
			},
			{
				ObjectMeta:          metav1.ObjectMeta{Namespace: "prod", Name: "edge.2"},
				InvolvedObject:      v1.ObjectReference{Kind: "Service", Namespace: "prod", Name: "edge", FieldPath: "spec.ports{https}"},
				Type:                v1.EventTypeWarning,
				Reason:              "SyncFailed",
				Message:             "nodes not ready",
				ReportingController: "kproxy",
				EventTime:           metav1.NewMicroTime(testNow.Add(-3 * time.Hour)),
				Series:              &v1.EventSeries{Count: 4, LastObservedTime: metav1.NewMicroTime(testNow.Add(-90 * time.Second))},
				LastTimestamp:       metav1.NewTime(testNow.Add(-90 * time.Second)),
			},
		},
	})

	cases = append(cases, describeCase{
		name: "externalname",
		svc: makeTestService("default", "db", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "db.example.com"
			// Terminal escapes in object text are neutralised, as kubectl does.
			s.Annotations = map[string]string{"kproxy.io/note": "50% \x1b[31mred\x1b[0m\r"}
			s.Spec.Selector = nil
			s.Spec.InternalTrafficPolicy = nil
			s.Spec.IPFamilyPolicy = nil
			s.Spec.IPFamilies = nil
			s.Labels = nil
		}),
	})

	cases = append(cases, describeCase{
		name: "dualstack",
		svc: makeTestService("default", "api", func(s *v1.Service) {
			s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
			s.Spec.ClusterIP = "fd00:10:96::30"
			s.Spec.ClusterIPs = []string{"fd00:10:96::30", "10.96.0.30"}
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			s.Spec.Ports = []v1.ServicePort{{Port: 8080, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}
		}),
		slices: []*discovery.EndpointSlice{
			makeTestSlice("default", "api", "v4", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("", 8080, v1.ProtocolTCP)}, endpoint("10.244.0.30", ptr.To(true))),
			makeTestSlice("default", "api", "v6", discovery.AddressTypeIPv6,
				[]discovery.EndpointPort{slicePort("", 8080, v1.ProtocolTCP)}, endpoint("fd00:10:244::30", ptr.To(true))),
		},
	})

	cases = append(cases, describeCase{
		name: "no-endpoints",
		svc: makeTestService("default", "idle", func(s *v1.Service) {
			s.Spec.ClusterIP = "10.96.0.40"
			s.Spec.ClusterIPs = []string{"10.96.0.40"}
			s.Spec.Selector = nil
			s.Spec.Ports = []v1.ServicePort{{Name: "metrics", Port: 9100, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(9100)}}
		}),
	})
	return cases
}

// tableServices are the services of the get golden files.
func tableServices() []*v1.Service {
	var out []*v1.Service
	for _, c := range describeCases() {
		out = append(out, c.svc)
	}
	out = append(out,
		makeTestService("prod", "pending", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ClusterIP = "10.96.0.50"
			s.Spec.ClusterIPs = []string{"10.96.0.50"}
			s.Spec.Ports = []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080}}
			s.CreationTimestamp = metav1.NewTime(testNow.Add(-90 * time.Second))
		}),
		makeTestService("prod", "ext", func(s *v1.Service) {
			s.Spec.ClusterIP = "10.96.0.51"
			s.Spec.ClusterIPs = []string{"10.96.0.51"}
			s.Spec.ExternalIPs = []string{"203.0.113.9"}
			s.Spec.Ports = []v1.ServicePort{{Port: 8443, Protocol: v1.ProtocolTCP}}
			s.CreationTimestamp = metav1.Time{}
		}),
	)
	return out
}
