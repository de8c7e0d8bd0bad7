package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/dns"
	"github.com/kproxy/kproxy/internal/healthcheck"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/trace"
)

// components are the readers of the model that run beside the data plane.
type components struct {
	trace http.Handler
	// fatal receives the failure of a server that must not be retried
	// (--bind-address-hard-fail).
	fatal   chan error
	closers []func()
}

func (c *components) close() {
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
}

// familyHealth adapts the per-family health server to the syncer, which syncs
// every family in one transaction.
type familyHealth struct {
	hs       *healthcheck.ProxyHealthServer
	families []v1.IPFamily
}

func (f familyHealth) QueuedUpdate() {
	for _, fam := range f.families {
		f.hs.QueuedUpdate(fam)
	}
}

func (f familyHealth) Updated() {
	for _, fam := range f.families {
		f.hs.Updated(fam)
	}
}

func (f familyHealth) SyncNode(node model.Node) { f.hs.SyncNode(node) }

// serviceHealth opens the health check node ports of LoadBalancer services with
// externalTrafficPolicy Local after each sync.
type serviceHealth struct {
	log *slog.Logger
	s   *healthcheck.ServiceHealthServer
}

func (h serviceHealth) Update(snap *model.Snapshot) {
	if err := h.s.Sync(snap); err != nil {
		h.log.Error("service health check ports", "err", err)
	}
}

func startComponents(ctx context.Context, log *slog.Logger, cfg config.Config, m *metrics.Metrics,
	s *syncer, tracker *model.Tracker, families []v1.IPFamily, reach healthcheck.SourceStatus) (*components, error) {
	comp := &components{fatal: make(chan error, 2)}
	var proxyHealth healthcheck.ProxyHealth
	if cfg.HealthzBindAddress != "" {
		var opts []healthcheck.Option
		if reach != nil {
			opts = append(opts, healthcheck.WithSourceStatus(reach))
		}
		hs := healthcheck.NewProxyHealthServer(cfg.HealthzBindAddress, 2*cfg.SyncPeriod, m, nil, opts...)
		stop := startServing(ctx, log, server{name: "healthz", addr: cfg.HealthzBindAddress, run: hs.Run, failures: m.ServerFailuresTotal},
			cfg.BindAddressHardFail, comp.fatal)
		comp.closers = append(comp.closers, func() { stop(); _ = hs.Close() })
		s.health = familyHealth{hs: hs, families: families}
		proxyHealth = hs
		log.Info("serving health checks", "address", cfg.HealthzBindAddress)
	}
	var addrs []netip.Addr
	if len(cfg.NodePortAddresses) > 0 {
		var err error
		if addrs, err = localAddrsIn(cfg.NodePortAddresses); err != nil {
			comp.close()
			return nil, err
		}
	}
	svcHealth := healthcheck.NewServiceHealthServer(addrs, proxyHealth)
	comp.closers = append(comp.closers, func() { _ = svcHealth.Close() })
	s.observers = append(s.observers, serviceHealth{log: log, s: svcHealth})

	if cfg.DNSBindAddress != "" {
		srv, err := dns.New(dns.Config{
			BindAddress:     cfg.DNSBindAddress,
			ClusterDomain:   cfg.ClusterDomain,
			TTL:             cfg.DNSTTL,
			Upstream:        cfg.DNSUpstream,
			UpstreamTimeout: cfg.DNSUpstreamWait,
			Logger:          log,
		}, m)
		if err != nil {
			comp.close()
			return nil, err
		}
		if err := srv.Start(); err != nil {
			comp.close()
			return nil, fmt.Errorf("dns server on %s: %w", cfg.DNSBindAddress, err)
		}
		comp.closers = append(comp.closers, func() { _ = srv.Close() })
		s.observers = append(s.observers, srv)
		log.Info("serving service DNS", "address", srv.Addr().String(), "domain", cfg.ClusterDomain)
	}

	opts := trace.Options{
		ClusterCIDRs:       cfg.ClusterCIDRs,
		MasqueradeAll:      cfg.MasqueradeAll,
		NodePortAddresses:  cfg.NodePortAddresses,
		LocalhostNodePorts: cfg.LocalhostNodePorts,
	}
	opts = trace.ForDataplane(primary(s.plane), opts)
	if pl, ok := s.plane.(planes); ok {
		opts.SocketLB = pl.socket
	}
	if hostAddrs, err := localAddrsIn(nil); err == nil {
		opts.NodeAddresses = hostAddrs
	}
	comp.trace = trace.Handler(tracker.Current, opts)
	return comp, nil
}

// localAddrsIn returns this host's addresses inside the prefixes; nil prefixes
// mean every address.
func localAddrsIn(prefixes []netip.Prefix) ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			out = append(out, ip)
		}
	}
	return out, nil
}
