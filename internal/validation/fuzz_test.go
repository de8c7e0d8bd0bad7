package validation

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// FuzzService feeds arbitrary strings and numbers to the fields kproxy parses:
// validation must report, never panic, and must not modify its argument.
func FuzzService(f *testing.F) {
	f.Add("10.96.0.10", "fd00:10:96::10", "IPv4", "SingleStack", "203.0.113.0/24", "http", int32(80), int32(30080), "NodePort")
	f.Add("None", "", "IPv6", "RequireDualStack", "", "", int32(0), int32(0), "LoadBalancer")
	f.Add("010.0.0.1", "::ffff:10.0.0.1", "", "", "10.0.0.0/33", "80-80", int32(-1), int32(70000), "ExternalName")
	f.Fuzz(func(t *testing.T, ip0, ip1, family, policy, cidr, target string, port, nodePort int32, typ string) {
		svc := &v1.Service{}
		svc.Namespace, svc.Name = "default", "fuzz"
		svc.Spec.Type = v1.ServiceType(typ)
		svc.Spec.ClusterIP = ip0
		svc.Spec.ClusterIPs = []string{ip0, ip1}
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPFamily(family)}
		svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicy(policy))
		svc.Spec.LoadBalancerSourceRanges = []string{cidr}
		svc.Spec.ExternalIPs = []string{ip1}
		svc.Spec.Ports = []v1.ServicePort{{Port: port, NodePort: nodePort, TargetPort: intstr.FromString(target)}}
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip1, Hostname: ip0}}
		before := svc.DeepCopy()
		_ = Service(svc, Options{Allocated: true})
		_ = Service(svc, Options{LegacyIPs: true})
		if svc.Spec.Type != before.Spec.Type || len(svc.Spec.ClusterIPs) != len(before.Spec.ClusterIPs) || svc.Spec.Ports[0] != before.Spec.Ports[0] {
			t.Fatalf("Service modified its argument")
		}

		pod := &v1.Pod{}
		pod.Namespace, pod.Name = "default", "fuzz"
		pod.Status.PodIP = ip0
		pod.Status.PodIPs = []v1.PodIP{{IP: ip1}, {IP: ip0}, {IP: cidr}}
		pod.Spec.Containers = []v1.Container{{Name: target, Ports: []v1.ContainerPort{{Name: target, ContainerPort: port, Protocol: v1.Protocol(family)}}}}
		_ = Pod(pod, Options{})

		slice := &discovery.EndpointSlice{AddressType: discovery.AddressType(family)}
		slice.Namespace, slice.Name = "default", "fuzz"
		slice.Endpoints = []discovery.Endpoint{{Addresses: []string{ip0, ip1}, Hostname: ptr.To(target)}}
		slice.Ports = []discovery.EndpointPort{{Name: ptr.To(target), Port: ptr.To(port)}, {}}
		_ = EndpointSlice(slice, Options{})

		node := &v1.Node{}
		node.Name = "fuzz"
		node.Spec.PodCIDRs = []string{cidr, ip0}
		node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip1}}
		_ = Node(node, Options{})
	})
}
