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
	log *slog.Logger

	// ctTable is the conntrack table the UDP reconcile works on (nil: off);
	// ctWorker runs the passes after syncs, ctPass serializes them.
	ctTable  conntrack.Table
	ctWorker *ctWorker
	ctPass   sync.Mutex

	mu     sync.Mutex
	fams   []family
	stores map[family]*store
	ports  map[model.ServicePortName]*portRecord
	// ctIndex maps the UDP frontends of ports to their names; ctGone holds
	// the frontends of removed ports for a few passes.
	// ctMu guards them and ctNodeAddrs (the node's addresses for the
	// reconcile), apart from mu, so that a pass's matching never holds off a
	// sync's work, only its last step, the index update.
	ctMu        sync.RWMutex
	ctIndex     ctIndex
	ctGone      map[ctKey]int
	ctNodeAddrs []netip.Addr
	chains      map[family]map[string]bool // chains the kernel has, after the last success
	sets        map[family]map[string]bool
	needFull    bool
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
	var ct conntrack.Table
	if *cfg.ConntrackCleanup {
		s, err := conntrack.NewSocket(cfg.NetNSPath)
		if err != nil {
			k.Close()
			return nil, err
		}
		ct = s
	}
	if err := PrepareNode(cfg); err != nil {
		k.Close()
		return nil, err
	}
	if !cfg.AcceptInvalid {
		// With tcp_be_liberal conntrack marks only out-of-window resets
		// INVALID: no drop rule, as kube-proxy's iptables mode decides.
		if v, err := readSysctl(cfg.NetNSPath, "net/netfilter/nf_conntrack_tcp_be_liberal"); err == nil && v == "1" {
			cfg.AcceptInvalid = true
		}
	}
	p := newProxier(cfg, m, k, ct)
	if cfg.AcceptInvalid {
		p.log.Info("not dropping INVALID forwarded packets", "reason", "nf_conntrack_tcp_be_liberal is 1, or AcceptInvalid")
	}
	if ct != nil {
		p.startConntrackWorker()
	}
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
	var ct conntrack.Table
	if *cfg.ConntrackCleanup {
		ct = &conntrack.FakeTable{}
	}
	return newProxier(cfg, m, f, ct), f, nil
}

// newProxier returns a Proxier; with a conntrack table, ReconcileConntrack
// works on it, and the caller starts the worker if it wants passes after syncs.
func newProxier(cfg Config, m *metrics.Metrics, k kernel, ct conntrack.Table) *Proxier {
	p := &Proxier{
		cfg: cfg, m: m, k: k, ctTable: ct,
		log:     cfg.Logger,
		stores:  map[family]*store{},
		ports:   map[model.ServicePortName]*portRecord{},
		ctIndex: ctIndex{},
		ctGone:  map[ctKey]int{},
		chains:  map[family]map[string]bool{},
		sets:    map[family]map[string]bool{},
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

// PrepareNode sets the sysctls of the node (cfg.NetNSPath's network namespace)
// that the rules cfg describes depend on, and only those: New calls it, and
// `kproxy init-node` runs it where /proc/sys is writable, before an
// unprivileged kproxy starts. A value already in place is not written again.
func PrepareNode(cfg Config) error {
	cfg.Defaults()
	if cfg.LocalhostNodePorts && cfg.hasFamily(v1.IPv4Protocol) {
		// NodePorts on 127.0.0.1 are DNATed to pod addresses; the kernel drops
		// such "martian" packets unless route_localnet is on. It exposes
		// 127.0.0.1-bound services to neighbours (CVE-2020-8558), hence opt-in.
		if err := setSysctl(cfg.NetNSPath, "net/ipv4/conf/all/route_localnet", "1"); err != nil {
			return err
		}
	}
	return nil
}

func setSysctl(nsPath, key, value string) error {
	return inNetNS(nsPath, func() error {
		// A value already in place is not written again: where /proc/sys is
		// read-only (an unprivileged container), `kproxy init-node` set it.
		if cur, err := os.ReadFile("/proc/sys/" + key); err == nil && strings.TrimSpace(string(cur)) == value {
			return nil
		}
		if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s: %w", strings.ReplaceAll(key, "/", "."), err)
		}
		return nil
	})
}

func readSysctl(nsPath, key string) (string, error) {
	var v string
	err := inNetNS(nsPath, func() error {
		data, err := os.ReadFile("/proc/sys/" + key)
		v = strings.TrimSpace(string(data))
		return err
	})
	return v, err
}

// inNetNS runs fn in the network namespace at nsPath ("" for the caller's).
func inNetNS(nsPath string, write func() error) error {
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
	p.stopConntrackWorker()
	if c, ok := p.ctTable.(*conntrack.Socket); ok {
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
	var ct ctWork // the UDP frontends whose conntrack entries need a look
	if full {
		changed, err = p.syncFull(ctx, snap)
		ct.full = true
	} else {
		changed, ct, err = p.syncPartial(ctx, snap)
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
	p.ctMu.Lock()
	p.ctNodeAddrs = p.nodeAddrs // replaced, never changed in place
	p.ctMu.Unlock()
	// After the commit, off the sync path: the worker lists the table (or
	// the changed frontends' entries) and deletes what no longer matches
	// (conntrack.go).
	p.kickConntrack(ct)
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
	index := ctIndex{}
	scratch := &contribution{elems: map[string][]Element{}}
	for name, pv := range snap.Ports {
		records[name] = &portRecord{pv: pv}
		index.add(name, pv)
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
	p.stores, p.ports, p.chains, p.sets = stores, records, chains, sets
	p.ctMu.Lock()
	for k := range p.ctIndex {
		if _, ok := index[k]; !ok {
			// A frontend that went away: its entries must go too.
			p.ctGone[k] = ctGonePasses
		}
	}
	p.ctIndex = index
	p.ctMu.Unlock()
	if len(records) >= bigTable {
		// A full sync of a big table leaves a heap of garbage (the netlink batch,
		// every port's elements) that the runtime would keep mapped until the
		// next cycles; return it now so that peak RSS stays near one sync's worth.
		debug.FreeOSMemory()
	}
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

func (p *Proxier) syncPartial(ctx context.Context, snap *model.Snapshot) (int, ctWork, error) {
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
		return 0, ctWork{}, err
	}
	for _, f := range p.fams {
		p.stores[f].commit()
	}
	p.chains, p.sets = newChains, newSets
	var ct ctWork
	touch := func(pv *model.PortView) {
		keys := map[ctKey]struct{}{}
		for _, k := range ctFrontends(pv) {
			keys[k] = struct{}{}
		}
		ct.merge(ctWork{keys: keys})
	}
	p.ctMu.Lock()
	defer p.ctMu.Unlock()
	for name, rec := range records {
		if old := p.ports[name]; old != nil {
			touch(old.pv)
			p.ctIndex.remove(name, old.pv)
			// Frontends the port no longer has (all, if it went): the
			// index no longer claims them, and their entries must go.
			p.forgetFrontends(old.pv)
		}
		if rec == nil {
			delete(p.ports, name)
		} else {
			touch(rec.pv)
			p.ctIndex.add(name, rec.pv)
			p.ports[name] = rec
		}
	}
	return len(records), ct, nil
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
