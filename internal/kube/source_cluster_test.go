package kube_test

// These tests run the source against a real API server and controller manager
// (internal/cluster); the EndpointSlices are written by the real EndpointSlice
// controller from pods whose status the harness sets, as a kubelet would.
//
// IP plan:
//   node-a  InternalIP 192.168.10.1, fd00:10::1   (the node kproxy runs on)
//   node-b  InternalIP 192.168.10.2                (no zone)
//   node-c  InternalIP 192.168.10.3, zone-b        (node-a is zone-a)
//   pods    10.244.0.0/24, fd00:10:244::/64 on node-a; 10.244.1.0/24 on node-b; 10.244.2.0/24 on node-c
//   services from 10.96.0.0/16 and fd00:10:96::/112 (allocated by the API server)

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/kube"
	"github.com/kproxy/kproxy/internal/model"
)

func makeService(ns, name string, tweak func(*corev1.Service)) *corev1.Service {
	policy := corev1.IPFamilyPolicyPreferDualStack
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"app": name},
			IPFamilyPolicy: &policy,
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
	if tweak != nil {
		tweak(svc)
	}
	return svc
}

func makePod(ns, name, app string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "registry.k8s.io/pause:3.10",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// endpointSummary renders a port's endpoints as "ip:port[,notready][,terminating][,local]", sorted.
func endpointSummary(pv *model.PortView) []string {
	if pv == nil {
		return nil
	}
	var out []string
	for _, ep := range pv.Endpoints {
		s := ep.String()
		if !ep.Ready {
			s += ",notready"
		}
		if ep.Terminating {
			s += ",terminating"
		}
		if ep.Local {
			s += ",local"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// waitSnapshot polls the tracker until cond holds on a fresh snapshot.
func waitSnapshot(t *testing.T, tr *model.Tracker, what string, cond func(*model.Snapshot) bool) *model.Snapshot {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var snap *model.Snapshot
	for time.Now().Before(deadline) {
		snap = tr.Snapshot()
		if cond(snap) {
			return snap
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
	return snap
}

func portView(snap *model.Snapshot, ns, name, port string) *model.PortView {
	return snap.Ports[model.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: ns, Name: name}, Port: port, Protocol: corev1.ProtocolTCP,
	}]
}

func waitEndpoints(t *testing.T, tr *model.Tracker, ns, name, port string, want ...string) *model.Snapshot {
	t.Helper()
	slices.Sort(want)
	var got []string
	defer func() {
		if t.Failed() {
			t.Logf("last endpoints of %s/%s:%s: %q", ns, name, port, got)
		}
	}()
	return waitSnapshot(t, tr, fmt.Sprintf("endpoints %q of %s/%s:%s", want, ns, name, port), func(s *model.Snapshot) bool {
		got = endpointSummary(portView(s, ns, name, port))
		return slices.Equal(got, want)
	})
}

// startSource runs a kube source for node-a into a new tracker until the test ends.
func startSource(t *testing.T, c *cluster.Cluster, tweak func(*kube.Config)) (*kube.Source, *model.Tracker) {
	t.Helper()
	tr := model.NewTracker("node-a", nil)
	cfg := kube.Config{Kubeconfig: c.Kubeconfig, NodeName: "node-a", ProbeInterval: 200 * time.Millisecond, ContentType: kube.ContentTypeProtobuf}
	if tweak != nil {
		tweak(&cfg)
	}
	src, err := kube.New(cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("source Run: %v", err)
		}
	})
	return src, tr
}

func TestSourceFollowsRealCluster(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "web"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.CreateNode(ctx, cluster.NodeSpec{Name: "node-a", InternalIPs: addrs("192.168.10.1", "fd00:10::1"),
		Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}})
	must(err)
	_, err = c.CreateNode(ctx, cluster.NodeSpec{Name: "node-b", InternalIPs: addrs("192.168.10.2")})
	must(err)
	must(c.CreateNamespace(ctx, ns))

	// Objects that exist before kproxy starts arrive through the initial list.
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, makeService(ns, "web", nil), metav1.CreateOptions{})
	must(err)
	_, err = c.RunPod(ctx, makePod(ns, "web-1", "web"), "node-a", addrs("10.244.0.10", "fd00:10:244::10")...)
	must(err)

	src, tr := startSource(t, c, nil)
	snap := waitSnapshot(t, tr, "synced", func(*model.Snapshot) bool { return tr.Synced() })
	if !src.Synced() {
		t.Error("source not synced after tracker was")
	}
	snap = waitEndpoints(t, tr, ns, "web", "http", "10.244.0.10:8080,local", "[fd00:10:244::10]:8080,local")
	pv := portView(snap, ns, "web", "http")
	if want := addrs(svc.Spec.ClusterIPs...); !slices.Equal(pv.ClusterIPs, want) {
		t.Errorf("cluster IPs %v, want %v", pv.ClusterIPs, want)
	}
	if len(pv.ClusterIPs) != 2 {
		t.Errorf("dual-stack service got cluster IPs %v", pv.ClusterIPs)
	}
	if snap.Node.Zone != "zone-a" || !slices.Equal(snap.Node.Addresses, addrs("192.168.10.1", "fd00:10::1")) {
		t.Errorf("node = %+v", snap.Node)
	}

	t.Run("pod on another node", func(t *testing.T) {
		_, err := c.RunPod(ctx, makePod(ns, "web-2", "web"), "node-b", addrs("10.244.1.10")...)
		must(err)
		waitEndpoints(t, tr, ns, "web", "http", "10.244.0.10:8080,local", "[fd00:10:244::10]:8080,local", "10.244.1.10:8080")
	})
	t.Run("pod restarted with a new IP", func(t *testing.T) {
		_, err := c.SetPodStatus(ctx, ns, "web-1", true, addrs("10.244.0.11", "fd00:10:244::11")...)
		must(err)
		waitEndpoints(t, tr, ns, "web", "http", "10.244.0.11:8080,local", "[fd00:10:244::11]:8080,local", "10.244.1.10:8080")
	})
	t.Run("pod not ready", func(t *testing.T) {
		_, err := c.SetPodStatus(ctx, ns, "web-2", false)
		must(err)
		snap := waitEndpoints(t, tr, ns, "web", "http", "10.244.0.11:8080,local", "[fd00:10:244::11]:8080,local", "10.244.1.10:8080,notready")
		for _, ep := range portView(snap, ns, "web", "http").Cluster {
			if ep.IP == netip.MustParseAddr("10.244.1.10") {
				t.Errorf("not-ready endpoint %v used for cluster traffic", ep)
			}
		}
	})
	t.Run("pod terminating then deleted", func(t *testing.T) {
		_, err := c.SetPodStatus(ctx, ns, "web-2", true)
		must(err)
		must(c.TerminatePod(ctx, ns, "web-2"))
		waitEndpoints(t, tr, ns, "web", "http", "10.244.0.11:8080,local", "[fd00:10:244::11]:8080,local", "10.244.1.10:8080,notready,terminating")
		must(c.ForceDeletePod(ctx, ns, "web-2"))
		waitEndpoints(t, tr, ns, "web", "http", "10.244.0.11:8080,local", "[fd00:10:244::11]:8080,local")
	})
	t.Run("headless and ExternalName services reach the model, without ports", func(t *testing.T) {
		_, err := c.Client.CoreV1().Services(ns).Create(ctx, makeService(ns, "web-headless", func(s *corev1.Service) {
			s.Spec.ClusterIP = corev1.ClusterIPNone
			s.Spec.Selector = map[string]string{"app": "web"}
		}), metav1.CreateOptions{})
		must(err)
		_, err = c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ext"},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"},
		}, metav1.CreateOptions{})
		must(err)
		headless := types.NamespacedName{Namespace: ns, Name: "web-headless"}
		snap := waitSnapshot(t, tr, "headless service and its slice", func(s *model.Snapshot) bool {
			_, ok := s.Services[types.NamespacedName{Namespace: ns, Name: "ext"}]
			return ok && s.Services[headless] != nil && len(s.Slices[headless]) > 0
		})
		if pv := portView(snap, ns, "web-headless", "http"); pv != nil {
			t.Errorf("headless service has a proxied port: %+v", pv)
		}
	})
	t.Run("services for another proxy are skipped", func(t *testing.T) {
		other := makeService(ns, "other", func(s *corev1.Service) {
			s.Labels = map[string]string{kube.LabelServiceProxyName: "someone-else"}
			s.Spec.Selector = map[string]string{"app": "web"}
		})
		_, err := c.Client.CoreV1().Services(ns).Create(ctx, other, metav1.CreateOptions{})
		must(err)
		// A marker created after it: once the marker is seen, "other" would have been too.
		_, err = c.Client.CoreV1().Services(ns).Create(ctx, makeService(ns, "marker", nil), metav1.CreateOptions{})
		must(err)
		snap := waitSnapshot(t, tr, "marker service", func(s *model.Snapshot) bool {
			return s.Services[types.NamespacedName{Namespace: ns, Name: "marker"}] != nil
		})
		if snap.Services[types.NamespacedName{Namespace: ns, Name: "other"}] != nil {
			t.Error("service labelled for another proxy reached the model")
		}
		// Relabelled for kproxy's default (no label): it appears, with its slice.
		_, err = c.Client.CoreV1().Services(ns).Patch(ctx, "other", types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"`+kube.LabelServiceProxyName+`":null}}}`), metav1.PatchOptions{})
		must(err)
		waitEndpoints(t, tr, ns, "other", "http", "10.244.0.11:8080,local", "[fd00:10:244::11]:8080,local")
	})
	t.Run("trafficDistribution PreferClose: zone hints from the real controller", func(t *testing.T) {
		_, err := c.CreateNode(ctx, cluster.NodeSpec{Name: "node-c", InternalIPs: addrs("192.168.10.3"),
			Labels: map[string]string{corev1.LabelTopologyZone: "zone-b"}})
		must(err)
		td := corev1.ServiceTrafficDistributionPreferClose
		_, err = c.Client.CoreV1().Services(ns).Create(ctx, makeService(ns, "zonal", func(s *corev1.Service) {
			s.Spec.TrafficDistribution = &td
		}), metav1.CreateOptions{})
		must(err)
		_, err = c.RunPod(ctx, makePod(ns, "zonal-a", "zonal"), "node-a", addrs("10.244.0.20")...)
		must(err)
		_, err = c.RunPod(ctx, makePod(ns, "zonal-c", "zonal"), "node-c", addrs("10.244.2.20")...)
		must(err)
		// node-a is in zone-a: only the zone-a endpoint serves cluster traffic from here.
		waitSnapshot(t, tr, "zone-filtered cluster endpoints", func(s *model.Snapshot) bool {
			pv := portView(s, ns, "zonal", "http")
			if pv == nil || len(pv.Endpoints) != 2 {
				return false
			}
			return len(pv.Cluster) == 1 && pv.Cluster[0].IP == netip.MustParseAddr("10.244.0.20") &&
				slices.Equal(pv.Cluster[0].ZoneHints, []string{"zone-a"})
		})
	})
	t.Run("managed fields are not cached", func(t *testing.T) {
		snap := tr.Snapshot()
		for name, s := range snap.Services {
			if len(s.ManagedFields) > 0 {
				t.Errorf("service %v kept managedFields", name)
			}
		}
	})

	t.Run("API server restart keeps state and catches up", func(t *testing.T) {
		before := endpointSummary(portView(tr.Snapshot(), ns, "web", "http"))
		c.StopAPIServer()
		waitSnapshot(t, tr, "disconnected", func(*model.Snapshot) bool { return !src.Connected() })
		if st := src.Status(); st.LastError == nil {
			t.Errorf("disconnected without an error: %+v", st)
		}
		// Give the reflectors time to fail and retry a few times.
		time.Sleep(2 * time.Second)
		after := endpointSummary(portView(tr.Snapshot(), ns, "web", "http"))
		if !slices.Equal(before, after) {
			t.Fatalf("state changed while the API server was down: %q -> %q", before, after)
		}
		must(c.StartAPIServer(ctx))
		// A change right after the restart must arrive.
		_, err := c.SetPodStatus(ctx, ns, "web-1", true, addrs("10.244.0.12", "fd00:10:244::12")...)
		must(err)
		waitEndpoints(t, tr, ns, "web", "http", "10.244.0.12:8080,local", "[fd00:10:244::12]:8080,local")
		waitSnapshot(t, tr, "reconnected", func(*model.Snapshot) bool { return src.Connected() })
	})
}

func TestSourceServiceProxyName(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range []struct{ name, label string }{{"mine", "kproxy"}, {"theirs", "other-proxy"}, {"unlabelled", ""}} {
		svc := makeService("default", tc.name, func(s *corev1.Service) {
			if tc.label != "" {
				s.Labels = map[string]string{kube.LabelServiceProxyName: tc.label}
			}
		})
		if _, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, tr := startSource(t, c, func(cfg *kube.Config) { cfg.ServiceProxyName = "kproxy"; cfg.ContentType = kube.ContentTypeJSON })
	snap := waitSnapshot(t, tr, "synced", func(*model.Snapshot) bool { return tr.Synced() })
	var got []string
	for name := range snap.Services {
		if name.Namespace == "default" && name.Name != "kubernetes" {
			got = append(got, name.Name)
		}
	}
	slices.Sort(got)
	if want := []string{"mine", "unlabelled"}; !slices.Equal(got, want) {
		t.Errorf("services = %q, want %q", got, want)
	}
}
