package socketlb

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kproxy/kproxy/internal/model"
)

// Metrics are the socket LB's Prometheus collectors. A nil *Metrics records
// nothing.
type Metrics struct {
	reg          prometheus.Registerer
	syncDuration *prometheus.HistogramVec // full
	syncFailures prometheus.Counter
}

var translationsDesc = prometheus.NewDesc("kproxy_socketlb_translations_total",
	"Connects and datagrams the socket load balancer sent to an endpoint, per service port (read from the per-CPU counters in the kernel)",
	[]string{"service_port", "protocol"}, nil)

// NewMetrics creates the collectors and registers them with reg (if not nil).
// The translation counters are registered when a data plane exists to read.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kproxy_socketlb_sync_duration_seconds", Help: "How long one sync of the socket LB's BPF maps took",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"full"}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kproxy_socketlb_sync_failures_total", Help: "Syncs of the socket LB's BPF maps that failed"}),
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.syncFailures)
	}
	return m
}

func (m *Metrics) observe(full bool, d time.Duration) {
	if m == nil {
		return
	}
	l := "false"
	if full {
		l = "true"
	}
	m.syncDuration.WithLabelValues(l).Observe(d.Seconds())
}

func (m *Metrics) failed() {
	if m != nil {
		m.syncFailures.Inc()
	}
}

func (m *Metrics) register(p *Proxier) {
	if m == nil || m.reg == nil {
		return
	}
	_ = m.reg.Register(translations{p})
}

// translations reads the per-CPU counters at scrape time.
type translations struct{ p *Proxier }

func (t translations) Describe(ch chan<- *prometheus.Desc) { ch <- translationsDesc }

func (t translations) Collect(ch chan<- prometheus.Metric) {
	for name, n := range t.p.Translations() {
		ch <- prometheus.MustNewConstMetric(translationsDesc, prometheus.CounterValue, float64(n), name.String(), string(name.Protocol))
	}
}

// Translations returns, per service port, how many connects and datagrams the
// programs translated, summed over the CPUs.
func (p *Proxier) Translations() map[model.ServicePortName]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[model.ServicePortName]uint64{}
	if p.k == nil {
		return out
	}
	var vals []uint64
	for name, ps := range p.ports {
		if err := p.k.objs.KpCounters.Lookup(ps.id, &vals); err != nil {
			// No entry until the first translation on the port.
			vals = vals[:0]
		}
		var sum uint64
		for _, v := range vals {
			sum += v
		}
		out[name] = sum
	}
	return out
}
