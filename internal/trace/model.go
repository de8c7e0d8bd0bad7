package trace

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/model"
)

// Options is what a trace needs to know besides the snapshot: the same settings
// the data plane was configured with.
type Options struct {
	// ClusterCIDRs are the pod CIDRs (--cluster-cidr). Traffic from them is
	// "from inside the cluster". Empty means kproxy cannot tell, and then (like
	// kube-proxy without a local-traffic detector) off-cluster traffic to a
	// ClusterIP is not masqueraded and pod traffic to an external address is
	// not short-circuited.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to ClusterIPs (--masquerade-all).
	MasqueradeAll bool
	// NodeAddresses are this node's addresses, in addition to those of the
	// Node object in the snapshot. NodePorts are served on them, and a packet
	// from one of them is "from this node".
	NodeAddresses []netip.Addr
	// NodePortAddresses restricts the node addresses that serve NodePorts
	// (--nodeport-addresses); empty means all of them.
	NodePortAddresses []netip.Prefix
	// LocalhostNodePorts serves NodePorts on 127.0.0.1 too.
	LocalhostNodePorts bool
	// Userspace describes the userspace data plane instead of the kernel's:
	// it proxies (the endpoint sees a node address), does not short-circuit
	// pod and node traffic to externalTrafficPolicy Local addresses, and
	// refuses a TCP connection it cannot serve with a reset where the kernel
	// would drop, while UDP it cannot serve gets no answer.
	Userspace bool
	// Kernel, if set, reads the data plane's rules back from the kernel; the
	// HTTP handler then reports both answers and where they disagree.
	Kernel KernelState `json:"-"`
	// SocketLB, if set, is the socket load balancer running beside the
	// kernel's rules: connects from the node and its pods that it serves never
	// reach those rules, and the trace reads its maps instead.
	SocketLB SocketLBReader `json:"-"`
}

func (o *Options) inCluster(ip netip.Addr) bool {
	for _, p := range o.ClusterCIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func nodeAddresses(snap *model.Snapshot, opts *Options) []netip.Addr {
	out := slices.Clone(opts.NodeAddresses)
	if snap != nil {
		out = append(out, snap.Node.Addresses...)
	}
	return out
}

// isLocalSource is nftables' "fib saddr type local": the packet comes from
// this node itself.
func isLocalSource(src netip.Addr, nodeAddrs []netip.Addr) bool {
	return src.IsLoopback() || slices.Contains(nodeAddrs, src)
}

// servesNodePorts reports whether NodePorts answer on the address: a local
// address within --nodeport-addresses, or, when those are not given, any node
// address except loopback ones, which answer only with --localhost-nodeports
// (route_localnet, CVE-2020-8558) or when the Node object itself lists them (a
// standalone node living on loopback).
func servesNodePorts(addr netip.Addr, snap *model.Snapshot, nodeAddrs []netip.Addr, opts *Options) bool {
	if !addr.IsLoopback() && !slices.Contains(nodeAddrs, addr) {
		return false
	}
	if len(opts.NodePortAddresses) > 0 {
		return slices.ContainsFunc(opts.NodePortAddresses, func(p netip.Prefix) bool { return p.Contains(addr) })
	}
	if addr.IsLoopback() && !slices.Contains(snap.Node.Addresses, addr) {
		return opts.LocalhostNodePorts && addr.Is4()
	}
	return true
}

// sortedPorts gives the snapshot's ports in name order, so that a trace is
// deterministic even when the model holds overlapping addresses.
func sortedPorts(snap *model.Snapshot) []*model.PortView {
	out := make([]*model.PortView, 0, len(snap.Ports))
	for _, pv := range snap.Ports {
		if pv != nil && pv.ServicePort != nil {
			out = append(out, pv)
		}
	}
	slices.SortFunc(out, func(a, b *model.PortView) int {
		return cmp.Or(cmp.Compare(a.Name.Namespace, b.Name.Namespace), cmp.Compare(a.Name.Name, b.Name.Name),
			cmp.Compare(a.Name.Port, b.Name.Port), cmp.Compare(a.Name.Protocol, b.Name.Protocol))
	})
	return out
}

// match finds the service port the packet is addressed to. Cluster IPs,
// external IPs and load balancer IPs come first (one lookup keyed by address,
// protocol and port in the data plane), then NodePorts on node addresses.
func match(snap *model.Snapshot, pkt Packet, nodeAddrs []netip.Addr, opts *Options) (*model.PortView, string, bool) {
	dst, port := pkt.Dst.Addr(), int32(pkt.Dst.Port())
	ports := sortedPorts(snap)
	clusterIPOwned := false
	for _, pv := range ports {
		if slices.Contains(pv.ClusterIPs, dst) {
			clusterIPOwned = true
		}
		if pv.Protocol != pkt.Proto || pv.Port != port {
			continue
		}
		switch {
		case slices.Contains(pv.ClusterIPs, dst):
			return pv, ViaClusterIP, true
		case slices.Contains(pv.ExternalIPs, dst):
			return pv, ViaExternalIP, true
		case slices.Contains(pv.LoadBalancerIPs, dst):
			return pv, ViaLoadBalancer, true
		}
	}
	if servesNodePorts(dst, snap, nodeAddrs, opts) {
		for _, pv := range ports {
			if pv.NodePort == port && pv.Protocol == pkt.Proto {
				return pv, ViaNodePort, true
			}
		}
	}
	return nil, "", clusterIPOwned
}

// familyView is a port's endpoint sets restricted to one IP family: each
// family is programmed on its own, as kube-proxy runs one proxier per family.
type familyView struct {
	cluster, local []*model.Endpoint
	hasAny         bool
}

func viewFor(pv *model.PortView, family v1.IPFamily) familyView {
	// Under a Local policy "has endpoints" looks at every usable endpoint in
	// the cluster, so that a node without local ones drops instead of
	// rejecting; the model categorizes each family on its own.
	return familyView{cluster: model.ByFamily(pv.Cluster, family), local: model.ByFamily(pv.Local, family),
		hasAny: pv.HasAnyOf(family)}
}

// FromModel explains, from the model alone, what the data plane does with the
// first packet of a new connection. It is the whole answer for the userspace
// data plane, and the reference a kernel trace is compared with.
func FromModel(snap *model.Snapshot, opts Options, pkt Packet) Result {
	r := fromModel(snap, &opts, pkt)
	if opts.Userspace {
		asUserspace(&r)
	}
	return r
}

func fromModel(snap *model.Snapshot, opts *Options, pkt Packet) Result {
	r := Result{Packet: pkt, Source: "model", Steps: []string{}}
	if snap == nil {
		r.Verdict = VerdictNone
		r.Reason = "kproxy has no state yet (its sources have not synced)"
		return r
	}
	nodeAddrs := nodeAddresses(snap, opts)
	family := pkt.Family()

	pv, via, found := match(snap, pkt, nodeAddrs, opts)
	if pv == nil {
		if found {
			r.Verdict = VerdictReject
			r.Reason = fmt.Sprintf("%s is a cluster IP, but no service serves port %d/%s on it",
				pkt.Dst.Addr(), pkt.Dst.Port(), pkt.Proto)
			r.step("no service port matches %s/%s", pkt.Dst, pkt.Proto)
			r.step("destination is a cluster IP: unknown ports on cluster IPs are rejected")
			return r
		}
		r.Verdict = VerdictNone
		r.Reason = fmt.Sprintf("no service is reachable at %s/%s; kproxy leaves the packet alone", pkt.Dst, pkt.Proto)
		r.step("no service port matches %s/%s", pkt.Dst, pkt.Proto)
		return r
	}
	r.Match = &Match{
		Service:     pv.Name.String(),
		Namespace:   pv.Name.Namespace,
		Name:        pv.Name.Name,
		Port:        pv.Name.Port,
		Via:         via,
		ServicePort: pv.Port,
	}
	if via == ViaNodePort {
		r.step("%s is a node address serving NodePort %d/%s of %s", pkt.Dst.Addr(), pv.NodePort, pv.Protocol, pv.Name)
	} else {
		r.step("%s/%s is a %s of %s", pkt.Dst, pkt.Proto, viaName(via), pv.Name)
	}

	// Load balancer source ranges are checked before anything else (before
	// DNAT, in the filter hook at dstnat-10), so they apply to every source,
	// pods included. NodePorts are not subject to them.
	if via == ViaLoadBalancer && len(pv.LoadBalancerSourceRanges) > 0 {
		ok, why := sourceRangeAllows(pv, pkt.Src, nodeAddrs)
		if !ok {
			r.Verdict = VerdictDrop
			r.Reason = fmt.Sprintf("source %s is not in the service's loadBalancerSourceRanges (%s)",
				pkt.Src, prefixes(pv.LoadBalancerSourceRanges))
			r.step("load balancer source ranges %s do not allow %s: drop", prefixes(pv.LoadBalancerSourceRanges), pkt.Src)
			return r
		}
		r.step("load balancer source ranges allow %s (%s)", pkt.Src, why)
	}

	fv := viewFor(pv, family)
	if !fv.hasAny {
		r.Verdict = VerdictReject
		r.Reason = fmt.Sprintf("service %s has no usable %s endpoints", pv.Name, family)
		r.step("no ready (or serving, terminating) %s endpoint anywhere: reject", family)
		return r
	}

	var eps []*model.Endpoint
	if via == ViaClusterIP {
		eps = internal(&r, pv, fv, pkt, opts)
	} else {
		eps = external(&r, pv, fv, pkt, nodeAddrs, opts)
	}
	if r.Verdict != "" {
		return r
	}

	r.Verdict = VerdictDNAT
	r.Reason = fmt.Sprintf("DNAT to one of %d endpoint(s) of %s, chosen at random", len(eps), pv.Name)
	for _, ep := range eps {
		e := Endpoint{
			Address:     ep.AddrPort(),
			Probability: 1 / float64(len(eps)),
			Node:        ep.NodeName,
			Local:       ep.Local,
			Terminating: ep.Terminating,
			Masquerade:  r.Masquerade,
		}
		// Hairpin: a pod reaching itself through the service would get a reply
		// from its own address that it does not expect; masquerading makes the
		// reply come back through the node.
		if ep.IP == pkt.Src {
			e.Masquerade = true
			e.MasqueradeReason = "hairpin: the source is this endpoint"
		}
		r.Endpoints = append(r.Endpoints, e)
	}
	if !r.Masquerade && slices.ContainsFunc(eps, func(ep *model.Endpoint) bool { return ep.IP == pkt.Src }) {
		r.step("the source is one of the endpoints: masqueraded if it picks itself (hairpin)")
	}
	if pv.SessionAffinity() {
		r.Affinity = &Affinity{TimeoutSeconds: int64(pv.AffinityTimeout.Seconds())}
		r.step("ClientIP affinity (%s): a source that connected in the last %s goes to the same endpoint",
			pv.AffinityTimeout, pv.AffinityTimeout)
	}
	r.step("DNAT to one of %s", endpointList(eps))
	return r
}

// internal handles traffic to a cluster IP. It sets r.Verdict when the packet
// is dropped, and otherwise returns the endpoints.
func internal(r *Result, pv *model.PortView, fv familyView, pkt Packet, opts *Options) []*model.Endpoint {
	eps, policy := fv.cluster, PolicyCluster
	if pv.InternalPolicyLocal {
		eps, policy = fv.local, PolicyLocal
	}
	r.Match.Policy = policy
	r.step("internalTrafficPolicy %s: %d endpoint(s)", policy, len(eps))
	if len(eps) == 0 {
		r.Verdict = VerdictDrop
		r.Reason = fmt.Sprintf("internalTrafficPolicy is Local and %s has no endpoint on this node", pv.Name)
		r.step("no local endpoint: drop")
		return nil
	}
	switch {
	case opts.MasqueradeAll:
		r.Masquerade, r.MasqueradeReason = true, "masquerade-all is on"
	case len(opts.ClusterCIDRs) > 0 && !opts.inCluster(pkt.Src):
		// A route to the service range through this node lets outside hosts
		// use cluster IPs; the endpoint may be on another node, so the reply
		// must come back here.
		r.Masquerade, r.MasqueradeReason = true, fmt.Sprintf("source %s is outside the cluster CIDRs", pkt.Src)
	case len(opts.ClusterCIDRs) > 0:
		r.MasqueradeReason = fmt.Sprintf("source %s is inside the cluster CIDRs", pkt.Src)
	default:
		r.MasqueradeReason = "no cluster CIDR configured, so off-cluster sources are not detected"
	}
	r.step("masquerade: %v (%s)", r.Masquerade, r.MasqueradeReason)
	return eps
}

// external handles traffic to a NodePort, external IP or load balancer IP.
func external(r *Result, pv *model.PortView, fv familyView, pkt Packet, nodeAddrs []netip.Addr, opts *Options) []*model.Endpoint {
	if !pv.ExternalPolicyLocal {
		r.Match.Policy = PolicyCluster
		r.Masquerade = true
		r.MasqueradeReason = "externalTrafficPolicy Cluster: the endpoint may be on another node, so replies must return through this one"
		r.step("externalTrafficPolicy Cluster: %d endpoint(s), masqueraded", len(fv.cluster))
		if len(fv.cluster) == 0 {
			r.Verdict = VerdictDrop
			r.Reason = fmt.Sprintf("%s has no endpoint usable for external traffic", pv.Name)
			return nil
		}
		return fv.cluster
	}

	// externalTrafficPolicy Local, with kube-proxy's short-circuits: traffic
	// from pods and from the node itself behaves as if it had gone out to the
	// load balancer and come back to some node, so it uses every endpoint.
	shortCircuit := ""
	switch {
	case opts.Userspace:
		// The userspace proxy has one balancer per policy and no short-circuit.
	case len(opts.ClusterCIDRs) > 0 && opts.inCluster(pkt.Src):
		shortCircuit = "pod"
		r.MasqueradeReason = fmt.Sprintf("source %s is a pod: short-circuited to the cluster endpoints, source kept", pkt.Src)
	case isLocalSource(pkt.Src, nodeAddrs):
		shortCircuit = "node"
		r.Masquerade = true
		r.MasqueradeReason = fmt.Sprintf("source %s is this node: masqueraded and short-circuited to the cluster endpoints", pkt.Src)
	}
	if shortCircuit != "" {
		r.Match.Policy = PolicyCluster
		r.step("externalTrafficPolicy Local, but the source is %s traffic: it uses the cluster endpoints (%d)",
			shortCircuit, len(fv.cluster))
		if len(fv.cluster) == 0 {
			r.Verdict = VerdictDrop
			r.Reason = fmt.Sprintf("%s traffic to %s uses the cluster endpoints, and there are none", shortCircuit, pv.Name)
			return nil
		}
		return fv.cluster
	}
	r.Match.Policy = PolicyLocal
	r.MasqueradeReason = "externalTrafficPolicy Local: the client's source address is preserved"
	r.step("externalTrafficPolicy Local: %d endpoint(s) on this node, source preserved", len(fv.local))
	if len(fv.local) == 0 {
		r.Verdict = VerdictDrop
		r.Reason = fmt.Sprintf("externalTrafficPolicy is Local and %s has no endpoint on this node", pv.Name)
		r.step("no local endpoint: drop")
		return nil
	}
	return fv.local
}

// sourceRangeAllows applies loadBalancerSourceRanges the way kube-proxy does:
// the source must be in a range; and when a range contains a node address,
// traffic whose source is the load balancer IP itself is allowed too, because a
// node reaching a VIP that is also bound locally sends it from that VIP.
func sourceRangeAllows(pv *model.PortView, src netip.Addr, nodeAddrs []netip.Addr) (bool, string) {
	for _, p := range pv.LoadBalancerSourceRanges {
		if p.Contains(src) {
			return true, "in " + p.String()
		}
	}
	allowFromNode := false
	for _, p := range pv.LoadBalancerSourceRanges {
		for _, a := range nodeAddrs {
			if p.Contains(a) {
				allowFromNode = true
			}
		}
	}
	if allowFromNode && slices.Contains(pv.LoadBalancerIPs, src) {
		return true, "the source is the load balancer IP and a range covers this node"
	}
	return false, ""
}

func viaName(via string) string {
	switch via {
	case ViaClusterIP:
		return "cluster IP"
	case ViaExternalIP:
		return "external IP"
	case ViaLoadBalancer:
		return "load balancer IP"
	}
	return via
}

func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func endpointList(eps []*model.Endpoint) string {
	s := make([]string, len(eps))
	for i, ep := range eps {
		s[i] = ep.String()
	}
	return strings.Join(s, ", ")
}

// asUserspace rewrites a kernel-semantics answer for the userspace proxy.
func asUserspace(r *Result) {
	switch r.Verdict {
	case VerdictDNAT:
		r.Verdict = VerdictProxy
		r.Reason = strings.Replace(r.Reason, "DNAT to", "proxied to", 1)
		r.Reason = strings.Replace(r.Reason, "chosen at random", "chosen round-robin", 1)
		r.Masquerade = true
		r.MasqueradeReason = "userspace proxy: the endpoint sees a connection from this node"
		for i := range r.Endpoints {
			r.Endpoints[i].Masquerade = true
			r.Endpoints[i].MasqueradeReason = ""
		}
		r.step("the userspace proxy accepts the connection and opens its own to the endpoint")
	case VerdictDrop, VerdictReject:
		if r.Match == nil {
			// No listener on that port: the kernel refuses it.
			return
		}
		if r.Packet.Proto == v1.ProtocolUDP {
			r.Verdict = VerdictDrop
			r.step("the userspace proxy cannot serve this UDP flow: no answer")
		} else {
			r.Verdict = VerdictReject
			r.step("the userspace proxy resets the connection")
		}
	}
}
