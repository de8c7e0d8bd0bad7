// Package metrics defines kproxy's Prometheus metrics. Names and meanings follow
// kube-proxy's (subsystem "kubeproxy") where they carry over, so existing
// dashboards and alerts keep working; kproxy's own metrics use the "kproxy" prefix.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every collector. A nil *Metrics is valid and records nothing, so
// packages can be used (and unit tested) without a registry.
type Metrics struct {
	SyncProxyRulesLatency               prometheus.Histogram
	SyncFullProxyRulesLatency           prometheus.Histogram
	SyncPartialProxyRulesLatency        prometheus.Histogram
	SyncProxyRulesLastTimestamp         prometheus.Gauge
	SyncProxyRulesLastQueued            prometheus.Gauge
	NetworkProgrammingLatency           prometheus.Histogram
	EndpointChangesTotal                prometheus.Counter
	EndpointChangesPending              prometheus.Gauge
	ServiceChangesTotal                 prometheus.Counter
	ServiceChangesPending               prometheus.Gauge
	SyncProxyRulesNoLocalEndpointsTotal *prometheus.GaugeVec // traffic_policy, address_family
	SyncFailuresTotal                   prometheus.Counter
	IPTablesRestoreFailuresTotal        prometheus.Counter // kept under kube-proxy's name for nftables transaction failures
	ConntrackCleanupEntriesTotal        prometheus.Counter
	ConntrackCleanupFailuresTotal       prometheus.Counter
	NFTablesSyncFailuresTotal           prometheus.Counter
	NFTablesCleanupFailuresTotal        prometheus.Counter
	ProxyHealthzTotal                   *prometheus.CounterVec // code
	ServiceHealthzTotal                 *prometheus.CounterVec // code

	// kproxy's own.
	UserspaceActiveConnections *prometheus.GaugeVec   // service_port, endpoint
	UserspaceConnectionsTotal  *prometheus.CounterVec // service_port, protocol
	UserspaceBytesTotal        *prometheus.CounterVec // service_port, direction
	UserspaceDialFailuresTotal *prometheus.CounterVec // service_port
	ManifestErrors             prometheus.Gauge
	ServerFailuresTotal        *prometheus.CounterVec
	ManifestLoadsTotal         *prometheus.CounterVec // result
	AllocatorUsed              *prometheus.GaugeVec   // resource (clusterip-ipv4, clusterip-ipv6, nodeport)
	AllocatorSize              *prometheus.GaugeVec
	DNSRequestsTotal           *prometheus.CounterVec // proto, rcode
	ServicesGauge              prometheus.Gauge
	EndpointsGauge             prometheus.Gauge
}

const namespace = "kubeproxy"

// syncBuckets covers 1 ms to ~16 s, like kube-proxy's sync latency histograms.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// New creates the collectors and registers them with reg (if not nil).
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SyncProxyRulesLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "sync_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets}),
		SyncFullProxyRulesLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "sync_full_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets}),
		SyncPartialProxyRulesLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "sync_partial_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets}),
		SyncProxyRulesLastTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced"}),
		SyncProxyRulesLastQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of proxy rules was queued"}),
		NetworkProgrammingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds",
			Buckets: merge(prometheus.LinearBuckets(0.25, 0.25, 2), prometheus.LinearBuckets(1, 1, 59),
				prometheus.LinearBuckets(60, 5, 12), prometheus.LinearBuckets(120, 30, 7))}),
		EndpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative proxy rules Endpoint changes"}),
		EndpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "Pending proxy rules Endpoint changes"}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative proxy rules Service changes"}),
		ServiceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sync_proxy_rules_service_changes_pending",
			Help: "Pending proxy rules Service changes"}),
		SyncProxyRulesNoLocalEndpointsTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sync_proxy_rules_no_local_endpoints_total",
			Help: "Number of services with a Local traffic policy and no endpoints"},
			[]string{"traffic_policy", "address_family"}),
		SyncFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kproxy", Name: "sync_failures_total",
			Help: "Syncs of the data plane that failed (the previous state stays in force)"}),
		IPTablesRestoreFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_proxy_rules_iptables_restore_failures_total",
			Help: "Cumulative proxy rules restore failures (kproxy counts failed nftables transactions here too)"}),
		ConntrackCleanupEntriesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "conntrack_reconciler_deleted_entries_total",
			Help: "Cumulative conntrack flows deleted by the conntrack cleanup"}),
		ConntrackCleanupFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kproxy", Name: "conntrack_cleanup_failures_total",
			Help: "Conntrack cleanups that failed"}),
		NFTablesSyncFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_proxy_rules_nftables_sync_failures_total",
			Help: "Cumulative proxy nftables sync failures"}),
		NFTablesCleanupFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_proxy_rules_nftables_cleanup_failures_total",
			Help: "Cumulative proxy nftables cleanup failures"}),
		ProxyHealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status"}, []string{"code"}),
		ServiceHealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status"}, []string{"code"}),

		UserspaceActiveConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kproxy", Subsystem: "userspace", Name: "active_connections",
			Help: "Open proxied connections (UDP: flows) per service port and endpoint"},
			[]string{"service_port", "endpoint"}),
		UserspaceConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "userspace", Name: "connections_total",
			Help: "Proxied connections (UDP: flows) accepted per service port"},
			[]string{"service_port", "protocol"}),
		UserspaceBytesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "userspace", Name: "bytes_total",
			Help: "Bytes proxied per service port; direction is to_endpoint or to_client"},
			[]string{"service_port", "direction"}),
		UserspaceDialFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "userspace", Name: "dial_failures_total",
			Help: "Failed connections to endpoints per service port"},
			[]string{"service_port"}),
		ServerFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "server", Name: "failures_total",
			Help: "Failures to serve on the health (healthz) or metrics address, each retried after 5s"}, []string{"server"}),
		ManifestErrors: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kproxy", Subsystem: "manifest", Name: "errors",
			Help: "Manifest errors in the last load of the manifest directory"}),
		ManifestLoadsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "manifest", Name: "loads_total",
			Help: "Loads of the manifest directory by result (ok, error)"}, []string{"result"}),
		AllocatorUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kproxy", Subsystem: "allocator", Name: "allocated",
			Help: "Allocated cluster IPs and node ports"}, []string{"resource"}),
		AllocatorSize: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kproxy", Subsystem: "allocator", Name: "size",
			Help: "Size of the cluster IP ranges and the node port range"}, []string{"resource"}),
		DNSRequestsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kproxy", Subsystem: "dns", Name: "requests_total",
			Help: "DNS requests answered by protocol and response code"}, []string{"proto", "rcode"}),
		ServicesGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kproxy", Name: "service_ports",
			Help: "Service ports in the current model"}),
		EndpointsGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kproxy", Name: "endpoints",
			Help: "Endpoints (per service port) in the current model"}),
	}
	if reg != nil {
		reg.MustRegister(m.collectors()...)
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.SyncProxyRulesLatency, m.SyncFullProxyRulesLatency, m.SyncPartialProxyRulesLatency,
		m.SyncProxyRulesLastTimestamp, m.SyncProxyRulesLastQueued, m.NetworkProgrammingLatency,
		m.EndpointChangesTotal, m.EndpointChangesPending, m.ServiceChangesTotal, m.ServiceChangesPending,
		m.SyncProxyRulesNoLocalEndpointsTotal, m.SyncFailuresTotal, m.IPTablesRestoreFailuresTotal,
		m.ConntrackCleanupEntriesTotal, m.ConntrackCleanupFailuresTotal, m.NFTablesSyncFailuresTotal,
		m.NFTablesCleanupFailuresTotal, m.ProxyHealthzTotal, m.ServiceHealthzTotal,
		m.UserspaceActiveConnections, m.UserspaceConnectionsTotal, m.UserspaceBytesTotal,
		m.UserspaceDialFailuresTotal, m.ServerFailuresTotal, m.ManifestErrors, m.ManifestLoadsTotal, m.AllocatorUsed,
		m.AllocatorSize, m.DNSRequestsTotal, m.ServicesGauge, m.EndpointsGauge,
	}
}

// ObserveSync records one successful sync of the data plane.
func (m *Metrics) ObserveSync(full bool, d time.Duration) {
	if m == nil {
		return
	}
	m.SyncProxyRulesLatency.Observe(d.Seconds())
	if full {
		m.SyncFullProxyRulesLatency.Observe(d.Seconds())
	} else {
		m.SyncPartialProxyRulesLatency.Observe(d.Seconds())
	}
	m.SyncProxyRulesLastTimestamp.SetToCurrentTime()
}

func merge(slices ...[]float64) []float64 {
	var out []float64
	for _, s := range slices {
		out = append(out, s...)
	}
	return out
}
