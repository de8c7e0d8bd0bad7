package standalone

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/testenv"
)

// proc is a process started by a test, stopped by PID at cleanup.
type proc struct {
	cmd *exec.Cmd
	out *testenv.Buffer
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, name), args...), out: &testenv.Buffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	if t.Failed() {
		t.Logf("%s output:\n%s", p.cmd.Path, p.out.String())
	}
}

type port struct {
	Name       string   `json:"name"`
	ClusterIPs []string `json:"clusterIPs"`
	Port       int32    `json:"port"`
	Internal   []string `json:"internalEndpoints"`
}

type state struct {
	Services []struct {
		Metadata struct{ Name, Namespace string }
		Spec     struct{ ClusterIP string }
	} `json:"services"`
	Errors []string `json:"errors"`
}

type kproxy struct {
	*proc
	admin string
}

func (k *kproxy) get(t *testing.T, path string, v any) error {
	t.Helper()
	resp, err := http.Get("http://" + k.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (k *kproxy) ports(t *testing.T) map[string]port {
	var ps []port
	if err := k.get(t, "/debug/kproxy/ports", &ps); err != nil {
		return nil
	}
	out := map[string]port{}
	for _, p := range ps {
		out[p.Name] = p
	}
	return out
}

func eventually(t *testing.T, what string, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not true within %v; last: %s", what, within, last)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write and rename, as editors do, so kproxy never reads a half-written file.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const webService = `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector:
    app: web
  ports:
  - name: http
    port: %d
    targetPort: http
`

func pod(name, ip string, port int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  labels:
    app: web
spec:
  containers:
  - name: echo
    image: kproxy-echo
    ports:
    - name: http
      containerPort: %d
status:
  phase: Running
  podIP: %s
  podIPs:
  - ip: %s
  conditions:
  - type: Ready
    status: "True"
`, name, port, ip, ip)
}

func startKproxy(t *testing.T, dir, stateDir string) *kproxy {
	t.Helper()
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	k := &kproxy{admin: admin, proc: start(t, "kproxy", "run",
		"--manifests", dir, "--state-dir", stateDir, "--proxy-mode", "userspace",
		"--service-cluster-ip-range", "127.10.0.0/16",
		"--metrics-bind-address", admin,
		"--healthz-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--dns-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--min-sync-period", "100ms")}
	eventually(t, "kproxy answers on its admin endpoint", 20*time.Second, func() (bool, string) {
		var st state
		err := k.get(t, "/debug/kproxy/state", &st)
		return err == nil, fmt.Sprint(err)
	})
	return k
}

// request sends one HTTP request to the service and returns the backend's name.
func request(addr string) (string, error) {
	// A new connection per request: the proxy balances connections, not requests.
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	return name, nil
}

// backendsSeen sends n requests and returns how many each backend answered.
func backendsSeen(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		name, err := request(addr)
		if err != nil {
			seen["error: "+err.Error()]++
			continue
		}
		seen[name]++
	}
	return seen
}

func TestRunFollowsTheManifestDirectory(t *testing.T) {
	dir, stateDir := t.TempDir(), t.TempDir()
	start(t, "kproxy-echo", "--listen", "127.0.1.11:8081", "--name", "web-1")
	start(t, "kproxy-echo", "--listen", "127.0.1.12:8081", "--name", "web-2")
	start(t, "kproxy-echo", "--listen", "127.0.1.13:8081", "--name", "web-1-restarted")

	writeFile(t, filepath.Join(dir, "web.yaml"), fmt.Sprintf(webService, 80))
	writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", "127.0.1.11", 8081))
	k := startKproxy(t, dir, stateDir)

	var vip string
	eventually(t, "web has its first endpoint", 10*time.Second, func() (bool, string) {
		p, ok := k.ports(t)["default/web:http"]
		if !ok || len(p.ClusterIPs) == 0 {
			return false, fmt.Sprint(k.ports(t))
		}
		vip = fmt.Sprintf("%s:%d", p.ClusterIPs[0], p.Port)
		return strings.Join(p.Internal, ",") == "127.0.1.11:8081", fmt.Sprint(p.Internal)
	})
	eventually(t, "traffic reaches web-1 through the cluster IP", 5*time.Second, func() (bool, string) {
		name, err := request(vip)
		return name == "web-1", fmt.Sprint(name, err)
	})

	t.Run("a new pod file adds an endpoint and traffic spreads", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "web-2.yaml"), pod("web-2", "127.0.1.12", 8081))
		eventually(t, "two endpoints", 3*time.Second, func() (bool, string) {
			p := k.ports(t)["default/web:http"]
			return len(p.Internal) == 2, fmt.Sprint(p.Internal)
		})
		seen := backendsSeen(t, vip, 20)
		if seen["web-1"] == 0 || seen["web-2"] == 0 || len(seen) != 2 {
			t.Fatalf("backends seen = %v, want both web-1 and web-2 and nothing else", seen)
		}
	})

	t.Run("a pod that restarts with a new IP moves the endpoint", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", "127.0.1.13", 8081))
		eventually(t, "endpoint moved", 3*time.Second, func() (bool, string) {
			p := k.ports(t)["default/web:http"]
			return strings.Join(p.Internal, ",") == "127.0.1.12:8081,127.0.1.13:8081", fmt.Sprint(p.Internal)
		})
		seen := backendsSeen(t, vip, 20)
		if seen["web-1"] != 0 || seen["web-1-restarted"] == 0 || seen["web-2"] == 0 {
			t.Fatalf("backends seen = %v, want web-1-restarted and web-2, not the old web-1", seen)
		}
	})

	t.Run("an invalid edit keeps the last good service and reports the error", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "web.yaml"), strings.Replace(fmt.Sprintf(webService, 80), "port: 80", "port: 70000", 1))
		eventually(t, "the error is reported", 3*time.Second, func() (bool, string) {
			var st state
			if err := k.get(t, "/debug/kproxy/state", &st); err != nil {
				return false, err.Error()
			}
			for _, e := range st.Errors {
				if strings.Contains(e, "web.yaml") && strings.Contains(e, "spec.ports[0].port") {
					return true, ""
				}
			}
			return false, fmt.Sprint(st.Errors)
		})
		if name, err := request(vip); err != nil || name == "" {
			t.Fatalf("traffic stopped after an invalid edit: %q %v", name, err)
		}
	})

	t.Run("fixing the file applies the new port", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "web.yaml"), fmt.Sprintf(webService, 8080))
		var newVIP string
		eventually(t, "port 8080 served", 3*time.Second, func() (bool, string) {
			p := k.ports(t)["default/web:http"]
			newVIP = fmt.Sprintf("%s:%d", p.ClusterIPs[0], p.Port)
			return p.Port == 8080, fmt.Sprint(p)
		})
		if !strings.HasPrefix(newVIP, strings.Split(vip, ":")[0]+":") {
			t.Fatalf("cluster IP changed from %s to %s on a port edit", vip, newVIP)
		}
		eventually(t, "traffic on the new port", 3*time.Second, func() (bool, string) {
			name, err := request(newVIP)
			return err == nil && name != "", fmt.Sprint(name, err)
		})
		vip = newVIP
	})

	t.Run("a restart keeps the allocation", func(t *testing.T) {
		k.stop(t)
		k2 := startKproxy(t, dir, stateDir)
		eventually(t, "same cluster IP after restart", 10*time.Second, func() (bool, string) {
			p, ok := k2.ports(t)["default/web:http"]
			if !ok {
				return false, "no port yet"
			}
			return fmt.Sprintf("%s:%d", p.ClusterIPs[0], p.Port) == vip, fmt.Sprint(p)
		})
		k = k2
	})

	t.Run("deleting the file removes the service", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, "web.yaml")); err != nil {
			t.Fatal(err)
		}
		eventually(t, "service gone", 3*time.Second, func() (bool, string) {
			_, ok := k.ports(t)["default/web:http"]
			return !ok, "still there"
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vip+"/", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("the deleted service still answers on %s", vip)
		}
	})
}
