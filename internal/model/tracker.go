package model

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Snapshot is the immutable per-node view at one sync. Readers must not modify it.
type Snapshot struct {
	// Generation counts snapshots; it starts at 1.
	Generation uint64
	// Services holds every service the source gave, headless and ExternalName included.
	Services map[types.NamespacedName]*v1.Service
	// Slices holds each service's EndpointSlices.
	Slices map[types.NamespacedName][]*discovery.EndpointSlice
	// Ports holds every proxied service port with its categorized endpoints.
	Ports map[ServicePortName]*PortView
	// Node is this node.
	Node Node
	// Changed lists the ports added, changed or removed since the previous snapshot.
	// A port in Changed but not in Ports was removed.
	Changed map[ServicePortName]struct{}
	// ChangedServices lists the services (any kind) whose Service or slices changed.
	ChangedServices map[types.NamespacedName]struct{}
	// NodeChanged is true when this node's addresses or labels changed.
	NodeChanged bool
	// QueuedSince is when the oldest change folded into this snapshot was recorded
	// (zero when nothing was pending).
	QueuedSince time.Time
	// TriggerTimes holds, per changed service, the last-change-trigger-time of its
	// slices or the time the change was recorded, for network programming latency.
	TriggerTimes map[types.NamespacedName]time.Time
	// ServiceChanges and EndpointChanges count the events folded into this snapshot.
	ServiceChanges, EndpointChanges int
}

// Tracker records changes from sources and produces Snapshots. It is safe for
// concurrent use: handlers may run on any goroutine.
type Tracker struct {
	mu       sync.Mutex
	nodeName string
	notify   func()
	// unassignedLocal makes endpoints without a node name local (standalone mode:
	// the manifests describe one node, this one).
	unassignedLocal bool

	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]map[string]*discovery.EndpointSlice
	node     Node

	ports       map[ServicePortName]*PortView
	portsOf     map[types.NamespacedName][]ServicePortName
	dirty       map[types.NamespacedName]time.Time
	nodeDirty   bool
	queuedSince time.Time
	svcChanges  int
	epChanges   int

	servicesSynced, slicesSynced, nodeSynced bool

	gen     uint64
	current atomic.Pointer[Snapshot]

	// Pending change counts, for metrics.
	pendingServices, pendingEndpoints atomic.Int64
}

// NewTracker returns a Tracker for the named node. notify, if not nil, is called
// (without locks held) after every recorded change; it should only schedule a sync.
func NewTracker(nodeName string, notify func()) *Tracker {
	t := &Tracker{
		nodeName: nodeName,
		notify:   notify,
		services: map[types.NamespacedName]*v1.Service{},
		slices:   map[types.NamespacedName]map[string]*discovery.EndpointSlice{},
		ports:    map[ServicePortName]*PortView{},
		portsOf:  map[types.NamespacedName][]ServicePortName{},
		dirty:    map[types.NamespacedName]time.Time{},
		node:     Node{Name: nodeName},
	}
	t.current.Store(&Snapshot{Node: t.node})
	return t
}

// SetNotify sets the change callback; call it before sources start.
func (t *Tracker) SetNotify(notify func()) { t.notify = notify }

// AssumeUnassignedLocal makes endpoints that name no node count as this node's,
// as in standalone mode, where the manifests describe a single node. Call it
// before sources start.
func (t *Tracker) AssumeUnassignedLocal() { t.unassignedLocal = true }

// NodeName is the name of the node this tracker computes the view for.
func (t *Tracker) NodeName() string { return t.nodeName }

func (t *Tracker) changed() {
	if t.notify != nil {
		t.notify()
	}
}

func (t *Tracker) markDirty(name types.NamespacedName, now time.Time) {
	if _, ok := t.dirty[name]; !ok {
		t.dirty[name] = now
	}
	if t.queuedSince.IsZero() {
		t.queuedSince = now
	}
}

func serviceKey(svc *v1.Service) types.NamespacedName {
	return types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
}

// OnServiceAdd records a new service.
func (t *Tracker) OnServiceAdd(svc *v1.Service) { t.OnServiceUpdate(nil, svc) }

// OnServiceUpdate records a changed service.
func (t *Tracker) OnServiceUpdate(_, svc *v1.Service) {
	if svc == nil {
		return
	}
	t.mu.Lock()
	key := serviceKey(svc)
	t.services[key] = svc
	t.markDirty(key, time.Now())
	t.svcChanges++
	t.pendingServices.Add(1)
	t.mu.Unlock()
	t.changed()
}

// OnServiceDelete records a deleted service.
func (t *Tracker) OnServiceDelete(svc *v1.Service) {
	if svc == nil {
		return
	}
	t.mu.Lock()
	key := serviceKey(svc)
	delete(t.services, key)
	t.markDirty(key, time.Now())
	t.svcChanges++
	t.pendingServices.Add(1)
	t.mu.Unlock()
	t.changed()
}

// OnServicesSynced records that the source delivered all services.
func (t *Tracker) OnServicesSynced() {
	t.mu.Lock()
	t.servicesSynced = true
	t.mu.Unlock()
	t.changed()
}

// OnEndpointSliceAdd records a new slice.
func (t *Tracker) OnEndpointSliceAdd(slice *discovery.EndpointSlice) {
	t.OnEndpointSliceUpdate(nil, slice)
}

// OnEndpointSliceUpdate records a changed slice.
func (t *Tracker) OnEndpointSliceUpdate(_, slice *discovery.EndpointSlice) {
	t.updateSlice(slice, false)
}

// OnEndpointSliceDelete records a deleted slice.
func (t *Tracker) OnEndpointSliceDelete(slice *discovery.EndpointSlice) {
	t.updateSlice(slice, true)
}

func (t *Tracker) updateSlice(slice *discovery.EndpointSlice, deleted bool) {
	if slice == nil {
		return
	}
	svc, ok := ServiceNameOf(slice)
	if !ok {
		return
	}
	t.mu.Lock()
	m := t.slices[svc]
	if deleted {
		delete(m, slice.Name)
		if len(m) == 0 {
			delete(t.slices, svc)
		}
	} else {
		if m == nil {
			m = map[string]*discovery.EndpointSlice{}
			t.slices[svc] = m
		}
		m[slice.Name] = slice
	}
	now := time.Now()
	if ts, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]; ok && !deleted {
		if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil && tt.Before(now) {
			now = tt
		}
	}
	t.markDirty(svc, now)
	t.epChanges++
	t.pendingEndpoints.Add(1)
	t.mu.Unlock()
	t.changed()
}

// OnEndpointSlicesSynced records that the source delivered all slices.
func (t *Tracker) OnEndpointSlicesSynced() {
	t.mu.Lock()
	t.slicesSynced = true
	t.mu.Unlock()
	t.changed()
}

// Node returns this node as last recorded.
func (t *Tracker) Node() Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

// OnNodeAdd records this node's Node object.
func (t *Tracker) OnNodeAdd(node *v1.Node) { t.OnNodeUpdate(nil, node) }

// OnNodeUpdate records a change to this node's Node object. Objects for other
// nodes are ignored.
func (t *Tracker) OnNodeUpdate(_, node *v1.Node) {
	if node == nil || (t.nodeName != "" && node.Name != t.nodeName) {
		return
	}
	n := NodeFrom(node)
	t.mu.Lock()
	if !nodeEqual(&t.node, &n) {
		t.node = n
		t.nodeDirty = true
		if t.queuedSince.IsZero() {
			t.queuedSince = time.Now()
		}
	}
	t.mu.Unlock()
	t.changed()
}

// OnNodeDelete records that this node's Node object is gone.
func (t *Tracker) OnNodeDelete(node *v1.Node) {
	if node == nil || (t.nodeName != "" && node.Name != t.nodeName) {
		return
	}
	t.mu.Lock()
	t.node = Node{Name: t.nodeName, Deleting: true}
	t.nodeDirty = true
	t.mu.Unlock()
	t.changed()
}

// OnNodeSynced records that the source delivered the Node object, if any.
func (t *Tracker) OnNodeSynced() {
	t.mu.Lock()
	t.nodeSynced = true
	t.mu.Unlock()
	t.changed()
}

// Synced reports whether every source has delivered its initial state; nothing
// should be programmed before.
func (t *Tracker) Synced() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.servicesSynced && t.slicesSynced && t.nodeSynced
}

// Pending returns the numbers of service and endpoint changes not yet folded into a snapshot.
func (t *Tracker) Pending() (services, endpoints int64) {
	return t.pendingServices.Load(), t.pendingEndpoints.Load()
}

// Current returns the latest snapshot without applying pending changes.
func (t *Tracker) Current() *Snapshot { return t.current.Load() }

// Snapshot folds every recorded change into a new snapshot and returns it.
func (t *Tracker) Snapshot() *Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	snap := &Snapshot{
		Changed:         map[ServicePortName]struct{}{},
		ChangedServices: map[types.NamespacedName]struct{}{},
		TriggerTimes:    map[types.NamespacedName]time.Time{},
		Node:            t.node,
		NodeChanged:     t.nodeDirty,
		QueuedSince:     t.queuedSince,
		ServiceChanges:  t.svcChanges,
		EndpointChanges: t.epChanges,
	}
	if t.nodeDirty {
		// Locality and topology depend on the node: recompute every service.
		for name := range t.services {
			if _, ok := t.dirty[name]; !ok {
				t.dirty[name] = time.Time{}
			}
		}
	}
	for name, at := range t.dirty {
		snap.ChangedServices[name] = struct{}{}
		if !at.IsZero() {
			snap.TriggerTimes[name] = at
		}
		t.recompute(name, snap.Changed)
	}
	t.gen++
	snap.Generation = t.gen
	snap.Services = maps.Clone(t.services)
	snap.Ports = maps.Clone(t.ports)
	prev := t.current.Load()
	if len(t.dirty) == 0 && prev.Slices != nil {
		snap.Slices = prev.Slices
	} else {
		snap.Slices = make(map[types.NamespacedName][]*discovery.EndpointSlice, len(t.slices))
		if prev.Slices != nil {
			maps.Copy(snap.Slices, prev.Slices)
		}
		for name := range t.dirty {
			if m := t.slices[name]; len(m) > 0 {
				snap.Slices[name] = sortedSlices(m)
			} else {
				delete(snap.Slices, name)
			}
		}
	}
	clear(t.dirty)
	t.nodeDirty = false
	t.queuedSince = time.Time{}
	t.svcChanges, t.epChanges = 0, 0
	t.pendingServices.Store(0)
	t.pendingEndpoints.Store(0)
	t.current.Store(snap)
	return snap
}

// recompute rebuilds the ports of one service and records which changed.
func (t *Tracker) recompute(name types.NamespacedName, changed map[ServicePortName]struct{}) {
	old := t.portsOf[name]
	svc := t.services[name]
	var fresh []*ServicePort
	if svc != nil {
		fresh = ServicePorts(svc)
	}
	var sl []*discovery.EndpointSlice
	if m := t.slices[name]; len(m) > 0 {
		sl = sortedSlices(m)
	}
	names := make([]ServicePortName, 0, len(fresh))
	for _, sp := range fresh {
		pv := &PortView{ServicePort: sp, Endpoints: endpointsFor(sp, sl, t.nodeName, t.unassignedLocal)}
		categorize(pv, &t.node)
		names = append(names, sp.Name)
		if prev, ok := t.ports[sp.Name]; ok && prev.equal(pv) {
			continue
		}
		t.ports[sp.Name] = pv
		changed[sp.Name] = struct{}{}
	}
	for _, n := range old {
		if !containsName(names, n) {
			delete(t.ports, n)
			changed[n] = struct{}{}
		}
	}
	if len(names) == 0 {
		delete(t.portsOf, name)
	} else {
		t.portsOf[name] = names
	}
}

func containsName(names []ServicePortName, n ServicePortName) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

func sortedSlices(m map[string]*discovery.EndpointSlice) []*discovery.EndpointSlice {
	if len(m) == 1 { // most services: nothing to sort
		for _, s := range m {
			return []*discovery.EndpointSlice{s}
		}
	}
	out := make([]*discovery.EndpointSlice, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// NodeFrom converts a Node object into kproxy's view of it.
func NodeFrom(node *v1.Node) Node {
	n := Node{Name: node.Name, Labels: node.Labels, Zone: node.Labels[v1.LabelTopologyZone]}
	for _, a := range node.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			n.Addresses = append(n.Addresses, ip.Unmap())
		}
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			n.PodCIDRs = append(n.PodCIDRs, p.Masked())
		}
	}
	if node.DeletionTimestamp != nil {
		n.Deleting = true
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			n.Deleting = true
		}
	}
	return n
}

// ToBeDeletedTaint is the cluster autoscaler's taint for a node about to be removed.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

func nodeEqual(a, b *Node) bool {
	return a.Name == b.Name && a.Zone == b.Zone && a.Deleting == b.Deleting &&
		maps.Equal(a.Labels, b.Labels) && slicesEqualAddr(a.Addresses, b.Addresses) && slices.Equal(a.PodCIDRs, b.PodCIDRs)
}

func slicesEqualAddr(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
