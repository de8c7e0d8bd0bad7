package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
)

// ProxyHealth is what the service health checks need from the proxy's own
// health: a node whose proxy is behind must not attract load-balancer traffic.
type ProxyHealth interface {
	IsHealthy() bool
}

var _ ProxyHealth = (*ProxyHealthServer)(nil)

// ServiceHealthServer runs one HTTP server per service health check node port.
// It is safe for concurrent use.
type ServiceHealthServer struct {
	listen ListenFunc
	// addrs are the addresses to bind each port on; empty means all of them.
	addrs []netip.Addr
	proxy ProxyHealth

	mu       sync.RWMutex
	services map[types.NamespacedName]*hcInstance
}

type hcInstance struct {
	name      types.NamespacedName
	port      uint16
	servers   []*http.Server
	listeners []net.Listener
	endpoints int
	// bound is false while the port could not be opened; every sync retries it.
	bound bool
}

// NewServiceHealthServer returns a manager with no services. addrs restricts the
// addresses the ports are opened on (kproxy passes the node addresses selected by
// --nodeport-addresses; nil means every address). proxy may be nil, in which case
// the proxy always counts as healthy.
func NewServiceHealthServer(addrs []netip.Addr, proxy ProxyHealth, opts ...Option) *ServiceHealthServer {
	o := buildOptions(opts)
	return &ServiceHealthServer{
		listen:   o.listen,
		addrs:    addrs,
		proxy:    proxy,
		services: map[types.NamespacedName]*hcInstance{},
	}
}

// SyncServices makes the given services (name → health check node port) the
// open set: ports of services that are gone, or whose port changed, are closed;
// new ones are opened. A port that fails to open is kept and retried on every
// later call; the error lists the ports that are not open.
func (s *ServiceHealthServer) SyncServices(services map[types.NamespacedName]uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, inst := range s.services {
		if port, ok := services[name]; !ok || port != inst.port {
			inst.close()
			delete(s.services, name)
		}
	}
	var errs []error
	for name, port := range services {
		inst := s.services[name]
		if inst == nil {
			inst = &hcInstance{name: name, port: port}
			s.services[name] = inst
		}
		if inst.bound {
			continue
		}
		if err := s.open(inst); err != nil {
			errs = append(errs, fmt.Errorf("health check for service %s on port %d: %w", name, port, err))
		}
	}
	return errors.Join(errs...)
}

// SyncEndpoints sets the number of local endpoints per service. Services not in
// the map have none; entries for services without a health check are ignored.
func (s *ServiceHealthServer) SyncEndpoints(endpoints map[types.NamespacedName]int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, inst := range s.services {
		inst.endpoints = endpoints[name]
	}
	return nil
}

// Sync derives both maps from a snapshot and applies them: every port with a
// HealthCheckNodePort, and its local ready endpoints.
func (s *ServiceHealthServer) Sync(snap *model.Snapshot) error {
	services, endpoints := FromSnapshot(snap)
	err := s.SyncServices(services)
	_ = s.SyncEndpoints(endpoints) // never fails
	return err
}

// FromSnapshot computes the health check ports and local endpoint counts of a
// snapshot. Like kube-proxy, only ready local endpoints count: when the last
// one is terminating the check fails so that the load balancer drains the node
// while existing connections still reach the terminating pod. Endpoints are
// counted once per pod address, however many ports the service has.
func FromSnapshot(snap *model.Snapshot) (map[types.NamespacedName]uint16, map[types.NamespacedName]int) {
	services := map[types.NamespacedName]uint16{}
	endpoints := map[types.NamespacedName]int{}
	if snap == nil {
		return services, endpoints
	}
	seen := map[types.NamespacedName]map[netip.Addr]bool{}
	for _, pv := range snap.Ports {
		if pv == nil || pv.ServicePort == nil || pv.HealthCheckNodePort <= 0 || pv.HealthCheckNodePort > 65535 {
			continue
		}
		name := pv.Name.NamespacedName
		services[name] = uint16(pv.HealthCheckNodePort)
		if seen[name] == nil {
			seen[name] = map[netip.Addr]bool{}
		}
		for _, ep := range pv.Endpoints {
			if ep.Local && ep.Ready && !seen[name][ep.IP] {
				seen[name][ep.IP] = true
				endpoints[name]++
			}
		}
	}
	return services, endpoints
}

// open binds the instance's port on every configured address. On failure it
// closes what it opened, so that a retry starts clean.
func (s *ServiceHealthServer) open(inst *hcInstance) error {
	hosts := []string{""}
	if len(s.addrs) > 0 {
		hosts = hosts[:0]
		for _, a := range s.addrs {
			hosts = append(hosts, a.String())
		}
	}
	handler := hcHandler{name: inst.name, s: s}
	for _, host := range hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(int(inst.port)))
		ln, err := s.listen(context.Background(), "tcp", addr)
		if err != nil {
			inst.close()
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout}
		inst.servers = append(inst.servers, srv)
		inst.listeners = append(inst.listeners, ln)
		go func() {
			// Serve returns ErrServerClosed when the service goes away; other
			// errors mean the listener broke, and the next sync cannot tell,
			// so mark the port for a retry.
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.mu.Lock()
				if cur := s.services[inst.name]; cur == inst {
					inst.close()
				}
				s.mu.Unlock()
			}
		}()
	}
	inst.bound = true
	return nil
}

func (inst *hcInstance) close() {
	for _, srv := range inst.servers {
		_ = srv.Close() // nothing more to do on failure
	}
	// Close the listeners here too: Serve may not have started yet, and the
	// port must be free when this returns (a service may move to it next).
	for _, ln := range inst.listeners {
		_ = ln.Close()
	}
	inst.servers, inst.listeners = nil, nil
	inst.bound = false
}

// Ports returns the open ports by service, for debugging and tests.
func (s *ServiceHealthServer) Ports() map[types.NamespacedName]uint16 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[types.NamespacedName]uint16, len(s.services))
	for name, inst := range s.services {
		if inst.bound {
			out[name] = inst.port
		}
	}
	return out
}

// Close closes every port.
func (s *ServiceHealthServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, inst := range s.services {
		inst.close()
		delete(s.services, name)
	}
	return nil
}

type hcHandler struct {
	name types.NamespacedName
	s    *ServiceHealthServer
}

// ServiceHealthResponse is the body of a service health check, as kube-proxy writes it.
type ServiceHealthResponse struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (h hcHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.RLock()
	inst, ok := h.s.services[h.name]
	count := 0
	if ok {
		count = inst.endpoints
	}
	h.s.mu.RUnlock()
	healthy := h.s.proxy == nil || h.s.proxy.IsHealthy()

	var body ServiceHealthResponse
	body.Service.Namespace, body.Service.Name = h.name.Namespace, h.name.Name
	body.LocalEndpoints = count
	body.ServiceProxyHealthy = healthy
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if ok && count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "\t")
	_ = enc.Encode(body) // the client went away; nothing to do
}
