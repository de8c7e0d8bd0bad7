package model

import (
	"slices"

	v1 "k8s.io/api/core/v1"
)

// categorize splits a port's endpoints into the sets traffic uses on this node,
// following kube-proxy's CategorizeEndpoints: ready endpoints (topology-filtered)
// for Cluster policy, this node's ready endpoints for Local policy, and in both
// cases serving-terminating endpoints when no ready one exists.
//
// kube-proxy runs one proxier per IP family, each seeing only its family's
// endpoints, so with endpoints of both families each family is categorized on
// its own: IPv6 falls back to its serving-terminating endpoints even when IPv4
// has ready ones, and a family without usable endpoints has none (HasAnyOf).
func categorize(pv *PortView, node *Node) {
	first := v1.IPv4Protocol
	if len(pv.Endpoints) > 0 {
		first = pv.Endpoints[0].Family()
	}
	if !slices.ContainsFunc(pv.Endpoints, func(ep *Endpoint) bool { return ep.Family() != first }) {
		// Zero or one family, the common case.
		usable := categorizeFamily(pv, pv.Endpoints, node)
		pv.HasAny = usable
		pv.hasAny = [2]bool{first == v1.IPv4Protocol && usable, first == v1.IPv6Protocol && usable}
		return
	}
	v6 := &PortView{ServicePort: pv.ServicePort}
	usable6 := categorizeFamily(v6, ByFamily(pv.Endpoints, v1.IPv6Protocol), node)
	usable4 := categorizeFamily(pv, ByFamily(pv.Endpoints, v1.IPv4Protocol), node)
	if pv.Cluster != nil {
		pv.Cluster = slices.Concat(pv.Cluster, v6.Cluster)
	}
	if pv.Local != nil {
		pv.Local = slices.Concat(pv.Local, v6.Local)
	}
	pv.HasAny = usable4 || usable6
	pv.hasAny = [2]bool{usable4, usable6}
}

// categorizeFamily sets pv's Cluster and Local from eps, one family's
// endpoints, and reports whether any of them is usable anywhere.
func categorizeFamily(pv *PortView, eps []*Endpoint, node *Node) (hasAny bool) {
	if pv.UsesClusterEndpoints() {
		mode := topologyMode(eps, node)
		pv.Cluster = filter(eps, func(ep *Endpoint) bool {
			return ep.Ready && availableForTopology(ep, mode, node)
		})
		if len(pv.Cluster) == 0 {
			pv.Cluster = filter(eps, func(ep *Endpoint) bool {
				return ep.Serving && ep.Terminating && availableForTopology(ep, mode, node)
			})
		}
		hasAny = len(pv.Cluster) > 0
	}
	if !pv.UsesLocalEndpoints() {
		return hasAny
	}
	var localReady, localServingTerminating bool
	for _, ep := range eps {
		switch {
		case ep.Ready:
			hasAny = true
			localReady = localReady || ep.Local
		case ep.Serving && ep.Terminating:
			hasAny = true
			localServingTerminating = localServingTerminating || ep.Local
		}
	}
	switch {
	case localReady:
		pv.Local = filter(eps, func(ep *Endpoint) bool { return ep.Local && ep.Ready })
	case localServingTerminating:
		pv.Local = filter(eps, func(ep *Endpoint) bool { return ep.Local && ep.Serving && ep.Terminating })
	default:
		pv.Local = []*Endpoint{}
	}
	return hasAny
}

// Topology modes, chosen from the hints the EndpointSlice controller wrote.
const (
	topologyNone     = ""
	topologySameNode = "PreferSameNode"
	topologySameZone = "PreferSameZone"
)

// topologyMode decides whether hints can be used: only when every ready endpoint
// carries them and at least one is meant for this node (or zone); otherwise all
// endpoints are used, so that a partial hint set never blackholes traffic.
func topologyMode(eps []*Endpoint, node *Node) string {
	allNode, forNode := true, false
	allZone, forZone := true, false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		if len(ep.NodeHints) == 0 {
			allNode = false
		} else if node.Name != "" && slices.Contains(ep.NodeHints, node.Name) {
			forNode = true
		}
		if len(ep.ZoneHints) == 0 {
			allZone = false
		} else if node.Zone != "" && slices.Contains(ep.ZoneHints, node.Zone) {
			forZone = true
		}
	}
	switch {
	case allNode && forNode:
		return topologySameNode
	case allZone && forZone:
		return topologySameZone
	}
	return topologyNone
}

func availableForTopology(ep *Endpoint, mode string, node *Node) bool {
	switch mode {
	case topologySameNode:
		return slices.Contains(ep.NodeHints, node.Name)
	case topologySameZone:
		return slices.Contains(ep.ZoneHints, node.Zone)
	}
	return true
}

func filter(eps []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	out := []*Endpoint{}
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
