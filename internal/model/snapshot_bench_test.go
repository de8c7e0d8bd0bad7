package model_test

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/model"
)

// BenchmarkFirstSnapshot measures the snapshot that follows the initial lists
// (every service dirty), which sits on the path from start to programmed:
//
//	go test -run '^$' -bench FirstSnapshot -benchmem ./internal/model/
func BenchmarkFirstSnapshot(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs, slices := benchObjects(n)
			for b.Loop() {
				b.StopTimer()
				tr := model.NewTracker("node-a", nil)
				tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
				for i := range svcs {
					tr.OnServiceAdd(svcs[i])
					tr.OnEndpointSliceAdd(slices[i])
				}
				tr.OnServicesSynced()
				tr.OnEndpointSlicesSynced()
				tr.OnNodeSynced()
				b.StartTimer()
				if snap := tr.Snapshot(); len(snap.Ports) != n {
					b.Fatalf("ports: %d, want %d", len(snap.Ports), n)
				}
			}
		})
	}
}

// benchObjects returns n services with 10 ready endpoints each, on other nodes.
func benchObjects(n int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, n)
	slices := make([]*discovery.EndpointSlice, n)
	name, proto, port, yes, no, node := "http", v1.ProtocolTCP, int32(8080), true, false, "node-b"
	for i := range n {
		svcName := fmt.Sprintf("svc-%d", i)
		cip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String()
		svcs[i] = &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: svcName},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: cip, ClusterIPs: []string{cip},
				Selector: map[string]string{"app": svcName},
				Ports:    []v1.ServicePort{{Name: name, Protocol: proto, Port: 80, TargetPort: intstr.FromInt32(port)}}},
		}
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: svcName + "-abc",
				Labels: map[string]string{discovery.LabelServiceName: svcName}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		}
		for j := range 10 {
			ip := netip.AddrFrom4([4]byte{10, byte(128 + i>>14), byte(i >> 6), byte(i<<2) + byte(j)}).String()
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, NodeName: &node,
				Conditions: discovery.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}})
		}
		slices[i] = s
	}
	return svcs, slices
}
