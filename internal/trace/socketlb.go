package trace

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/socketlb"
)

// Datapaths, when the socket LB runs.
const (
	DatapathSocketLB = "socket LB: the endpoint is chosen at connect()/sendmsg(), so packets carry the endpoint's address (no NAT, no conntrack entry for the service)"
	DatapathNFTables = "nftables"
)

// SocketLBReader reads the socket LB's maps back from the kernel.
// *socketlb.Proxier satisfies it.
type SocketLBReader interface {
	Lookup(proto v1.Protocol, dst netip.AddrPort) (*socketlb.Entry, error)
}

var _ SocketLBReader = (*socketlb.Proxier)(nil)

// fromThisNode reports whether a socket with this source address is the
// node's or one of its pods': the socket LB's programs see its connects. A
// pod is told by the Node's pod CIDRs, or without them by the cluster CIDRs.
func fromThisNode(src netip.Addr, snap *model.Snapshot, opts *Options) bool {
	if isLocalSource(src, nodeAddresses(snap, opts)) {
		return true
	}
	if snap != nil && len(snap.Node.PodCIDRs) > 0 {
		return slices.ContainsFunc(snap.Node.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(src) })
	}
	return opts.inCluster(src)
}

// traceSocketLB answers from the socket LB's maps when it serves the packet
// (and reports true); otherwise it notes that nftables does.
func traceSocketLB(snap *model.Snapshot, opts *Options, pkt Packet, r *Result) bool {
	if !fromThisNode(pkt.Src, snap, opts) {
		r.Datapath = DatapathNFTables
		r.step("the source is not on this node: the socket LB does not see it; nftables serves it")
		return false
	}
	e, err := opts.SocketLB.Lookup(pkt.Proto, pkt.Dst)
	if err != nil {
		r.Disagreements = append(r.Disagreements, fmt.Sprintf("reading the socket LB's maps failed: %v", err))
		return false
	}
	if e == nil {
		r.Datapath = DatapathNFTables
		r.step("the socket LB has no entry for %s/%s: the connect goes on unchanged, to nftables", pkt.Dst, pkt.Proto)
		return false
	}
	r.Datapath = DatapathSocketLB
	r.SocketLB = e
	r.Source = "socket LB maps in the kernel, compared with the model"
	r.Masquerade, r.MasqueradeReason = false, "the socket LB translates no packet"
	for i := range r.Endpoints {
		r.Endpoints[i].Masquerade, r.Endpoints[i].MasqueradeReason = false, ""
	}
	r.step("socket LB: frontend %s in the BPF maps", e.Frontend)
	switch {
	case e.Refuse:
		if r.Verdict != VerdictReject {
			r.Disagreements = append(r.Disagreements, fmt.Sprintf("verdict: socket LB refuses the connect, model %s", r.Verdict))
		}
	case r.Verdict != VerdictDNAT:
		r.Disagreements = append(r.Disagreements, fmt.Sprintf("verdict: socket LB picks one of %d endpoints, model %s", len(e.Endpoints), r.Verdict))
	default:
		model := map[netip.AddrPort]bool{}
		for _, ep := range r.Endpoints {
			model[ep.Address] = true
		}
		kernel := map[netip.AddrPort]bool{}
		for _, ep := range e.Endpoints {
			kernel[ep] = true
			if !model[ep] {
				r.Disagreements = append(r.Disagreements, fmt.Sprintf("endpoint %s: in the socket LB's maps, not in the model", ep))
			}
		}
		for _, ep := range r.Endpoints {
			if !kernel[ep.Address] {
				r.Disagreements = append(r.Disagreements, fmt.Sprintf("endpoint %s: in the model, not in the socket LB's maps", ep.Address))
			}
		}
	}
	return true
}
