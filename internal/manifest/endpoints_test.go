package manifest

// IP plan: pods 10.244.0.0/24 and fd00:10:244::/64; services from 10.96.0.0/16
// (and fd00:10:96::/112 when dual-stack).

import (
	"net/netip"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/model"
)

// pod writes a pod manifest from parts: extraMeta under metadata, ports under
// the container, status lines under status.
func pod(name, ns, app, extraMeta, ports, status string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\n  labels:\n    app: " + app + "\n" + extraMeta +
		"spec:\n  nodeName: node-1\n  containers:\n  - name: c\n" + ports + "status:\n" + status
}

const (
	ready    = "  conditions:\n  - type: Ready\n    status: \"True\"\n"
	notReady = "  conditions:\n  - type: Ready\n    status: \"False\"\n"
	httpPort = "    ports:\n    - name: http\n      containerPort: 8080\n"
)

func TestSelectorEndpoints(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "svc.yaml", `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: metrics
    port: 9100
`)
	docs := []string{
		pod("web-1", "default", "web", "", httpPort, "  phase: Running\n  podIP: 10.244.0.11\n"+ready),
		// The named port resolves per pod: another number here.
		pod("web-2", "default", "web", "", "    ports:\n    - name: http\n      containerPort: 9090\n", "  phase: Running\n  podIP: 10.244.0.12\n"+ready),
		// No port called http: left out of that port, still in metrics.
		pod("web-3", "default", "web", "", "", "  phase: Running\n  podIP: 10.244.0.13\n"+ready),
		pod("web-4", "default", "web", "", httpPort, "  phase: Running\n  podIP: 10.244.0.14\n"+notReady),
		pod("web-5", "default", "web", "  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n", httpPort, "  phase: Running\n  podIP: 10.244.0.15\n"+ready),
		pod("web-6", "default", "web", "", httpPort, "  phase: Failed\n  podIP: 10.244.0.16\n"),
		pod("web-7", "default", "web", "", httpPort, "  phase: Pending\n"),
		pod("other-1", "default", "other", "", httpPort, "  phase: Running\n  podIP: 10.244.0.18\n"+ready),
		pod("web-x", "elsewhere", "web", "", httpPort, "  phase: Running\n  podIP: 10.244.0.19\n"+ready),
		// Dual-stack pod, single-stack service: only its IPv4 address is used.
		pod("web-8", "default", "web", "", httpPort, "  phase: Running\n  podIPs:\n  - ip: 10.244.0.20\n  - ip: fd00:10:244::20\n"+ready),
	}
	writeFile(t, dir, "pods.yaml", strings.Join(docs, "---\n"))

	tr := model.NewTracker("node-1", nil)
	src, err := New(Config{Dir: dir, Ephemeral: true}, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	if p := src.Problems(); len(p) > 0 {
		t.Fatalf("problems: %v", p)
	}
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	snap := tr.Snapshot()
	got := map[string]string{}
	for name, pv := range snap.Ports {
		var eps []string
		for _, ep := range pv.Endpoints {
			eps = append(eps, ep.String()+cond(ep))
		}
		sort.Strings(eps)
		got[name.String()] = strings.Join(eps, " ")
	}
	want := map[string]string{
		"default/web:http": "10.244.0.11:8080 10.244.0.12:9090 10.244.0.14:8080(not-ready) 10.244.0.15:8080(terminating,serving) 10.244.0.20:8080",
		"default/web:metrics": "10.244.0.11:9100 10.244.0.12:9100 10.244.0.13:9100 10.244.0.14:9100(not-ready) " +
			"10.244.0.15:9100(terminating,serving) 10.244.0.20:9100",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s:\n got %s\nwant %s", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("ports %v", got)
	}
	pv := snap.Ports[model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: "http", Protocol: "TCP"}]
	if pv == nil || !pv.Endpoints[0].Local {
		t.Errorf("endpoints on node-1 should be local: %+v", pv)
	}
}

func cond(ep *model.Endpoint) string {
	switch {
	case ep.Terminating && ep.Serving:
		return "(terminating,serving)"
	case ep.Terminating:
		return "(terminating)"
	case !ep.Ready:
		return "(not-ready)"
	}
	return ""
}

func TestDualStackEndpointsAndEndpointsObjects(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "dual.yaml", `apiVersion: v1
kind: Service
metadata:
  name: dual
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  publishNotReadyAddresses: true
  selector:
    app: dual
  ports:
  - port: 53
    protocol: UDP
---
`+pod("dual-1", "default", "dual", "", "", "  phase: Running\n  podIPs:\n  - ip: 10.244.0.30\n  - ip: fd00:10:244::30\n"+notReady)+`---
apiVersion: v1
kind: Service
metadata:
  name: legacy
spec:
  ports:
  - name: db
    port: 3306
---
apiVersion: v1
kind: Endpoints
metadata:
  name: legacy
subsets:
- addresses:
  - ip: 192.168.1.10
  notReadyAddresses:
  - ip: 192.168.1.11
  ports:
  - name: db
    port: 3306
`)
	// Endpoints for a service with a selector are not mirrored.
	writeFile(t, dir, "ignored.yaml", "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: dual\nsubsets:\n- addresses:\n  - ip: 192.168.1.99\n  ports:\n  - port: 53\n    protocol: UDP\n")
	cidrs, _ := allocator.ParseServiceCIDRs("10.96.0.0/16,fd00:10:96::/112")
	r, err := Load(Config{Dir: dir, Ephemeral: true, Allocator: allocator.Config{ServiceCIDRs: cidrs}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) > 0 {
		t.Fatalf("problems %v", r.Problems)
	}
	var got []string
	for _, sl := range r.EndpointSlices {
		var eps []string
		for _, ep := range sl.Endpoints {
			eps = append(eps, ep.Addresses[0]+map[bool]string{true: "+", false: "-"}[*ep.Conditions.Ready])
		}
		got = append(got, sl.Name+"["+string(sl.AddressType)+"]="+strings.Join(eps, ","))
	}
	want := "dual-ipv4[IPv4]=10.244.0.30+ dual-ipv6[IPv6]=fd00:10:244::30+ legacy-mirror-ipv4-0[IPv4]=192.168.1.10+,192.168.1.11-"
	if strings.Join(got, " ") != want {
		t.Fatalf("slices\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	for _, s := range r.Services {
		if s.Name == "dual" {
			ip := netip.MustParseAddr(s.Spec.ClusterIPs[0])
			if !ip.Is6() || len(s.Spec.ClusterIPs) != 2 {
				t.Fatalf("dual clusterIPs %v, want IPv6 first", s.Spec.ClusterIPs)
			}
		}
	}
}

func TestNodesAndZones(t *testing.T) {
	dir := t.TempDir()
	node := func(name, zone, ip string) string {
		return "apiVersion: v1\nkind: Node\nmetadata:\n  name: " + name + "\n  labels:\n    topology.kubernetes.io/zone: " + zone +
			"\nstatus:\n  addresses:\n  - type: InternalIP\n    address: " + ip + "\n"
	}
	writeFile(t, dir, "nodes.yaml", node("node-1", "zone-a", "192.168.0.1")+"---\n"+node("node-2", "zone-b", "192.168.0.2"))
	writeFile(t, dir, "svc.yaml", svcYAML("web", "  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n"))
	writeFile(t, dir, "pods.yaml", strings.Replace(pod("web-1", "default", "web", "", httpPort, "  phase: Running\n  podIP: 10.244.0.11\n"+ready), "node-1", "node-2", 1))

	tr := model.NewTracker("node-1", nil)
	src, err := New(Config{Dir: dir, Ephemeral: true, NodeName: "node-1"}, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	snap := tr.Snapshot()
	if snap.Node.Zone != "zone-a" || len(snap.Node.Addresses) != 1 || snap.Node.Addresses[0].String() != "192.168.0.1" {
		t.Fatalf("this node: %+v", snap.Node)
	}
	pv := snap.Ports[model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: "http", Protocol: "TCP"}]
	if pv == nil || len(pv.Endpoints) != 1 || pv.Endpoints[0].Zone != "zone-b" || pv.Endpoints[0].NodeName != "node-2" || pv.Endpoints[0].Local {
		t.Fatalf("endpoint: %+v", pv)
	}

	// node-2 moves to zone-c: the endpoint follows.
	writeFile(t, dir, "nodes.yaml", node("node-1", "zone-a", "192.168.0.1")+"---\n"+node("node-2", "zone-c", "192.168.0.2"))
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	pv = tr.Snapshot().Ports[pv.Name]
	if pv.Endpoints[0].Zone != "zone-c" {
		t.Fatalf("zone after the node change: %q", pv.Endpoints[0].Zone)
	}
}
