package standalone

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// TestHealthzFollowsFailingSyncs runs kproxy in nftables mode in a node namespace
// and makes its syncs fail for real: another process replaces kproxy's table with
// one of the same name that it owns (nftables "flags owner"), so the kernel refuses
// kproxy's transactions. /healthz must turn 503 once a queued change has waited
// longer than twice the sync period, and 200 again when syncs succeed.
func TestHealthzFollowsFailingSyncs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "nft", "curl")
	node := netnstest.NewNode(t)
	p := node.AddPod(t, "web-1")
	p.Serve(t, "web-1", 8080)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.yaml"), fmt.Sprintf(webService, 80))
	writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", p.V4.String(), 8080))
	const table = "kproxy-health"
	kp := &proc{cmd: exec.Command("ip", "netns", "exec", node.Name, filepath.Join(binDir, "kproxy"), "run",
		"--manifests", dir, "--state-dir", t.TempDir(), "--proxy-mode", "nftables", "--nftables-table", table,
		"--service-cluster-ip-range", "10.96.0.0/16", "--sync-period", "2s", "--min-sync-period", "100ms",
		"--healthz-bind-address", "127.0.0.1:10256", "--dns-bind-address", ""), out: &testenv.Buffer{}}
	kp.cmd.Stdout, kp.cmd.Stderr = kp.out, kp.out
	if err := kp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kp.stop(t)
		_, _ = node.Exec("nft", "delete", "table", "ip", table)
		_, _ = node.Exec("nft", "delete", "table", "ip6", table)
	})
	healthz := func() string {
		out, _ := node.Exec("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:10256/healthz")
		return out
	}
	metric := func(name string) float64 {
		out, _ := node.Exec("curl", "-s", "http://127.0.0.1:10249/metrics")
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(out)
		if m == nil {
			return -1
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	eventually(t, "healthy after the first sync", 20*time.Second, func() (bool, string) {
		return healthz() == "200", healthz()
	})

	// Hijack the table: nft -i keeps its netlink socket, and so its owned table,
	// until its standard input closes. The table is replaced in one transaction,
	// or a periodic sync of kproxy could recreate it in between.
	hijack := exec.Command("ip", "netns", "exec", node.Name, "nft", "-i")
	stdin, err := hijack.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hijack.Start(); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			stdin.Close()
			_ = hijack.Wait()
		}
	}
	t.Cleanup(release)
	fmt.Fprintf(stdin, "add table ip %[1]s\ndelete table ip %[1]s; add table ip %[1]s { flags owner; }\n", table)
	eventually(t, "the owned table exists", 5*time.Second, func() (bool, string) {
		out, _ := node.Exec("nft", "list", "table", "ip", table)
		return strings.Contains(out, "owner"), out
	})

	// A change now cannot be programmed.
	writeFile(t, filepath.Join(dir, "web-2.yaml"), pod("web-2", "10.244.0.99", 8080))
	eventually(t, "/healthz turns 503 while syncs fail", 15*time.Second, func() (bool, string) {
		return healthz() == "503", healthz()
	})
	if v := metric("kproxy_sync_failures_total"); v < 1 {
		t.Errorf("kproxy_sync_failures_total = %v, want failures counted", v)
	}
	if v := metric("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"); v < 1 {
		t.Errorf("kubeproxy_sync_proxy_rules_nftables_sync_failures_total = %v, want failures counted", v)
	}

	release()
	eventually(t, "/healthz back to 200 once syncs succeed", 15*time.Second, func() (bool, string) {
		return healthz() == "200", healthz()
	})
	out := node.MustExec("curl", "-s", "http://127.0.0.1:10249/debug/kproxy/rules")
	if !strings.Contains(out, "10.244.0.99") {
		t.Fatalf("the change made while syncs failed is not in the kernel after recovery:\n%s", out)
	}
}
