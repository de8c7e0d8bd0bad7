package userspace

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/testenv"
)

// TestDemo runs the README's first command the way a newcomer does, through
// hack/demo.sh (kproxy run --manifests examples/demo --proxy-mode=userspace with
// three kproxy-echo backends), and checks that requests spread over more than
// one backend and that the ClientIP-affinity service sticks to one.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kproxy; skipped with -short")
	}
	testenv.RequireCommand(t, "bash", "go")
	script, err := filepath.Abs("../../hack/demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	// Admin and health addresses of its own, so a demo someone runs by hand does not clash.
	cmd.Env = append(cmd.Environ(), "DEMO_ADMIN=127.0.0.1:10549", "DEMO_HEALTHZ=127.0.0.1:10556", "REQUESTS=12")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/demo.sh: %v\n%s", err, out)
	}
	summary := regexp.MustCompile(`(?m)^(echo|echo-sticky): (\d+) backend\(s\) answered (\d+) of (\d+) requests$`)
	got := map[string][3]int{}
	for _, m := range summary.FindAllStringSubmatch(string(out), -1) {
		var v [3]int
		for i := range v {
			v[i], _ = strconv.Atoi(m[i+2])
		}
		got[m[1]] = v
	}
	if v := got["echo"]; v[0] < 2 || v[1] != v[2] {
		t.Errorf("service echo: %d backends answered %d of %d requests, want more than one backend and every request answered\n%s", v[0], v[1], v[2], out)
	}
	if v := got["echo-sticky"]; v[0] != 1 || v[1] != v[2] {
		t.Errorf("service echo-sticky: %d backends answered %d of %d requests, want exactly one (affinity)\n%s", v[0], v[1], v[2], out)
	}
}
