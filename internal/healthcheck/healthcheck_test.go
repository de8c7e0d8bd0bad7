package healthcheck

// IP plan: every server binds to 127.0.0.1 (a kernel-chosen port, or a port
// found free just before); pod addresses in snapshots are 10.244.0.0/24 (this
// node) and 10.244.1.0/24 (another node). Nothing leaves loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var client = &http.Client{Timeout: 5 * time.Second}

// get returns the status and body of a GET.
func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, body
}

type healthzBody struct {
	LastUpdated  string `json:"lastUpdated"`
	CurrentTime  string `json:"currentTime"`
	NodeEligible *bool  `json:"nodeEligible"`
}

func startProxyHealth(t *testing.T, timeout time.Duration, m *metrics.Metrics, opts ...Option) (*ProxyHealthServer, *fakeClock, string) {
	t.Helper()
	clock := &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	hs := NewProxyHealthServer("127.0.0.1:0", timeout, m, clock, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hs.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for hs.Addr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("proxy health server did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return hs, clock, "http://" + hs.Addr().String()
}

func checkHealth(t *testing.T, base, path string, want int, wantEligible *bool) healthzBody {
	t.Helper()
	code, body := get(t, base+path)
	if code != want {
		t.Fatalf("%s = %d, want %d (body %s)", path, code, want, body)
	}
	var hb healthzBody
	if err := json.Unmarshal(body, &hb); err != nil {
		t.Fatalf("%s body %q is not JSON: %v", path, body, err)
	}
	if hb.LastUpdated == "" || hb.CurrentTime == "" {
		t.Fatalf("%s body %s lacks lastUpdated/currentTime", path, body)
	}
	if wantEligible != nil && (hb.NodeEligible == nil || *hb.NodeEligible != *wantEligible) {
		t.Fatalf("%s body %s: nodeEligible want %v", path, body, *wantEligible)
	}
	return hb
}

func TestProxyHealthServer(t *testing.T) {
	yes, no := true, false
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	hs, clock, base := startProxyHealth(t, 60*time.Second, m)

	// Starting up: nothing applied yet, healthy even with a change queued.
	hs.QueuedUpdate(v1.IPv4Protocol)
	clock.Step(10 * time.Minute)
	checkHealth(t, base, "/healthz", 200, &yes)

	hs.Updated(v1.IPv4Protocol)
	hs.Updated(v1.IPv6Protocol)
	checkHealth(t, base, "/healthz", 200, &yes)
	checkHealth(t, base, "/livez", 200, nil)

	// A change is queued but not applied: healthy until the timeout passes.
	hs.QueuedUpdate(v1.IPv6Protocol)
	clock.Step(59 * time.Second)
	hs.QueuedUpdate(v1.IPv6Protocol) // a later change does not restart the clock
	checkHealth(t, base, "/healthz", 200, &yes)
	clock.Step(2 * time.Second)
	hb := checkHealth(t, base, "/healthz", 503, &yes)
	if hb.LastUpdated == hb.CurrentTime {
		t.Errorf("unhealthy body %+v: lastUpdated should be the last sync, not now", hb)
	}
	checkHealth(t, base, "/livez", 503, nil)
	if hs.IsHealthy() {
		t.Error("IsHealthy = true while a change is late")
	}

	// The sync catches up.
	hs.Updated(v1.IPv6Protocol)
	checkHealth(t, base, "/healthz", 200, &yes)
	checkHealth(t, base, "/livez", 200, nil)

	// The node is being deleted: /healthz fails, /livez does not.
	hs.SyncNode(model.Node{Name: "node-a", Deleting: true})
	checkHealth(t, base, "/healthz", 503, &no)
	checkHealth(t, base, "/livez", 200, nil)
	if !hs.IsHealthy() {
		t.Error("IsHealthy = false: it must ignore the node")
	}
	hs.SyncNode(model.Node{Name: "node-a"})
	checkHealth(t, base, "/healthz", 200, &yes)

	for _, c := range []struct {
		vec  *prometheus.CounterVec
		code string
		want float64
	}{
		{m.ProxyHealthzTotal, "200", 5},
		{m.ProxyHealthzTotal, "503", 2},
		{m.ServiceHealthzTotal, "200", 3},
		{m.ServiceHealthzTotal, "503", 1},
	} {
		if got := counterValue(t, c.vec.WithLabelValues(c.code)); got != c.want {
			t.Errorf("counter code=%s = %v, want %v", c.code, got, c.want)
		}
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestProxyHealthSourceUnreachable(t *testing.T) {
	var mu sync.Mutex
	connected, contact := true, time.Time{}
	status := func() (bool, time.Time) { mu.Lock(); defer mu.Unlock(); return connected, contact }
	hs, clock, base := startProxyHealth(t, time.Minute, nil, WithSourceStatus(status))
	_ = hs
	mu.Lock()
	contact = clock.Now()
	mu.Unlock()
	checkHealth(t, base, "/healthz", http.StatusOK, nil)

	mu.Lock()
	connected = false
	mu.Unlock()
	clock.Step(30 * time.Second)
	checkHealth(t, base, "/healthz", http.StatusOK, nil) // a short blip is tolerated
	clock.Step(31 * time.Second)
	_, body := get(t, base+"/healthz")
	if !strings.Contains(string(body), `"sourceReachable": false`) {
		t.Errorf("body %s does not say the source is unreachable", body)
	}
	checkHealth(t, base, "/healthz", http.StatusServiceUnavailable, nil)
	checkHealth(t, base, "/livez", http.StatusOK, nil) // never restart kproxy for an API outage

	mu.Lock()
	connected, contact = true, clock.Now()
	mu.Unlock()
	checkHealth(t, base, "/healthz", http.StatusOK, nil)
}

func TestProxyHealthNodeFromTaint(t *testing.T) {
	hs, _, base := startProxyHealth(t, time.Minute, nil)
	node := &v1.Node{}
	node.Name = "node-a"
	node.Spec.Taints = []v1.Taint{{Key: model.ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	hs.SyncNode(model.NodeFrom(node))
	no := false
	checkHealth(t, base, "/healthz", 503, &no)
}

func TestProxyHealthClose(t *testing.T) {
	hs := NewProxyHealthServer("127.0.0.1:0", time.Minute, nil, nil)
	done := make(chan error, 1)
	go func() { done <- hs.Run(context.Background()) }()
	for hs.Addr() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if err := hs.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

func TestProxyHealthListenError(t *testing.T) {
	fail := func(context.Context, string, string) (net.Listener, error) {
		return nil, errors.New("address in use")
	}
	hs := NewProxyHealthServer("127.0.0.1:10256", time.Minute, nil, nil, WithListen(fail))
	if err := hs.Run(context.Background()); err == nil {
		t.Fatal("Run succeeded with a failing listener")
	}
}

// freePort finds a loopback port that is free right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

var loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

func svcName(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: "default", Name: name}
}

// makeLBPort builds one port of a LoadBalancer service with ETP Local.
func makeLBPort(name, port string, hcPort uint16, eps ...*model.Endpoint) *model.PortView {
	return &model.PortView{
		ServicePort: &model.ServicePort{
			Name:                model.ServicePortName{NamespacedName: svcName(name), Port: port, Protocol: v1.ProtocolTCP},
			Type:                v1.ServiceTypeLoadBalancer,
			Port:                80,
			Protocol:            v1.ProtocolTCP,
			NodePort:            30080,
			ExternalPolicyLocal: true,
			HealthCheckNodePort: int32(hcPort),
		},
		Endpoints: eps,
	}
}

func ep(ip string, local, ready bool) *model.Endpoint {
	return &model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: ready, Serving: true, Terminating: !ready, Local: local}
}

func snapshot(pvs ...*model.PortView) *model.Snapshot {
	s := &model.Snapshot{Ports: map[model.ServicePortName]*model.PortView{}}
	for _, pv := range pvs {
		s.Ports[pv.Name] = pv
	}
	return s
}

func checkService(t *testing.T, port uint16, want int, wantName string, wantCount int) {
	t.Helper()
	code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if code != want {
		t.Fatalf("port %d = %d, want %d (body %s)", port, code, want, body)
	}
	var r ServiceHealthResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	if r.Service.Namespace != "default" || r.Service.Name != wantName || r.LocalEndpoints != wantCount || !r.ServiceProxyHealthy {
		t.Fatalf("port %d body %+v, want service default/%s with %d local endpoints", port, r, wantName, wantCount)
	}
}

func refused(t *testing.T, port uint16) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("port %d still accepts connections", port)
	}
}

func TestServiceHealthServer(t *testing.T) {
	s := NewServiceHealthServer(loopback, nil)
	t.Cleanup(func() { _ = s.Close() })
	pa, pb := freePort(t), freePort(t)

	// web has two ports backed by the same two local pods: counted once each.
	web := []*model.PortView{
		makeLBPort("web", "http", pa, ep("10.244.0.5", true, true), ep("10.244.0.6", true, true), ep("10.244.1.5", false, true)),
		makeLBPort("web", "https", pa, ep("10.244.0.5", true, true), ep("10.244.0.6", true, true)),
	}
	db := makeLBPort("db", "", pb, ep("10.244.1.7", false, true))
	if err := s.Sync(snapshot(append(web, db)...)); err != nil {
		t.Fatal(err)
	}
	checkService(t, pa, 200, "web", 2)
	checkService(t, pb, 503, "db", 0)

	// One local pod starts terminating: it no longer counts.
	web[0].Endpoints[1] = ep("10.244.0.6", true, false)
	web[1].Endpoints[1] = ep("10.244.0.6", true, false)
	if err := s.Sync(snapshot(append(web, db)...)); err != nil {
		t.Fatal(err)
	}
	checkService(t, pa, 200, "web", 1)

	// A local endpoint appears for db; web loses its last one.
	db.Endpoints = append(db.Endpoints, ep("10.244.0.9", true, true))
	web[0].Endpoints, web[1].Endpoints = nil, nil
	if err := s.Sync(snapshot(append(web, db)...)); err != nil {
		t.Fatal(err)
	}
	checkService(t, pa, 503, "web", 0)
	checkService(t, pb, 200, "db", 1)

	// web goes away: its port closes, db stays.
	if err := s.Sync(snapshot(db)); err != nil {
		t.Fatal(err)
	}
	refused(t, pa)
	checkService(t, pb, 200, "db", 1)
	if got := s.Ports(); len(got) != 1 || got[svcName("db")] != pb {
		t.Fatalf("Ports() = %v", got)
	}

	// db moves to another port.
	pc := freePort(t)
	db.HealthCheckNodePort = int32(pc)
	if err := s.Sync(snapshot(db)); err != nil {
		t.Fatal(err)
	}
	refused(t, pb)
	checkService(t, pc, 200, "db", 1)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	refused(t, pc)
}

type unhealthyProxy struct{}

func (unhealthyProxy) IsHealthy() bool { return false }

func TestServiceHealthProxyUnhealthy(t *testing.T) {
	s := NewServiceHealthServer(loopback, unhealthyProxy{})
	t.Cleanup(func() { _ = s.Close() })
	p := freePort(t)
	if err := s.Sync(snapshot(makeLBPort("web", "", p, ep("10.244.0.5", true, true)))); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", p))
	var r ServiceHealthResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if code != 503 || r.ServiceProxyHealthy || r.LocalEndpoints != 1 {
		t.Fatalf("got %d %+v, want 503 with serviceProxyHealthy false and 1 endpoint", code, r)
	}
}

func TestServiceHealthBindRetry(t *testing.T) {
	// Another process holds the port: the sync reports it and retries later.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := uint16(busy.Addr().(*net.TCPAddr).Port)
	s := NewServiceHealthServer(loopback, nil)
	t.Cleanup(func() { _ = s.Close() })
	snap := snapshot(makeLBPort("web", "", p, ep("10.244.0.5", true, true)))
	if err := s.Sync(snap); err == nil {
		t.Fatal("Sync succeeded on a busy port")
	}
	if len(s.Ports()) != 0 {
		t.Fatalf("Ports() = %v, want none open", s.Ports())
	}
	busy.Close()
	if err := s.Sync(snap); err != nil {
		t.Fatalf("retry: %v", err)
	}
	checkService(t, p, 200, "web", 1)
}

// fakeListen records the addresses asked for and fails those in fail; the
// others get a real loopback listener on a kernel-chosen port.
type fakeListen struct {
	mu    sync.Mutex
	asked []string
	fail  map[string]bool
}

func (f *fakeListen) listen(ctx context.Context, network, addr string) (net.Listener, error) {
	f.mu.Lock()
	f.asked = append(f.asked, addr)
	failing := f.fail[addr]
	f.mu.Unlock()
	if failing {
		return nil, fmt.Errorf("listen %s: %w", addr, errors.New("fake failure"))
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, network, "127.0.0.1:0")
}

func TestServiceHealthListenAddresses(t *testing.T) {
	tests := []struct {
		name      string
		addrs     []netip.Addr
		fail      map[string]bool
		wantAsked []string
		wantErr   bool
		wantOpen  int
	}{
		{name: "all addresses", wantAsked: []string{":31000"}, wantOpen: 1},
		{
			name:      "each node address",
			addrs:     []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")},
			wantAsked: []string{"192.168.1.10:31000", "[fd00::10]:31000"},
			wantOpen:  1,
		},
		{
			name:      "one address fails: nothing stays open, retried next sync",
			addrs:     []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")},
			fail:      map[string]bool{"[fd00::10]:31000": true},
			wantAsked: []string{"192.168.1.10:31000", "[fd00::10]:31000", "192.168.1.10:31000", "[fd00::10]:31000"},
			wantErr:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fl := &fakeListen{fail: tt.fail}
			s := NewServiceHealthServer(tt.addrs, nil, WithListen(fl.listen))
			defer s.Close()
			svcs := map[types.NamespacedName]uint16{svcName("web"): 31000}
			var err error
			for range 2 {
				err = s.SyncServices(svcs)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("SyncServices error = %v, want error %v", err, tt.wantErr)
			}
			if fmt.Sprint(fl.asked) != fmt.Sprint(tt.wantAsked) {
				t.Errorf("listened on %v, want %v", fl.asked, tt.wantAsked)
			}
			if len(s.Ports()) != tt.wantOpen {
				t.Errorf("open ports %v, want %d", s.Ports(), tt.wantOpen)
			}
		})
	}
}

// TestServiceHealthFromTracker drives the service health checks through the
// real model: Service and EndpointSlice events, snapshots, HTTP on loopback.
func TestServiceHealthFromTracker(t *testing.T) {
	hc := freePort(t)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "shop"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.50", ClusterIPs: []string{"10.96.0.50"},
			Ports:                 []v1.ServicePort{{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, NodePort: 30443}},
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort:   int32(hc),
		},
	}
	slice := func(eps ...discovery.Endpoint) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "shop-1", Labels: map[string]string{discovery.LabelServiceName: "shop"}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](8443), Protocol: ptr.To(v1.ProtocolTCP)}},
			Endpoints:   eps,
		}
	}
	endpoint := func(ip, node string, ready, terminating bool) discovery.Endpoint {
		return discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(true), Terminating: ptr.To(terminating)},
			NodeName:   ptr.To(node),
		}
	}
	tr := model.NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	tr.OnServiceAdd(svc)
	tr.OnEndpointSliceAdd(slice(endpoint("10.244.1.5", "node-b", true, false)))
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()

	s := NewServiceHealthServer(loopback, nil)
	t.Cleanup(func() { _ = s.Close() })
	sync := func() {
		t.Helper()
		if err := s.Sync(tr.Snapshot()); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want, count int) {
		t.Helper()
		code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/", hc))
		var r ServiceHealthResponse
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		if code != want || r.LocalEndpoints != count || r.Service.Name != "shop" {
			t.Fatalf("got %d %+v, want %d with %d local endpoints", code, r, want, count)
		}
	}

	sync()
	check(503, 0) // only a remote endpoint

	tr.OnEndpointSliceUpdate(nil, slice(endpoint("10.244.1.5", "node-b", true, false),
		endpoint("10.244.0.7", "node-a", true, false), endpoint("10.244.0.8", "node-a", true, false)))
	sync()
	check(200, 2)

	// Both local pods terminate (still serving): the load balancer must drain
	// this node, though the data plane keeps sending existing traffic to them.
	tr.OnEndpointSliceUpdate(nil, slice(endpoint("10.244.1.5", "node-b", true, false),
		endpoint("10.244.0.7", "node-a", false, true), endpoint("10.244.0.8", "node-a", false, true)))
	sync()
	check(503, 0)

	// The service becomes ETP Cluster: no health check port any more.
	cluster := svc.DeepCopy()
	cluster.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	tr.OnServiceUpdate(svc, cluster)
	sync()
	refused(t, hc)
}
