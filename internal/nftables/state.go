package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Table is one of kproxy's tables as the kernel (or the fake) has it: chain names
// and the raw elements of every set. Decode turns it into a State.
type Table struct {
	Family v1.IPFamily
	// Chains maps chain names to their hook description ("" for regular chains).
	Chains map[string]ChainInfo
	// Sets maps set names to their key/data lengths and elements.
	Sets map[string]*SetData
}

// ChainInfo describes a chain as the kernel reports it.
type ChainInfo struct {
	Hook     string // "" for a regular chain
	Priority int32
	Type     string
	Rules    int
}

// SetData is one set with its elements.
type SetData struct {
	KeyLen, DataLen int
	Flags           string
	Elements        []Element
}

// State is the decoded content of one family's table: what a packet tracer needs
// to compute a verdict from kernel state rather than from the model.
type State struct {
	Family     v1.IPFamily
	Chains     map[string]bool
	ClusterIPs map[netip.Addr]bool
	Masquerade map[Frontend]bool
	Frontends  map[Frontend]string // the chain the frontend dispatches to
	// ShortFrontends are externalTrafficPolicy Local frontends as pods and the
	// node reach them (cluster-wide endpoints), and ShortBackends their endpoints.
	ShortFrontends map[Frontend]string
	ShortBackends  map[int]map[Frontend][]netip.AddrPort
	Backends       map[int]map[Frontend][]netip.AddrPort // N → frontend → endpoint per slot
	// AffinityPick holds, per affinity frontend, its endpoints by slot;
	// AffinityTimeout its timeout; AffinityChains the name of its chain;
	// AffinityOwner the frontend whose client sets it checks (its service
	// port's cluster IP frontend). For these frontends Frontends holds the
	// class "[np-]aff-N-T" (N endpoints, T seconds), which names what they do
	// rather than their own chain.
	AffinityPick    map[Frontend][]netip.AddrPort
	AffinityTimeout map[Frontend]time.Duration
	AffinityChains  map[Frontend]string
	AffinityOwner   map[Frontend]Frontend
	// ShortAffinityPick and ShortAffinityChains are the same for the ETP
	// Local short-circuit, whose ShortFrontends entry is "[np-]saff-N-T".
	ShortAffinityPick   map[Frontend][]netip.AddrPort
	ShortAffinityChains map[Frontend]string
	// Affinity holds the clients pinned to an endpoint (the kernel's dynamic
	// sets). A client can be in several of an owner's sets; a frontend's rules
	// check its endpoints in slot order.
	Affinity      map[AffinityKey]bool
	Hairpin       map[netip.Addr]bool
	NoEndpoints   map[Frontend]string // "reject-chain" or "drop"
	Firewall      map[Frontend]bool
	FirewallAllow map[Frontend][]AddrRange
}

// AffinityKey is a client in the client set of an owner's endpoint.
type AffinityKey struct {
	Client   netip.Addr
	Owner    Frontend
	Endpoint netip.AddrPort
}

// AddrRange is an inclusive address range.
type AddrRange struct{ From, To netip.Addr }

// Contains reports whether a is in the range.
func (r AddrRange) Contains(a netip.Addr) bool {
	return r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

func newState(f v1.IPFamily) *State {
	return &State{
		Family: f, Chains: map[string]bool{}, ClusterIPs: map[netip.Addr]bool{},
		Masquerade: map[Frontend]bool{}, Frontends: map[Frontend]string{},
		ShortFrontends: map[Frontend]string{}, ShortBackends: map[int]map[Frontend][]netip.AddrPort{},
		Backends: map[int]map[Frontend][]netip.AddrPort{}, AffinityPick: map[Frontend][]netip.AddrPort{},
		AffinityTimeout: map[Frontend]time.Duration{}, AffinityChains: map[Frontend]string{},
		AffinityOwner: map[Frontend]Frontend{}, Affinity: map[AffinityKey]bool{},
		ShortAffinityPick: map[Frontend][]netip.AddrPort{}, ShortAffinityChains: map[Frontend]string{}, Hairpin: map[netip.Addr]bool{},
		NoEndpoints: map[Frontend]string{}, Firewall: map[Frontend]bool{}, FirewallAllow: map[Frontend][]AddrRange{},
	}
}

// Decode parses a table's elements. Unknown sets are ignored; malformed
// elements are an error (someone else wrote into kproxy's table).
func (t *Table) Decode() (*State, error) {
	f := familyOf(t.Family)
	st := newState(t.Family)
	for name := range t.Chains {
		st.Chains[name] = true
	}
	for name, sd := range t.Sets {
		for _, e := range sd.Elements {
			k := &dec{f: f, b: e.Key}
			v := &dec{f: f, b: e.Val}
			switch {
			case name == setClusterIPs:
				st.ClusterIPs[k.addr()] = true
			case name == setMasq:
				st.Masquerade[k.frontend()] = true
			case name == mapFrontends:
				st.Frontends[k.frontend()] = e.Verdict
			case name == mapFrontendsShort:
				st.ShortFrontends[k.frontend()] = e.Verdict
			case name == mapNoEndpoints:
				st.NoEndpoints[k.frontend()] = e.Verdict
			case name == setFirewall:
				st.Firewall[k.frontend()] = true
			case name == setFirewallAllow:
				fe := k.frontend()
				from := k.addr()
				end := &dec{f: f, b: e.KeyEnd}
				end.frontend()
				st.FirewallAllow[fe] = append(st.FirewallAllow[fe], AddrRange{From: from, To: end.addr()})
				if end.err != nil {
					return nil, fmt.Errorf("set %s: %w", name, end.err)
				}
			case name == setHairpin:
				st.Hairpin[k.addr()] = true
			case name == mapAffinityPick || name == mapAffinityPickShort:
				fe := k.frontend()
				slot := int(k.slot())
				owner, ep, ok := parseAffinityName(f, strings.TrimPrefix(e.Verdict, affEPChainPrefix))
				if !ok || slot > 1<<16 {
					return nil, fmt.Errorf("set %s: bad element %x : %s", name, e.Key, e.Verdict)
				}
				st.AffinityOwner[fe] = owner
				picks := st.AffinityPick
				if name == mapAffinityPickShort {
					picks = st.ShortAffinityPick
				}
				eps := picks[fe]
				for len(eps) <= slot {
					eps = append(eps, netip.AddrPort{})
				}
				eps[slot] = ep
				picks[fe] = eps
			case strings.HasPrefix(name, affSetPrefix):
				owner, ep, _, ok := parseAffinitySet(f, name)
				if !ok {
					continue
				}
				st.Affinity[AffinityKey{Client: k.addr(), Owner: owner, Endpoint: ep}] = true
			case strings.HasPrefix(name, backendsPrefix) || strings.HasPrefix(name, shortBackendsPrefix):
				all, prefix := st.Backends, backendsPrefix
				if strings.HasPrefix(name, shortBackendsPrefix) {
					all, prefix = st.ShortBackends, shortBackendsPrefix
				}
				n, err := strconv.Atoi(strings.TrimPrefix(name, prefix))
				if err != nil {
					continue
				}
				fe := k.frontend()
				slot := k.slot()
				m := all[n]
				if m == nil {
					m = map[Frontend][]netip.AddrPort{}
					all[n] = m
				}
				eps := m[fe]
				if eps == nil {
					eps = make([]netip.AddrPort, n)
				}
				if int(slot) < n {
					eps[slot] = v.addrPort()
				}
				m[fe] = eps
			default:
				continue
			}
			if k.err != nil {
				return nil, fmt.Errorf("set %s: %w", name, k.err)
			}
			if v.err != nil && len(e.Val) > 0 {
				return nil, fmt.Errorf("set %s value: %w", name, v.err)
			}
		}
	}
	// Affinity frontends: their timeout comes from their owner's sets' names,
	// and the frontends map shows their class.
	timeouts := map[Frontend]time.Duration{}
	for name := range t.Sets {
		if owner, _, timeout, ok := parseAffinitySet(f, name); ok && strings.HasPrefix(name, affSetPrefix) {
			timeouts[owner] = timeout
		}
	}
	class := func(fe Frontend, short string, n int) string {
		prefix := ""
		if fe.IsNodePort() {
			prefix = "np-"
		}
		return fmt.Sprintf("%s%saff-%d-%d", prefix, short, n, int64(timeouts[st.AffinityOwner[fe]]/time.Second))
	}
	for fe, chain := range st.Frontends {
		if !strings.HasPrefix(chain, affChainPrefix) {
			continue
		}
		st.AffinityChains[fe] = chain
		st.AffinityTimeout[fe] = timeouts[st.AffinityOwner[fe]]
		st.Frontends[fe] = class(fe, "", len(st.AffinityPick[fe]))
	}
	for fe, chain := range st.ShortFrontends {
		if strings.HasPrefix(chain, affShortChainPrefix) {
			st.ShortAffinityChains[fe] = chain
			st.ShortFrontends[fe] = class(fe, "s", len(st.ShortAffinityPick[fe]))
		}
	}
	return st, nil
}

// Verdict is a packet's fate.
type Verdict string

// Verdicts.
const (
	Accept Verdict = "ACCEPT"
	Drop   Verdict = "DROP"
	Reject Verdict = "REJECT"
)

// Packet is the first packet of a connection, as the tracer sees it.
type Packet struct {
	Src   netip.Addr
	Proto v1.Protocol
	Dst   netip.Addr
	Port  uint16
	// FromNode: sent by a process on the node (output hook), not received on an interface.
	FromNode bool
}

// TraceResult is what kproxy's rules do with a packet.
type TraceResult struct {
	Verdict Verdict
	// Endpoints are the possible DNAT targets (one when affinity pins the client);
	// empty when the packet is not DNATed.
	Endpoints  []netip.AddrPort
	Masquerade bool
	// Frontend is the key the DNAT lookup matched (the unspecified address for
	// a NodePort) and Chain the chain it dispatched to; Short is true when
	// pods or the node took the ETP Local short-circuit (State.ShortFrontends).
	Frontend Frontend
	Chain    string
	Short    bool
	// Steps names the rules that decided, in order.
	Steps []string
}

func (r TraceResult) String() string {
	s := string(r.Verdict)
	if len(r.Endpoints) > 0 {
		parts := make([]string, len(r.Endpoints))
		for i, ep := range r.Endpoints {
			parts[i] = ep.String()
		}
		s += " → " + strings.Join(parts, ",")
	}
	if r.Masquerade {
		s += " masquerade"
	}
	return s
}

// Tracer computes the verdict of kproxy's rules for a packet from a State. It
// mirrors, rule by rule, the program that netlink.go installs (see README.md):
// the rules are fixed for a configuration, the data lives in the sets.
type Tracer struct {
	Config Config
	// LocalAddrs are the node's addresses (what "fib daddr type local" matches);
	// loopback addresses always are.
	LocalAddrs []netip.Addr
}

func (tr *Tracer) isLocal(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(tr.LocalAddrs, a)
}

// nodePortAddr mirrors the nodeport address filter in the services chain.
func (tr *Tracer) nodePortAddr(a netip.Addr) bool {
	if !tr.isLocal(a) {
		return false
	}
	if len(tr.Config.NodePortAddresses) > 0 {
		for _, p := range tr.Config.NodePortAddresses {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if a.IsLoopback() {
		return tr.Config.LocalhostNodePorts && a.Is4()
	}
	return true
}

// Trace runs p through the state's rules.
func (tr *Tracer) Trace(st *State, p Packet) TraceResult {
	cfg := &tr.Config
	var r TraceResult
	proto := protoNum(p.Proto)
	fe := Frontend{Addr: p.Dst, Proto: proto, Port: p.Port}
	step := func(s string, args ...any) { r.Steps = append(r.Steps, fmt.Sprintf(s, args...)) }

	// filter-prerouting / filter-output (priority -110): load balancer source ranges.
	if st.Firewall[fe] {
		allowed := false
		for _, rg := range st.FirewallAllow[fe] {
			if rg.Contains(p.Src) {
				allowed = true
			}
		}
		if !allowed {
			step("firewall: %s not in loadBalancerSourceRanges of %s", p.Src, fe)
			r.Verdict = Drop
			return r
		}
	}

	// nat-prerouting / nat-output (-100): services.
	mark := false
	if st.ClusterIPs[p.Dst] {
		if cfg.MasqueradeAll {
			mark = true
		} else if len(cfg.ClusterCIDRs) > 0 && !containsAddr(cfg.ClusterCIDRs, p.Src) {
			step("services: source outside the cluster CIDRs, mark for masquerade")
			mark = true
		}
	}
	dnatFE, dispatched, short := Frontend{}, false, false
	internalSrc := tr.isLocal(p.Src) || containsAddr(cfg.ClusterCIDRs, p.Src)
	if st.Masquerade[fe] {
		mark = true
	}
	if _, ok := st.ShortFrontends[fe]; ok && internalSrc {
		dnatFE, dispatched, short = fe, true, true
	} else if _, ok := st.Frontends[fe]; ok {
		dnatFE, dispatched = fe, true
	} else if tr.nodePortAddr(p.Dst) {
		np := Frontend{Addr: familyOf(st.Family).zero(), Proto: proto, Port: p.Port}
		if cfg.LocalhostNodePorts && p.Src.Is4() && p.Src.IsLoopback() {
			mark = true
		}
		if st.Masquerade[np] {
			mark = true
		}
		if _, ok := st.ShortFrontends[np]; ok && internalSrc {
			dnatFE, dispatched, short = np, true, true
		} else if _, ok := st.Frontends[np]; ok {
			dnatFE, dispatched = np, true
		}
	}
	if dispatched {
		r.Frontend, r.Short = dnatFE, short
		frontends, backends, affChains, picks := st.Frontends, st.Backends, st.AffinityChains, st.AffinityPick
		if short {
			frontends, backends, affChains, picks = st.ShortFrontends, st.ShortBackends, st.ShortAffinityChains, st.ShortAffinityPick
		}
		chain := frontends[dnatFE]
		r.Chain = chain
		if short {
			step("services: %s from inside the cluster → %s", dnatFE, chain)
			if tr.isLocal(p.Src) {
				mark = true // sdnat-N and saff- masquerade the node's own connections
			}
		} else {
			step("services: %s → %s", dnatFE, chain)
		}
		cl, ok := parseClassChain(chain)
		eps := backends[cl.n][dnatFE]
		if real, isAff := affChains[dnatFE]; isAff {
			chain, r.Chain = real, real
			eps, ok = picks[dnatFE], true
			owner := st.AffinityOwner[dnatFE]
			for _, ep := range eps {
				if st.Affinity[AffinityKey{Client: p.Src, Owner: owner, Endpoint: ep}] {
					step("%s: affinity pins %s to %s", chain, p.Src, ep)
					eps = []netip.AddrPort{ep}
					break
				}
			}
		} else if len(eps) != cl.n {
			ok = false
		}
		if !ok || !st.Chains[chain] || len(eps) == 0 || slices.Contains(eps, netip.AddrPort{}) {
			// A slot without an element breaks the rule: the packet falls through undNATed.
			step("%s: incomplete backends for %s", chain, dnatFE)
		} else {
			r.Endpoints = slices.Clone(eps)
			slices.SortFunc(r.Endpoints, func(a, b netip.AddrPort) int { return a.Compare(b) })
			r.Endpoints = slices.Compact(r.Endpoints)
		}
	}

	// filter-input / filter-forward / filter-output-post: after DNAT.
	if len(r.Endpoints) == 0 {
		if v, ok := st.NoEndpoints[fe]; ok {
			return tr.noEndpoints(r, v, fe)
		}
		if tr.nodePortAddr(p.Dst) {
			np := Frontend{Addr: familyOf(st.Family).zero(), Proto: proto, Port: p.Port}
			if v, ok := st.NoEndpoints[np]; ok {
				return tr.noEndpoints(r, v, np)
			}
		}
		if st.ClusterIPs[p.Dst] {
			step("endpoints-check: %s is a cluster IP with no endpoints on this port", p.Dst)
			r.Verdict = Reject
			return r
		}
		r.Verdict = Accept
		return r
	}

	// nat-postrouting: masquerade marked connections and hairpins.
	r.Verdict = Accept
	if mark {
		r.Masquerade = true
		step("postrouting: masquerade (mark)")
	} else if len(r.Endpoints) > 0 && st.Hairpin[p.Src] && slices.ContainsFunc(r.Endpoints, func(ep netip.AddrPort) bool { return ep.Addr() == p.Src }) {
		// Only the hairpin endpoint itself is masqueraded; report it when it is a candidate.
		r.Masquerade = len(r.Endpoints) == 1
		step("postrouting: hairpin to %s is masqueraded", p.Src)
	}
	return r
}

func (tr *Tracer) noEndpoints(r TraceResult, v string, fe Frontend) TraceResult {
	r.Steps = append(r.Steps, fmt.Sprintf("endpoints-check: %s → %s", fe, v))
	if v == verdictDrop {
		r.Verdict = Drop
	} else {
		r.Verdict = Reject
	}
	return r
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
