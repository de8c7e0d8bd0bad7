package app

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/trace"
)

// Admin endpoint paths, served on the metrics address like kube-proxy's debug
// handlers. `kproxy get`/`describe`/`trace` read them.
const (
	pathState = "/debug/kproxy/state"
	pathPorts = "/debug/kproxy/ports"
	pathStats = "/debug/kproxy/stats"
	pathRules = "/debug/kproxy/rules"
)

// State is the live model as the admin endpoint serves it.
type State struct {
	Mode       string                     `json:"mode"`
	Source     string                     `json:"source"`
	Manifests  string                     `json:"manifests,omitempty"`
	NodeName   string                     `json:"nodeName"`
	Generation uint64                     `json:"generation"`
	Services   []*v1.Service              `json:"services"`
	Slices     []*discovery.EndpointSlice `json:"endpointSlices"`
	Errors     []string                   `json:"errors,omitempty"`
}

// portJSON is one service port of the per-node view.
type portJSON struct {
	Name                string   `json:"name"`
	Type                string   `json:"type"`
	ClusterIPs          []string `json:"clusterIPs"`
	Port                int32    `json:"port"`
	Protocol            string   `json:"protocol"`
	NodePort            int32    `json:"nodePort,omitempty"`
	ExternalIPs         []string `json:"externalIPs,omitempty"`
	LoadBalancerIPs     []string `json:"loadBalancerIPs,omitempty"`
	SourceRanges        []string `json:"loadBalancerSourceRanges,omitempty"`
	AffinitySeconds     int      `json:"affinityTimeoutSeconds,omitempty"`
	ExternalPolicyLocal bool     `json:"externalTrafficPolicyLocal,omitempty"`
	InternalPolicyLocal bool     `json:"internalTrafficPolicyLocal,omitempty"`
	HealthCheckNodePort int32    `json:"healthCheckNodePort,omitempty"`
	Endpoints           []epJSON `json:"endpoints"`
	Internal            []string `json:"internalEndpoints"`
	External            []string `json:"externalEndpoints,omitempty"`
}

type epJSON struct {
	Address     string `json:"address"`
	Ready       bool   `json:"ready"`
	Serving     bool   `json:"serving"`
	Terminating bool   `json:"terminating"`
	NodeName    string `json:"nodeName,omitempty"`
	Local       bool   `json:"local"`
}

func strs[T interface{ String() string }](xs []T) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		out = append(out, x.String())
	}
	return out
}

func portsJSON(snap *model.Snapshot) []portJSON {
	out := make([]portJSON, 0, len(snap.Ports))
	for _, pv := range snap.Ports {
		p := portJSON{
			Name: pv.Name.String(), Type: string(pv.Type), ClusterIPs: strs(pv.ClusterIPs), Port: pv.Port,
			Protocol: string(pv.Protocol), NodePort: pv.NodePort, ExternalIPs: strs(pv.ExternalIPs),
			LoadBalancerIPs: strs(pv.LoadBalancerIPs), SourceRanges: strs(pv.LoadBalancerSourceRanges),
			AffinitySeconds: int(pv.AffinityTimeout / time.Second), ExternalPolicyLocal: pv.ExternalPolicyLocal,
			InternalPolicyLocal: pv.InternalPolicyLocal, HealthCheckNodePort: pv.HealthCheckNodePort,
			Endpoints: []epJSON{}, Internal: strs(pv.InternalEndpoints()),
		}
		if pv.ExternallyAccessible() {
			p.External = strs(pv.ExternalEndpoints())
		}
		for _, ep := range pv.Endpoints {
			p.Endpoints = append(p.Endpoints, epJSON{Address: ep.String(), Ready: ep.Ready, Serving: ep.Serving,
				Terminating: ep.Terminating, NodeName: ep.NodeName, Local: ep.Local})
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b portJSON) int { return cmp.Compare(a.Name+"/"+a.Protocol, b.Name+"/"+b.Protocol) })
	return out
}

func stateOf(snap *model.Snapshot) State {
	st := State{Generation: snap.Generation, NodeName: snap.Node.Name,
		Services: make([]*v1.Service, 0, len(snap.Services)), Slices: []*discovery.EndpointSlice{}}
	for _, svc := range snap.Services {
		st.Services = append(st.Services, svc)
	}
	slices.SortFunc(st.Services, func(a, b *v1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, sl := range snap.Slices {
		st.Slices = append(st.Slices, sl...)
	}
	slices.SortFunc(st.Slices, func(a, b *discovery.EndpointSlice) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return st
}

// adminServer serves /metrics and the debug endpoints.
type adminServer struct {
	log  *slog.Logger
	addr string
	mux  *http.ServeMux
}

type adminDeps struct {
	registry  *prometheus.Registry
	snapshot  func() *model.Snapshot
	describe  func(State) State // fills in mode, source, errors
	stats     func() any
	rules     func(ctx context.Context) (string, error)
	trace     http.Handler
	profiling bool
}

func newAdminServer(log *slog.Logger, addr string, d adminDeps) *adminServer {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.registry, promhttp.HandlerOpts{Registry: d.registry}))
	mux.HandleFunc(pathState, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.describe(stateOf(d.snapshot())))
	})
	mux.HandleFunc(pathPorts, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, portsJSON(d.snapshot()))
	})
	if d.stats != nil {
		mux.HandleFunc(pathStats, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, d.stats()) })
	}
	if d.rules != nil {
		mux.HandleFunc(pathRules, func(w http.ResponseWriter, r *http.Request) {
			text, err := d.rules(r.Context())
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write([]byte(text))
		})
	}
	if d.trace != nil {
		mux.Handle(trace.Path, d.trace)
	}
	if d.profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return &adminServer{log: log, addr: addr, mux: mux}
}

// run listens on the admin address and serves until ctx is done, then shuts
// down, giving requests in flight 2 seconds.
func (a *adminServer) run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", a.addr)
	if err != nil {
		return err
	}
	a.log.Info("serving metrics and the admin endpoint", "address", ln.Addr().String())
	srv := &http.Server{Handler: a.mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
