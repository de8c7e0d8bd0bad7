package realcluster_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/realcluster"
	"github.com/kproxy/kproxy/internal/testenv"
)

// repoRoot is the repository's top directory (the tests run in their package's).
const repoRoot = "../../.."

// imageSet is the image archives a cluster imports and the references the
// manifests name.
type imageSet struct {
	archives         []string
	agnhost, coredns string
	phases           []phase
}

// env is a running cluster with its images imported.
type env struct {
	h                *realcluster.Harness
	agnhost, coredns string
	// phases are the durations of the set-up steps, for the README's table.
	phases []phase
}

type phase struct {
	name string
	d    time.Duration
}

func timed(t testing.TB, phases *[]phase, name string, f func() error) {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	d := time.Since(start)
	*phases = append(*phases, phase{name, d})
	t.Logf("phase %s: %v", name, d.Round(100*time.Millisecond))
}

func (e *env) timed(t testing.TB, name string, f func() error) {
	t.Helper()
	timed(t, &e.phases, name, f)
}

// buildImages finds the test images of hack/k8s/build.sh (pause, agnhost,
// CoreDNS), builds kproxy's (`make image`) and upstream kube-proxy's.
func buildImages(t *testing.T) *imageSet {
	t.Helper()
	tools := cluster.ToolsDir()
	if missing := cluster.MissingTools(tools, "e2e.test", "kube-proxy"); len(missing) > 0 {
		testenv.Unavailable(t, "missing %v in %s: run hack/k8s/build.sh", missing, tools)
	}
	s := &imageSet{}
	dir := realcluster.ImagesDir(tools)
	for _, want := range []string{"/pause:", "/agnhost:", "coredns"} {
		a, tag, err := realcluster.FindImage(dir, want)
		if err != nil {
			testenv.Unavailable(t, "%v", err)
		}
		s.archives = append(s.archives, a)
		switch want {
		case "coredns":
			s.coredns = tag
		case "/agnhost:":
			s.agnhost = tag
		}
	}
	timed(t, &s.phases, "make image", func() error {
		out, err := exec.Command("make", "-C", repoRoot, "image").CombinedOutput()
		if err != nil {
			t.Logf("%s", out)
		}
		return err
	})
	s.archives = append(s.archives, filepath.Join(repoRoot, "bin", "kproxy-image.tar"))
	// Kept beside the test images, rebuilt when its inputs change.
	kubeProxy := filepath.Join(dir, "kube-proxy.tar")
	timed(t, &s.phases, "kube-proxy image", func() error {
		return realcluster.BuildKubeProxyImage(tools, kubeProxy)
	})
	s.archives = append(s.archives, kubeProxy)
	return s
}

// newEnv starts a two-node cluster and imports the images into both nodes.
// No service proxy runs yet.
func newEnv(t *testing.T) *env { return newEnvWith(t, buildImages(t)) }

func newEnvWith(t *testing.T, images *imageSet) *env {
	t.Helper()
	e := &env{agnhost: images.agnhost, coredns: images.coredns, phases: append([]phase(nil), images.phases...)}
	e.timed(t, "two nodes ready", func() error {
		e.h = realcluster.ForTest(t, realcluster.Options{})
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.timed(t, "images imported", func() error { return e.h.ImportImages(ctx, images.archives...) })
	return e
}

func (e *env) deployKproxy(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.timed(t, "kproxy ready", func() error {
		return e.h.DeployKproxy(ctx, filepath.Join(repoRoot, "deploy", "kproxy.yaml"))
	})
}

func (e *env) deployKubeProxy(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.timed(t, "kube-proxy ready", func() error { return e.h.DeployKubeProxy(ctx) })
}

func (e *env) deployCoreDNS(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.timed(t, "CoreDNS ready", func() error {
		if err := e.h.DeployCoreDNS(ctx, e.coredns); err != nil {
			return err
		}
		return e.h.WaitKubeSystemReady(ctx)
	})
}

// runE2E runs upstream e2e specs and logs each one's outcome.
func (e *env) runE2E(t *testing.T, o realcluster.E2EOptions) *realcluster.E2EResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout+5*time.Minute)
	defer cancel()
	var res *realcluster.E2EResult
	e.timed(t, "e2e specs", func() error {
		var err error
		res, err = e.h.RunE2E(ctx, o)
		return err
	})
	for _, s := range res.Specs {
		t.Logf("%-7s %6.1fs %s", s.Status, s.Time.Seconds(), s.Name)
	}
	return res
}
