package grafana

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kproxy/kproxy/internal/metrics"
)

// recorder is a Registerer that keeps the collectors, so that the test sees
// every metric, including vectors that have no children yet (Gather skips those).
type recorder struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
	r.Registerer.MustRegister(cs...)
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exportedMetrics returns every metric name kproxy registers, with the series
// names a histogram adds.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{Registerer: prometheus.NewRegistry()}
	m := metrics.New(rec)
	// Touch each vector so that Gather also reports its type.
	m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", "IPv4")
	names := map[string]bool{}
	for _, c := range rec.collectors {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			match := fqName.FindStringSubmatch(d.String())
			if match == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			names[match[1]] = true
			if _, ok := c.(prometheus.Histogram); ok {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[match[1]+suffix] = true
				}
			}
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metrics found: %v", len(names), names)
	}
	return names
}

type panel struct {
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

var identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)

func TestDashboardUsesExportedMetrics(t *testing.T) {
	names := exportedMetrics(t)
	var dash struct {
		UID    string  `json:"uid"`
		Title  string  `json:"title"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Fatal("dashboard needs a uid and a title")
	}
	used := map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				found := false
				for _, id := range identifier.FindAllString(tg.Expr, -1) {
					if !strings.HasPrefix(id, "kubeproxy_") && !strings.HasPrefix(id, "kproxy_") {
						continue
					}
					found = true
					used[id] = true
					if !names[id] {
						t.Errorf("panel %q query %s: kproxy exports no metric %q", p.Title, tg.RefID, id)
					}
				}
				if !found {
					t.Errorf("panel %q query %s names no kproxy metric: %s", p.Title, tg.RefID, tg.Expr)
				}
			}
		}
	}
	walk(dash.Panels)

	// The dashboard must cover what operators watch.
	for _, want := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
		"kubeproxy_sync_full_proxy_rules_duration_seconds_bucket",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket",
		"kubeproxy_network_programming_duration_seconds_bucket",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending",
		"kubeproxy_sync_proxy_rules_service_changes_pending",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total",
		"kubeproxy_sync_proxy_rules_service_changes_total",
		"kproxy_sync_failures_total",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total",
		"kubeproxy_conntrack_reconciler_deleted_entries_total",
		"kproxy_userspace_active_connections",
		"kproxy_userspace_bytes_total",
		"kproxy_manifest_errors",
		"kproxy_dns_requests_total",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}
