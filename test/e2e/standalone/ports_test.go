package standalone

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The health and metrics addresses already taken: kproxy proxies regardless,
// says so, counts the failures, and takes the ports once they are free, as
// kube-proxy does. With --bind-address-hard-fail it exits instead.
func TestTakenServerPortsAreRetried(t *testing.T) {
	dir, stateDir := t.TempDir(), t.TempDir()
	start(t, "kproxy-echo", "--listen", "127.0.1.21:8081", "--name", "web-1")
	writeFile(t, filepath.Join(dir, "web.yaml"), strings.Replace(fmt.Sprintf(webService, 80), "spec:\n", "spec:\n  clusterIP: 127.10.0.21\n", 1))
	writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", "127.0.1.21", 8081))

	admin, health := takePort(t), takePort(t)
	args := []string{"run", "--manifests", dir, "--state-dir", stateDir, "--proxy-mode", "userspace",
		"--service-cluster-ip-range", "127.10.0.0/16",
		"--metrics-bind-address", admin.Addr().String(),
		"--healthz-bind-address", health.Addr().String(),
		"--dns-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--min-sync-period", "100ms"}

	t.Run("with --bind-address-hard-fail kproxy exits", func(t *testing.T) {
		p := start(t, "kproxy", append(args, "--bind-address-hard-fail", "--state-dir", t.TempDir())...)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			out := p.out.String()
			if err == nil || !strings.Contains(out, "server on "+admin.Addr().String()) && !strings.Contains(out, "server on "+health.Addr().String()) {
				t.Fatalf("exit %v, output:\n%s", err, out)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("kproxy still runs with its ports taken:\n%s", p.out.String())
		}
	})

	k := &kproxy{admin: admin.Addr().String(), proc: start(t, "kproxy", args...)}
	eventually(t, "traffic reaches web-1 though the admin and health ports are taken", 20*time.Second, func() (bool, string) {
		name, err := request("127.10.0.21:80")
		return name == "web-1", fmt.Sprint(name, err)
	})
	for _, s := range []string{"server=metrics", "server=healthz"} {
		eventually(t, "kproxy says "+s+" failed", 10*time.Second, func() (bool, string) {
			out := k.out.String()
			return strings.Contains(out, `msg="serving failed; trying again" `+s), out
		})
	}
	admin.Close()
	health.Close()
	eventually(t, "the freed ports are served, with the failures counted", 20*time.Second, func() (bool, string) {
		if code, body := httpStatus("http://" + health.Addr().String() + "/livez"); code != 200 {
			return false, fmt.Sprint("livez ", code, body)
		}
		if code, body := httpStatus("http://" + admin.Addr().String() + "/metrics"); code != 200 {
			return false, fmt.Sprint("metrics ", code, body)
		}
		_, values := scrape(t, "http://"+admin.Addr().String()+"/metrics")
		m, h := values[`kproxy_server_failures_total{server="metrics"}`], values[`kproxy_server_failures_total{server="healthz"}`]
		return m >= 1 && h >= 1, fmt.Sprintf("failures: metrics %v healthz %v", m, h)
	})
}

// takePort holds a loopback TCP port for the test, as another program would.
func takePort(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
