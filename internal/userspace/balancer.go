package userspace

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// endpoint is one backend of a service port with its live counters. The same
// object serves every listener of the port, so stats add up per endpoint.
type endpoint struct {
	addr netip.AddrPort
	str  string // addr as text, to dial without formatting it each time

	active       atomic.Int64
	total        atomic.Uint64
	bytesIn      atomic.Uint64 // client → endpoint
	bytesOut     atomic.Uint64 // endpoint → client
	dialFailures atomic.Uint64
	// backoffUntil is a monotonic time (nanoseconds since the proxier started)
	// before which new connections skip this endpoint.
	backoffUntil atomic.Int64
	// gone is set when the endpoint left the service; its connections are
	// closed after the grace period.
	gone atomic.Bool

	activeGauge prometheus.Gauge // nil without metrics
}

func (e *endpoint) backingOff(now int64) bool { return now < e.backoffUntil.Load() }

func (e *endpoint) connOpened() {
	e.active.Add(1)
	e.total.Add(1)
	if e.activeGauge != nil {
		e.activeGauge.Inc()
	}
}

func (e *endpoint) connClosed() {
	e.active.Add(-1)
	if e.activeGauge != nil {
		e.activeGauge.Dec()
	}
}

// family indexes per-family endpoint lists.
type family int

const (
	ipv4 family = iota
	ipv6
)

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return ipv4
	}
	return ipv6
}

// endpointSet is an immutable list of usable endpoints, swapped atomically on
// every sync so that the connection path reads it without locks.
type endpointSet struct {
	byFamily [2][]*endpoint
	affinity time.Duration
	members  map[*endpoint]bool // only with affinity: is a remembered endpoint still usable?
}

type affinityEntry struct {
	ep      *endpoint
	expires int64
}

// affinityTable holds the ClientIP pins of a service port. Its internal and
// external balancers share it: as with kube-proxy, whose client sets belong to
// the endpoints, a client pinned through the cluster IP stays pinned through
// the NodePort when the traffic policies differ, as long as its endpoint is
// one that balancer may use.
type affinityTable struct {
	mu sync.Mutex
	m  map[netip.Addr]affinityEntry
}

func newAffinityTable() *affinityTable {
	return &affinityTable{m: map[netip.Addr]affinityEntry{}}
}

// balancer picks endpoints round-robin, with ClientIP affinity and dial backoff.
// A service port has one for internal traffic and, when the traffic policies
// differ, another for external traffic.
type balancer struct {
	clock func() int64
	set   atomic.Pointer[endpointSet]
	next  atomic.Uint64
	aff   *affinityTable
}

func newBalancer(clock func() int64, aff *affinityTable) *balancer {
	b := &balancer{clock: clock, aff: aff}
	b.set.Store(&endpointSet{})
	return b
}

func (b *balancer) update(eps []*endpoint, affinity time.Duration) {
	s := &endpointSet{affinity: affinity}
	for _, ep := range eps {
		f := familyOf(ep.addr.Addr())
		s.byFamily[f] = append(s.byFamily[f], ep)
	}
	if affinity > 0 {
		s.members = make(map[*endpoint]bool, len(eps))
		for _, ep := range eps {
			s.members[ep] = true
		}
	} else {
		b.aff.mu.Lock()
		clear(b.aff.m)
		b.aff.mu.Unlock()
	}
	b.set.Store(s)
}

// pick returns the endpoint for a new connection from client, or nil when no
// endpoint of the family is usable. tried lists the endpoints this connection
// already failed to reach; they are not picked again.
func (b *balancer) pick(client netip.Addr, f family, tried []*endpoint) *endpoint {
	s := b.set.Load()
	eps := s.byFamily[f]
	if len(eps) == 0 {
		return nil
	}
	now := b.clock()
	if s.affinity > 0 && len(tried) == 0 {
		b.aff.mu.Lock()
		e, ok := b.aff.m[client]
		if ok && now < e.expires && s.members[e.ep] && !e.ep.backingOff(now) {
			// kube-proxy refreshes the affinity entry on every new connection.
			b.aff.m[client] = affinityEntry{ep: e.ep, expires: now + int64(s.affinity)}
			b.aff.mu.Unlock()
			return e.ep
		}
		b.aff.mu.Unlock()
	}
	var chosen, fallback *endpoint
	start := b.next.Add(1) - 1
	n := uint64(len(eps))
	for i := range n {
		ep := eps[(start+i)%n]
		if contains(tried, ep) {
			continue
		}
		if ep.backingOff(now) {
			if fallback == nil {
				fallback = ep
			}
			continue
		}
		chosen = ep
		break
	}
	if chosen == nil {
		// Every endpoint backs off: trying one beats refusing the client.
		chosen = fallback
	}
	if chosen != nil && s.affinity > 0 {
		b.aff.mu.Lock()
		b.aff.m[client] = affinityEntry{ep: chosen, expires: now + int64(s.affinity)}
		b.aff.mu.Unlock()
	}
	return chosen
}

// forget drops the affinity of client, after its endpoint failed.
func (b *balancer) forget(client netip.Addr, ep *endpoint) {
	b.aff.mu.Lock()
	if e, ok := b.aff.m[client]; ok && e.ep == ep {
		delete(b.aff.m, client)
	}
	b.aff.mu.Unlock()
}

// expire removes stale affinity entries so the table does not grow without bound.
func (b *balancer) expire() {
	now := b.clock()
	b.aff.mu.Lock()
	for ip, e := range b.aff.m {
		if now >= e.expires {
			delete(b.aff.m, ip)
		}
	}
	b.aff.mu.Unlock()
}

func contains(eps []*endpoint, ep *endpoint) bool {
	for _, e := range eps {
		if e == ep {
			return true
		}
	}
	return false
}
