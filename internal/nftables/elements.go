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

// contribution is what one service port puts into one family's sets.
type contribution map[string][]Element

func (c contribution) add(set string, e Element) { c[set] = append(c[set], e) }

// buildPort computes a service port's elements for one family. It is a pure
// function of the port view and the configuration; incremental syncs diff its
// result against the previous one.
func buildPort(cfg *Config, f family, pv *model.PortView) contribution {
	c := contribution{}
	proto := protoNum(pv.Protocol)
	aff := pv.AffinityTimeout
	internal := model.ByFamily(pv.InternalEndpoints(), f.v1)
	external := model.ByFamily(pv.ExternalEndpoints(), f.v1)

	serve := func(fe Frontend, eps []*model.Endpoint) {
		cl := class{n: len(eps), affinity: aff, nodePort: fe.IsNodePort()}
		c.add(mapFrontends, Element{Key: enc(nil).frontend(fe), Verdict: cl.chain()})
		set := backendsSpec(cl.n).name
		for i, ep := range eps {
			c.add(set, Element{Key: enc(nil).frontend(fe).slot(uint32(i)), Val: enc(nil).addrPort(ep.AddrPort())})
			if aff > 0 {
				c.add(setAffinityOK, Element{Key: enc(nil).frontend(fe).addrPort(ep.AddrPort())})
			}
		}
	}

	if cip, ok := pv.ClusterIP(f.v1); ok {
		c.add(setClusterIPs, Element{Key: enc(nil).addr(cip)})
		fe := Frontend{Addr: cip, Proto: proto, Port: uint16(pv.Port)}
		switch {
		case len(internal) > 0:
			serve(fe, internal)
		case pv.HasAny:
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
	for _, fe := range externals {
		switch {
		case len(external) > 0:
			serve(fe, external)
			// externalTrafficPolicy Cluster: the endpoint may be on another node, so
			// replies must come back here to be un-DNATed. Local keeps the client IP.
			if !pv.ExternalPolicyLocal || cfg.MasqueradeAll {
				c.add(setMasq, Element{Key: enc(nil).frontend(fe)})
			}
		case pv.HasAny:
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
			for _, r := range pv.LoadBalancerSourceRanges {
				if !f.contains(r.Addr()) {
					continue
				}
				c.add(setFirewallAllow, Element{
					Key:    enc(nil).frontend(fe).addr(r.Masked().Addr()),
					KeyEnd: enc(nil).frontend(fe).addr(lastAddr(r)),
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

// store holds one family's set contents twice: what kproxy wants (with
// reference counts, since several ports can need one element: a cluster IP, a
// hairpin pair) and what the kernel has after the last successful transaction.
// A sync touches only the dirty keys, so its cost follows the change, not the table.
type store struct {
	want  map[string]map[string]*entry
	have  map[string]map[string]Element
	dirty map[string]map[string]struct{}
}

type entry struct {
	el   Element
	refs int
}

func newStore() *store {
	return &store{
		want:  map[string]map[string]*entry{},
		have:  map[string]map[string]Element{},
		dirty: map[string]map[string]struct{}{},
	}
}

func (s *store) touch(set, id string) {
	d := s.dirty[set]
	if d == nil {
		d = map[string]struct{}{}
		s.dirty[set] = d
	}
	d[id] = struct{}{}
}

func (s *store) add(set string, e Element) {
	m := s.want[set]
	if m == nil {
		m = map[string]*entry{}
		s.want[set] = m
	}
	id := e.id()
	if old, ok := m[id]; ok {
		old.refs++
		if !old.el.sameValue(e) {
			// Same key, new value: the last writer wins (two services claiming
			// one external IP and port is a conflict kube-proxy resolves the same way).
			old.el = e
			s.touch(set, id)
		}
		return
	}
	m[id] = &entry{el: e, refs: 1}
	s.touch(set, id)
}

func (s *store) remove(set string, e Element) {
	m := s.want[set]
	id := e.id()
	old, ok := m[id]
	if !ok {
		return
	}
	if old.refs--; old.refs > 0 {
		return
	}
	delete(m, id)
	s.touch(set, id)
}

func (s *store) apply(c contribution, add bool) {
	for set, els := range c {
		for _, e := range els {
			if add {
				s.add(set, e)
			} else {
				s.remove(set, e)
			}
		}
	}
}

// setHave replaces the believed kernel state (after reading the kernel) and
// marks every key dirty.
func (s *store) setHave(have map[string]map[string]Element) {
	s.have = have
	s.dirty = map[string]map[string]struct{}{}
	for set, m := range have {
		for id := range m {
			s.touch(set, id)
		}
	}
	for set, m := range s.want {
		for id := range m {
			s.touch(set, id)
		}
	}
}

// diff returns the element deletions and additions that turn have into want.
// A changed value is a deletion plus an addition of the same key: within one
// transaction that is atomic.
func (s *store) diff() (dels, adds map[string][]Element) {
	dels, adds = map[string][]Element{}, map[string][]Element{}
	for set, ids := range s.dirty {
		for id := range ids {
			h, inHave := s.have[set][id]
			w, inWant := s.want[set][id]
			switch {
			case inHave && inWant && h.sameValue(w.el):
			case inHave && inWant:
				dels[set] = append(dels[set], h)
				adds[set] = append(adds[set], w.el)
			case inHave:
				dels[set] = append(dels[set], h)
			case inWant:
				adds[set] = append(adds[set], w.el)
			}
		}
	}
	return dels, adds
}

// commit records that the kernel now has what was wanted for the dirty keys.
func (s *store) commit() {
	for set, ids := range s.dirty {
		h := s.have[set]
		if h == nil {
			h = map[string]Element{}
			s.have[set] = h
		}
		for id := range ids {
			if w, ok := s.want[set][id]; ok {
				h[id] = w.el
			} else {
				delete(h, id)
			}
		}
	}
	s.dirty = map[string]map[string]struct{}{}
}

// classes returns the DNAT classes the wanted frontends map refers to.
func (s *store) classes() map[class]struct{} {
	out := map[class]struct{}{}
	for _, e := range s.want[mapFrontends] {
		if c, ok := parseClassChain(e.el.Verdict); ok {
			out[c] = struct{}{}
		}
	}
	return out
}
