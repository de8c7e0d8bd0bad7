package nftables

import (
	"bytes"
	"net/netip"
	"slices"

	"github.com/kproxy/kproxy/internal/model"
)

// Element is one element of a set or map, encoded as the kernel stores it.
type Element struct {
	Key    []byte
	KeyEnd []byte // interval sets: the inclusive end of the range
	Val    []byte // data maps
	// Verdict is, for verdict maps, the chain to goto, or "drop".
	Verdict string
}

func (e Element) id() string {
	if e.KeyEnd == nil {
		return string(e.Key)
	}
	return string(e.Key) + "\x00" + string(e.KeyEnd)
}

func (e Element) sameValue(o Element) bool {
	return bytes.Equal(e.Val, o.Val) && e.Verdict == o.Verdict
}

// contribution is what one service port puts into one family's sets, and the
// frontends with session affinity it needs chains and sets for.
type contribution struct {
	elems    map[string][]Element
	affinity []*affinity
}

func (c *contribution) add(set string, e Element) { c.elems[set] = append(c.elems[set], e) }

// reset empties c for reuse, keeping its slices' memory: a full sync builds
// every port into one scratch contribution instead of a fresh one per port.
func (c *contribution) reset() {
	for set, els := range c.elems {
		clear(els)
		c.elems[set] = els[:0]
	}
	clear(c.affinity)
	c.affinity = c.affinity[:0]
}

// buildPort computes a service port's elements for one family. It is a pure
// function of the port view and the configuration; incremental syncs diff its
// result against the previous one. The result is written into scratch (reset
// first) when it is not nil; the store copies what it keeps.
//
// nodeAddrs are the node's addresses (Snapshot.Node.Addresses): a change of
// them makes the next sync full, since the result depends on them.
func buildPort(cfg *Config, f family, pv *model.PortView, nodeAddrs []netip.Addr, scratch *contribution) *contribution {
	c := scratch
	if c == nil {
		c = &contribution{elems: map[string][]Element{}}
	} else {
		c.reset()
	}
	proto := protoNum(pv.Protocol)
	aff := pv.AffinityTimeout
	internal := model.ByFamily(pv.InternalEndpoints(), f.v1)
	external := model.ByFamily(pv.ExternalEndpoints(), f.v1)

	// The cluster IP frontend owns the port's affinity sets: every frontend of
	// the port pins a client to the same endpoint.
	var owner Frontend
	if cip, ok := pv.ClusterIP(f.v1); ok {
		owner = Frontend{Addr: cip, Proto: proto, Port: uint16(pv.Port)}
	}

	// serveAffinity gives fe an affinity chain over eps, reached through
	// dispatch (frontends or frontends-short).
	serveAffinity := func(fe Frontend, eps []*model.Endpoint, short bool, dispatch string) {
		a := &affinity{fe: fe, owner: owner, short: short, timeout: aff}
		if !owner.Addr.IsValid() {
			a.owner = fe
		}
		for _, ep := range eps {
			a.endpoints = append(a.endpoints, ep.AddrPort())
		}
		c.affinity = append(c.affinity, a)
		c.add(dispatch, Element{Key: enc(nil).frontend(fe), Verdict: a.chain()})
		for i, ep := range a.endpoints {
			c.add(a.pickMap(), Element{Key: enc(nil).frontend(fe).slot(uint32(i)), Verdict: a.epChain(ep)})
		}
	}

	serve := func(fe Frontend, eps []*model.Endpoint) {
		if aff > 0 {
			serveAffinity(fe, eps, false, mapFrontends)
			return
		}
		cl := class{n: len(eps), nodePort: fe.IsNodePort()}
		c.add(mapFrontends, Element{Key: enc(nil).frontend(fe), Verdict: cl.chain()})
		set := cl.setSpec().name
		for i, ep := range eps {
			c.add(set, Element{Key: enc(nil).frontend(fe).slot(uint32(i)), Val: enc(nil).addrPort(ep.AddrPort())})
		}
	}

	if cip, ok := pv.ClusterIP(f.v1); ok {
		c.add(setClusterIPs, Element{Key: enc(nil).addr(cip)})
		fe := Frontend{Addr: cip, Proto: proto, Port: uint16(pv.Port)}
		switch {
		case len(internal) > 0:
			serve(fe, internal)
		case pv.HasAnyOf(f.v1):
			// internalTrafficPolicy Local without a local endpoint: drop, as
			// kube-proxy does (other nodes may serve it; this one must not).
			c.add(mapNoEndpoints, Element{Key: enc(nil).frontend(fe), Verdict: verdictDrop})
		}
		// No endpoints at all: the cluster-ips rule rejects it.
	}

	var externals []Frontend
	for _, ip := range slices.Concat(pv.ExternalIPs, pv.LoadBalancerIPs) {
		if f.contains(ip) {
			externals = append(externals, Frontend{Addr: ip, Proto: proto, Port: uint16(pv.Port)})
		}
	}
	if pv.NodePort != 0 {
		externals = append(externals, Frontend{Addr: f.zero(), Proto: proto, Port: uint16(pv.NodePort)})
	}
	var cluster []*model.Endpoint
	if pv.ExternalPolicyLocal && len(externals) > 0 {
		cluster = model.ByFamily(pv.Cluster, f.v1)
	}
	for _, fe := range externals {
		if len(cluster) > 0 && aff > 0 {
			serveAffinity(fe, cluster, true, mapFrontendsShort)
		} else if len(cluster) > 0 {
			// Pods and the node reaching an ETP Local frontend are not external
			// clients: like kube-proxy, send them to the cluster-wide endpoints,
			// whether or not this node has a local one (and whatever the
			// internal traffic policy).
			cl := class{n: len(cluster), nodePort: fe.IsNodePort(), short: true}
			c.add(mapFrontendsShort, Element{Key: enc(nil).frontend(fe), Verdict: cl.chain()})
			for i, ep := range cluster {
				c.add(cl.setSpec().name, Element{Key: enc(nil).frontend(fe).slot(uint32(i)), Val: enc(nil).addrPort(ep.AddrPort())})
			}
		}
		switch {
		case len(external) > 0:
			serve(fe, external)
			// externalTrafficPolicy Cluster: the endpoint may be on another node, so
			// replies must come back here to be un-DNATed. Local keeps the client IP.
			if !pv.ExternalPolicyLocal || cfg.MasqueradeAll {
				c.add(setMasq, Element{Key: enc(nil).frontend(fe)})
			}
		case pv.HasAnyOf(f.v1):
			c.add(mapNoEndpoints, Element{Key: enc(nil).frontend(fe), Verdict: verdictDrop})
		default:
			c.add(mapNoEndpoints, Element{Key: enc(nil).frontend(fe), Verdict: chainReject})
		}
	}

	if len(pv.LoadBalancerSourceRanges) > 0 {
		for _, ip := range pv.LoadBalancerIPs {
			if !f.contains(ip) {
				continue
			}
			fe := Frontend{Addr: ip, Proto: proto, Port: uint16(pv.Port)}
			c.add(setFirewall, Element{Key: enc(nil).frontend(fe)})
			coversNode := false
			for _, r := range pv.LoadBalancerSourceRanges {
				if !f.contains(r.Addr()) {
					continue
				}
				c.add(setFirewallAllow, Element{
					Key:    enc(nil).frontend(fe).addr(r.Masked().Addr()),
					KeyEnd: enc(nil).frontend(fe).addr(lastAddr(r)),
				})
				coversNode = coversNode || slices.ContainsFunc(nodeAddrs, r.Contains)
			}
			if coversNode && !slices.ContainsFunc(pv.LoadBalancerSourceRanges, func(r netip.Prefix) bool { return r.Contains(ip) }) {
				// As kube-proxy: when a range lets this node in, the VIP itself
				// is allowed as a source too. A load balancer VIP that is also
				// bound on the node is reached from the node with the VIP as
				// the source address, never through the load balancer.
				c.add(setFirewallAllow, Element{
					Key:    enc(nil).frontend(fe).addr(ip),
					KeyEnd: enc(nil).frontend(fe).addr(ip),
				})
			}
		}
	}

	for _, ep := range slices.Concat(internal, external) {
		if ep.Local {
			c.add(setHairpin, Element{Key: enc(nil).addr(ep.IP).addr(ep.IP)})
		}
	}
	return c
}

// lastAddr is the highest address in a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// store holds one family's set contents: per element, the value kproxy wants
// (with a reference count, since several ports can need one element: a cluster
// IP, a hairpin pair) and whether the kernel has it, after the last successful
// transaction. One slot serves both, so the data plane keeps one copy of each
// element. A sync touches only the dirty keys, so its cost follows the change.
type store struct {
	sets  map[string]map[string]*slot
	dirty []dirtyKey
	// allDirty marks every key dirty (a new store, a resync) without listing
	// them: at 100,000 elements the list alone was 20 MB of garbage per full sync.
	allDirty bool
	// chainRefs counts the wanted frontends per DNAT class chain, so that a
	// sync knows the classes in use without walking the frontends.
	chainRefs map[string]int
	// affinity holds the wanted affinity frontends by chain name (the last
	// writer first wins, like elements), and kernelAffinity what the kernel has.
	affinity       map[string][]*affinity
	kernelAffinity map[string]*affinity
}

type slot struct {
	el       Element  // the wanted value (while refs > 0), else what the kernel has
	old      *Element // what the kernel has, when it differs from el
	refs     int32
	inKernel bool
	dirty    bool
}

type dirtyKey struct{ set, id string }

// newStore returns an empty store, in which every key is dirty until commit.
func newStore() *store {
	return &store{sets: map[string]map[string]*slot{}, chainRefs: map[string]int{},
		affinity: map[string][]*affinity{}, kernelAffinity: map[string]*affinity{}, allDirty: true}
}

func (s *store) countChain(set string, e Element, delta int) {
	if set != mapFrontends && set != mapFrontendsShort {
		return
	}
	if s.chainRefs[e.Verdict] += delta; s.chainRefs[e.Verdict] == 0 {
		delete(s.chainRefs, e.Verdict)
	}
}

func (s *store) slot(set, id string, create bool) *slot {
	m := s.sets[set]
	if m == nil {
		if !create {
			return nil
		}
		m = map[string]*slot{}
		s.sets[set] = m
	}
	sl := m[id]
	if sl == nil && create {
		sl = &slot{}
		m[id] = sl
	}
	return sl
}

func (s *store) touch(set, id string, sl *slot) {
	if !sl.dirty && !s.allDirty {
		sl.dirty = true
		s.dirty = append(s.dirty, dirtyKey{set, id})
	}
}

// kernelValue is what the kernel has for the slot (valid when inKernel).
func (sl *slot) kernelValue() Element {
	if sl.old != nil {
		return *sl.old
	}
	return sl.el
}

// setWanted changes the wanted value, remembering the kernel's.
func (sl *slot) setWanted(e Element) {
	if sl.inKernel && sl.old == nil {
		old := sl.el
		sl.old = &old
	}
	sl.el = e
}

func (s *store) add(set string, e Element) {
	id := e.id()
	sl := s.slot(set, id, true)
	if sl.refs > 0 {
		s.countChain(set, sl.el, -1)
	}
	sl.refs++
	defer s.countChain(set, e, 1)
	// A new element, one the kernel has but nobody wanted any more, or the
	// same key with a new value (the last writer wins: two services claiming
	// one external IP and port is a conflict kube-proxy resolves the same way).
	if (sl.refs == 1 && !sl.inKernel) || !sl.el.sameValue(e) {
		sl.setWanted(e)
	}
	s.touch(set, id, sl)
}

func (s *store) remove(set string, e Element) {
	id := e.id()
	sl := s.slot(set, id, false)
	if sl == nil || sl.refs == 0 {
		return
	}
	if sl.refs--; sl.refs == 0 {
		s.countChain(set, sl.el, -1)
		s.touch(set, id, sl)
	}
}

func (s *store) apply(c *contribution, add bool) {
	for _, a := range c.affinity {
		if add {
			s.affinity[a.chain()] = append(s.affinity[a.chain()], a)
		} else if l := s.affinity[a.chain()]; len(l) > 0 {
			// Drop one claim on the chain; another port may still want it.
			if i := slices.IndexFunc(l, a.equal); i >= 0 {
				l = slices.Delete(l, i, i+1)
			} else {
				l = l[1:]
			}
			if len(l) == 0 {
				delete(s.affinity, a.chain())
			} else {
				s.affinity[a.chain()] = l
			}
		}
	}
	for set, els := range c.elems {
		for _, e := range els {
			if add {
				s.add(set, e)
			} else {
				s.remove(set, e)
			}
		}
	}
}

// resetWants starts a resync in place: nothing is wanted any more until the
// ports are applied again, and the diff then covers every key. Sets the kernel
// no longer has (present false) lose their kernel state. Rebuilding in place,
// rather than next to the old store, keeps one copy of the elements in memory.
func (s *store) resetWants(present map[string]bool) {
	clear(s.chainRefs)
	clear(s.affinity)
	for set, m := range s.sets {
		for _, sl := range m {
			sl.refs = 0
			if !present[set] {
				sl.inKernel, sl.old = false, nil
			}
		}
	}
	s.allDirty, s.dirty = true, nil
}

// eachDirty calls f for every dirty key.
func (s *store) eachDirty(f func(set, id string, m map[string]*slot, sl *slot)) {
	if s.allDirty {
		for set, m := range s.sets {
			for id, sl := range m {
				f(set, id, m, sl)
			}
		}
		return
	}
	for _, d := range s.dirty {
		m := s.sets[d.set]
		f(d.set, d.id, m, m[d.id])
	}
}

// diff returns the element deletions and additions that make the kernel match.
// A changed value is a deletion plus an addition of the same key: within one
// transaction that is atomic.
func (s *store) diff() (dels, adds map[string][]Element) {
	dels, adds = map[string][]Element{}, map[string][]Element{}
	// Size the lists first: a full sync diffs every element, and growing
	// 100,000-element lists by appending copies them a dozen times.
	ndel, nadd := map[string]int{}, map[string]int{}
	s.eachDirty(func(set, _ string, _ map[string]*slot, sl *slot) {
		want := sl.refs > 0
		switch {
		case want && sl.inKernel && sl.kernelValue().sameValue(sl.el):
		case want && sl.inKernel:
			ndel[set]++
			nadd[set]++
		case sl.inKernel:
			ndel[set]++
		case want:
			nadd[set]++
		}
	})
	for set, n := range ndel {
		dels[set] = make([]Element, 0, n)
	}
	for set, n := range nadd {
		adds[set] = make([]Element, 0, n)
	}
	s.eachDirty(func(set, _ string, _ map[string]*slot, sl *slot) {
		want := sl.refs > 0
		switch {
		case want && sl.inKernel && sl.kernelValue().sameValue(sl.el):
		case want && sl.inKernel:
			dels[set] = append(dels[set], sl.kernelValue())
			adds[set] = append(adds[set], sl.el)
		case sl.inKernel:
			dels[set] = append(dels[set], sl.kernelValue())
		case want:
			adds[set] = append(adds[set], sl.el)
		}
	})
	return dels, adds
}

// commit records that the kernel now has what was wanted for the dirty keys.
func (s *store) commit() {
	s.eachDirty(func(_, id string, m map[string]*slot, sl *slot) {
		if sl.refs == 0 {
			delete(m, id) // deleting the current key while ranging is allowed
			return
		}
		sl.inKernel, sl.old, sl.dirty = true, nil, false
	})
	s.dirty, s.allDirty = nil, false
	clear(s.kernelAffinity)
	for name := range s.affinity {
		s.kernelAffinity[name] = s.wantedAffinity(name)
	}
}

// wantedAffinity is the affinity frontend a chain name stands for.
func (s *store) wantedAffinity(name string) *affinity {
	l := s.affinity[name]
	if len(l) == 0 {
		return nil
	}
	return l[len(l)-1]
}

// classes returns the DNAT classes the wanted frontends map refers to.
func (s *store) classes() map[class]struct{} {
	out := map[class]struct{}{}
	for chain := range s.chainRefs {
		if c, ok := parseClassChain(chain); ok {
			out[c] = struct{}{}
		}
	}
	return out
}
