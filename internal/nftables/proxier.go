package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/conntrack"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

// Proxier is the nftables data plane: it makes kproxy's tables match the model.
type Proxier struct {
	cfg Config
	m   *metrics.Metrics
	k   kernel
	ct  conntrack.Cleaner
	log *slog.Logger

	mu       sync.Mutex
	fams     []family
	stores   map[family]*store
	ports    map[model.ServicePortName]*portRecord
	chains   map[family]map[string]bool // chains the kernel has, after the last success
	sets     map[family]map[string]bool
	needFull bool
	// nodeAddrs are the node's addresses the stores' elements were built
	// with; when they change the next sync is full.
	nodeAddrs []netip.Addr
	// lastRebuild is when a full sync last loaded every element afresh.
	lastRebuild time.Time

	// Tables and Dump (trace, the debug endpoints) read through a kernel
	// connection of their own, opened on first use, so that a slow read (a
	// second at 10,000 services) never holds off a sync.
	readMu    sync.Mutex
	reader    kernel
	newReader func() (kernel, error)
}

// bigTable is the number of service ports from which a full sync hands its
// garbage back to the OS at once (about 50 ms of GC at 10,000 ports).
const bigTable = 2000

// portRecord is a service port as last programmed. Its elements are not kept:
// buildPort recomputes them from the view when the port changes.
type portRecord struct {
	pv *model.PortView
}

// New returns a Proxier that programs the kernel over netlink.
func New(cfg Config, m *metrics.Metrics) (*Proxier, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nftables config: %w", err)
	}
	k, err := newNetlinkKernel(&cfg)
	if err != nil {
		return nil, err
	}
	var ct conntrack.Cleaner
	if *cfg.ConntrackCleanup {
		n, err := conntrack.NewNetlink(cfg.NetNSPath)
		if err != nil {
			k.Close()
			return nil, err
		}
		ct = n
	}
	if cfg.LocalhostNodePorts && cfg.hasFamily(v1.IPv4Protocol) {
		// NodePorts on 127.0.0.1 are DNATed to pod addresses; the kernel drops
		// such "martian" packets unless route_localnet is on. It exposes
		// 127.0.0.1-bound services to neighbours (CVE-2020-8558), hence opt-in.
		if err := setSysctl(cfg.NetNSPath, "net/ipv4/conf/all/route_localnet", "1"); err != nil {
			k.Close()
			return nil, err
		}
	}
	p := newProxier(cfg, m, k, ct)
	p.newReader = func() (kernel, error) {
		r, err := newNetlinkKernel(&p.cfg)
		if err != nil {
			return nil, err // a *netlinkKernel nil pointer must not become a non-nil kernel
		}
		return r, nil
	}
	return p, nil
}

// NewFake returns a Proxier over an in-memory kernel, for tests of other packages.
func NewFake(cfg Config, m *metrics.Metrics) (*Proxier, *Fake, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("nftables config: %w", err)
	}
	f := NewFakeKernel()
	return newProxier(cfg, m, f, &conntrack.Fake{}), f, nil
}

func newProxier(cfg Config, m *metrics.Metrics, k kernel, ct conntrack.Cleaner) *Proxier {
	p := &Proxier{
		cfg: cfg, m: m, k: k, ct: ct,
		log:    cfg.Logger,
		stores: map[family]*store{},
		ports:  map[model.ServicePortName]*portRecord{},
		chains: map[family]map[string]bool{},
		sets:   map[family]map[string]bool{},
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("dataplane", "nftables", "table", cfg.TableName)
	for _, f := range []family{ipv4, ipv6} {
		if cfg.hasFamily(f.v1) {
			p.fams = append(p.fams, f)
		}
	}
	p.needFull = true
	// By default reads share the kernel connection (and so wait for syncs);
	// New gives them one of their own.
	p.newReader = func() (kernel, error) { return k, nil }
	return p
}

func setSysctl(nsPath, key, value string) error {
	write := func() error {
		if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s: %w", strings.ReplaceAll(key, "/", "."), err)
		}
		return nil
	}
	if nsPath == "" {
		return write()
	}
	errc := make(chan error, 1)
	go func() {
		// The thread enters the namespace and is never unlocked, so the Go
		// runtime retires it instead of reusing it elsewhere.
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			errc <- fmt.Errorf("open network namespace: %w", err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- write()
	}()
	return <-errc
}

// Close releases kproxy's netlink sockets. The rules stay in the kernel so that
// a restarted kproxy takes over without a gap.
func (p *Proxier) Close() error {
	if c, ok := p.ct.(*conntrack.Netlink); ok {
		c.Close()
	}
	p.readMu.Lock()
	var err error
	if p.reader != nil && p.reader != p.k {
		err = p.reader.Close()
	}
	p.reader = nil
	p.readMu.Unlock()
	return errors.Join(err, p.k.Close())
}

// withReader runs read with the reading connection, opening it if needed.
func (p *Proxier) withReader(read func(kernel) error) error {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	if p.reader == nil {
		r, err := p.newReader()
		if err != nil {
			return fmt.Errorf("netlink to nf_tables: %w", err)
		}
		p.reader = r
	}
	if p.reader == p.k {
		// One connection: a read must not interleave with a transaction.
		p.mu.Lock()
		defer p.mu.Unlock()
	}
	return read(p.reader)
}

// Cleanup removes kproxy's tables ("kproxy cleanup").
func Cleanup(ctx context.Context, cfg Config) error {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("nftables config: %w", err)
	}
	k, err := newNetlinkKernel(&cfg)
	if err != nil {
		return err
	}
	defer k.Close()
	return k.Remove(ctx, []family{ipv4, ipv6})
}

// Dump returns kproxy's tables as the kernel has them, sets decoded. Reading
// large sets is slow in the kernel (about a second at 10,000 services), so it
// is for debugging; syncs go on meanwhile.
func (p *Proxier) Dump(ctx context.Context) (string, error) {
	var out string
	err := p.withReader(func(k kernel) error {
		var err error
		out, err = k.Dump(ctx, p.fams)
		return err
	})
	return out, err
}

// Tables reads kproxy's tables back from the kernel, one per family.
func (p *Proxier) Tables(ctx context.Context) ([]*Table, error) {
	var out []*Table
	err := p.withReader(func(k kernel) error {
		for _, f := range p.fams {
			t, err := k.Read(ctx, f, true)
			if err != nil {
				return err
			}
			if t != nil {
				out = append(out, t)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// States reads and decodes kproxy's tables: the input of a Tracer.
func (p *Proxier) States(ctx context.Context) ([]*State, error) {
	ts, err := p.Tables(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*State, 0, len(ts))
	for _, t := range ts {
		st, err := t.Decode()
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Config returns the effective configuration.
func (p *Proxier) Config() Config { return p.cfg }

// Sync makes the kernel match snap. full rewrites everything (first sync,
// periodic resync, after a failure); otherwise only snap.Changed is rewritten.
// On error the previous rules stay in force and the next sync is full.
func (p *Proxier) Sync(ctx context.Context, snap *model.Snapshot, full bool) error {
	if snap == nil {
		return errors.New("nftables: sync without a snapshot")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	// The elements of source ranges depend on the node's addresses.
	full = full || p.needFull || !slices.Equal(p.nodeAddrs, snap.Node.Addresses)
	var err error
	var changed int
	if full {
		changed, err = p.syncFull(ctx, snap)
	} else {
		changed, err = p.syncPartial(ctx, snap)
	}
	d := time.Since(start)
	if err != nil {
		p.needFull = true
		// The sync runner counts syncs, failures and latencies for every data
		// plane; these two are nftables' own.
		if p.m != nil {
			p.m.NFTablesSyncFailuresTotal.Inc()
			if IsTransactionError(err) {
				p.m.IPTablesRestoreFailuresTotal.Inc()
			}
		}
		// The caller logs the error; the previous rules stay in force.
		return err
	}
	p.needFull = false
	p.nodeAddrs = slices.Clone(snap.Node.Addresses)
	// The runner logs one line per sync; this is the data plane's detail.
	p.log.Debug("nftables synced", "full", full, "ports", len(snap.Ports), "changed", changed, "took", d)
	return nil
}

func (p *Proxier) syncFull(ctx context.Context, snap *model.Snapshot) (int, error) {
	tables := map[family]*Table{}
	stores := map[family]*store{}
	rebuild := p.needFull || (p.cfg.RebuildPeriod > 0 && time.Since(p.lastRebuild) >= p.cfg.RebuildPeriod)
	for _, f := range p.fams {
		t, err := p.k.Read(ctx, f, false)
		if err != nil {
			return 0, fmt.Errorf("read %s table: %w", f, err)
		}
		if t == nil {
			t = &Table{Chains: map[string]ChainInfo{}, Sets: map[string]*SetData{}}
		}
		tables[f] = t
		// After a successful sync kproxy knows the elements the kernel has, and a
		// periodic resync diffs against that, in place. Otherwise (start,
		// takeover, after a failure, and every RebuildPeriod to repair what
		// others deleted) reading the elements back would cost more than
		// loading them (set dumps are quadratic), so the transaction flushes
		// kproxy's sets and re-adds everything: atomic, so no packet sees a gap.
		if !rebuild && p.stores[f] != nil {
			st := p.stores[f]
			st.resetWants(p.presentSets(f, t))
			stores[f] = st
		} else {
			stores[f] = newStore()
		}
	}
	records := make(map[model.ServicePortName]*portRecord, len(snap.Ports))
	scratch := &contribution{elems: map[string][]Element{}}
	for name, pv := range snap.Ports {
		records[name] = &portRecord{pv: pv}
		for _, f := range p.fams {
			stores[f].apply(buildPort(&p.cfg, f, pv, snap.Node.Addresses, scratch), true)
		}
	}
	tx := &transaction{cfg: &p.cfg}
	chains, sets := map[family]map[string]bool{}, map[family]map[string]bool{}
	for _, f := range p.fams {
		trusted := stores[f] == p.stores[f]
		ft, ch, se := p.planFull(f, tables[f], stores[f], trusted)
		tx.fams = append(tx.fams, ft)
		chains[f], sets[f] = ch, se
	}
	if err := p.k.Apply(ctx, tx); err != nil {
		return 0, err
	}
	for _, f := range p.fams {
		stores[f].commit()
	}
	if rebuild {
		p.lastRebuild = time.Now()
	}
	old := p.ports
	p.stores, p.ports, p.chains, p.sets = stores, records, chains, sets
	if len(records) >= bigTable {
		// A full sync of a big table leaves a heap of garbage (the netlink batch,
		// every port's elements) that the runtime would keep mapped until the
		// next cycles; return it now so that peak RSS stays near one sync's worth.
		debug.FreeOSMemory()
	}

	p.cleanupConntrack(old, records, nil)
	return len(records), nil
}

// presentSets returns the sets of t whose definition kproxy can keep.
func (p *Proxier) presentSets(f family, t *Table) map[string]bool {
	out := map[string]bool{}
	for name, sd := range t.Sets {
		if spec, ok := specFor(name); ok && setMatches(f, spec, sd) {
			out[name] = true
		}
	}
	return out
}

func setMatches(f family, spec setSpec, sd *SetData) bool {
	return sd.KeyLen == spec.keyLen(f) && (spec.verdict || sd.DataLen == spec.dataLen(f))
}

// planFull plans a full sync of one family against what the kernel has.
func (p *Proxier) planFull(f family, t *Table, st *store, trusted bool) (*familyTx, map[string]bool, map[string]bool) {
	ft := &familyTx{fam: f}
	wantChains := map[string]bool{}
	for _, c := range staticChains(&p.cfg) {
		wantChains[c] = true
	}
	wantSets := map[string]setSpec{}
	for _, s := range staticSets {
		wantSets[s.name] = s
	}
	for c := range st.classes() {
		wantChains[c.chain()] = true
		s := c.setSpec()
		wantSets[s.name] = s
	}
	ft.affinity = wantedAffinity(st)
	for name := range ft.affinity {
		wantChains[name] = true
	}
	for chain, set := range affinityEndpoints(ft.affinity) {
		wantChains[chain] = true
		wantSets[set] = affinitySetSpec(set)
	}
	// Every chain is rewritten: flushing drops the rules' references to sets,
	// and the same transaction adds them back, so packets never see a gap.
	ft.flushChains = sortedKeys(t.Chains)
	existingChains := map[string]bool{}
	for _, name := range sortedKeys(t.Chains) {
		ci := t.Chains[name]
		if !wantChains[name] {
			// Chains that goto others go first (aff- before affep-).
			if strings.HasPrefix(name, affChainPrefix) || strings.HasPrefix(name, affShortChainPrefix) {
				ft.delChains = append([]string{name}, ft.delChains...)
			} else {
				ft.delChains = append(ft.delChains, name)
			}
			continue
		}
		if !chainMatches(name, ci) {
			ft.delChainsEarly = append(ft.delChainsEarly, name)
			continue
		}
		existingChains[name] = true
	}
	existingSets := map[string]bool{}
	for _, name := range sortedKeys(t.Sets) {
		spec, ok := wantSets[name]
		if !ok {
			ft.delSets = append(ft.delSets, name)
			continue
		}
		if !setMatches(f, spec, t.Sets[name]) {
			ft.delSetsEarly = append(ft.delSetsEarly, name)
			continue
		}
		existingSets[name] = true
		if !trusted && !spec.dynamic {
			ft.flushSets = append(ft.flushSets, name)
		}
	}
	for _, name := range sortedKeys(wantSets) {
		if !existingSets[name] {
			ft.newSets = append(ft.newSets, wantSets[name])
		}
	}
	for _, name := range sortedKeys(wantChains) {
		if !existingChains[name] {
			ft.newChains = append(ft.newChains, name)
		}
		ft.ruleChains = append(ft.ruleChains, name)
	}
	ft.dels, ft.adds = st.diff()
	chains, sets := map[string]bool{}, map[string]bool{}
	for name := range wantChains {
		if !isAffinityName(name) {
			chains[name] = true
		}
	}
	for name := range wantSets {
		if !isAffinityName(name) {
			sets[name] = true
		}
	}
	return ft, chains, sets
}

// isAffinityName reports whether a chain or set belongs to an affinity
// frontend; those are planned from the store's affinity records.
func isAffinityName(name string) bool {
	return strings.HasPrefix(name, affChainPrefix) || strings.HasPrefix(name, affShortChainPrefix) ||
		strings.HasPrefix(name, affEPChainPrefix) ||
		strings.HasPrefix(name, affSetPrefix)
}

func wantedAffinity(st *store) map[string]*affinity {
	out := make(map[string]*affinity, len(st.affinity))
	for name := range st.affinity {
		out[name] = st.wantedAffinity(name)
	}
	return out
}

// planAffinity adds the changes of affinity frontends to a partial sync. The
// frontends' chains are compared one by one; the endpoint chains and sets,
// which the frontends of a service port share, as the union of what all
// frontends want and what the kernel has.
func planAffinity(ft *familyTx, st *store) {
	want := wantedAffinity(st)
	ft.affinity = want
	var delAff []string
	for _, name := range sortedKeys(want) {
		switch h := st.kernelAffinity[name]; {
		case h == nil:
			ft.newChains = append(ft.newChains, name)
			ft.ruleChains = append(ft.ruleChains, name)
		case !want[name].equal(h):
			ft.flushChains = append(ft.flushChains, name)
			ft.ruleChains = append(ft.ruleChains, name)
		}
	}
	for _, name := range sortedKeys(st.kernelAffinity) {
		if want[name] == nil {
			delAff = append(delAff, name)
		}
	}
	wantEP, haveEP := affinityEndpoints(want), affinityEndpoints(st.kernelAffinity)
	var delEP []string
	for _, chain := range sortedKeys(wantEP) {
		w, h := wantEP[chain], haveEP[chain]
		switch {
		case h == "":
			ft.newSets = append(ft.newSets, affinitySetSpec(w))
			ft.newChains = append(ft.newChains, chain)
			ft.ruleChains = append(ft.ruleChains, chain)
		case w != h:
			// A new timeout: new sets (the timeout is in their names), and
			// the pins restart.
			ft.flushChains = append(ft.flushChains, chain)
			ft.ruleChains = append(ft.ruleChains, chain)
			ft.newSets = append(ft.newSets, affinitySetSpec(w))
			ft.delSets = append(ft.delSets, h)
		}
	}
	for _, chain := range sortedKeys(haveEP) {
		if wantEP[chain] == "" {
			// Its clients' pins go with the set: they are re-balanced.
			delEP = append(delEP, chain)
			ft.delSets = append(ft.delSets, haveEP[chain])
		}
	}
	ft.delChains = append(append(delAff, delEP...), ft.delChains...)
}

// affinityEndpoints maps the endpoint chains of the affinity frontends to
// their client sets.
func affinityEndpoints(fes map[string]*affinity) map[string]string {
	out := map[string]string{}
	for _, af := range fes {
		for _, ep := range af.endpoints {
			out[af.epChain(ep)] = af.epSet(ep)
		}
	}
	return out
}

func chainMatches(name string, ci ChainInfo) bool {
	for _, b := range baseChains {
		if b.name == name {
			return ci.Hook == hookName(b.hook) && ci.Priority == b.prio && ci.Type == string(b.typ)
		}
	}
	return ci.Hook == ""
}

func (p *Proxier) syncPartial(ctx context.Context, snap *model.Snapshot) (int, error) {
	records := map[model.ServicePortName]*portRecord{}
	for name := range snap.Changed {
		old := p.ports[name]
		pv := snap.Ports[name]
		var rec *portRecord
		if pv != nil {
			rec = &portRecord{pv: pv}
		}
		records[name] = rec
		for _, f := range p.fams {
			if old != nil {
				p.stores[f].apply(buildPort(&p.cfg, f, old.pv, p.nodeAddrs, nil), false)
			}
			if rec != nil {
				p.stores[f].apply(buildPort(&p.cfg, f, pv, p.nodeAddrs, nil), true)
			}
		}
	}
	tx := &transaction{cfg: &p.cfg}
	newChains, newSets := map[family]map[string]bool{}, map[family]map[string]bool{}
	for _, f := range p.fams {
		ft := &familyTx{fam: f}
		st := p.stores[f]
		wantChains := map[string]bool{}
		wantSets := map[string]bool{}
		for _, c := range staticChains(&p.cfg) {
			wantChains[c] = true
		}
		for _, s := range staticSets {
			wantSets[s.name] = true
		}
		for c := range st.classes() {
			wantChains[c.chain()] = true
			wantSets[c.setSpec().name] = true
		}
		for _, name := range sortedKeys(wantSets) {
			if !p.sets[f][name] {
				spec, _ := specFor(name)
				ft.newSets = append(ft.newSets, spec)
			}
		}
		for _, name := range sortedKeys(wantChains) {
			if !p.chains[f][name] {
				ft.newChains = append(ft.newChains, name)
				ft.ruleChains = append(ft.ruleChains, name)
			}
		}
		for _, name := range sortedKeys(p.chains[f]) {
			if !wantChains[name] {
				ft.delChains = append(ft.delChains, name)
			}
		}
		for _, name := range sortedKeys(p.sets[f]) {
			if !wantSets[name] {
				ft.delSets = append(ft.delSets, name)
			}
		}
		planAffinity(ft, st)
		ft.dels, ft.adds = st.diff()
		tx.fams = append(tx.fams, ft)
		newChains[f], newSets[f] = wantChains, wantSets
	}
	if err := p.k.Apply(ctx, tx); err != nil {
		return 0, err
	}
	for _, f := range p.fams {
		p.stores[f].commit()
	}
	p.chains, p.sets = newChains, newSets
	old := map[model.ServicePortName]*portRecord{}
	for name, rec := range records {
		old[name] = p.ports[name]
		if rec == nil {
			delete(p.ports, name)
		} else {
			p.ports[name] = rec
		}
	}
	p.cleanupConntrack(old, records, snap.Changed)
	return len(records), nil
}

// cleanupConntrack deletes UDP conntrack entries made stale by the sync: those
// pointing at endpoints that are gone, and those created while a frontend had no
// endpoints (which would otherwise keep being rejected or blackholed).
func (p *Proxier) cleanupConntrack(old, cur map[model.ServicePortName]*portRecord, only map[model.ServicePortName]struct{}) {
	if p.ct == nil {
		return
	}
	var filters []conntrack.Filter
	consider := func(name model.ServicePortName) {
		o, n := old[name], cur[name]
		if o == nil || o.pv.Protocol != v1.ProtocolUDP {
			return // a new port has nothing stale; TCP and SCTP connections fail on their own
		}
		var nInternal, nExternal []*model.Endpoint
		if n != nil {
			nInternal, nExternal = n.pv.InternalEndpoints(), n.pv.ExternalEndpoints()
		}
		filters = append(filters, staleFilters(o.pv, o.pv.InternalEndpoints(), nInternal, internalFrontends(o.pv))...)
		filters = append(filters, staleFilters(o.pv, o.pv.ExternalEndpoints(), nExternal, externalFrontends(o.pv))...)
		if o.pv.ExternalPolicyLocal {
			// Pods and the node reach ETP Local frontends through the
			// short-circuit, to the cluster-wide endpoints: those flows go
			// stale with them, on the external frontends.
			var nShort []*model.Endpoint
			if n != nil && n.pv.ExternalPolicyLocal {
				nShort = n.pv.Cluster
			}
			filters = append(filters, staleFilters(o.pv, o.pv.Cluster, nShort, externalFrontends(o.pv))...)
		}
	}
	if only != nil {
		for name := range only {
			consider(name)
		}
	} else {
		for name := range old {
			consider(name)
		}
	}
	if len(filters) == 0 {
		return
	}
	n, err := p.ct.Delete(filters)
	if p.m != nil {
		p.m.ConntrackCleanupEntriesTotal.Add(float64(n))
		if err != nil {
			p.m.ConntrackCleanupFailuresTotal.Inc()
		}
	}
	if err != nil {
		p.log.Warn("conntrack cleanup failed", "err", err)
	}
}

type ctFrontend struct {
	addr netip.Addr // invalid for NodePorts
	port uint16
}

func internalFrontends(pv *model.PortView) []ctFrontend {
	var out []ctFrontend
	for _, ip := range pv.ClusterIPs {
		out = append(out, ctFrontend{ip, uint16(pv.Port)})
	}
	return out
}

func externalFrontends(pv *model.PortView) []ctFrontend {
	var out []ctFrontend
	for _, ip := range slices.Concat(pv.ExternalIPs, pv.LoadBalancerIPs) {
		out = append(out, ctFrontend{ip, uint16(pv.Port)})
	}
	if pv.NodePort != 0 {
		out = append(out, ctFrontend{netip.Addr{}, uint16(pv.NodePort)})
	}
	return out
}

// staleFilters compares a frontend group's endpoints before and after.
func staleFilters(pv *model.PortView, before, after []*model.Endpoint, fes []ctFrontend) []conntrack.Filter {
	if pv.Protocol != v1.ProtocolUDP {
		return nil
	}
	var out []conntrack.Filter
	if len(before) == 0 && len(after) > 0 {
		for _, fe := range fes {
			if fe.addr.IsValid() {
				out = append(out, conntrack.Filter{Proto: protoUDP, OrigDst: fe.addr, OrigDstPort: fe.port})
				continue
			}
			// A NodePort: any node address, both families.
			out = append(out, conntrack.Filter{Proto: protoUDP, OrigDstPort: fe.port},
				conntrack.Filter{Proto: protoUDP, OrigDstPort: fe.port, IPv6: true})
		}
		return out
	}
	for _, ep := range before {
		if slices.ContainsFunc(after, func(x *model.Endpoint) bool { return x.IP == ep.IP && x.Port == ep.Port }) {
			continue
		}
		for _, fe := range fes {
			if fe.addr.IsValid() && model.FamilyOf(fe.addr) != ep.Family() {
				continue
			}
			out = append(out, conntrack.Filter{Proto: protoUDP, OrigDst: fe.addr, OrigDstPort: fe.port, ReplySrc: ep.IP})
		}
	}
	return out
}

// Trace reads the kernel's tables and runs a packet through them; localAddrs
// are the node's addresses (what "fib daddr type local" matches).
func (p *Proxier) Trace(ctx context.Context, pkt Packet, localAddrs []netip.Addr) (TraceResult, error) {
	states, err := p.States(ctx)
	if err != nil {
		return TraceResult{}, err
	}
	tr := &Tracer{Config: p.cfg, LocalAddrs: localAddrs}
	for _, st := range states {
		if familyOf(st.Family).contains(pkt.Dst) {
			return tr.Trace(st, pkt), nil
		}
	}
	return TraceResult{}, fmt.Errorf("nftables: no %s table for %s", model.FamilyOf(pkt.Dst), pkt.Dst)
}

// UnavailableError says why the nftables data plane cannot run here.
type UnavailableError struct{ Err error }

func (e *UnavailableError) Error() string { return "nftables unavailable: " + e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

// Probe checks that kproxy can program nf_tables here: it opens the netlink
// socket and lists the tables, which needs CAP_NET_ADMIN and nf_tables in the
// kernel. It changes nothing.
func Probe(cfg Config) error {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("nftables config: %w", err)
	}
	k, err := newNetlinkKernel(&cfg)
	if err != nil {
		return &UnavailableError{Err: err}
	}
	defer k.Close()
	if _, err := k.conn.ListTablesOfFamily(gnftFamily(ipv4)); err != nil {
		return &UnavailableError{Err: fmt.Errorf("list nf_tables tables: %w", err)}
	}
	return nil
}
