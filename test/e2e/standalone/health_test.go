package standalone

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape fetches a Prometheus text page and returns the TYPE of every metric
// family and the value of every unlabelled sample (and of labelled ones, keyed
// with their labels).
func scrape(t *testing.T, url string) (types map[string]string, values map[string]float64) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	types, values = map[string]string{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			f := strings.Fields(rest)
			types[f[0]] = f[1]
			continue
		}
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			values[line[:i]] = v
		}
	}
	return types, values
}

// freeNodePort returns a free loopback TCP port inside the default node port
// range, where health check node ports must be.
func freeNodePort(t *testing.T) int {
	t.Helper()
	for port := 30000 + os.Getpid()%2000; port < 32767; port++ {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free node port")
	return 0
}

func httpStatus(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const lbLocalService = `apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: default
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: %d
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
`

// TestMetricsAndServiceHealthChecks scrapes a running kproxy: kube-proxy's metric
// names with their types, counters that move after a sync, and the health check
// node port of a LoadBalancer service with externalTrafficPolicy Local answering
// 200 or 503 as its local endpoints come and go.
func TestMetricsAndServiceHealthChecks(t *testing.T) {
	dir := t.TempDir()
	hcPort := freeNodePort(t)
	start(t, "kproxy-echo", "--listen", "127.0.1.21:8081", "--name", "web-1")
	writeFile(t, filepath.Join(dir, "lb.yaml"), fmt.Sprintf(lbLocalService, hcPort))
	writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", "127.0.1.21", 8081))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	healthz := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	k := &kproxy{admin: admin, proc: start(t, "kproxy", "run",
		"--manifests", dir, "--state-dir", t.TempDir(), "--proxy-mode", "userspace",
		"--service-cluster-ip-range", "127.10.0.0/16", "--nodeport-addresses", "127.0.0.1/32",
		"--metrics-bind-address", admin, "--healthz-bind-address", healthz,
		"--dns-bind-address", "", "--min-sync-period", "100ms")}
	hc := fmt.Sprintf("http://127.0.0.1:%d/", hcPort)
	eventually(t, "the health check node port reports one local endpoint", 20*time.Second, func() (bool, string) {
		code, body := httpStatus(hc)
		return code == 200 && strings.Contains(strings.ReplaceAll(body, " ", ""), `"localEndpoints":1`), fmt.Sprint(code, body)
	})
	if code, body := httpStatus("http://" + healthz + "/healthz"); code != 200 || !strings.Contains(body, "lastUpdated") {
		t.Fatalf("/healthz = %d %s", code, body)
	}

	types, before := scrape(t, "http://"+admin+"/metrics")
	for name, typ := range map[string]string{
		"kubeproxy_sync_proxy_rules_duration_seconds":              "histogram",
		"kubeproxy_sync_full_proxy_rules_duration_seconds":         "histogram",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds":      "histogram",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds":        "gauge",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
		"kubeproxy_network_programming_duration_seconds":           "histogram",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total":        "counter",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending":      "gauge",
		"kubeproxy_sync_proxy_rules_service_changes_total":         "counter",
		"kubeproxy_sync_proxy_rules_service_changes_pending":       "gauge",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total":      "gauge",
		"kubeproxy_sync_proxy_rules_nftables_sync_failures_total":  "counter",
		"kubeproxy_conntrack_reconciler_deleted_entries_total":     "counter",
		"kproxy_sync_failures_total":                               "counter",
		"kproxy_userspace_connections_total":                       "counter",
		"kproxy_manifest_errors":                                   "gauge",
		"kproxy_allocator_allocated":                               "gauge",
	} {
		if types[name] != typ {
			t.Errorf("metric %s: type %q, want %q", name, types[name], typ)
		}
	}

	t.Run("the pod going not ready turns the health check to 503 and the metrics move", func(t *testing.T) {
		notReady := strings.Replace(pod("web-1", "127.0.1.21", 8081), `status: "True"`, `status: "False"`, 1)
		writeFile(t, filepath.Join(dir, "web-1.yaml"), notReady)
		eventually(t, "503 with no local endpoints", 5*time.Second, func() (bool, string) {
			code, body := httpStatus(hc)
			return code == 503 && strings.Contains(strings.ReplaceAll(body, " ", ""), `"localEndpoints":0`), fmt.Sprint(code, body)
		})
		_, after := scrape(t, "http://"+admin+"/metrics")
		for _, counter := range []string{
			"kubeproxy_sync_proxy_rules_endpoint_changes_total",
			"kubeproxy_sync_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
		} {
			if after[counter] <= before[counter] {
				t.Errorf("%s = %v after a sync, was %v", counter, after[counter], before[counter])
			}
		}
		if v := after[`kubeproxy_sync_proxy_rules_no_local_endpoints_total{address_family="IPv4",traffic_policy="External"}`]; v != 1 {
			t.Errorf("no_local_endpoints_total{External,IPv4} = %v, want 1", v)
		}
	})
	t.Run("back to 200 when the pod is ready again", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "web-1.yaml"), pod("web-1", "127.0.1.21", 8081))
		eventually(t, "200 again", 5*time.Second, func() (bool, string) {
			code, body := httpStatus(hc)
			return code == 200, fmt.Sprint(code, body)
		})
	})
	t.Run("deleting the service closes its health check port", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "lb.yaml"), "")
		eventually(t, "port closed", 5*time.Second, func() (bool, string) {
			code, body := httpStatus(hc)
			return code == 0, fmt.Sprint(code, body)
		})
	})
	_ = k
}
