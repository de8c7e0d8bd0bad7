package realcluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/realcluster"
)

// conformanceSpecs is the number of [sig-network] Services [Conformance]
// specs in e2e v1.37.2.
const conformanceSpecs = 15

// TestKproxyOnRealCluster runs kproxy as a cluster runs it: a two-node
// cluster with kubelets and containerd, kproxy deployed from
// deploy/kproxy.yaml with only the API server's URL set, CoreDNS behind it.
// Then the upstream [sig-network] Services [Conformance] specs, traffic
// through kproxy's own restarts and a workload's rolling update, and a UDP
// flow whose backend changes.
func TestKproxyOnRealCluster(t *testing.T) {
	e := newEnv(t)
	e.deployKproxy(t)
	e.deployCoreDNS(t)
	ok := t.Run("Conformance", func(t *testing.T) { conformance(t, e, "kproxy") })
	ok = t.Run("Disruption", func(t *testing.T) { disruption(t, e) }) && ok
	ok = t.Run("UDPEndpointChange", func(t *testing.T) { udpEndpointChange(t, e) }) && ok
	for _, p := range e.phases {
		t.Logf("phase %-22s %v", p.name, p.d.Round(100*time.Millisecond))
	}
}

// conformance runs the [sig-network] Services [Conformance] specs; every one
// must pass.
func conformance(t *testing.T, e *env, proxy string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var res *realcluster.E2EResult
	e.timed(t, "conformance specs", func() error {
		var err error
		res, err = e.h.RunE2E(ctx, realcluster.E2EOptions{Focus: realcluster.ConformanceFocus, Timeout: 25 * time.Minute})
		return err
	})
	passed, failed := res.Counts()
	for _, s := range res.Specs {
		t.Logf("%-7s %6.1fs %s", s.Status, s.Time.Seconds(), s.Name)
	}
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
