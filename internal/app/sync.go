package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/runner"
)

// observer reads each snapshot after the data planes applied it (DNS, service
// health checks).
type observer interface {
	Update(snap *model.Snapshot)
}

// healthReporter is told when changes are queued and when they are applied, so
// /healthz can say whether queued changes reach the data plane in time.
type healthReporter interface {
	QueuedUpdate()
	Updated()
	SyncNode(node model.Node)
}

// syncer is the one place that moves the model into the data planes. Sources only
// record changes in the tracker; the runner calls sync at a bounded frequency.
type syncer struct {
	log        *slog.Logger
	tracker    *model.Tracker
	plane      Dataplane
	observers  []observer
	health     healthReporter
	metrics    *metrics.Metrics
	syncPeriod time.Duration
	timeout    time.Duration

	mu       sync.Mutex
	needFull bool
	lastFull time.Time
}

func newSyncer(log *slog.Logger, tracker *model.Tracker, plane Dataplane, m *metrics.Metrics, syncPeriod time.Duration) *syncer {
	return &syncer{
		log: log, tracker: tracker, plane: plane, metrics: m, syncPeriod: syncPeriod,
		timeout: 2 * time.Minute, needFull: true,
	}
}

// queued is called (through the tracker's notify hook) for every recorded change.
func (s *syncer) queued() {
	if s.health != nil {
		s.health.QueuedUpdate()
	}
	if s.metrics != nil {
		s.metrics.SyncProxyRulesLastQueued.SetToCurrentTime()
		svc, eps := s.tracker.Pending()
		s.metrics.ServiceChangesPending.Set(float64(svc))
		s.metrics.EndpointChangesPending.Set(float64(eps))
	}
}

// sync applies every recorded change. Nothing is programmed before all sources
// have synced, so a half-loaded model never reaches the kernel.
func (s *syncer) sync() error {
	if !s.tracker.Synced() {
		s.log.Debug("waiting for sources to sync before programming")
		return runner.ErrNotReady
	}
	s.mu.Lock()
	full := s.needFull || time.Since(s.lastFull) >= s.syncPeriod
	s.mu.Unlock()

	start := time.Now()
	snap := s.tracker.Snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	err := s.plane.Sync(ctx, snap, full)
	cancel()
	took := time.Since(start)
	if err != nil {
		s.mu.Lock()
		s.needFull = true
		s.mu.Unlock()
		if s.metrics != nil {
			s.metrics.SyncFailuresTotal.Inc()
		}
		s.log.Error("sync failed; the previous rules stay in force, retrying with a full sync",
			"generation", snap.Generation, "full", full, "took", took, "err", err)
		return fmt.Errorf("sync generation %d: %w", snap.Generation, err)
	}
	s.mu.Lock()
	s.needFull = false
	if full {
		s.lastFull = start
	}
	s.mu.Unlock()
	for _, o := range s.observers {
		o.Update(snap)
	}
	if s.health != nil {
		s.health.SyncNode(snap.Node)
		s.health.Updated()
	}
	s.record(snap, full, took)
	return nil
}

func (s *syncer) record(snap *model.Snapshot, full bool, took time.Duration) {
	endpoints := 0
	for _, pv := range snap.Ports {
		endpoints += len(pv.Endpoints)
	}
	s.log.Info("synced", "generation", snap.Generation, "full", full, "took", took.Round(time.Microsecond),
		"services", len(snap.Services), "ports", len(snap.Ports), "endpoints", endpoints,
		"changedPorts", len(snap.Changed), "serviceChanges", snap.ServiceChanges, "endpointChanges", snap.EndpointChanges)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		for name := range snap.Changed {
			if pv, ok := snap.Ports[name]; ok {
				s.log.Debug("service port programmed", "servicePort", name.String(), "endpoints", len(pv.Endpoints),
					"cluster", len(pv.Cluster), "local", len(pv.Local))
			} else {
				s.log.Debug("service port removed", "servicePort", name.String())
			}
		}
	}
	m := s.metrics
	if m == nil {
		return
	}
	m.ObserveSync(full, took)
	m.ServiceChangesTotal.Add(float64(snap.ServiceChanges))
	m.EndpointChangesTotal.Add(float64(snap.EndpointChanges))
	svc, eps := s.tracker.Pending()
	m.ServiceChangesPending.Set(float64(svc))
	m.EndpointChangesPending.Set(float64(eps))
	now := time.Now()
	for _, at := range snap.TriggerTimes {
		m.NetworkProgrammingLatency.Observe(now.Sub(at).Seconds())
	}
	m.ServicesGauge.Set(float64(len(snap.Ports)))
	m.EndpointsGauge.Set(float64(endpoints))
	noLocal := map[[2]string]int{}
	for _, pv := range snap.Ports {
		if pv.Local != nil && len(pv.Local) == 0 {
			for _, ip := range pv.ClusterIPs {
				fam := string(model.FamilyOf(ip))
				if pv.InternalPolicyLocal {
					noLocal[[2]string{"Internal", fam}]++
				}
				if pv.ExternalPolicyLocal {
					noLocal[[2]string{"External", fam}]++
				}
			}
		}
	}
	for _, policy := range []string{"Internal", "External"} {
		for _, fam := range []string{"IPv4", "IPv6"} {
			m.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(policy, fam).Set(float64(noLocal[[2]string{policy, fam}]))
		}
	}
}
