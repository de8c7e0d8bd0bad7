package realcluster_test

import (
	"context"
	"os"
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

// env is a running cluster with its images imported.
type env struct {
	h       *realcluster.Harness
	tools   string
	coredns string // the CoreDNS image's reference
	agnhost string
	// phases are the durations of the set-up steps, for the README's table.
	phases []phase
}

type phase struct {
	name string
	d    time.Duration
}

func (e *env) timed(t testing.TB, name string, f func() error) {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	d := time.Since(start)
	e.phases = append(e.phases, phase{name, d})
	t.Logf("phase %s: %v", name, d.Round(100*time.Millisecond))
}

// newEnv starts a two-node cluster and imports the test images (pause,
// agnhost, CoreDNS from hack/k8s/build.sh; kproxy's from `make image`) into
// both nodes. No service proxy runs yet.
func newEnv(t *testing.T) *env {
	t.Helper()
	tools := cluster.ToolsDir()
	if missing := cluster.MissingTools(tools, "e2e.test"); len(missing) > 0 {
		testenv.Unavailable(t, "missing %v in %s: run hack/k8s/build.sh", missing, tools)
	}
	e := &env{tools: tools}
	images := realcluster.ImagesDir(tools)
	var archives []string
	for _, want := range []string{"/pause:", "/agnhost:", "coredns"} {
		a, tag, err := realcluster.FindImage(images, want)
		if err != nil {
			testenv.Unavailable(t, "%v", err)
		}
		archives = append(archives, a)
		switch want {
		case "coredns":
			e.coredns = tag
		case "/agnhost:":
			e.agnhost = tag
		}
	}
	kproxyImage := filepath.Join(repoRoot, "bin", "kproxy-image.tar")
	e.timed(t, "make image", func() error {
		cmd := exec.Command("make", "-C", repoRoot, "image")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("%s", out)
		}
		return err
	})
	archives = append(archives, kproxyImage)
	e.timed(t, "two nodes ready", func() error {
		e.h = realcluster.ForTest(t, realcluster.Options{})
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.timed(t, "images imported", func() error { return e.h.ImportImages(ctx, archives...) })
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

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
