// Package bench measures the nftables data plane: cold sync, one-service
// change, memory, connect latency and DNAT throughput, against the upstream
// kube-proxy ruleset shape loaded with nft. Run it with
//
//	go run ./cmd/kproxy-bench-nft -sizes 1000,10000,30000 -out bench-nft.png
//
// (root; everything happens in network namespaces it creates and removes).
package bench

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/model"
)

// Synthetic IP plan: service i has cluster IP 10.96.0.0 + i (a /15 holds
// 131,072) and endpoints 10.128.0.0 + 10*i + j, port 8080.
func clusterIP(i int) netip.Addr { return addAddr(netip.MustParseAddr("10.96.0.0"), i) }

func endpointIP(i, j, gen int) netip.Addr {
	return addAddr(netip.MustParseAddr("10.128.0.0"), (i*10+j)+gen*(1<<19))
}

func addAddr(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func service(i int, ip netip.Addr) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: ip.String(), ClusterIPs: []string{ip.String()},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

func slice(i int, port int32, ips ...netip.Addr) *discovery.EndpointSlice {
	name, proto, yes, no := "http", v1.ProtocolTCP, true, false
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d-abc", i),
			Labels: map[string]string{discovery.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	node := "elsewhere"
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip.String()}, NodeName: &node,
			Conditions: discovery.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}})
	}
	return s
}

// newTracker returns a synced tracker for node "bench".
func newTracker() *model.Tracker {
	tr := model.NewTracker("bench", nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench"}})
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	return tr
}

// addServices adds services [from, to) with 10 endpoints each.
func addServices(tr *model.Tracker, from, to int) {
	for i := from; i < to; i++ {
		tr.OnServiceAdd(service(i, clusterIP(i)))
		tr.OnEndpointSliceAdd(slice(i, 8080, endpoints(i, 0)...))
	}
}

func endpoints(i, gen int) []netip.Addr {
	out := make([]netip.Addr, 10)
	for j := range out {
		out[j] = endpointIP(i, j, gen)
	}
	return out
}
