package model

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// ServiceHandler receives Service events from a source.
type ServiceHandler interface {
	OnServiceAdd(svc *v1.Service)
	OnServiceUpdate(oldSvc, svc *v1.Service)
	OnServiceDelete(svc *v1.Service)
	// OnServicesSynced is called once the source has delivered every existing Service.
	OnServicesSynced()
}

// EndpointSliceHandler receives EndpointSlice events from a source.
type EndpointSliceHandler interface {
	OnEndpointSliceAdd(slice *discovery.EndpointSlice)
	OnEndpointSliceUpdate(oldSlice, slice *discovery.EndpointSlice)
	OnEndpointSliceDelete(slice *discovery.EndpointSlice)
	// OnEndpointSlicesSynced is called once the source has delivered every existing slice.
	OnEndpointSlicesSynced()
}

// NodeHandler receives events for the Node object of the node kproxy runs on.
type NodeHandler interface {
	OnNodeAdd(node *v1.Node)
	OnNodeUpdate(oldNode, node *v1.Node)
	OnNodeDelete(node *v1.Node)
	OnNodeSynced()
}

// Handler is everything a source feeds.
type Handler interface {
	ServiceHandler
	EndpointSliceHandler
	NodeHandler
}

var _ Handler = (*Tracker)(nil)
