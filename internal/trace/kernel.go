package trace

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/kproxy/kproxy/internal/model"
)

// KernelState reads a data plane's rules back from the kernel and follows a
// packet through them. The nftables data plane implements it by listing its own
// table (maps, sets, chains) over netlink, not by asking the model: a trace
// must catch a kernel that disagrees with the model.
type KernelState interface {
	// TraceKernel reports what the rules in the kernel do, right now, with the
	// first packet of a new connection.
	TraceKernel(ctx context.Context, q KernelQuery) (*KernelPath, error)
}

// KernelQuery is one question to a kernel tracer.
type KernelQuery struct {
	Packet Packet
	// SourceLocal is true when the source is an address of this node: the
	// rules' "fib saddr type local", which a reader of rules cannot evaluate
	// without the routing table, so the tracer is told.
	SourceLocal bool
	// NodeAddresses are this node's addresses ("fib daddr type local"),
	// where NodePorts answer.
	NodeAddresses []netip.Addr
}

// KernelPath is what the kernel's rules do with a packet.
type KernelPath struct {
	Verdict Verdict `json:"verdict"`
	// Service is the service port the rules attribute the packet to (for
	// example from an element comment), "" when they do not record it.
	Service string `json:"service,omitempty"`
	// Endpoints are the DNAT targets with the probability the rules give each.
	Endpoints []KernelEndpoint `json:"endpoints,omitempty"`
	// Masquerade is true when the packet is marked for masquerade before an
	// endpoint is chosen (whatever endpoint it goes to).
	Masquerade bool `json:"masquerade"`
	// AffinityTimeoutSeconds is the timeout of the affinity set or map the rules
	// consult, 0 without affinity.
	AffinityTimeoutSeconds int64 `json:"affinityTimeoutSeconds,omitempty"`
	// Pinned is the endpoint the source's live affinity entry points to, if any.
	Pinned *netip.AddrPort `json:"pinned,omitempty"`
	// Rules are the rules and set/map elements the packet matched, as nft
	// prints them, in order.
	Rules []string `json:"rules,omitempty"`
}

// KernelEndpoint is one DNAT target in the kernel's rules.
type KernelEndpoint struct {
	Address     netip.AddrPort `json:"address"`
	Probability float64        `json:"probability"`
	// Masquerade is true when the rules masquerade the packet only on the way
	// to this endpoint (the hairpin rule).
	Masquerade bool `json:"masquerade"`
}

// Trace answers from the model and, when opts.Kernel is set, from the kernel,
// and records where the two disagree. A kernel tracer that fails leaves the
// model's answer with the error in Disagreements.
func Trace(ctx context.Context, snap *model.Snapshot, opts Options, pkt Packet) Result {
	r := FromModel(snap, opts, pkt)
	if opts.SocketLB != nil && traceSocketLB(snap, &opts, pkt, &r) {
		return r
	}
	if opts.Kernel == nil {
		return r
	}
	nodeAddrs := nodeAddresses(snap, &opts)
	q := KernelQuery{Packet: pkt, SourceLocal: isLocalSource(pkt.Src, nodeAddrs), NodeAddresses: nodeAddrs}
	kp, err := opts.Kernel.TraceKernel(ctx, q)
	if err != nil {
		r.Disagreements = append(r.Disagreements, fmt.Sprintf("reading the kernel's rules failed: %v", err))
		return r
	}
	r.Kernel = kp
	r.Source = "kernel, compared with the model"
	r.Disagreements = Compare(&r, kp)
	if r.Affinity != nil && kp.Pinned != nil {
		r.Affinity.Pinned = kp.Pinned
	}
	return r
}

// Compare lists the differences between a model answer and a kernel path; an
// empty list means they agree.
func Compare(r *Result, kp *KernelPath) []string {
	if kp == nil {
		return []string{"the kernel tracer returned nothing"}
	}
	var out []string
	if kp.Verdict != r.Verdict {
		out = append(out, fmt.Sprintf("verdict: kernel %s, model %s", kp.Verdict, r.Verdict))
		return out
	}
	if kp.Service != "" && r.Match != nil && kp.Service != r.Match.Service {
		out = append(out, fmt.Sprintf("service: kernel %s, model %s", kp.Service, r.Match.Service))
	}
	if r.Verdict != VerdictDNAT {
		return out
	}
	model := map[netip.AddrPort]Endpoint{}
	for _, ep := range r.Endpoints {
		model[ep.Address] = ep
	}
	kernel := map[netip.AddrPort]KernelEndpoint{}
	for _, ep := range kp.Endpoints {
		kernel[ep.Address] = ep
	}
	for _, addr := range sortedAddrs(model) {
		if _, ok := kernel[addr]; !ok {
			out = append(out, fmt.Sprintf("endpoint %s: in the model, not in the kernel", addr))
		}
	}
	for _, addr := range sortedAddrs(kernel) {
		kep := kernel[addr]
		mep, ok := model[addr]
		if !ok {
			out = append(out, fmt.Sprintf("endpoint %s: in the kernel, not in the model", addr))
			continue
		}
		if math.Abs(kep.Probability-mep.Probability) > 1e-6 {
			out = append(out, fmt.Sprintf("endpoint %s: probability kernel %.3f, model %.3f", addr, kep.Probability, mep.Probability))
		}
		// Per-endpoint masquerade (hairpin) only matters when both agree on
		// the masquerade that applies to every endpoint.
		if got := kp.Masquerade || kep.Masquerade; kp.Masquerade == r.Masquerade && got != mep.Masquerade {
			out = append(out, fmt.Sprintf("endpoint %s: masquerade kernel %v, model %v", addr, got, mep.Masquerade))
		}
	}
	if kp.Masquerade != r.Masquerade {
		out = append(out, fmt.Sprintf("masquerade: kernel %v, model %v", kp.Masquerade, r.Masquerade))
	}
	var modelAffinity int64
	if r.Affinity != nil {
		modelAffinity = r.Affinity.TimeoutSeconds
	}
	if kp.AffinityTimeoutSeconds != modelAffinity {
		out = append(out, fmt.Sprintf("affinity timeout: kernel %ds, model %ds", kp.AffinityTimeoutSeconds, modelAffinity))
	}
	return out
}

func sortedAddrs[V any](m map[netip.AddrPort]V) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}
