package nftables

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/model"
)

// IP plan shared by the tests:
//   node          10.244.0.1 / fd00:10:244::1 (bridge), 192.168.100.1 / fd00:100::1 (uplink)
//   pods          10.244.0.0/24, fd00:10:244::/64 (cluster CIDRs); 10.244.1.0/24 is "another node"
//   services      10.96.0.0/16, fd00:10:96::/112
//   external IPs  192.168.200.0/24; load balancers 192.168.201.0/24
//   clients       192.168.100.2 / fd00:100::2 (outside the cluster)

const testNode = "node-a"

var (
	clusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
	nodeAddrs    = []netip.Addr{netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("192.168.100.1"),
		netip.MustParseAddr("fd00:10:244::1"), netip.MustParseAddr("fd00:100::1")}
)

func makeService(name string, mod func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:      v1.ServiceTypeClusterIP,
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if mod != nil {
		mod(svc)
	}
	return svc
}

// ep describes one endpoint for makeSlice: address, node and conditions.
type ep struct {
	ip          string
	node        string
	notReady    bool
	terminating bool
}

func makeSlice(svc string, port int32, proto v1.Protocol, eps ...ep) *discovery.EndpointSlice {
	fam := discovery.AddressTypeIPv4
	if len(eps) > 0 && netip.MustParseAddr(eps[0].ip).Is6() {
		fam = discovery.AddressTypeIPv6
	}
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-" + string(fam),
			Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: fam,
		Ports:       []discovery.EndpointPort{{Name: ptr("p"), Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		node := e.node
		if node == "" {
			node = testNode
		}
		ready, serving, term := !e.notReady && !e.terminating, !e.notReady, e.terminating
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.ip},
			NodeName:   &node,
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term},
		})
	}
	return s
}

func ptr[T any](v T) *T { return &v }

// world drives a model.Tracker the way sources do.
type world struct {
	t  testing.TB
	tr *model.Tracker
}

func newWorld(t testing.TB) *world {
	tr := model.NewTracker(testNode, nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	return &world{t: t, tr: tr}
}

func (w *world) service(svc *v1.Service, slices ...*discovery.EndpointSlice) {
	w.tr.OnServiceAdd(svc)
	for _, s := range slices {
		w.tr.OnEndpointSliceAdd(s)
	}
}

func (w *world) snap() *model.Snapshot { return w.tr.Snapshot() }

func withAffinity(seconds int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &seconds}}
	}
}

var _ = time.Second

func withName(s *discovery.EndpointSlice, name string) *discovery.EndpointSlice {
	s.Name = name
	return s
}
