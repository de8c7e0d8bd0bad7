// Package socketlb is kproxy's socket-level load balancer: eBPF programs on
// cgroup socket hooks pick a service endpoint when a socket on the node (or in
// one of its pods) connects or sends a datagram, so the connection is an
// ordinary one to the endpoint: no per-packet NAT and no conntrack entry for
// the service. It runs beside the nftables data plane, which keeps serving
// traffic from outside the node and whatever the programs leave alone.
//
// The C sources are in bpf/; see the README for the maps, the hooks and how a
// sync changes the maps without a reader ever seeing them disagree.
package socketlb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/model"
)

// DefaultPinDir is where the maps and links are pinned unless told otherwise.
const DefaultPinDir = "/sys/fs/bpf/kproxy"

// Config configures the socket load balancer.
type Config struct {
	// CgroupPath is the cgroup v2 directory the programs attach to; every
	// process in it and below is served. kproxy uses the cgroup v2 root.
	CgroupPath string
	// PinDir is a directory on a bpf filesystem for the pinned maps and links.
	PinDir string
	// NodePortAddresses limits the node addresses NodePorts answer on, as for
	// nftables; empty means every address but loopback.
	NodePortAddresses []netip.Prefix
	// NodeAddrs returns the node's addresses; nil reads the interfaces of the
	// network namespace kproxy runs in.
	NodeAddrs func() ([]netip.Addr, error)
	Logger    *slog.Logger
}

// Proxier is the socket LB data plane. It implements the app's Dataplane.
type Proxier struct {
	cfg     Config
	k       *kernel
	log     *slog.Logger
	metrics *Metrics

	mu        sync.Mutex
	ports     map[model.ServicePortName]*portState
	owners    map[frontendKey]model.ServicePortName
	sets      map[uint32]*setState
	backends  map[netip.AddrPort]backendRef
	backendID idAlloc
	portID    idAlloc
	nodeAddrs map[netip.Addr]bool
	// gc asks the next full sync to remove from the maps whatever the
	// in-memory state does not know: left by a previous kproxy, or by a
	// sync that failed half way.
	gc bool
}

type frontendKey = socketlbFrontendKey

type portState struct {
	id        uint32
	proto     v1.Protocol
	frontends []frontendEntry
	sets      []uint32
}

type frontendEntry struct {
	key frontendKey
	val socketlbFrontend
}

// setState is one double-buffered slot set: the endpoints of one family of a
// service port, for its cluster IP or for its external addresses.
type setState struct {
	buf uint32    // the buffer frontends point at
	n   [2]uint32 // slots written in each buffer
	eps []netip.AddrPort
	ids []uint32 // backend ids, in slot order
}

type backendRef struct {
	id   uint32
	refs int32
}

// New loads and attaches the programs (taking over the maps and links a
// previous kproxy pinned in cfg.PinDir) and returns the data plane. The maps
// keep what they held until the first full sync replaces it, so connects keep
// being served across a restart.
func New(cfg Config, m *Metrics) (*Proxier, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.CgroupPath == "" {
		return nil, errors.New("socket LB: no cgroup to attach to")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	k, err := openKernel(cfg.CgroupPath, cfg.PinDir)
	if err != nil {
		return nil, err
	}
	p := &Proxier{
		cfg: cfg, k: k, log: cfg.Logger.With("dataplane", "socketlb"), metrics: m,
		ports: map[model.ServicePortName]*portState{}, owners: map[frontendKey]model.ServicePortName{},
		sets: map[uint32]*setState{}, backends: map[netip.AddrPort]backendRef{},
		nodeAddrs: map[netip.Addr]bool{},
	}
	if err := p.adopt(); err != nil {
		k.close()
		return nil, err
	}
	m.register(p)
	return p, nil
}

// adopt reads what a previous kproxy left in the maps: its port ids stay
// reserved (their slot sets are live until the first full sync points every
// frontend elsewhere) and its backends are reused by address.
func (p *Proxier) adopt() error {
	var k frontendKey
	var v socketlbFrontend
	it := p.k.objs.KpFrontends.Iterate()
	for it.Next(&k, &v) {
		p.portID.reserve(v.PortId)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned frontends: %w", err)
	}
	var id uint32
	var be socketlbBackend
	it = p.k.objs.KpBackends.Iterate()
	for it.Next(&id, &be) {
		p.backends[decodeBackend(&be)] = backendRef{id: id}
		p.backendID.reserve(id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned backends: %w", err)
	}
	var nk socketlbNodeaddrKey
	var one uint32
	it = p.k.objs.KpNodeaddrs.Iterate()
	for it.Next(&nk, &one) {
		p.nodeAddrs[decodeAddr(nk.Addr, uint8(nk.Family))] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned node addresses: %w", err)
	}
	// Anything left in the maps is collected by the first full sync; empty
	// maps (a first start) need no such pass.
	var key [32]byte
	for _, m := range []*ebpf.Map{p.k.objs.KpFrontends, p.k.objs.KpSlots, p.k.objs.KpBackends, p.k.objs.KpCounters} {
		if err := m.NextKey(nil, key[:m.KeySize()]); err == nil {
			p.gc = true
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read pinned map: %w", err)
		}
	}
	return nil
}

// Close releases kproxy's handles. The programs stay attached and the maps
// pinned: connects keep being translated until a new kproxy takes over, or
// Cleanup removes them.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k != nil {
		p.k.close()
		p.k = nil
	}
	return nil
}

// Sync makes the maps match snap: the changed ports (every port when full),
// and the node addresses NodePorts answer on.
func (p *Proxier) Sync(ctx context.Context, snap *model.Snapshot, full bool) error {
	start := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k == nil {
		return errors.New("socket LB is closed")
	}
	err := p.sync(snap, full)
	if err != nil {
		p.gc = true
		p.metrics.failed()
		return err
	}
	p.metrics.observe(full, time.Since(start))
	return nil
}

func (p *Proxier) sync(snap *model.Snapshot, full bool) error {
	force := full && p.gc
	pl := &plan{}
	if err := p.planNodeAddrs(pl); err != nil {
		return err
	}
	if full && len(p.ports) == 0 {
		// A first sync: size the maps once instead of growing them.
		eps := 0
		for _, pv := range snap.Ports {
			eps += len(pv.Endpoints)
		}
		n := len(snap.Ports)
		p.ports = make(map[model.ServicePortName]*portState, n)
		p.owners = make(map[frontendKey]model.ServicePortName, 2*n)
		p.sets = make(map[uint32]*setState, 2*n)
		if len(p.backends) == 0 {
			p.backends = make(map[netip.AddrPort]backendRef, eps)
		}
		pl.slotKeys = make([]socketlbSlotKey, 0, eps)
		pl.slotVals = make([]uint32, 0, eps)
		pl.beKeys = make([]uint32, 0, eps)
		pl.beVals = make([]socketlbBackend, 0, eps)
	}
	var names []model.ServicePortName
	if full {
		for name := range snap.Ports {
			names = append(names, name)
		}
		for name := range p.ports {
			if _, ok := snap.Ports[name]; !ok {
				names = append(names, name)
			}
		}
	} else {
		for name := range snap.Changed {
			names = append(names, name)
		}
	}
	for _, name := range names {
		if err := p.planPort(pl, name, snap.Ports[name], force); err != nil {
			return err
		}
	}
	if err := p.apply(pl); err != nil {
		return err
	}
	if force {
		if err := p.collectGarbage(); err != nil {
			return err
		}
		p.gc = false
		p.portID.clearReserved()
		p.backendID.clearReserved()
	}
	return nil
}

// wantPort is what one service port should have in the maps.
// A port has a handful of frontends and at most four sets: slices, not maps,
// keep a cold sync of 10,000 ports cheap.
type wantPort struct {
	frontends []wantFrontend
	sets      []wantSet
}

type wantFrontend struct {
	key      frontendKey
	set      uint32 // the set's base id; unused when refuse
	refuse   bool
	affinity uint32
}

type wantSet struct {
	base uint32
	eps  []netip.AddrPort
}

func (w *wantPort) set(base uint32) ([]netip.AddrPort, bool) {
	for _, s := range w.sets {
		if s.base == base {
			return s.eps, true
		}
	}
	return nil, false
}

func (w *wantPort) addSet(base uint32, eps []netip.AddrPort) {
	if _, ok := w.set(base); !ok {
		w.sets = append(w.sets, wantSet{base: base, eps: eps})
	}
}

func (w *wantPort) hasFrontend(key frontendKey) bool {
	for _, f := range w.frontends {
		if f.key == key {
			return true
		}
	}
	return false
}

// Set ids: bit 0 is the buffer, bit 1 the family, bit 2 internal/external,
// and the port id above.
func setBase(portID uint32, external bool, family v1.IPFamily) uint32 {
	b := portID << 3
	if external {
		b |= 4
	}
	if family == v1.IPv6Protocol {
		b |= 2
	}
	return b
}

func protoNum(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolTCP:
		return 6, true
	case v1.ProtocolUDP:
		return 17, true
	}
	return 0, false
}

// build computes a port's frontends and slot sets for clients on the node and
// its pods, with the endpoint sets the model chose for this node, following
// the nftables data plane frontend by frontend. What nftables drops (a Local
// policy without a local endpoint) and what needs the client's address
// (loadBalancerSourceRanges) is left out: the programs leave such connects
// alone and nftables decides.
func build(pv *model.PortView, portID uint32) (wantPort, bool) {
	var w wantPort
	proto, ok := protoNum(pv.Protocol)
	if !ok {
		return w, false
	}
	aff := uint32(0)
	if pv.AffinityTimeout > 0 {
		aff = uint32((pv.AffinityTimeout + time.Second - 1) / time.Second)
	}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		internal := addrPorts(model.ByFamily(pv.InternalEndpoints(), fam))
		internalBase := setBase(portID, false, fam)
		if cip, ok := pv.ClusterIP(fam); ok {
			key := encodeFrontend(cip, uint16(pv.Port), proto)
			switch {
			case len(internal) > 0:
				w.addSet(internalBase, internal)
				w.frontends = append(w.frontends, wantFrontend{key: key, set: internalBase, affinity: aff})
			case !pv.HasAnyOf(fam):
				w.frontends = append(w.frontends, wantFrontend{key: key, refuse: true})
			}
		}
		var externals []frontendKey
		for _, ip := range pv.ExternalIPs {
			if model.FamilyOf(ip) == fam {
				externals = append(externals, encodeFrontend(ip, uint16(pv.Port), proto))
			}
		}
		if len(pv.LoadBalancerSourceRanges) == 0 {
			for _, ip := range pv.LoadBalancerIPs {
				if model.FamilyOf(ip) == fam {
					externals = append(externals, encodeFrontend(ip, uint16(pv.Port), proto))
				}
			}
		}
		if pv.NodePort != 0 {
			externals = append(externals, encodeFrontend(unspecified(fam), uint16(pv.NodePort), proto))
		}
		if len(externals) == 0 {
			continue
		}
		// Pods and the node reaching an externalTrafficPolicy Local frontend
		// take the cluster-wide endpoints (the short-circuit), as in nftables.
		var eps []netip.AddrPort
		if pv.ExternalPolicyLocal {
			eps = addrPorts(model.ByFamily(pv.Cluster, fam))
		}
		if len(eps) == 0 {
			eps = addrPorts(model.ByFamily(pv.ExternalEndpoints(), fam))
		}
		base := setBase(portID, true, fam)
		if in, ok := w.set(internalBase); ok && slices.Equal(eps, in) {
			// The same endpoints: share the set, and so the affinity pins.
			base = internalBase
		}
		for _, key := range externals {
			switch {
			case len(eps) > 0:
				w.addSet(base, eps)
				w.frontends = append(w.frontends, wantFrontend{key: key, set: base, affinity: aff})
			case !pv.HasAnyOf(fam):
				w.frontends = append(w.frontends, wantFrontend{key: key, refuse: true})
			}
		}
	}
	return w, true
}

func addrPorts(eps []*model.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, len(eps))
	for i, ep := range eps {
		out[i] = ep.AddrPort()
	}
	return out
}

func unspecified(fam v1.IPFamily) netip.Addr {
	if fam == v1.IPv6Protocol {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// planPort adds the changes of one service port to pl and updates the
// in-memory state to what the maps will hold once pl is applied.
func (p *Proxier) planPort(pl *plan, name model.ServicePortName, pv *model.PortView, force bool) error {
	ps := p.ports[name]
	var w wantPort
	served := false
	if pv != nil {
		if ps == nil {
			id, err := p.portID.get()
			if err != nil {
				return fmt.Errorf("service port %s: %w", name, err)
			}
			ps = &portState{id: id, proto: pv.Protocol}
		}
		w, served = build(pv, ps.id)
	}
	if ps == nil {
		return nil
	}
	if !served {
		w = wantPort{}
	}
	// Slot sets first: new slots are written before any frontend points at them.
	for _, ws := range w.sets {
		base, eps := ws.base, ws.eps
		st := p.sets[base]
		if st != nil && !force && slices.Equal(st.eps, eps) {
			continue
		}
		ids := make([]uint32, len(eps))
		for i, ep := range eps {
			id, err := p.acquireBackend(pl, ep)
			if err != nil {
				return err
			}
			ids[i] = id
		}
		next := &setState{eps: eps, ids: ids}
		if st != nil {
			next.buf, next.n = st.buf^1, st.n
			pl.release = append(pl.release, st.eps...)
		} else if !slices.Contains(ps.sets, base) {
			ps.sets = append(ps.sets, base)
		}
		set := base | next.buf
		for i, id := range ids {
			pl.slotKeys = append(pl.slotKeys, socketlbSlotKey{SetId: set, Slot: uint32(i)})
			pl.slotVals = append(pl.slotVals, id)
		}
		for i := uint32(len(ids)); i < next.n[next.buf]; i++ {
			pl.slotDeletes = append(pl.slotDeletes, socketlbSlotKey{SetId: set, Slot: i})
		}
		next.n[next.buf] = uint32(len(ids))
		p.sets[base] = next
	}
	// Then the frontends, each flipped in one update.
	kept := make([]frontendEntry, 0, len(w.frontends))
	for _, wf := range w.frontends {
		key := wf.key
		if owner, ok := p.owners[key]; ok && owner != name {
			p.log.Debug("frontend already served by another service port", "servicePort", name.String(), "owner", owner.String())
			continue
		}
		v := socketlbFrontend{PortId: ps.id}
		if !wf.refuse {
			st := p.sets[wf.set]
			v.SetId, v.Count, v.Affinity = wf.set|st.buf, uint32(len(st.ids)), wf.affinity
		}
		kept = append(kept, frontendEntry{key: key, val: v})
		if old, ok := ps.frontend(key); ok && old == v && !force {
			continue
		}
		pl.feKeys = append(pl.feKeys, key)
		pl.feVals = append(pl.feVals, v)
		p.owners[key] = name
	}
	for _, old := range ps.frontends {
		if !w.hasFrontend(old.key) {
			pl.feDeletes = append(pl.feDeletes, old.key)
			delete(p.owners, old.key)
		}
	}
	ps.frontends = kept
	// Sets no longer used: after the frontends stopped pointing at them.
	keptSets := ps.sets[:0]
	for _, base := range ps.sets {
		if _, ok := w.set(base); ok {
			keptSets = append(keptSets, base)
			continue
		}
		st := p.sets[base]
		for b := uint32(0); b < 2; b++ {
			for i := uint32(0); i < st.n[b]; i++ {
				pl.slotDeletes = append(pl.slotDeletes, socketlbSlotKey{SetId: base | b, Slot: i})
			}
		}
		pl.release = append(pl.release, st.eps...)
		delete(p.sets, base)
	}
	ps.sets = keptSets
	if pv == nil {
		pl.counterDeletes = append(pl.counterDeletes, ps.id)
		pl.freePorts = append(pl.freePorts, ps.id)
		delete(p.ports, name)
		return nil
	}
	p.ports[name] = ps
	return nil
}

func (ps *portState) frontend(key frontendKey) (socketlbFrontend, bool) {
	for _, f := range ps.frontends {
		if f.key == key {
			return f.val, true
		}
	}
	return socketlbFrontend{}, false
}

func (p *Proxier) acquireBackend(pl *plan, ep netip.AddrPort) (uint32, error) {
	if b, ok := p.backends[ep]; ok {
		b.refs++
		p.backends[ep] = b
		return b.id, nil
	}
	id, err := p.backendID.get()
	if err != nil {
		return 0, fmt.Errorf("endpoint %s: %w", ep, err)
	}
	p.backends[ep] = backendRef{id: id, refs: 1}
	pl.beKeys = append(pl.beKeys, id)
	pl.beVals = append(pl.beVals, encodeBackend(ep))
	return id, nil
}

// releaseBackends drops the references of replaced sets once the plan is
// applied; a backend no set uses any more is deleted.
func (p *Proxier) releaseBackends(eps []netip.AddrPort) []uint32 {
	var gone []uint32
	for _, ep := range eps {
		b, ok := p.backends[ep]
		if !ok {
			continue
		}
		b.refs--
		if b.refs <= 0 {
			gone = append(gone, b.id)
			delete(p.backends, ep)
			p.backendID.put(b.id)
			continue
		}
		p.backends[ep] = b
	}
	return gone
}

// planNodeAddrs brings the node addresses NodePorts answer on up to date.
func (p *Proxier) planNodeAddrs(pl *plan) error {
	addrs, err := p.nodeAddresses()
	if err != nil {
		return fmt.Errorf("node addresses: %w", err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if a.IsLoopback() || a.IsUnspecified() {
			// NodePorts on 127.0.0.1 (--localhost-nodeports) stay with nftables:
			// a pod's loopback is its own.
			continue
		}
		if len(p.cfg.NodePortAddresses) > 0 && !slices.ContainsFunc(p.cfg.NodePortAddresses, func(pre netip.Prefix) bool { return pre.Contains(a) }) {
			continue
		}
		want[a] = true
	}
	for a := range want {
		if !p.nodeAddrs[a] {
			pl.nodeAdds = append(pl.nodeAdds, encodeNodeAddr(a))
		}
	}
	for a := range p.nodeAddrs {
		if !want[a] {
			pl.nodeDeletes = append(pl.nodeDeletes, encodeNodeAddr(a))
		}
	}
	p.nodeAddrs = want
	return nil
}

func (p *Proxier) nodeAddresses() ([]netip.Addr, error) {
	if p.cfg.NodeAddrs != nil {
		return p.cfg.NodeAddrs()
	}
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// collectGarbage removes map entries the in-memory state does not know of.
func (p *Proxier) collectGarbage() error {
	live := map[frontendKey]bool{}
	for _, ps := range p.ports {
		for _, f := range ps.frontends {
			live[f.key] = true
		}
	}
	var errs []error
	errs = append(errs, deleteStale(p.k.objs.KpFrontends, func(k frontendKey) bool { return live[k] }))
	errs = append(errs, deleteStale(p.k.objs.KpSlots, func(sk socketlbSlotKey) bool {
		st := p.sets[sk.SetId&^1]
		return st != nil && sk.Slot < st.n[sk.SetId&1]
	}))
	liveBackends := map[uint32]bool{}
	for _, b := range p.backends {
		liveBackends[b.id] = true
	}
	for ep, b := range p.backends {
		if b.refs <= 0 {
			delete(liveBackends, b.id)
			delete(p.backends, ep)
			p.backendID.put(b.id)
		}
	}
	errs = append(errs, deleteStale(p.k.objs.KpBackends, func(id uint32) bool { return liveBackends[id] }))
	livePorts := map[uint32]bool{}
	for _, ps := range p.ports {
		livePorts[ps.id] = true
	}
	errs = append(errs, deleteStale(p.k.objs.KpCounters, func(id uint32) bool { return livePorts[id] }))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove stale socket LB map entries: %w", err)
	}
	return nil
}

// eachKey calls f with every key of m (keys only: half the system calls of
// an iteration with values).
func eachKey[K comparable](m *ebpf.Map, f func(K)) error {
	var cur, next K
	err := m.NextKey(nil, &next)
	for err == nil {
		f(next)
		cur = next
		err = m.NextKey(&cur, &next)
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// deleteStale deletes the keys of m that keep rejects. The keys are listed
// first: deleting while iterating would make NextKey restart or skip.
func deleteStale[K comparable](m *ebpf.Map, keep func(K) bool) error {
	var stale []K
	errs := []error{eachKey(m, func(k K) {
		if !keep(k) {
			stale = append(stale, k)
		}
	})}
	for _, k := range stale {
		errs = append(errs, ignoreMissing(m.Delete(k)))
	}
	return errors.Join(errs...)
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// plan is one sync's map changes, applied in the order that keeps every
// reader consistent: backends, slots, frontends, then the deletions.
type plan struct {
	nodeAdds, nodeDeletes []socketlbNodeaddrKey
	beKeys                []uint32
	beVals                []socketlbBackend
	slotKeys              []socketlbSlotKey
	slotVals              []uint32
	feKeys                []frontendKey
	feVals                []socketlbFrontend
	feDeletes             []frontendKey
	slotDeletes           []socketlbSlotKey
	release               []netip.AddrPort
	counterDeletes        []uint32
	freePorts             []uint32
}

func (p *Proxier) apply(pl *plan) error {
	m := &p.k.objs.socketlbMaps
	one := make([]uint32, len(pl.nodeAdds))
	for i := range one {
		one[i] = 1
	}
	if err := batchUpdate(m.KpNodeaddrs, pl.nodeAdds, one); err != nil {
		return fmt.Errorf("write node addresses: %w", err)
	}
	if err := batchUpdate(m.KpBackends, pl.beKeys, pl.beVals); err != nil {
		return fmt.Errorf("write backends: %w", err)
	}
	if err := batchUpdate(m.KpSlots, pl.slotKeys, pl.slotVals); err != nil {
		return fmt.Errorf("write slots: %w", err)
	}
	if err := batchUpdate(m.KpFrontends, pl.feKeys, pl.feVals); err != nil {
		return fmt.Errorf("write frontends: %w", err)
	}
	if err := deleteAll(m.KpFrontends, pl.feDeletes); err != nil {
		return fmt.Errorf("delete frontends: %w", err)
	}
	if err := deleteAll(m.KpNodeaddrs, pl.nodeDeletes); err != nil {
		return fmt.Errorf("delete node addresses: %w", err)
	}
	if err := deleteAll(m.KpSlots, pl.slotDeletes); err != nil {
		return fmt.Errorf("delete slots: %w", err)
	}
	if err := deleteAll(m.KpBackends, p.releaseBackends(pl.release)); err != nil {
		return fmt.Errorf("delete backends: %w", err)
	}
	if err := deleteAll(m.KpCounters, pl.counterDeletes); err != nil {
		return fmt.Errorf("delete counters: %w", err)
	}
	for _, id := range pl.freePorts {
		p.portID.put(id)
	}
	return nil
}

func batchUpdate[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := m.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
				return err
			}
		}
		return nil
	}
	return err
}

func deleteAll[K any](m *ebpf.Map, keys []K) error {
	for i := range keys {
		if err := ignoreMissing(m.Delete(&keys[i])); err != nil {
			return err
		}
	}
	return nil
}

// encodeFrontend builds a frontend key; addresses and ports are in network
// byte order, as the hooks see them.
func encodeFrontend(ip netip.Addr, port uint16, proto uint8) frontendKey {
	addr, fam := encodeAddr(ip)
	return frontendKey{Addr: addr, Port: htons(port), Proto: proto, Family: fam}
}

func encodeAddr(ip netip.Addr) ([4]uint32, uint8) {
	var out [4]uint32
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		out[0] = binary.NativeEndian.Uint32(b[:])
		return out, 4
	}
	b := ip.As16()
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out, 6
}

func decodeAddr(a [4]uint32, fam uint8) netip.Addr {
	if fam == 4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], a[0])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range a {
		binary.NativeEndian.PutUint32(b[4*i:], a[i])
	}
	return netip.AddrFrom16(b)
}

func encodeNodeAddr(ip netip.Addr) socketlbNodeaddrKey {
	addr, fam := encodeAddr(ip)
	return socketlbNodeaddrKey{Addr: addr, Family: uint32(fam)}
}

func encodeBackend(ep netip.AddrPort) socketlbBackend {
	addr, fam := encodeAddr(ep.Addr())
	return socketlbBackend{Addr: addr, Port: htons(ep.Port()), Family: fam}
}

func decodeBackend(b *socketlbBackend) netip.AddrPort {
	return netip.AddrPortFrom(decodeAddr(b.Addr, b.Family), ntohs(b.Port))
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }

// idAlloc hands out small ids (from 1), reusing freed ones, and never one
// that is reserved.
type idAlloc struct {
	next     uint32
	free     []uint32
	reserved map[uint32]bool
}

const maxID = 1<<28 - 1

func (a *idAlloc) reserve(id uint32) {
	if a.reserved == nil {
		a.reserved = map[uint32]bool{}
	}
	a.reserved[id] = true
}

func (a *idAlloc) clearReserved() { a.reserved = nil }

func (a *idAlloc) get() (uint32, error) {
	for len(a.free) > 0 {
		id := a.free[len(a.free)-1]
		a.free = a.free[:len(a.free)-1]
		if !a.reserved[id] {
			return id, nil
		}
	}
	for a.next < maxID {
		a.next++
		if !a.reserved[a.next] {
			return a.next, nil
		}
	}
	return 0, errors.New("out of socket LB ids")
}

func (a *idAlloc) put(id uint32) { a.free = append(a.free, id) }
