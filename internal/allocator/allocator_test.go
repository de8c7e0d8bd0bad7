package allocator

// IP plan: service CIDRs 10.96.0.0/16 (primary) and fd00:10:96::/112; node ports
// 30000-32767. Static bands: 10.96.0.1-10.96.1.0 and 30000-30085.

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func makeTestService(ns, name string, tweak func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": name},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP,
				TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if tweak != nil {
		tweak(svc)
	}
	return svc
}

func ptr[T any](v T) *T { return &v }

func newTestAllocator(t *testing.T, cidrs, dir string) *Allocator {
	t.Helper()
	p, err := ParseServiceCIDRs(cidrs)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{ServiceCIDRs: p, StateDir: dir})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

const dual = "10.96.0.0/16,fd00:10:96::/112"

func TestAllocateFamilies(t *testing.T) {
	tests := []struct {
		name         string
		cidrs        string
		tweak        func(*v1.Service)
		wantFamilies []v1.IPFamily
		wantPolicy   v1.IPFamilyPolicy
		wantErr      string // substring of the first error, field path included
	}{
		{name: "single stack default", cidrs: "10.96.0.0/16",
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol}, wantPolicy: v1.IPFamilyPolicySingleStack},
		{name: "dual-stack cluster, default stays single", cidrs: dual,
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol}, wantPolicy: v1.IPFamilyPolicySingleStack},
		{name: "prefer dual on dual cluster", cidrs: dual,
			tweak:        func(s *v1.Service) { s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyPreferDualStack) },
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, wantPolicy: v1.IPFamilyPolicyPreferDualStack},
		{name: "prefer dual on single cluster", cidrs: "10.96.0.0/16",
			tweak:        func(s *v1.Service) { s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyPreferDualStack) },
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol}, wantPolicy: v1.IPFamilyPolicyPreferDualStack},
		{name: "require dual, IPv6 first", cidrs: dual,
			tweak: func(s *v1.Service) {
				s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyRequireDualStack)
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
			},
			wantFamilies: []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}, wantPolicy: v1.IPFamilyPolicyRequireDualStack},
		{name: "require dual on single cluster", cidrs: "10.96.0.0/16",
			tweak:   func(s *v1.Service) { s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyRequireDualStack) },
			wantErr: "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"},
		{name: "IPv6 family not configured", cidrs: "10.96.0.0/16",
			tweak:   func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} },
			wantErr: "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"},
		{name: "family inferred from cluster IP", cidrs: dual,
			tweak:        func(s *v1.Service) { s.Spec.ClusterIP = "fd00:10:96::10" },
			wantFamilies: []v1.IPFamily{v1.IPv6Protocol}, wantPolicy: v1.IPFamilyPolicySingleStack},
		{name: "two cluster IPs with single stack", cidrs: dual,
			tweak: func(s *v1.Service) {
				s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicySingleStack)
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
			},
			wantErr: "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"},
		{name: "cluster IP family mismatch", cidrs: dual,
			tweak: func(s *v1.Service) {
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
				s.Spec.ClusterIP = "10.96.0.10"
			},
			wantErr: "spec.clusterIPs[0]: Invalid value: \"10.96.0.10\": expected an IPv6 value as indicated by `ipFamilies[0]`"},
		{name: "headless without selector gets both families", cidrs: dual,
			tweak: func(s *v1.Service) {
				s.Spec.ClusterIP = v1.ClusterIPNone
				s.Spec.Selector = nil
			},
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, wantPolicy: v1.IPFamilyPolicyRequireDualStack},
		{name: "headless with selector", cidrs: dual,
			tweak:        func(s *v1.Service) { s.Spec.ClusterIP = v1.ClusterIPNone },
			wantFamilies: []v1.IPFamily{v1.IPv4Protocol}, wantPolicy: v1.IPFamilyPolicySingleStack},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newTestAllocator(t, tc.cidrs, "")
			got, errs := a.Allocate(makeTestService("default", "web", tc.tweak), "web.yaml")
			if tc.wantErr != "" {
				if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.wantErr) {
					t.Fatalf("errors = %v, want one containing %q", errs, tc.wantErr)
				}
				if _, held := a.Record(types.NamespacedName{Namespace: "default", Name: "web"}); held {
					t.Fatal("a failed allocation holds values")
				}
				return
			}
			if len(errs) > 0 {
				t.Fatalf("unexpected errors: %v", errs)
			}
			if !equalFamilies(got.Spec.IPFamilies, tc.wantFamilies) || *got.Spec.IPFamilyPolicy != tc.wantPolicy {
				t.Fatalf("families %v policy %v, want %v %v", got.Spec.IPFamilies, *got.Spec.IPFamilyPolicy, tc.wantFamilies, tc.wantPolicy)
			}
			if got.Spec.ClusterIP == v1.ClusterIPNone {
				return
			}
			if len(got.Spec.ClusterIPs) != len(tc.wantFamilies) || got.Spec.ClusterIP != got.Spec.ClusterIPs[0] {
				t.Fatalf("clusterIPs %v (clusterIP %s), want one per family", got.Spec.ClusterIPs, got.Spec.ClusterIP)
			}
			for i, s := range got.Spec.ClusterIPs {
				ip := netip.MustParseAddr(s)
				if familyOf(ip) != tc.wantFamilies[i] {
					t.Errorf("clusterIPs[%d] = %s, want %s", i, s, tc.wantFamilies[i])
				}
			}
		})
	}
}

func equalFamilies(a, b []v1.IPFamily) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAllocateExplicitAndConflicts(t *testing.T) {
	a := newTestAllocator(t, dual, "")
	first, errs := a.Allocate(makeTestService("default", "a", func(s *v1.Service) {
		s.Spec.ClusterIP = "10.96.0.10"
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30010
	}), "a.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if first.Spec.ClusterIP != "10.96.0.10" || first.Spec.Ports[0].NodePort != 30010 {
		t.Fatalf("manifest values not honoured: %s %d", first.Spec.ClusterIP, first.Spec.Ports[0].NodePort)
	}
	tests := []struct {
		name    string
		tweak   func(*v1.Service)
		wantErr string
	}{
		{name: "cluster IP taken", tweak: func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.10" },
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.96.0.10": failed to allocate IP 10.96.0.10: provided IP is already allocated (by service default/a)`},
		{name: "cluster IP out of range", tweak: func(s *v1.Service) { s.Spec.ClusterIP = "10.97.0.10" },
			wantErr: `spec.clusterIPs[0]: Invalid value: "10.97.0.10": failed to allocate IP 10.97.0.10: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/16`},
		{name: "broadcast address", tweak: func(s *v1.Service) { s.Spec.ClusterIP = "10.96.255.255" },
			wantErr: "provided IP is not in the valid range"},
		{name: "node port taken", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30010
		}, wantErr: "spec.ports[0].nodePort: Invalid value: 30010: provided port is already allocated (by service default/a)"},
		{name: "node port out of range", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 8080
		}, wantErr: "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"},
		{name: "health check node port taken", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 30010
		}, wantErr: "spec.healthCheckNodePort: Invalid value: 30010: provided port is already allocated (by service default/a)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := a.Allocate(makeTestService("default", "b", tc.tweak), "b.yaml")
			if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.wantErr) {
				t.Fatalf("errors = %v, want one containing %q", errs, tc.wantErr)
			}
			if _, held := a.Record(types.NamespacedName{Namespace: "default", Name: "b"}); held {
				t.Fatal("the rejected service holds values")
			}
		})
	}
	// The earlier service is untouched, and freeing it lets the later one in.
	a.Release(types.NamespacedName{Namespace: "default", Name: "a"})
	got, errs := a.Allocate(makeTestService("default", "b", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.10" }), "b.yaml")
	if len(errs) > 0 || got.Spec.ClusterIP != "10.96.0.10" {
		t.Fatalf("after release: %v %v", got, errs)
	}
}

func TestAllocateNodePorts(t *testing.T) {
	a := newTestAllocator(t, "10.96.0.0/16", "")
	tests := []struct {
		name     string
		tweak    func(*v1.Service)
		wantNP   []bool // per port: has a node port
		wantSame bool   // ports 0 and 1 share one
		wantHC   bool
	}{
		{name: "ClusterIP has none", wantNP: []bool{false}},
		{name: "NodePort, TCP and UDP on one number share a node port", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports = []v1.ServicePort{
				{Name: "dns-udp", Port: 53, Protocol: v1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			}
		}, wantNP: []bool{true, true}, wantSame: true},
		{name: "LoadBalancer Local gets a health check port", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, wantNP: []bool{true}, wantHC: true},
		{name: "LoadBalancer Cluster has no health check port", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		}, wantNP: []bool{true}},
		{name: "LoadBalancer without node ports", tweak: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.AllocateLoadBalancerNodePorts = ptr(false)
		}, wantNP: []bool{false}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := a.Allocate(makeTestService("default", "np"+string(rune('a'+i)), tc.tweak), "np.yaml")
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for j, want := range tc.wantNP {
				np := got.Spec.Ports[j].NodePort
				if (np != 0) != want {
					t.Errorf("ports[%d].nodePort = %d, want set=%v", j, np, want)
				}
				// Dynamic values come from the upper band (30086-32767).
				if np != 0 && np < 30086 {
					t.Errorf("ports[%d].nodePort = %d, in the static band", j, np)
				}
			}
			if tc.wantSame && got.Spec.Ports[0].NodePort != got.Spec.Ports[1].NodePort {
				t.Errorf("node ports %d and %d, want one shared", got.Spec.Ports[0].NodePort, got.Spec.Ports[1].NodePort)
			}
			if (got.Spec.HealthCheckNodePort != 0) != tc.wantHC {
				t.Errorf("healthCheckNodePort = %d, want set=%v", got.Spec.HealthCheckNodePort, tc.wantHC)
			}
		})
	}
}

func TestAllocateUpdateKeepsValues(t *testing.T) {
	a := newTestAllocator(t, dual, "")
	np := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }
	v1svc, errs := a.Allocate(makeTestService("default", "web", np), "web.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	// Add a port and go dual-stack: the first port and the IPv4 address stay.
	v2svc, errs := a.Allocate(makeTestService("default", "web", func(s *v1.Service) {
		np(s)
		s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyPreferDualStack)
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8443)})
	}), "web.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if v2svc.Spec.ClusterIPs[0] != v1svc.Spec.ClusterIP || len(v2svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("clusterIPs %v, want %s first and an IPv6 second", v2svc.Spec.ClusterIPs, v1svc.Spec.ClusterIP)
	}
	if v2svc.Spec.Ports[0].NodePort != v1svc.Spec.Ports[0].NodePort {
		t.Fatalf("node port moved from %d to %d", v1svc.Spec.Ports[0].NodePort, v2svc.Spec.Ports[0].NodePort)
	}
	// Back to ClusterIP: the node ports are freed.
	if _, errs := a.Allocate(makeTestService("default", "web", nil), "web.yaml"); len(errs) > 0 {
		t.Fatal(errs)
	}
	if u := a.Usage()["nodeport"]; u[0] != 0 {
		t.Fatalf("node ports in use after type change: %d", u[0])
	}
}

func TestDeterministic(t *testing.T) {
	// Two allocators given the same services in the same order agree: `kproxy get`
	// without a running process predicts what `kproxy run` picks.
	x, y := newTestAllocator(t, dual, ""), newTestAllocator(t, dual, "")
	for _, name := range []string{"a", "b", "c", "d"} {
		tweak := func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyPreferDualStack)
		}
		sx, _ := x.Allocate(makeTestService("ns", name, tweak), "")
		sy, _ := y.Allocate(makeTestService("ns", name, tweak), "")
		if strings.Join(sx.Spec.ClusterIPs, ",") != strings.Join(sy.Spec.ClusterIPs, ",") ||
			sx.Spec.Ports[0].NodePort != sy.Spec.Ports[0].NodePort {
			t.Fatalf("%s: %v/%d vs %v/%d", name, sx.Spec.ClusterIPs, sx.Spec.Ports[0].NodePort, sy.Spec.ClusterIPs, sy.Spec.Ports[0].NodePort)
		}
		ip := netip.MustParseAddr(sx.Spec.ClusterIPs[0])
		if ip.Compare(netip.MustParseAddr("10.96.1.0")) <= 0 {
			t.Errorf("%s: dynamic IP %s in the static band", name, ip)
		}
	}
}

func TestStateRestart(t *testing.T) {
	dir := t.TempDir()
	a := newTestAllocator(t, dual, dir)
	tweak := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.IPFamilyPolicy = ptr(v1.IPFamilyPolicyRequireDualStack)
	}
	want := map[string]*v1.Service{}
	for _, name := range []string{"a", "b", "gone"} {
		s, errs := a.Allocate(makeTestService("default", name, tweak), name+".yaml")
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		want[name] = s
	}
	if err := a.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFileName)); err != nil {
		t.Fatal(err)
	}

	// Restart: "gone" was deleted while kproxy was down, and a new service "c"
	// arrives, allocated after the saved ones were restored.
	b := newTestAllocator(t, dual, dir)
	released := b.Prune(func(k types.NamespacedName, _ string) bool { return k.Name != "gone" })
	if len(released) != 1 || released[0].Name != "gone" {
		t.Fatalf("pruned %v, want default/gone", released)
	}
	c, errs := b.Allocate(makeTestService("default", "c", func(s *v1.Service) {
		tweak(s)
		s.Spec.ClusterIPs = []string{want["gone"].Spec.ClusterIPs[0]} // freed: may be taken
	}), "c.yaml")
	if len(errs) > 0 {
		t.Fatalf("c: %v", errs)
	}
	_ = c
	for _, name := range []string{"b", "a"} { // any order gives the saved values back
		got, errs := b.Allocate(makeTestService("default", name, tweak), name+".yaml")
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		w := want[name]
		if strings.Join(got.Spec.ClusterIPs, ",") != strings.Join(w.Spec.ClusterIPs, ",") ||
			got.Spec.Ports[0].NodePort != w.Spec.Ports[0].NodePort || got.Spec.HealthCheckNodePort != w.Spec.HealthCheckNodePort ||
			!got.CreationTimestamp.Equal(&w.CreationTimestamp) {
			t.Fatalf("%s after restart: %v %d %d, want %v %d %d", name, got.Spec.ClusterIPs, got.Spec.Ports[0].NodePort,
				got.Spec.HealthCheckNodePort, w.Spec.ClusterIPs, w.Spec.Ports[0].NodePort, w.Spec.HealthCheckNodePort)
		}
	}
	// A saved value is held before its service is seen again: a manifest value
	// asking for it is the later claim and fails.
	c2 := newTestAllocator(t, dual, dir)
	_, errs = c2.Allocate(makeTestService("default", "thief", func(s *v1.Service) { s.Spec.ClusterIP = want["a"].Spec.ClusterIP }), "t.yaml")
	if len(errs) == 0 || !strings.Contains(errs[0].Error(), "already allocated (by service default/a)") {
		t.Fatalf("thief: %v", errs)
	}
}

func TestCorruptState(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{name: "not JSON", content: "{\"kind\": ", want: "unexpected EOF"},
		{name: "wrong kind", content: `{"kind":"Other","version":1}`, want: `kind "Other" version 1`},
		{name: "unknown field", content: `{"kind":"KproxyAllocations","version":1,"extra":1}`, want: `unknown field "extra"`},
		{name: "bad IP", content: `{"kind":"KproxyAllocations","version":1,"services":{"default/a":{"clusterIPs":["10.96.0.300"]}}}`, want: "10.96.0.300"},
		{name: "duplicate IP", content: `{"kind":"KproxyAllocations","version":1,"services":{"default/a":{"clusterIPs":["10.96.0.3"]},"default/b":{"clusterIPs":["10.96.0.3"]}}}`, want: "cluster IP 10.96.0.3 held by both"},
		{name: "bad key", content: `{"kind":"KproxyAllocations","version":1,"services":{"a":{}}}`, want: `service key "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, StateFileName), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			p, _ := ParseServiceCIDRs(DefaultServiceCIDR)
			_, err := New(Config{ServiceCIDRs: p, StateDir: dir})
			if err == nil || !IsCorruptState(err) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), filepath.Join(dir, StateFileName)) {
				t.Fatalf("err = %v, want a corrupt-state error naming the file and containing %q", err, tc.want)
			}
		})
	}
}

func TestSaveIsAtomic(t *testing.T) {
	dir := t.TempDir()
	a := newTestAllocator(t, "10.96.0.0/16", dir)
	if _, errs := a.Allocate(makeTestService("default", "a", nil), ""); len(errs) > 0 {
		t.Fatal(errs)
	}
	if err := a.Save(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file left behind: %s", e.Name())
		}
	}
	if a.Dirty() {
		t.Fatal("dirty after save")
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	a := newTestAllocator(t, "10.96.0.0/16", dir)
	unlock, err := a.Lock()
	if err != nil {
		t.Fatal(err)
	}
	b := newTestAllocator(t, "10.96.0.0/16", dir)
	if _, err := b.Lock(); err == nil || !strings.Contains(err.Error(), "another kproxy") {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	unlock2, err := b.Lock()
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name, cidrs, ports, wantErr string
	}{
		{name: "defaults", cidrs: DefaultServiceCIDR, ports: DefaultNodePortRange},
		{name: "dual", cidrs: dual, ports: "30000-30100"},
		{name: "same family twice", cidrs: "10.96.0.0/16,10.97.0.0/16", ports: DefaultNodePortRange, wantErr: "same IP family"},
		{name: "three", cidrs: "10.96.0.0/16,fd00::/112,10.97.0.0/16", ports: DefaultNodePortRange, wantErr: "one or two"},
		{name: "IPv6 too large", cidrs: "fd00::/64", ports: DefaultNodePortRange, wantErr: "/108"},
		{name: "host bits", cidrs: "10.96.0.1/16", ports: DefaultNodePortRange, wantErr: "host bits"},
		{name: "bad port range", cidrs: DefaultServiceCIDR, ports: "32767-30000", wantErr: "LOW <= HIGH"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseServiceCIDRs(tc.cidrs)
			if err != nil {
				t.Fatal(err)
			}
			pr, err := ParsePortRange(tc.ports)
			if err == nil {
				cfg := Config{ServiceCIDRs: p, NodePortRange: pr}
				cfg.Defaults()
				err = cfg.Validate()
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
