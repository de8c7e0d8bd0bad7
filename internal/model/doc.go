// Package model turns Services, EndpointSlices and this node's Node object into the
// per-node view that the data planes, DNS, health checks and the admin endpoints read.
//
// Sources (the manifest directory, the Kubernetes API) call a Tracker's handler
// methods; the handlers only record what changed. Snapshot applies the recorded
// changes, recomputes the affected service ports and returns an immutable view
// plus the set of ports that changed since the previous snapshot, so that data
// planes can program the kernel incrementally. The shape follows kube-proxy's
// ServiceChangeTracker/EndpointsChangeTracker and its CategorizeEndpoints rules.
package model
