package realcluster

import (
	"os"
	"path/filepath"
	"testing"
)

// A JUnit report as e2e.test v1.37.2 writes it (trimmed): suite nodes, a
// passed spec, a failed one, one skipped by the focus and one that skipped
// itself.
const junitSample = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="3206" disabled="3191" errors="0" failures="1" time="124.6">
  <testsuite name="Kubernetes e2e suite" package="/tmp" tests="3206" skipped="0" disabled="3191" errors="0" failures="1" time="124.6">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.5"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" classname="Kubernetes e2e suite" status="passed" time="8.2"></testcase>
    <testcase name="[It] [sig-network] Services should be able to up and down services" classname="Kubernetes e2e suite" status="failed" time="61.0">
      <failure type="failed">service not reachable</failure>
    </testcase>
    <testcase name="[It] [sig-apps] Deployment should run" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] Services should work with IPv6" classname="Kubernetes e2e suite" status="skipped" time="0.1">
      <skipped message="skipped - requires an IPv6 cluster"></skipped>
    </testcase>
  </testsuite>
</testsuites>
`

func TestReadJUnit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "junit_01.xml")
	if err := os.WriteFile(p, []byte(junitSample), 0o644); err != nil {
		t.Fatal(err)
	}
	specs, err := readJUnit(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"[sig-network] Services should serve a basic endpoint from pods [Conformance]": "passed",
		"[sig-network] Services should be able to up and down services":                "failed",
		"[sig-network] Services should work with IPv6":                                 "skipped",
	}
	if len(specs) != len(want) {
		t.Fatalf("got %d specs, want %d: %+v", len(specs), len(want), specs)
	}
	for _, s := range specs {
		if want[s.Name] != s.Status {
			t.Errorf("%s: status %q, want %q", s.Name, s.Status, want[s.Name])
		}
	}
	r := &E2EResult{Specs: specs}
	if p, f := r.Counts(); p != 1 || f != 1 {
		t.Errorf("Counts() = %d, %d; want 1, 1", p, f)
	}
	if f := r.Failed(); len(f) != 1 || f[0] != "[sig-network] Services should be able to up and down services" {
		t.Errorf("Failed() = %v", f)
	}
	if specs[0].Failure != "service not reachable" {
		t.Errorf("failure text %q", specs[0].Failure)
	}
}
