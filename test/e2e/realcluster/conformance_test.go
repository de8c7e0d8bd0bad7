package realcluster_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/realcluster"
)

// conformanceSpecs is the number of [sig-network] Services [Conformance]
// specs in e2e v1.37.2.
const conformanceSpecs = 15

// TestKproxyOnRealCluster runs kproxy as a cluster runs it. A two-node
// cluster with kubelets and containerd starts as kubeadm leaves one: upstream
// kube-proxy as a DaemonSet, CoreDNS. deploy/migrate.sh replaces kube-proxy
// with kproxy (deploy/kproxy.yaml, only the API server's URL set); then the
// upstream [sig-network] Services [Conformance] specs, traffic through
// kproxy's own restarts and a workload's rolling update, a UDP flow whose
// backend changes, and the migration back to kube-proxy.
func TestKproxyOnRealCluster(t *testing.T) {
	e := newEnv(t)
	e.deployKubeProxy(t)
	e.deployCoreDNS(t)
	w := startWorkload(t, e)
	if !t.Run("MigrateToKproxy", func(t *testing.T) { migrate(t, w, "to-kproxy") }) {
		t.FailNow()
	}
	t.Run("Conformance", func(t *testing.T) { conformance(t, e, "kproxy") })
	t.Run("Disruption", func(t *testing.T) { disruption(t, w) })
	t.Run("UDPEndpointChange", func(t *testing.T) { udpEndpointChange(t, e) })
	t.Run("MigrateToKubeProxy", func(t *testing.T) { migrate(t, w, "to-kube-proxy") })
	for _, p := range e.phases {
		t.Logf("phase %-24s %v", p.name, p.d.Round(100*time.Millisecond))
	}
}

// conformance runs the [sig-network] Services [Conformance] specs; every one
// must pass.
func conformance(t *testing.T, e *env, proxy string) {
	res := e.runE2E(t, realcluster.E2EOptions{Focus: realcluster.ConformanceFocus, Timeout: 25 * time.Minute})
	passed, failed := res.Counts()
	if failed > 0 || passed != conformanceSpecs {
		for _, s := range res.Specs {
			if s.Status != "passed" {
				t.Logf("==== %s:\n%s", s.Name, s.Failure)
			}
		}
		t.Fatalf("%s: %d/%d conformance specs passed, %d failed: %s (output in %s)",
			proxy, passed, conformanceSpecs, failed, strings.Join(res.Failed(), "; "), res.Log)
	}
	t.Logf("%s: %d/%d [sig-network] Services [Conformance] specs passed in %v", proxy, passed, conformanceSpecs, res.Elapsed.Round(time.Second))
}
