package manifest

// IP plan: service range 10.96.0.0/16 (plus fd00:10:96::/112 where dual-stack),
// node ports 30000-32767, pods in 10.244.0.0/24 and fd00:10:244::/64.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kproxy/kproxy/internal/allocator"
)

// svcYAML builds a Service manifest; extra is appended under spec (indented by 2).
func svcYAML(name, extra string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\nspec:\n%s", name, extra)
}

// podYAML builds a ready Pod with label app=<app>, a named port "http" on
// <port> and the given IPs.
func podYAML(name, app string, port int, ips ...string) string {
	s := fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  labels:\n    app: %s\nspec:\n  containers:\n  - name: c\n    ports:\n    - name: http\n      containerPort: %d\nstatus:\n  phase: Running\n  conditions:\n  - type: Ready\n    status: \"True\"\n", name, app, port)
	if len(ips) > 0 {
		s += "  podIPs:\n"
		for _, ip := range ips {
			s += "  - ip: " + ip + "\n"
		}
	}
	return s
}

func TestValidationErrorsNameFileObjectField(t *testing.T) {
	tests := []struct {
		name  string
		extra string // under spec
		want  string // field path and message, after "file:line: document 1: Service default/bad: "
		line  int
	}{
		{name: "port out of range", extra: "  ports:\n  - port: 0\n", want: "spec.ports[0].port: Invalid value: 0", line: 7},
		{name: "protocol", extra: "  ports:\n  - port: 80\n    protocol: HTTP\n", want: "spec.ports[0].protocol: Unsupported value: \"HTTP\"", line: 8},
		{name: "names required with several ports", extra: "  ports:\n  - port: 80\n  - port: 81\n    name: b\n", want: "spec.ports[0].name: Required value", line: 7},
		{name: "duplicate port names", extra: "  ports:\n  - port: 80\n    name: a\n  - port: 81\n    name: a\n", want: "spec.ports[1].name: Duplicate value: \"a\"", line: 10},
		{name: "duplicate port and protocol", extra: "  ports:\n  - port: 80\n    name: a\n  - port: 80\n    name: b\n", want: "spec.ports[1]: Duplicate value", line: 9},
		{name: "targetPort name", extra: "  ports:\n  - port: 80\n    targetPort: Not_A_Name\n", want: "spec.ports[0].targetPort: Invalid value: \"Not_A_Name\"", line: 8},
		{name: "nodePort on ClusterIP", extra: "  ports:\n  - port: 80\n    nodePort: 30080\n", want: "spec.ports[0].nodePort: Forbidden", line: 8},
		{name: "type", extra: "  type: Bogus\n  ports:\n  - port: 80\n", want: "spec.type: Unsupported value: \"Bogus\"", line: 6},
		{name: "clusterIP", extra: "  clusterIP: 10.96.0.300\n  ports:\n  - port: 80\n", want: "spec.clusterIPs[0]: Invalid value: \"10.96.0.300\"", line: 6},
		{name: "None with a NodePort", extra: "  type: NodePort\n  clusterIP: None\n  ports:\n  - port: 80\n", want: "spec.clusterIPs[0]: Invalid value: \"None\"", line: 7},
		{name: "ipFamilies mismatch", extra: "  ipFamilies: [IPv6]\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n", want: "spec.clusterIPs[0]", line: 7},
		{name: "sessionAffinity", extra: "  sessionAffinity: Sticky\n  ports:\n  - port: 80\n", want: "spec.sessionAffinity: Unsupported value: \"Sticky\"", line: 6},
		{name: "affinity timeout", extra: "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86401\n  ports:\n  - port: 80\n", want: "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401", line: 9},
		{name: "externalName not DNS", extra: "  type: ExternalName\n  externalName: not_dns\n", want: "spec.externalName: Invalid value: \"not_dns\"", line: 7},
		{name: "externalTrafficPolicy on ClusterIP", extra: "  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n", want: "spec.externalTrafficPolicy", line: 6},
		{name: "loadBalancerSourceRanges", extra: "  type: LoadBalancer\n  loadBalancerSourceRanges: [\"10.0.0.0/33\"]\n  ports:\n  - port: 80\n", want: "spec.LoadBalancerSourceRanges[0]: Invalid value: \"10.0.0.0/33\"", line: 7},
		{name: "externalIPs", extra: "  externalIPs: [\"1.2.3\"]\n  ports:\n  - port: 80\n", want: "spec.externalIPs[0]: Invalid value: \"1.2.3\"", line: 6},
		// Allocation errors are reported the same way.
		{name: "nodePort out of range", extra: "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 8080\n", want: "spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767", line: 9},
		{name: "clusterIP out of range", extra: "  clusterIP: 10.97.0.1\n  ports:\n  - port: 80\n", want: "spec.clusterIPs[0]: Invalid value: \"10.97.0.1\": failed to allocate IP 10.97.0.1: provided IP is not in the valid range", line: 6},
		{name: "RequireDualStack on a single-stack range", extra: "  ipFamilyPolicy: RequireDualStack\n  ports:\n  - port: 80\n", want: "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services", line: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "bad.yaml", svcYAML("bad", tc.extra))
			writeFile(t, dir, "good.yaml", svcYAML("good", "  ports:\n  - port: 80\n"))
			r := loadDir(t, dir)
			// The invalid object is rejected alone.
			if len(r.Services) != 1 || r.Services[0].Name != "good" {
				t.Fatalf("services %v, want only default/good", r.Services)
			}
			errs := r.Errors()
			if len(errs) == 0 {
				t.Fatal("no error")
			}
			got := errs[0].String()
			prefix := fmt.Sprintf("bad.yaml:%d: document 1: Service default/bad: ", tc.line)
			if !strings.HasPrefix(got, prefix) || !strings.Contains(got, tc.want) {
				t.Fatalf("error %q\nwant prefix %q and %q", got, prefix, tc.want)
			}
		})
	}
}

func TestDuplicateObject(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", svcYAML("web", "  ports:\n  - port: 80\n"))
	writeFile(t, dir, "b.yaml", svcYAML("web", "  ports:\n  - port: 81\n"))
	r := loadDir(t, dir)
	if len(r.Services) != 1 || r.Services[0].Spec.Ports[0].Port != 80 {
		t.Fatalf("services %v, want a.yaml's", r.Services)
	}
	if e := r.Errors(); len(e) != 1 || !strings.Contains(e[0].String(), "b.yaml:1: document 1: Service default/web: metadata.name: Duplicate value: \"web\": already defined in a.yaml (document 1)") {
		t.Fatalf("errors %v", e)
	}
}

func TestAllocationThroughManifests(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	cidrs, _ := allocator.ParseServiceCIDRs("10.96.0.0/16,fd00:10:96::/112")
	cfg := func() Config {
		return Config{Dir: dir, Allocator: allocator.Config{ServiceCIDRs: cidrs, StateDir: state}}
	}
	writeFile(t, dir, "a.yaml", svcYAML("a", "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ipFamilyPolicy: PreferDualStack\n  ports:\n  - port: 80\n"))
	writeFile(t, dir, "b.yaml", svcYAML("b", "  clusterIP: 10.96.0.10\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 30080\n"))
	writeFile(t, dir, "c.yaml", svcYAML("c", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n"))

	// Run once, as kproxy run does (allocations saved), then load again.
	src, err := New(cfg(), nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	first := loadDir2(t, cfg())
	byName := map[string]*v1.Service{}
	for _, s := range first.Services {
		byName[s.Name] = s
	}
	a, b := byName["a"], byName["b"]
	if a == nil || b == nil || byName["c"] != nil {
		t.Fatalf("services %v, want a and b (c conflicts with b)", first.Services)
	}
	if len(a.Spec.ClusterIPs) != 2 || a.Spec.Ports[0].NodePort == 0 || a.Spec.HealthCheckNodePort == 0 {
		t.Fatalf("a not fully allocated: %v %v %d", a.Spec.ClusterIPs, a.Spec.Ports, a.Spec.HealthCheckNodePort)
	}
	if b.Spec.ClusterIP != "10.96.0.10" || b.Spec.Ports[0].NodePort != 30080 {
		t.Fatalf("b's manifest values not honoured: %s %d", b.Spec.ClusterIP, b.Spec.Ports[0].NodePort)
	}
	if e := first.Errors(); len(e) != 1 || !strings.Contains(e[0].String(), "c.yaml:6: document 1: Service default/c: spec.clusterIPs[0]: Invalid value: \"10.96.0.10\": failed to allocate IP 10.96.0.10: provided IP is already allocated (by service default/b)") {
		t.Fatalf("errors %v", e)
	}

	// A restart with the saved state gives the same values, even when a new
	// service sorts before the others.
	writeFile(t, dir, "0.yaml", svcYAML("aaa", "  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  ports:\n  - port: 80\n"))
	again := loadDir2(t, cfg())
	if len(again.Services) != 3 || len(again.Errors()) != 1 {
		t.Fatalf("after adding aaa: %d services, errors %v", len(again.Services), again.Errors())
	}
	for _, s := range again.Services {
		if old := byName[s.Name]; old != nil {
			if strings.Join(s.Spec.ClusterIPs, ",") != strings.Join(old.Spec.ClusterIPs, ",") ||
				s.Spec.Ports[0].NodePort != old.Spec.Ports[0].NodePort || s.Spec.HealthCheckNodePort != old.Spec.HealthCheckNodePort {
				t.Errorf("%s moved: %v/%d → %v/%d", s.Name, old.Spec.ClusterIPs, old.Spec.Ports[0].NodePort, s.Spec.ClusterIPs, s.Spec.Ports[0].NodePort)
			}
			if !s.CreationTimestamp.Equal(&old.CreationTimestamp) {
				t.Errorf("%s: creation time changed", s.Name)
			}
		}
	}

	// A file that fails to load keeps its services' allocations across a restart;
	// a deleted file frees them.
	writeFile(t, dir, "a.yaml", "apiVersion: v1\nkind: Service\nmetadata: [broken\n")
	os.Remove(filepath.Join(dir, "b.yaml"))
	src, err = New(cfg(), nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	keys := src.Allocator().Keys()
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	if strings.Join(names, ",") != "a,aaa,c" {
		t.Fatalf("services holding allocations: %v, want a,aaa,c (a's file is broken, b is deleted, c got b's IP)", names)
	}
	rec, _ := src.Allocator().Record(keys[0])
	if rec.HealthCheckNodePort != a.Spec.HealthCheckNodePort {
		t.Fatalf("a's allocation changed while its file was broken")
	}

	// A corrupt state file is an error, never a silent reshuffle.
	os.WriteFile(filepath.Join(state, allocator.StateFileName), []byte("{garbage"), 0o644)
	if _, err := Load(cfg()); err == nil || !allocator.IsCorruptState(err) {
		t.Fatalf("Load with a corrupt state: %v", err)
	}
	if _, err := New(cfg(), nopHandler{}, nil); err == nil || !strings.Contains(err.Error(), "is corrupt") {
		t.Fatalf("New with a corrupt state: %v", err)
	}
}

func loadDir2(t *testing.T, cfg Config) *Result {
	t.Helper()
	r, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type nopHandler struct{}

func (nopHandler) OnServiceAdd(*v1.Service)                            {}
func (nopHandler) OnServiceUpdate(_, _ *v1.Service)                    {}
func (nopHandler) OnServiceDelete(*v1.Service)                         {}
func (nopHandler) OnServicesSynced()                                   {}
func (nopHandler) OnEndpointSliceAdd(*discovery.EndpointSlice)         {}
func (nopHandler) OnEndpointSliceUpdate(_, _ *discovery.EndpointSlice) {}
func (nopHandler) OnEndpointSliceDelete(*discovery.EndpointSlice)      {}
func (nopHandler) OnEndpointSlicesSynced()                             {}
func (nopHandler) OnNodeAdd(*v1.Node)                                  {}
func (nopHandler) OnNodeUpdate(_, _ *v1.Node)                          {}
func (nopHandler) OnNodeDelete(*v1.Node)                               {}
func (nopHandler) OnNodeSynced()                                       {}

func TestIncrementalResolution(t *testing.T) {
	dir := t.TempDir()
	src, err := New(Config{Dir: dir, Ephemeral: true}, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inForce := func() string { return servicesInForce(src) }
	sync := func(want string) {
		t.Helper()
		// The stamp includes the ctime in nanoseconds; a rewrite is always seen.
		if err := src.syncOnce(nil); err != nil {
			t.Fatal(err)
		}
		if got := inForce(); got != want {
			t.Fatalf("services in force %q, want %q; problems %v", got, want, src.Problems())
		}
	}
	two := svcYAML("a", "  ports:\n  - port: 80\n") + "---\n" + svcYAML("b", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n")
	writeFile(t, dir, "ab.yaml", two)
	writeFile(t, dir, "c.yaml", svcYAML("c", "  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n"))
	sync("a,b") // c conflicts with b

	// The file breaks: a and b stay in force.
	writeFile(t, dir, "ab.yaml", "apiVersion: v1\nkind: Service\nmetadata: [\n")
	sync("a,b")
	if !hasProblem(src, "ab.yaml:1: document 1: Service default/a: the last good version stays in force") {
		t.Fatalf("problems %v", src.Problems())
	}
	// Fixed without b: b goes, and c, retried, now gets b's address.
	writeFile(t, dir, "ab.yaml", svcYAML("a", "  ports:\n  - port: 80\n"))
	sync("a,c")
	if p := src.Problems(); len(p) != 0 {
		t.Fatalf("problems after the fix: %v", p)
	}
	if e := src.st.inForce[objKey{Kind: KindService, Namespace: "default", Name: "c"}]; e.out.(*v1.Service).Spec.ClusterIP != "10.96.0.10" {
		t.Fatalf("c's cluster IP %s", e.out.(*v1.Service).Spec.ClusterIP)
	}
	// An invalid object's error goes away with its file.
	writeFile(t, dir, "bad.yaml", svcYAML("bad", "  ports:\n  - port: 0\n"))
	sync("a,c")
	if !hasProblem(src, "bad.yaml:7") {
		t.Fatalf("problems %v", src.Problems())
	}
	os.Remove(filepath.Join(dir, "bad.yaml"))
	sync("a,c")
	if p := src.Problems(); len(p) != 0 {
		t.Fatalf("problems of a deleted file remain: %v", p)
	}
	// A duplicate in a later file is an error until the first one goes.
	writeFile(t, dir, "z.yaml", svcYAML("a", "  ports:\n  - port: 81\n"))
	sync("a,c")
	if !hasProblem(src, "z.yaml:1: document 1: Service default/a: metadata.name: Duplicate value") {
		t.Fatalf("problems %v", src.Problems())
	}
	os.Remove(filepath.Join(dir, "ab.yaml"))
	sync("a,c")
	if e := src.st.inForce[objKey{Kind: KindService, Namespace: "default", Name: "a"}]; e.out.(*v1.Service).Spec.Ports[0].Port != 81 || len(src.Problems()) != 0 {
		t.Fatalf("a from z.yaml: port %d, problems %v", e.out.(*v1.Service).Spec.Ports[0].Port, src.Problems())
	}
}

// `kproxy get --manifests` without a running kproxy shows what `kproxy run`
// will allocate: Load and Run pick the same values from the same state.
func TestLoadPredictsRun(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	for i := range 20 {
		writeFile(t, dir, fmt.Sprintf("s%d.yaml", i), svcYAML(fmt.Sprintf("svc-%d", i),
			"  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n"))
	}
	cfg := Config{Dir: dir}
	cfg.Allocator.StateDir = state
	predicted, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, allocator.StateFileName)); err == nil {
		t.Fatal("Load wrote the state")
	}
	src, err := New(cfg, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range predicted.Services {
		e := src.st.inForce[objKey{Kind: KindService, Namespace: p.Namespace, Name: p.Name}]
		got := e.out.(*v1.Service)
		if got.Spec.ClusterIP != p.Spec.ClusterIP || got.Spec.Ports[0].NodePort != p.Spec.Ports[0].NodePort ||
			got.Spec.HealthCheckNodePort != p.Spec.HealthCheckNodePort {
			t.Errorf("%s: run picked %s/%d/%d, Load predicted %s/%d/%d", p.Name, got.Spec.ClusterIP, got.Spec.Ports[0].NodePort,
				got.Spec.HealthCheckNodePort, p.Spec.ClusterIP, p.Spec.Ports[0].NodePort, p.Spec.HealthCheckNodePort)
		}
	}
}
