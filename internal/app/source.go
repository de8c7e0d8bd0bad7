package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/healthcheck"
	"github.com/kproxy/kproxy/internal/kube"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

// source feeds the tracker until its context is done.
type source interface {
	run(ctx context.Context) error
	// errors lists the current problems with the input (bad manifests), if any.
	errors() []string
	// reachability reports, for a remote source, whether it answers and when it
	// last did; nil for a local one.
	reachability() healthcheck.SourceStatus
}

type kubeSource struct{ s *kube.Source }

func (k kubeSource) run(ctx context.Context) error { return k.s.Run(ctx) }
func (k kubeSource) errors() []string              { return nil }

func (k kubeSource) reachability() healthcheck.SourceStatus {
	return func() (bool, time.Time) {
		st := k.s.Status()
		return st.Connected, st.LastContact
	}
}

func newSource(ctx context.Context, log *slog.Logger, cfg config.Config, h model.Handler, m *metrics.Metrics) (source, error) {
	if cfg.Standalone() {
		return newManifestSource(log, cfg, h, m)
	}
	s, err := kube.New(kube.Config{
		Kubeconfig:       cfg.Kubeconfig,
		Master:           cfg.Master,
		NodeName:         cfg.HostnameOverride,
		ServiceProxyName: cfg.ServiceProxyName,
		ResyncPeriod:     cfg.ConfigSyncPeriod,
		QPS:              cfg.KubeQPS,
		Burst:            cfg.KubeBurst,
		ContentType:      cfg.KubeContentType,
		Compression:      cfg.KubeCompression,
		Logger:           log.With("source", "kubernetes"),
	}, h)
	if err != nil {
		return nil, err
	}
	return kubeSource{s}, nil
}
