package model

import "slices"

// categorize splits a port's endpoints into the sets traffic uses on this node,
// following kube-proxy's CategorizeEndpoints: ready endpoints (topology-filtered)
// for Cluster policy, this node's ready endpoints for Local policy, and in both
// cases serving-terminating endpoints when no ready one exists.
func categorize(pv *PortView, node *Node) {
	eps := pv.Endpoints
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
		pv.HasAny = len(pv.Cluster) > 0
	}
	if !pv.UsesLocalEndpoints() {
		return
	}
	var localReady, localServingTerminating bool
	for _, ep := range eps {
		switch {
		case ep.Ready:
			pv.HasAny = true
			localReady = localReady || ep.Local
		case ep.Serving && ep.Terminating:
			pv.HasAny = true
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
