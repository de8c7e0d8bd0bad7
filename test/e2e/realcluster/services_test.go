package realcluster_test

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/realcluster"
)

// TestServicesTable runs every [sig-network] Services spec that is not
// Serial, Disruptive, Slow, a Feature or about load balancers, once on a
// cluster whose proxy is upstream kube-proxy (nftables mode) and once on one
// whose proxy is kproxy (the two clusters side by side, same harness), and
// writes the spec-by-spec table to the file KPROXY_E2E_SERVICES names. kproxy
// must pass every spec kube-proxy passes. It takes about half an hour, so it
// runs only when asked: `make e2e-services`.
func TestServicesTable(t *testing.T) {
	out := os.Getenv("KPROXY_E2E_SERVICES")
	if out == "" {
		t.Skip("set KPROXY_E2E_SERVICES=FILE (make e2e-services) to run the broader Services specs on both proxies")
	}
	images := buildImages(t)
	var mu sync.Mutex
	results := map[string]*realcluster.E2EResult{}
	proxies := []string{"kube-proxy", "kproxy"}
	t.Run("proxies", func(t *testing.T) {
		for _, proxy := range proxies {
			t.Run(proxy, func(t *testing.T) {
				t.Parallel()
				e := newEnvWith(t, images)
				if proxy == "kproxy" {
					e.deployKproxy(t)
				} else {
					e.deployKubeProxy(t)
				}
				e.deployCoreDNS(t)
				res := e.runE2E(t, realcluster.E2EOptions{Focus: realcluster.ServicesFocus, Skip: realcluster.ServicesSkip, Timeout: 100 * time.Minute})
				passed, failed := res.Counts()
				t.Logf("%s: %d passed, %d failed in %v", proxy, passed, failed, res.Elapsed.Round(time.Second))
				mu.Lock()
				results[proxy] = res
				mu.Unlock()
			})
		}
	})
	if len(results) != len(proxies) {
		t.Fatalf("runs missing: have %d of %d", len(results), len(proxies))
	}
	table, regressions := servicesTable(results["kube-proxy"], results["kproxy"])
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("table written to %s", out)
	for _, r := range regressions {
		t.Errorf("passes on kube-proxy, not on kproxy: %s", r)
	}
}

// servicesTable is the markdown table spec by spec, and the specs kube-proxy
// passes and kproxy does not.
func servicesTable(kp, kx *realcluster.E2EResult) (string, []string) {
	status := func(r *realcluster.E2EResult) map[string]string {
		m := map[string]string{}
		for _, s := range r.Specs {
			m[s.Name] = s.Status
		}
		return m
	}
	a, b := status(kp), status(kx)
	names := map[string]bool{}
	for n := range a {
		names[n] = true
	}
	for n := range b {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var sb strings.Builder
	var regressions []string
	kpPassed, _ := kp.Counts()
	kxPassed, _ := kx.Counts()
	fmt.Fprintf(&sb, "| [sig-network] Services spec | kube-proxy | kproxy |\n|---|---|---|\n")
	for _, n := range sorted {
		fmt.Fprintf(&sb, "| %s | %s | %s |\n", strings.TrimPrefix(n, "[sig-network] Services "), orDash(a[n]), orDash(b[n]))
		if a[n] == "passed" && b[n] != "passed" {
			regressions = append(regressions, n)
		}
	}
	fmt.Fprintf(&sb, "| **total passed** | **%d/%d** (%v) | **%d/%d** (%v) |\n",
		kpPassed, len(kp.Specs), kp.Elapsed.Round(time.Minute), kxPassed, len(kx.Specs), kx.Elapsed.Round(time.Minute))
	return sb.String(), regressions
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
