package manifest

// The source as it runs: a real directory, real filesystem notifications, the
// real model.Tracker. Every change must reach the model within a second.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
)

func TestRunWatchesDirectory(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	writeFile(t, dir, "web.yaml", svcYAML("web", "  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n"))
	writeFile(t, dir, "pods/web-1.yaml", podYAML("web-1", "web", 8080, "10.244.0.11"))

	var notified atomic.Int64
	tr := model.NewTracker("node-1", func() { notified.Add(1) })
	cfg := Config{Dir: dir}
	cfg.Allocator.StateDir = state
	src, err := New(cfg, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	webHTTP := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: "http", Protocol: "TCP"}
	// eventually waits until check passes on a fresh snapshot and returns how long it took.
	eventually := func(what string, check func(*model.Snapshot) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			if tr.Synced() && check(tr.Snapshot()) {
				d := time.Since(start)
				t.Logf("%-40s reached the model in %v", what, d.Round(time.Millisecond))
				return d
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s: not in the model after 10s; problems: %v", what, src.Problems())
		return 0
	}
	endpoints := func(s *model.Snapshot, n model.ServicePortName) string {
		pv := s.Ports[n]
		if pv == nil {
			return "<none>"
		}
		var eps []string
		for _, ep := range pv.Endpoints {
			eps = append(eps, ep.String())
		}
		return strings.Join(eps, ",")
	}
	var worst time.Duration
	// step makes a change and waits until a sync after it satisfies check.
	step := func(what string, change func(), check func(*model.Snapshot) bool) {
		t.Helper()
		before := src.loadCount()
		change()
		if d := eventually(what, func(s *model.Snapshot) bool { return src.loadCount() > before && check(s) }); d > worst {
			worst = d
		}
	}

	eventually("initial load", func(s *model.Snapshot) bool { return endpoints(s, webHTTP) == "10.244.0.11:8080" })
	clusterIP := tr.Current().Ports[webHTTP].ClusterIPs[0]

	step("pod restarts with a new IP", func() {
		writeFile(t, dir, "pods/web-1.yaml", podYAML("web-1", "web", 8080, "10.244.0.21"))
	}, func(s *model.Snapshot) bool { return endpoints(s, webHTTP) == "10.244.0.21:8080" })

	step("pod added in a new file", func() {
		writeFile(t, dir, "pods/web-2.yaml", podYAML("web-2", "web", 9090, "10.244.0.22"))
	}, func(s *model.Snapshot) bool { return endpoints(s, webHTTP) == "10.244.0.21:8080,10.244.0.22:9090" })

	step("editor save-by-rename", func() {
		tmp := filepath.Join(dir, "pods", ".web-2.yaml.swp")
		os.WriteFile(tmp, []byte(podYAML("web-2", "web", 9091, "10.244.0.22")), 0o644)
		if err := os.Rename(tmp, filepath.Join(dir, "pods", "web-2.yaml")); err != nil {
			t.Fatal(err)
		}
	}, func(s *model.Snapshot) bool { return endpoints(s, webHTTP) == "10.244.0.21:8080,10.244.0.22:9091" })

	step("file renamed", func() {
		if err := os.Rename(filepath.Join(dir, "web.yaml"), filepath.Join(dir, "web-service.yaml")); err != nil {
			t.Fatal(err)
		}
	}, func(s *model.Snapshot) bool {
		pv := s.Ports[webHTTP]
		return pv != nil && pv.ClusterIPs[0] == clusterIP && len(src.Problems()) == 0
	})

	step("file becomes invalid: last good kept", func() {
		writeFile(t, dir, "web-service.yaml", svcYAML("web", "  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    bogus: 1\n"))
	}, func(s *model.Snapshot) bool {
		return s.Ports[webHTTP] != nil && hasProblem(src, "web-service.yaml:12: document 1: Service default/web: spec.ports[0].bogus: unknown field") &&
			hasProblem(src, "web-service.yaml:1: document 1: Service default/web: the last good version stays in force")
	})

	step("object becomes invalid: last good kept", func() {
		writeFile(t, dir, "web-service.yaml", svcYAML("web", "  selector:\n    app: web\n  ports:\n  - name: http\n    port: 70000\n    targetPort: http\n"))
	}, func(s *model.Snapshot) bool {
		return s.Ports[webHTTP] != nil && s.Ports[webHTTP].Port == 80 &&
			hasProblem(src, "web-service.yaml:10: document 1: Service default/web: spec.ports[0].port: Invalid value: 70000")
	})

	step("fixed with a new port", func() {
		writeFile(t, dir, "web-service.yaml", svcYAML("web", "  selector:\n    app: web\n  ports:\n  - name: http\n    port: 8000\n    targetPort: http\n"))
	}, func(s *model.Snapshot) bool {
		pv := s.Ports[webHTTP]
		return pv != nil && pv.Port == 8000 && pv.ClusterIPs[0] == clusterIP && len(src.Problems()) == 0
	})

	step("new subdirectory", func() {
		writeFile(t, dir, "team-b/api.yaml", svcYAML("api", "  type: NodePort\n  ports:\n  - port: 443\n"))
	}, func(s *model.Snapshot) bool {
		pv := s.Ports[model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "api"}, Protocol: "TCP"}]
		return pv != nil && pv.NodePort != 0
	})

	legacy := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "legacy"}, Port: "db", Protocol: "TCP"}
	endpointsObj := func(ip string) string {
		return "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\nsubsets:\n- addresses:\n  - ip: " + ip + "\n  ports:\n  - name: db\n    port: 3306\n"
	}
	step("service without selector, v1 Endpoints", func() {
		writeFile(t, dir, "legacy.yaml", svcYAML("legacy", "  ports:\n  - name: db\n    port: 3306\n")+"---\n"+endpointsObj("192.168.1.10"))
	}, func(s *model.Snapshot) bool { return endpoints(s, legacy) == "192.168.1.10:3306" })

	step("v1 Endpoints edited", func() {
		writeFile(t, dir, "legacy.yaml", svcYAML("legacy", "  ports:\n  - name: db\n    port: 3306\n")+"---\n"+endpointsObj("192.168.1.11"))
	}, func(s *model.Snapshot) bool { return endpoints(s, legacy) == "192.168.1.11:3306" })

	step("file deleted", func() {
		os.Remove(filepath.Join(dir, "web-service.yaml"))
	}, func(s *model.Snapshot) bool { return s.Ports[webHTTP] == nil })

	if _, held := src.Allocator().Record(types.NamespacedName{Namespace: "default", Name: "web"}); held {
		t.Error("the deleted service still holds its allocation")
	}
	if worst > time.Second {
		t.Errorf("slowest change took %v to reach the model, want under 1s", worst)
	}
	// Allocations are on disk for the next start.
	if _, err := os.Stat(filepath.Join(state, "allocations.json")); err != nil {
		t.Error(err)
	}
}

func hasProblem(src *Source, substr string) bool {
	for _, p := range src.Problems() {
		if strings.Contains(p.String(), substr) {
			return true
		}
	}
	return false
}

func TestRunRefusesSecondProcessOnState(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	cfg := Config{Dir: dir}
	cfg.Allocator.StateDir = state
	a, err := New(cfg, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond)
	b, err := New(cfg, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "another kproxy") {
		t.Fatalf("second Run on the same state: %v", err)
	}
}
