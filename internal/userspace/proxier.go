// Package userspace is kproxy's userspace data plane: a layer-4 proxy in Go that
// listens on every service address (cluster IPs, NodePorts, local external and
// load balancer IPs) and forwards TCP connections and UDP flows to the service's
// endpoints. It needs no root and no kernel support beyond sockets, which makes
// it the data plane of standalone mode on a developer machine; see README.md.
package userspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

// Proxier is the userspace data plane. Sync and Close may be called from any
// goroutine; Sync calls are serialized.
type Proxier struct {
	cfg    Config
	m      *metrics.Metrics
	log    *slog.Logger
	addrs  addrManager // nil unless cfg.BindServiceIPs
	start  time.Time
	ctx    context.Context // cancelled by Close; bounds dials
	cancel context.CancelFunc
	dialer net.Dialer

	mu        sync.Mutex
	ports     map[model.ServicePortName]*servicePort
	listeners map[listenerKey]*listener
	owned     map[netip.Addr]bool // service IPs kproxy added to the loopback device
	nodeAddrs []netip.Addr
	hostAddrs []netip.Addr // all the node's addresses, for source ranges
	warned    map[model.ServicePortName]bool
	// warnedNoNodeAddrs: the missing node addresses were logged once.
	warnedNoNodeAddrs bool
	synced            bool
	closed            bool

	active atomic.Int64 // open TCP connections, for cfg.MaxConnections
	flows  atomic.Int64 // open UDP flows, for cfg.MaxConnections
	loops  []*loop      // the TCP event loops
	homes  []*loop      // loops[:len/2 rounded up]: where long-lived connections settle
	// listenerSeq counts TCP listeners, to spread them over the loops.
	listenerSeq atomic.Uint64
	wg          sync.WaitGroup
	done        chan struct{}
}

// The app's data plane contract, restated here to keep the two in step.
var _ interface {
	Sync(context.Context, *model.Snapshot, bool) error
	Close() error
} = (*Proxier)(nil)

// New validates cfg and returns a Proxier with no listeners; the first Sync
// opens them. m may be nil.
func New(cfg Config, m *metrics.Metrics) (*Proxier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("userspace config: %w", err)
	}
	var addrs addrManager
	if cfg.BindServiceIPs {
		addrs = &netlinkAddrs{device: cfg.LoopbackDevice}
	}
	return newProxier(cfg, m, addrs)
}

func newProxier(cfg Config, m *metrics.Metrics, addrs addrManager) (*Proxier, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default().With("dataplane", "userspace")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxier{
		cfg:       cfg,
		m:         m,
		log:       log,
		addrs:     addrs,
		start:     time.Now(),
		ctx:       ctx,
		cancel:    cancel,
		dialer:    net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: -1},
		ports:     map[model.ServicePortName]*servicePort{},
		listeners: map[listenerKey]*listener{},
		owned:     map[netip.Addr]bool{},
		warned:    map[model.ServicePortName]bool{},
		done:      make(chan struct{}),
	}
	n := cfg.EventLoops
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	homes := (n + 1) / 2
	for i := range n {
		lp, err := newLoop(p, i >= homes)
		if err != nil {
			for _, lp := range p.loops {
				lp.stop()
			}
			p.wg.Wait()
			cancel()
			return nil, fmt.Errorf("userspace event loop: %w", err)
		}
		p.loops = append(p.loops, lp)
		p.wg.Add(1)
		go lp.run()
	}
	p.homes = p.loops[:homes]
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// now is a monotonic clock in nanoseconds, cheap enough for every packet.
func (p *Proxier) now() int64 { return int64(time.Since(p.start)) }

// listenerKey identifies a socket: one per protocol and address.
type listenerKey struct {
	proto v1.Protocol
	addr  netip.AddrPort
}

func (k listenerKey) String() string { return k.addr.String() + "/" + string(k.proto) }

// Kinds of service addresses; they decide the endpoint set and source checks.
const (
	kindClusterIP    = "cluster-ip"
	kindNodePort     = "node-port"
	kindExternalIP   = "external-ip"
	kindLoadBalancer = "load-balancer"
)

// front is what a listener serves: a service port, the endpoints for its kind of
// traffic, and for load balancer IPs the allowed source ranges. Listeners read it
// through an atomic pointer, so a sync changes it without rebinding.
type front struct {
	sp     *servicePort
	bal    *balancer
	kind   string
	ranges []netip.Prefix
	// selfAllowed: as kube-proxy, when a source range covers the node, a
	// load balancer IP may be the source of its own traffic (a VIP bound on
	// the node is reached from the node with the VIP as source).
	selfAllowed bool
}

// allowed reports whether a client at src may reach the front's address dst.
func (f *front) allowed(src, dst netip.Addr) bool {
	if len(f.ranges) == 0 {
		return true
	}
	for _, r := range f.ranges {
		if r.Contains(src) {
			return true
		}
	}
	return f.selfAllowed && src == dst
}

type listener struct {
	key   listenerKey
	front atomic.Pointer[front]
	tcp   *tcpListener
	udp   *udpListener
}

func (l *listener) close() {
	if l.tcp != nil {
		l.tcp.close()
	}
	if l.udp != nil {
		_ = l.udp.conn.Close()
	}
}

// listen opens the socket of a listener and starts serving it.
func (p *Proxier) listen(key listenerKey, f *front) (*listener, error) {
	l := &listener{key: key}
	l.front.Store(f)
	switch key.proto {
	case v1.ProtocolTCP:
		tl, err := p.openTCPListener(l, key.addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", key, err)
		}
		l.tcp = tl
	case v1.ProtocolUDP:
		conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(key.addr))
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", key, err)
		}
		// Bigger buffers absorb bursts; the kernel caps them at rmem_max/wmem_max.
		_ = conn.SetReadBuffer(4 << 20)
		_ = conn.SetWriteBuffer(4 << 20)
		l.udp = &udpListener{p: p, l: l, conn: conn, flows: map[netip.AddrPort]*udpFlow{}}
		p.wg.Add(1)
		go l.udp.readLoop()
	default:
		return nil, fmt.Errorf("listen on %s: protocol not proxied", key)
	}
	return l, nil
}

// tracked is a live TCP connection or UDP flow, closed when its endpoint or
// service goes away.
type tracked interface {
	endpoint() *endpoint
	abort()
}

// servicePort is the proxier's state for one service port.
type servicePort struct {
	p     *Proxier
	name  model.ServicePortName
	label string
	proto v1.Protocol

	internal *balancer
	external *balancer // used only when the traffic policies differ

	mu        sync.Mutex
	endpoints map[netip.AddrPort]*endpoint
	tracked   map[tracked]struct{}
	retired   bool

	// Guarded by p.mu.
	want     map[listenerKey]*front
	bindErrs map[listenerKey]error

	connsTotal, bytesIn, bytesOut, dialFailures prometheus.Counter // nil without metrics
}

func (p *Proxier) newServicePort(name model.ServicePortName, proto v1.Protocol) *servicePort {
	aff := newAffinityTable()
	sp := &servicePort{
		p:         p,
		name:      name,
		label:     name.String(),
		proto:     proto,
		internal:  newBalancer(p.now, aff),
		external:  newBalancer(p.now, aff),
		endpoints: map[netip.AddrPort]*endpoint{},
		tracked:   map[tracked]struct{}{},
		bindErrs:  map[listenerKey]error{},
	}
	if p.m != nil {
		sp.connsTotal = p.m.UserspaceConnectionsTotal.WithLabelValues(sp.label, string(proto))
		sp.bytesIn = p.m.UserspaceBytesTotal.WithLabelValues(sp.label, "to_endpoint")
		sp.bytesOut = p.m.UserspaceBytesTotal.WithLabelValues(sp.label, "to_client")
		sp.dialFailures = p.m.UserspaceDialFailuresTotal.WithLabelValues(sp.label)
	}
	return sp
}

// update applies a new view of the port: endpoints, balancers and the wanted listeners.
func (sp *servicePort) update(pv *model.PortView, nodeAddrs []netip.Addr) {
	p := sp.p
	sp.mu.Lock()
	fresh := make(map[netip.AddrPort]*endpoint, len(pv.Endpoints))
	for _, e := range pv.Endpoints {
		ap := e.AddrPort()
		ep := sp.endpoints[ap]
		if ep == nil {
			ep = &endpoint{addr: ap, str: ap.String()}
			if p.m != nil {
				ep.activeGauge = p.m.UserspaceActiveConnections.WithLabelValues(sp.label, ap.String())
			}
		}
		fresh[ap] = ep
	}
	var gone []*endpoint
	for ap, ep := range sp.endpoints {
		if fresh[ap] == nil {
			ep.gone.Store(true)
			gone = append(gone, ep)
		}
	}
	sp.endpoints = fresh
	sp.mu.Unlock()

	resolve := func(eps []*model.Endpoint) []*endpoint {
		out := make([]*endpoint, 0, len(eps))
		for _, e := range eps {
			if ep := fresh[e.AddrPort()]; ep != nil {
				out = append(out, ep)
			}
		}
		return out
	}
	sp.internal.update(resolve(pv.InternalEndpoints()), pv.AffinityTimeout)
	ext := sp.internal
	if pv.ExternalPolicyLocal != pv.InternalPolicyLocal {
		ext = sp.external
		ext.update(resolve(pv.ExternalEndpoints()), pv.AffinityTimeout)
	}

	if len(gone) > 0 {
		sp.endpointsGone(gone)
	}

	port := uint16(pv.Port)
	want := map[listenerKey]*front{}
	add := func(ip netip.Addr, port uint16, f *front) {
		want[listenerKey{proto: sp.proto, addr: netip.AddrPortFrom(ip, port)}] = f
	}
	internal := &front{sp: sp, bal: sp.internal, kind: kindClusterIP}
	for _, ip := range pv.ClusterIPs {
		add(ip, port, internal)
	}
	if pv.NodePort != 0 {
		np := &front{sp: sp, bal: ext, kind: kindNodePort}
		for _, ip := range nodeAddrs {
			add(ip, uint16(pv.NodePort), np)
		}
	}
	eip := &front{sp: sp, bal: ext, kind: kindExternalIP}
	for _, ip := range pv.ExternalIPs {
		add(ip, port, eip)
	}
	lb := &front{sp: sp, bal: ext, kind: kindLoadBalancer, ranges: pv.LoadBalancerSourceRanges}
	for _, r := range pv.LoadBalancerSourceRanges {
		lb.selfAllowed = lb.selfAllowed || slices.ContainsFunc(sp.p.hostAddrs, r.Contains)
	}
	for _, ip := range pv.LoadBalancerIPs {
		add(ip, port, lb)
	}
	sp.want = want
}

// endpointsGone closes the UDP flows of deleted endpoints at once (the next
// packet starts a flow to a live endpoint, as kube-proxy's conntrack cleanup
// does) and their TCP connections after the grace period.
func (sp *servicePort) endpointsGone(gone []*endpoint) {
	for _, ep := range gone {
		if ep.activeGauge != nil && sp.p.m != nil {
			sp.p.m.UserspaceActiveConnections.DeleteLabelValues(sp.label, ep.addr.String())
		}
	}
	isGone := func(t tracked) bool { return contains(gone, t.endpoint()) }
	sp.abortWhere(func(t tracked) bool { _, udp := t.(*udpFlow); return udp && isGone(t) })
	sp.p.afterGrace(func() { sp.abortWhere(isGone) })
}

// track registers a connection; false means the port is being retired and the
// caller must close it.
func (sp *servicePort) track(t tracked) bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.retired {
		return false
	}
	sp.tracked[t] = struct{}{}
	return true
}

func (sp *servicePort) untrack(t tracked) {
	sp.mu.Lock()
	delete(sp.tracked, t)
	sp.mu.Unlock()
}

func (sp *servicePort) abortWhere(match func(tracked) bool) {
	sp.mu.Lock()
	var victims []tracked
	for t := range sp.tracked {
		if match(t) {
			victims = append(victims, t)
		}
	}
	sp.mu.Unlock()
	for _, t := range victims {
		t.abort()
	}
}

// retire ends a removed port: new connections are refused at once, running
// ones are closed after the grace period.
func (sp *servicePort) retire() {
	sp.mu.Lock()
	sp.retired = true
	sp.mu.Unlock()
	sp.p.afterGrace(func() { sp.abortWhere(func(tracked) bool { return true }) })
	if m := sp.p.m; m != nil {
		m.UserspaceConnectionsTotal.DeleteLabelValues(sp.label, string(sp.proto))
		m.UserspaceBytesTotal.DeleteLabelValues(sp.label, "to_endpoint")
		m.UserspaceBytesTotal.DeleteLabelValues(sp.label, "to_client")
		m.UserspaceDialFailuresTotal.DeleteLabelValues(sp.label)
		m.UserspaceActiveConnections.DeletePartialMatch(prometheus.Labels{"service_port": sp.label})
	}
}

func (p *Proxier) afterGrace(f func()) {
	if p.cfg.GracePeriod == 0 {
		f()
		return
	}
	time.AfterFunc(p.cfg.GracePeriod, f)
}

func supported(proto v1.Protocol) bool { return proto == v1.ProtocolTCP || proto == v1.ProtocolUDP }

// Sync makes the listeners and endpoint sets match snap. With full it looks at
// every port; otherwise only at snap.Changed. A listener that cannot bind is an
// error of its port alone: it is logged, shown in Stats and retried every
// BindRetryInterval, and Sync still succeeds for the others.
func (p *Proxier) Sync(ctx context.Context, snap *model.Snapshot, full bool) error {
	if snap == nil {
		return errors.New("userspace sync: nil snapshot")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("userspace sync: %w", err)
	}
	started := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("userspace sync: %w", net.ErrClosed)
	}
	if !p.synced || snap.NodeChanged {
		full = true
	}
	p.synced = true
	// A change of the node's addresses comes with NodeChanged: a full sync.
	p.hostAddrs = snap.Node.Addresses
	nodeAddrs := p.nodePortAddrs(snap.Node)
	if !slices.Equal(nodeAddrs, p.nodeAddrs) {
		full = true
		p.nodeAddrs = nodeAddrs
	}

	names := map[model.ServicePortName]bool{}
	if full {
		for n := range snap.Ports {
			names[n] = true
		}
		for n := range p.ports {
			names[n] = true
		}
	} else {
		for n := range snap.Changed {
			names[n] = true
		}
	}

	var removed []*servicePort
	for name := range names {
		pv := snap.Ports[name]
		sp := p.ports[name]
		if pv != nil && !supported(pv.Protocol) {
			if !p.warned[name] {
				p.warned[name] = true
				p.log.Info("the userspace proxy does not proxy this protocol", "servicePort", name.String(), "protocol", pv.Protocol)
			}
			pv = nil
		}
		if pv == nil {
			delete(p.warned, name)
			if sp != nil {
				delete(p.ports, name)
				removed = append(removed, sp)
			}
			continue
		}
		if sp == nil {
			sp = p.newServicePort(name, pv.Protocol)
			p.ports[name] = sp
		}
		sp.update(pv, p.nodeAddrs)
		if pv.NodePort != 0 && len(p.nodeAddrs) == 0 && !p.warnedNoNodeAddrs {
			p.warnedNoNodeAddrs = true
			p.log.Warn("node ports are not served: the node has no addresses and no node port addresses are configured",
				"servicePort", name.String(), "nodePort", pv.NodePort)
		}
	}

	// Addresses first, so that new listeners can bind them.
	wantIPs := p.wantedIPs()
	if err := p.syncAddrs(wantIPs, "add"); err != nil {
		p.log.Warn("adding service IPs to the loopback device", "err", err)
	}
	// Close listeners that are no longer wanted before binding new ones: a port
	// may move from one service to another in the same sync.
	for key, l := range p.listeners {
		owner := l.front.Load().sp
		if !names[owner.name] {
			continue
		}
		if cur := p.ports[owner.name]; cur == nil || cur.want[key] == nil {
			l.close()
			delete(p.listeners, key)
		}
	}
	for _, sp := range removed {
		sp.retire()
	}
	failed := 0
	for name := range names {
		if sp := p.ports[name]; sp != nil {
			p.bindPort(sp)
			failed += len(sp.bindErrs)
		}
	}
	if err := p.syncAddrs(wantIPs, "remove"); err != nil {
		p.log.Warn("removing service IPs from the loopback device", "err", err)
	}
	p.log.Debug("synced", "full", full, "changedPorts", len(names), "ports", len(p.ports),
		"listeners", len(p.listeners), "bindFailures", failed, "took", time.Since(started))
	return nil
}

// wantedIPs are the cluster IPs that must be on the loopback device.
func (p *Proxier) wantedIPs() map[netip.Addr]bool {
	if p.addrs == nil {
		return nil
	}
	want := map[netip.Addr]bool{}
	for _, sp := range p.ports {
		for key, f := range sp.want {
			if f.kind == kindClusterIP && !alwaysLocal(key.addr.Addr()) {
				want[key.addr.Addr()] = true
			}
		}
	}
	return want
}

// bindPort opens the wanted listeners of sp that are missing and points the
// existing ones at its current fronts.
func (p *Proxier) bindPort(sp *servicePort) {
	for key := range sp.bindErrs {
		if sp.want[key] == nil {
			delete(sp.bindErrs, key)
		}
	}
	for key, f := range sp.want {
		if l := p.listeners[key]; l != nil {
			cur := l.front.Load().sp
			if cur != sp && p.ports[cur.name] == cur {
				sp.bindErrs[key] = fmt.Errorf("listen on %s: address used by service port %s", key, cur.name)
				continue
			}
			l.front.Store(f)
			delete(sp.bindErrs, key)
			continue
		}
		l, err := p.listen(key, f)
		if err != nil {
			if (f.kind == kindExternalIP || f.kind == kindLoadBalancer) && notLocal(err) {
				// Not an address of this node: another node serves it.
				delete(sp.bindErrs, key)
				continue
			}
			if prev := sp.bindErrs[key]; prev == nil || prev.Error() != err.Error() {
				p.log.Warn("cannot listen for service port", "servicePort", sp.label, "kind", f.kind, "err", err)
			}
			sp.bindErrs[key] = err
			continue
		}
		delete(sp.bindErrs, key)
		p.listeners[key] = l
	}
}

// nodePortAddrs are the addresses NodePorts bind, sorted.
func (p *Proxier) nodePortAddrs(node model.Node) []netip.Addr {
	set := map[netip.Addr]bool{}
	if len(p.cfg.NodePortAddresses) == 0 {
		for _, ip := range node.Addresses {
			set[ip.Unmap()] = true
		}
	} else {
		for _, pfx := range p.cfg.NodePortAddresses {
			if pfx.IsSingleIP() {
				set[pfx.Addr().Unmap()] = true
			}
		}
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			p.log.Warn("listing interface addresses for node ports", "err", err)
		}
		for _, a := range ifaddrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.IsLinkLocalUnicast() {
				continue // needs a zone to bind, and kube-proxy skips it too
			}
			for _, pfx := range p.cfg.NodePortAddresses {
				if pfx.Contains(ip) {
					set[ip] = true
				}
			}
		}
	}
	out := make([]netip.Addr, 0, len(set))
	for ip := range set {
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// janitor retries failed listeners and expires affinity entries.
func (p *Proxier) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.BindRetryInterval)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		p.mu.Lock()
		for _, sp := range p.ports {
			if len(sp.bindErrs) > 0 {
				p.bindPort(sp)
			}
			sp.internal.expire() // the table is the external balancer's too
		}
		p.mu.Unlock()
	}
}

// Close closes every listener and connection and removes the service IPs
// kproxy added. The Proxier cannot be used afterwards.
func (p *Proxier) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.cancel()
	for key, l := range p.listeners {
		l.close()
		delete(p.listeners, key)
	}
	for name, sp := range p.ports {
		sp.mu.Lock()
		sp.retired = true
		sp.mu.Unlock()
		sp.abortWhere(func(tracked) bool { return true })
		delete(p.ports, name)
	}
	err := p.syncAddrs(nil, "remove")
	// The loops close the connections still open as they stop.
	for _, lp := range p.loops {
		lp.stop()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("close userspace proxier: %w", err)
	}
	return nil
}
