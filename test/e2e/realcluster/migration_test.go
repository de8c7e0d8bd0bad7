package realcluster_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// migrate runs deploy/migrate.sh (the README's migration steps) with the
// harness's kubectl, with requests flowing before, during and after, and
// checks that afterwards only the new proxy's nftables tables are on the
// nodes. Requests must succeed before and after; those failed during the
// switch are reported.
func migrate(t *testing.T, w *workloadEnv, direction string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h := w.e.h
	before, err := w.during(ctx, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before: %v", before)
	if before.podFailed > 0 || before.npFailed > 0 || before.podOK == 0 || before.npOK == 0 {
		t.Fatalf("traffic does not flow before the migration: %v %v", before, before.failures)
	}
	script, err := filepath.Abs(filepath.Join(repoRoot, "deploy", "migrate.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	start := time.Now()
	during, err := w.during(ctx, func() error {
		cmd := exec.CommandContext(ctx, script, direction)
		cmd.Env = append(os.Environ(), "KUBECTL="+h.Tool("kubectl"), "KUBECONFIG="+h.Kubeconfig, "TIMEOUT=240s")
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("migrate.sh %s: %v\n%s", direction, err, out)
	}
	t.Logf("migrate.sh %s took %v; during: %v %v", direction, time.Since(start).Round(time.Second), during, during.failures)
	after, err := w.during(ctx, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after: %v", after)
	if after.podFailed > 0 || after.npFailed > 0 || after.podOK == 0 || after.npOK == 0 {
		t.Errorf("traffic does not flow after the migration: %v %v", after, after.failures)
	}
	want, gone := "kproxy", "kube-proxy"
	if direction == "to-kube-proxy" {
		want, gone = gone, want
	}
	for _, n := range h.Nodes {
		tables, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Netns, "nft", "list", "tables").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list tables in %s: %v: %s", n.Name, err, tables)
		}
		has := func(name string) bool {
			for _, l := range strings.Split(string(tables), "\n") {
				if f := strings.Fields(l); len(f) == 3 && f[2] == name {
					return true
				}
			}
			return false
		}
		if !has(want) || has(gone) {
			t.Errorf("%s: after migrate.sh %s: nft tables:\n%s", n.Name, direction, tables)
		}
	}
}
