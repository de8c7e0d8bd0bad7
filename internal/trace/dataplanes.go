package trace

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/userspace"
)

// NFTablesReader is what the kernel tracer needs from the nftables data plane:
// its tables read back from the kernel and decoded, and the configuration the
// fixed part of its program was built from. *nftables.Proxier satisfies it.
type NFTablesReader interface {
	States(ctx context.Context) ([]*nftables.State, error)
	Config() nftables.Config
}

var _ NFTablesReader = (*nftables.Proxier)(nil)

// NFTables returns a KernelState that reads kproxy's nftables tables back from
// the kernel on every query and runs the data plane's own rule-by-rule tracer
// over them; nothing comes from the model.
func NFTables(r NFTablesReader) KernelState { return nftKernel{r: r} }

type nftKernel struct{ r NFTablesReader }

// ForDataplane fills in what a trace must know about the data plane in use:
// the kernel tracer for nftables (see KernelFor), userspace semantics for the
// userspace proxy. The app calls it once with its data plane.
func ForDataplane(dataplane any, opts Options) Options {
	if _, ok := dataplane.(*userspace.Proxier); ok {
		opts.Userspace = true
		opts.Kernel = nil
		return opts
	}
	if ks, ok := KernelFor(dataplane); ok {
		opts.Kernel = ks
	}
	return opts
}

// KernelFor returns the kernel tracer of a data plane: the data plane itself
// if it implements KernelState, the nftables reader adapter if it can read its
// tables back, and false for data planes without kernel state (userspace).
func KernelFor(dataplane any) (KernelState, bool) {
	switch d := dataplane.(type) {
	case KernelState:
		return d, true
	case NFTablesReader:
		return NFTables(d), true
	}
	return nil, false
}

// TraceKernel implements KernelState.
func (k nftKernel) TraceKernel(ctx context.Context, q KernelQuery) (*KernelPath, error) {
	states, err := k.r.States(ctx)
	if err != nil {
		return nil, fmt.Errorf("read nftables state: %w", err)
	}
	pkt := q.Packet
	var st *nftables.State
	for _, s := range states {
		if s.Family == pkt.Family() {
			st = s
		}
	}
	if st == nil {
		return &KernelPath{Verdict: VerdictNone, Rules: []string{fmt.Sprintf("no kproxy table for %s", pkt.Family())}}, nil
	}
	tracer := &nftables.Tracer{Config: k.r.Config(), LocalAddrs: q.NodeAddresses}
	np := nftables.Packet{Src: pkt.Src, Proto: pkt.Proto, Dst: pkt.Dst.Addr(), Port: pkt.Dst.Port(), FromNode: q.SourceLocal}

	// Trace once without the live affinity entries, for every endpoint the
	// rules can choose, and once as the packet would really go, to learn
	// whether the source is pinned.
	free := *st
	free.Affinity = map[nftables.AffinityKey]bool{}
	all := tracer.Trace(&free, np)
	live := tracer.Trace(st, np)

	kp := &KernelPath{Rules: all.Steps}
	switch all.Verdict {
	case nftables.Drop:
		kp.Verdict = VerdictDrop
	case nftables.Reject:
		kp.Verdict = VerdictReject
	default:
		kp.Verdict = VerdictNone
		if len(all.Endpoints) > 0 {
			kp.Verdict = VerdictDNAT
		}
	}
	if kp.Verdict != VerdictDNAT {
		return kp, nil
	}

	// The frontend and chain the DNAT lookup hit, as the data plane's own
	// tracer found them (including the ETP Local short-circuit).
	fe, chain := all.Frontend, all.Chain
	frontends := st.Frontends
	if all.Short {
		frontends = st.ShortFrontends
	}
	if c, ok := frontends[fe]; ok {
		chain = c // the class chain ("[s]aff-N-TIMEOUT"), not the affinity chain it leads to
	}
	weights := slotWeights(st, fe, chain, all.Short)
	hairpin := st.Hairpin[pkt.Src]
	for _, ep := range all.Endpoints {
		kep := KernelEndpoint{Address: ep, Probability: weights[ep]}
		if len(weights) == 0 {
			kep.Probability = 1 / float64(len(all.Endpoints))
		}
		kep.Masquerade = hairpin && ep.Addr() == pkt.Src
		kp.Endpoints = append(kp.Endpoints, kep)
	}
	// The data plane's tracer reports a hairpin to a single endpoint as
	// masquerade; keep that per endpoint, where it belongs.
	kp.Masquerade = all.Masquerade && !(len(all.Endpoints) == 1 && kp.Endpoints[0].Masquerade)
	if t, ok := affinityOf(chain); ok {
		kp.AffinityTimeoutSeconds = t
		if len(live.Endpoints) == 1 && len(all.Endpoints) > 1 {
			pinned := live.Endpoints[0]
			kp.Pinned = &pinned
			kp.Rules = append(kp.Rules, live.Steps...)
		}
	}
	if chain != "" {
		kp.Rules = append(kp.Rules, fmt.Sprintf("frontend %s dispatches to chain %s", fe, chain))
	}
	return kp, nil
}

// slotWeights gives each endpoint its share of the numgen slots of the frontend.
func slotWeights(st *nftables.State, fe nftables.Frontend, chain string, short bool) map[netip.AddrPort]float64 {
	out := map[netip.AddrPort]float64{}
	n, ok := slotsOf(chain)
	if !ok {
		return out
	}
	backends := st.Backends
	if short {
		backends = st.ShortBackends
	}
	slots := backends[n][fe]
	if len(slots) == 0 {
		return out
	}
	for _, ep := range slots {
		out[ep] += 1 / float64(len(slots))
	}
	return out
}

// The DNAT chains are named after their class: "[np-]dnat-N", "[np-]sdnat-N"
// (the ETP Local short-circuit) or "[np-][s]aff-N-TIMEOUT" (see the nftables
// package's README). These two helpers read that name; a TraceResult that
// reported the class would make them unnecessary.
func slotsOf(chain string) (int, bool) {
	chain = strings.TrimPrefix(chain, "np-")
	rest, ok := strings.CutPrefix(chain, "dnat-")
	if !ok {
		rest, ok = strings.CutPrefix(chain, "sdnat-")
	}
	if !ok {
		rest, ok = strings.CutPrefix(strings.TrimPrefix(chain, "s"), "aff-")
		rest, _, _ = strings.Cut(rest, "-")
	}
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}

func affinityOf(chain string) (int64, bool) {
	rest, ok := strings.CutPrefix(strings.TrimPrefix(strings.TrimPrefix(chain, "np-"), "s"), "aff-")
	if !ok {
		return 0, false
	}
	_, t, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(t, 10, 64)
	return v, err == nil && v > 0
}
