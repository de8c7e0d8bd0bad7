package kube

import (
	"reflect"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// recorder is a model.Handler that writes down the events it gets.
type recorder struct{ events []string }

func (r *recorder) add(kind, op string, m metav1.Object) {
	r.events = append(r.events, kind+" "+op+" "+m.GetName())
}
func (r *recorder) OnServiceAdd(s *v1.Service)                    { r.add("svc", "add", s) }
func (r *recorder) OnServiceUpdate(_, s *v1.Service)              { r.add("svc", "update", s) }
func (r *recorder) OnServiceDelete(s *v1.Service)                 { r.add("svc", "delete", s) }
func (r *recorder) OnServicesSynced()                             {}
func (r *recorder) OnEndpointSliceAdd(s *discovery.EndpointSlice) { r.add("slice", "add", s) }
func (r *recorder) OnEndpointSliceUpdate(_, s *discovery.EndpointSlice) {
	r.add("slice", "update", s)
}
func (r *recorder) OnEndpointSliceDelete(s *discovery.EndpointSlice) { r.add("slice", "delete", s) }
func (r *recorder) OnEndpointSlicesSynced()                          {}
func (r *recorder) OnNodeAdd(n *v1.Node)                             { r.add("node", "add", n) }
func (r *recorder) OnNodeUpdate(_, n *v1.Node)                       { r.add("node", "update", n) }
func (r *recorder) OnNodeDelete(n *v1.Node)                          { r.add("node", "delete", n) }
func (r *recorder) OnNodeSynced()                                    {}

func svc(name, proxy string) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	if proxy != "" {
		s.Labels = map[string]string{LabelServiceProxyName: proxy}
	}
	return s
}

func TestHandlersFilterAndUnwrap(t *testing.T) {
	tests := []struct {
		name      string
		proxyName string
		feed      func(h cache.ResourceEventHandler)
		want      []string
	}{
		{
			name: "tombstone is unwrapped",
			feed: func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: svc("a", "")})
			},
			want: []string{"svc delete a"},
		},
		{
			name: "wrong types are dropped, not panicked on",
			feed: func(h cache.ResourceEventHandler) {
				h.OnAdd(&v1.Pod{}, false)
				h.OnUpdate(svc("a", ""), &v1.Pod{})
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: "junk"})
				h.OnDelete(nil)
			},
		},
		{
			name: "another proxy's service is skipped",
			feed: func(h cache.ResourceEventHandler) {
				h.OnAdd(svc("a", "other"), false)
				h.OnAdd(svc("b", ""), false)
			},
			want: []string{"svc add b"},
		},
		{
			name:      "own proxy name is taken",
			proxyName: "kproxy",
			feed: func(h cache.ResourceEventHandler) {
				h.OnAdd(svc("a", "kproxy"), false)
				h.OnAdd(svc("b", "other"), false)
			},
			want: []string{"svc add a"},
		},
		{
			name: "relabelling turns into add and delete",
			feed: func(h cache.ResourceEventHandler) {
				h.OnUpdate(svc("a", "other"), svc("a", ""))
				h.OnUpdate(svc("a", ""), svc("a", ""))
				h.OnUpdate(svc("a", ""), svc("a", "other"))
				h.OnUpdate(svc("a", "other"), svc("a", "other"))
			},
			want: []string{"svc add a", "svc update a", "svc delete a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			s, err := NewWithClient(Config{NodeName: "node-a", ServiceProxyName: tt.proxyName}, fake.NewClientset(), rec)
			if err != nil {
				t.Fatal(err)
			}
			tt.feed(s.serviceHandler())
			if !slices.Equal(rec.events, tt.want) {
				t.Errorf("events = %q, want %q", rec.events, tt.want)
			}
		})
	}
}

func TestSlimDropsWhatKproxyNeverReads(t *testing.T) {
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			Annotations: map[string]string{v1.LastAppliedConfigAnnotation: "{}", "keep": "me"}},
		Status: v1.NodeStatus{Images: []v1.ContainerImage{{Names: []string{"x"}}}, Addresses: []v1.NodeAddress{{Address: "192.0.2.1"}}},
	}
	out, err := slim(n)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := out.(*v1.Node)
	if !ok {
		t.Fatalf("slim returned %T", out)
	}
	if got.ManagedFields != nil || got.Status.Images != nil || got.Annotations[v1.LastAppliedConfigAnnotation] != "" {
		t.Errorf("not slimmed: %+v", got)
	}
	if got.Annotations["keep"] != "me" || len(got.Status.Addresses) != 1 {
		t.Errorf("slimmed too much: %+v", got)
	}

	ready, node, zone, host := true, "node-a", "zone-a", "web-0"
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-abc", Namespace: "ns",
			Labels:          map[string]string{discovery.LabelServiceName: "web"},
			Annotations:     map[string]string{v1.EndpointsLastChangeTriggerTime: "2026-11-26T00:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{Addresses: []string{"10.244.0.5"}, Conditions: discovery.EndpointConditions{Ready: &ready},
			Hostname: &host, NodeName: &node, Zone: &zone, TargetRef: &v1.ObjectReference{Kind: "Pod", Name: "web-0"},
			DeprecatedTopology: map[string]string{"k": "v"},
			Hints:              &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}}},
	}
	want := es.DeepCopy()
	want.OwnerReferences = nil
	want.Endpoints[0].TargetRef, want.Endpoints[0].DeprecatedTopology = nil, nil
	out, err = slim(es)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, out) {
		t.Errorf("slimmed slice:\n%+v\nwant\n%+v", out, want)
	}
}
