package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serveRetry is how long kproxy waits before it tries again to serve on an
// address it could not bind, as kube-proxy does for its health and metrics
// servers.
const serveRetry = 5 * time.Second

// server is a listener kproxy keeps up: run listens on its address and serves
// until ctx is done; it returns an error when it cannot (a port already taken).
type server struct {
	name     string // "healthz" or "metrics", the label of the failure metric
	addr     string
	run      func(ctx context.Context) error
	failures *prometheus.CounterVec // may be nil
}

// keepServing runs s until ctx is done. A failure is logged, counted in
// kproxy_server_failures_total, and tried again every retry, so that a port
// freed later is taken then and kproxy keeps proxying meanwhile; with
// hardFail (--bind-address-hard-fail), the first failure is sent on fatal
// instead, and kproxy exits.
func keepServing(ctx context.Context, log *slog.Logger, s server, retry time.Duration, hardFail bool, fatal chan<- error) {
	for {
		err := s.run(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = fmt.Errorf("stopped serving")
		}
		if s.failures != nil {
			s.failures.WithLabelValues(s.name).Inc()
		}
		if hardFail {
			select {
			case fatal <- fmt.Errorf("%s server on %s: %w", s.name, s.addr, err):
			default:
			}
			return
		}
		log.Error("serving failed; trying again", "server", s.name, "address", s.addr, "err", err, "retry", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}
