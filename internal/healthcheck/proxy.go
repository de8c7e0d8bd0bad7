package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

// Clock is the time source; tests inject a fake one.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// ListenFunc opens a listener, like (*net.ListenConfig).Listen. Tests inject one
// that binds to loopback or fails on purpose.
type ListenFunc func(ctx context.Context, network, address string) (net.Listener, error)

func defaultListen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

// Option changes how a server is built.
type Option func(*options)

type options struct {
	listen ListenFunc
	source SourceStatus
}

// SourceStatus reports whether the source of the model (the API server) answers,
// and when it last did.
type SourceStatus func() (connected bool, lastContact time.Time)

// WithSourceStatus makes /healthz fail when the source has been unreachable for
// longer than the health timeout: the rules still work, but they can no longer
// follow the cluster, so a load balancer should prefer other nodes. /livez
// ignores it, so that a liveness probe never restarts kproxy (and never makes it
// drop its state) for an outage of the API server.
func WithSourceStatus(fn SourceStatus) Option {
	return func(o *options) { o.source = fn }
}

// WithListen replaces the function that opens listeners.
func WithListen(fn ListenFunc) Option {
	return func(o *options) {
		if fn != nil {
			o.listen = fn
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{listen: defaultListen}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// readHeaderTimeout bounds slow clients: probes send tiny requests, and a
// health port must not be held open by a stalled connection.
const readHeaderTimeout = 5 * time.Second

// ProxyHealthServer tracks whether kproxy applies queued changes in time and
// serves /healthz and /livez.
//
// The data-plane side calls QueuedUpdate when a change is recorded and Updated
// when a sync has applied everything; SyncNode follows this node's Node object.
type ProxyHealthServer struct {
	addr    string
	timeout time.Duration
	metrics *metrics.Metrics
	clock   Clock
	listen  ListenFunc
	source  SourceStatus

	mu sync.RWMutex
	// lastUpdated and oldestQueued are per IP family because each family is
	// programmed separately and one can fall behind while the other is fine.
	lastUpdated  map[v1.IPFamily]time.Time
	oldestQueued map[v1.IPFamily]time.Time
	nodeEligible bool

	srvMu  sync.Mutex
	srv    *http.Server
	ln     net.Listener
	closed bool
}

// NewProxyHealthServer returns a server that will listen on addr once Run is
// called. timeout is how long a queued update may wait for a sync before kproxy
// counts as unhealthy (kproxy uses 2 × the sync period). m may be nil; clock nil
// means the real clock.
func NewProxyHealthServer(addr string, timeout time.Duration, m *metrics.Metrics, clock Clock, opts ...Option) *ProxyHealthServer {
	if clock == nil {
		clock = realClock{}
	}
	o := buildOptions(opts)
	return &ProxyHealthServer{
		addr:         addr,
		timeout:      timeout,
		metrics:      m,
		clock:        clock,
		listen:       o.listen,
		source:       o.source,
		lastUpdated:  map[v1.IPFamily]time.Time{},
		oldestQueued: map[v1.IPFamily]time.Time{},
		// Eligible until a Node event says otherwise: a node that is starting
		// up is not going away.
		nodeEligible: true,
	}
}

// QueuedUpdate records that a change for the family is waiting to be applied.
// Only the oldest pending change counts: later ones do not restart the clock.
func (hs *ProxyHealthServer) QueuedUpdate(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, ok := hs.oldestQueued[family]; !ok {
		hs.oldestQueued[family] = hs.clock.Now()
	}
}

// Updated records that the data plane of the family has applied every queued change.
func (hs *ProxyHealthServer) Updated(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.oldestQueued, family)
	hs.lastUpdated[family] = hs.clock.Now()
}

// SyncNode records whether this node is going away (deleted, or tainted
// ToBeDeletedByClusterAutoscaler); model.NodeFrom computes Deleting.
func (hs *ProxyHealthServer) SyncNode(node model.Node) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.nodeEligible = !node.Deleting
}

// NodeEligible reports whether the node may receive traffic (not being deleted).
func (hs *ProxyHealthServer) NodeEligible() bool {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	return hs.nodeEligible
}

// IsHealthy reports the proxy's own health, ignoring the node's state; the
// service health checks use it.
func (hs *ProxyHealthServer) IsHealthy() bool {
	ok, _ := hs.health()
	return ok
}

// health follows kube-proxy: a family that was never updated is healthy (it is
// starting up: nothing is programmed before the sources have synced, which can
// take long in a big cluster); an updated family is unhealthy once its oldest
// queued change is older than the timeout. The time returned is the latest
// update, or, when unhealthy, the last update of the family that is late.
func (hs *ProxyHealthServer) health() (bool, time.Time) {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	now := hs.clock.Now()
	var last time.Time
	for family, updated := range hs.lastUpdated {
		if updated.After(last) {
			last = updated
		}
		queued, ok := hs.oldestQueued[family]
		if !ok || now.Sub(queued) < hs.timeout {
			continue
		}
		return false, updated
	}
	return true, last
}

// Handler returns the /healthz and /livez handler, for callers that serve it
// on a listener of their own.
func (hs *ProxyHealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", hs.serveHealthz)
	mux.HandleFunc("/livez", hs.serveLivez)
	return mux
}

// timeString formats like kube-proxy's body (Go's time.Time String, which
// kube-proxy's %q prints), without the monotonic clock reading that would
// otherwise leak into it.
func timeString(t time.Time) string { return t.Round(0).String() }

func writeHeaders(w http.ResponseWriter, healthy bool) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusOK
	if !healthy {
		code = http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	return code
}

func (hs *ProxyHealthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	eligible := hs.NodeEligible()
	healthy, last := hs.health()
	now := hs.clock.Now()
	healthy = healthy && eligible
	sourceOK := true
	if hs.source != nil {
		connected, contact := hs.source()
		sourceOK = connected || now.Sub(contact) < hs.timeout
		healthy = healthy && sourceOK
	}
	if healthy {
		// kube-proxy reports "now" when healthy: older releases bumped
		// lastUpdated on every sync loop, and probes rely on it being recent.
		last = now
	}
	code := writeHeaders(w, healthy)
	if hs.metrics != nil {
		hs.metrics.ProxyHealthzTotal.WithLabelValues(fmt.Sprint(code)).Inc()
	}
	if hs.source == nil {
		fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`,
			timeString(last), timeString(now), eligible)
		return
	}
	fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v, "sourceReachable": %v}`,
		timeString(last), timeString(now), eligible, sourceOK)
}

func (hs *ProxyHealthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	healthy, last := hs.health()
	now := hs.clock.Now()
	if healthy {
		last = now
	}
	code := writeHeaders(w, healthy)
	if hs.metrics != nil {
		// ServiceHealthzTotal is registered as kubeproxy_proxy_livez_total.
		hs.metrics.ServiceHealthzTotal.WithLabelValues(fmt.Sprint(code)).Inc()
	}
	fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q}`, timeString(last), timeString(now))
}

// Run listens on the configured address and serves until ctx is done or Close
// is called. It returns nil after a clean shutdown.
func (hs *ProxyHealthServer) Run(ctx context.Context) error {
	ln, err := hs.listen(ctx, "tcp", hs.addr)
	if err != nil {
		return fmt.Errorf("listen for proxy health on %s: %w", hs.addr, err)
	}
	return hs.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done or Close is called, then closes ln.
func (hs *ProxyHealthServer) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: hs.Handler(), ReadHeaderTimeout: readHeaderTimeout}
	hs.srvMu.Lock()
	if hs.closed {
		hs.srvMu.Unlock()
		_ = ln.Close()
		return nil
	}
	hs.srv, hs.ln = srv, ln
	hs.srvMu.Unlock()

	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve proxy health on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Addr is the address the server listens on, or nil before it listens.
func (hs *ProxyHealthServer) Addr() net.Addr {
	hs.srvMu.Lock()
	defer hs.srvMu.Unlock()
	if hs.ln == nil {
		return nil
	}
	return hs.ln.Addr()
}

// Close stops the server; Run then returns.
func (hs *ProxyHealthServer) Close() error {
	hs.srvMu.Lock()
	defer hs.srvMu.Unlock()
	hs.closed = true
	if hs.srv == nil {
		return nil
	}
	if err := hs.srv.Close(); err != nil {
		return fmt.Errorf("close proxy health server: %w", err)
	}
	return nil
}
