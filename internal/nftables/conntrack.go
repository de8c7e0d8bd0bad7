package nftables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/conntrack"
	"github.com/kproxy/kproxy/internal/model"
)

// UDP has no connection to close: a client that keeps its source port (DNS
// resolvers, statsd, any long-lived UDP socket) keeps matching the conntrack
// entry of its first packet, and so the endpoint chosen then, for as long as
// it keeps sending. kproxy therefore reconciles the UDP conntrack table with
// the services: every entry whose original destination is a UDP frontend
// (cluster IP, external IP, load-balancer IP, or a NodePort on a node
// address) and whose reply source (the DNAT target) is not a serving endpoint
// of that service port is deleted, so that the next packet is balanced
// afresh by the rules in force. This covers endpoints that went away, a
// changed target port, and entries made while the port had no endpoints
// (not DNATed at all: replies from the frontend itself).
//
// Reconciling, not diffing: a flow whose entry is created while a sync
// commits (its first packet took the old rules), an entry made while kproxy
// was not running, or a deletion that failed are all caught by the next
// pass, which looks at the table as it is. Traffic policies, topology and
// terminating state do not matter here, as in kube-proxy: an entry to any
// serving endpoint of the port stays, as a TCP connection to it would.

// ctKey is a UDP frontend as the original tuple of its entries shows it: a
// service address and port, or (addr not valid) a NodePort.
type ctKey struct {
	addr netip.Addr
	port uint16
}

// ctFrontends returns the conntrack keys of a UDP port's frontends.
func ctFrontends(pv *model.PortView) []ctKey {
	if pv.Protocol != v1.ProtocolUDP {
		return nil
	}
	var out []ctKey
	for _, ip := range slices.Concat(pv.ClusterIPs, pv.ExternalIPs, pv.LoadBalancerIPs) {
		out = append(out, ctKey{ip, uint16(pv.Port)})
	}
	if pv.NodePort != 0 {
		out = append(out, ctKey{port: uint16(pv.NodePort)})
	}
	return out
}

// ctIndex maps UDP frontends to the serving endpoints of the service ports
// behind them (usually one port; two services may claim the same external IP
// and port). It is kept compact, one map lookup and a short contiguous scan
// per conntrack entry, because a pass matches every UDP entry of the table:
// chasing the port views' endpoint pointers instead cost ~2 µs per entry at
// 10,000 services (cache misses), this ~0.3 µs.
type ctIndex map[ctKey][]ctPort

type ctPort struct {
	name    model.ServicePortName
	serving []netip.AddrPort
}

func (ix ctIndex) add(name model.ServicePortName, pv *model.PortView) {
	keys := ctFrontends(pv)
	if len(keys) == 0 {
		return
	}
	var serving []netip.AddrPort
	for _, ep := range pv.Endpoints {
		if ep.Serving {
			serving = append(serving, ep.AddrPort())
		}
	}
	for _, k := range keys {
		ports := slices.DeleteFunc(ix[k], func(p ctPort) bool { return p.name == name })
		ix[k] = append(ports, ctPort{name: name, serving: serving})
	}
}

func (ix ctIndex) remove(name model.ServicePortName, pv *model.PortView) {
	for _, k := range ctFrontends(pv) {
		ports := slices.DeleteFunc(ix[k], func(p ctPort) bool { return p.name == name })
		if len(ports) == 0 {
			delete(ix, k)
		} else {
			ix[k] = ports
		}
	}
}

// ctGonePasses is how many reconcile passes look for the entries of a
// frontend that went away: the pass kicked by the sync that removed it runs
// entirely after the removal even if another pass was under way, and so does
// its follow-up.
const ctGonePasses = 3

// forgetFrontends records the UDP frontends of a removed port: their entries
// go too, although no port claims them any more (kube-proxy leaves them).
func (p *Proxier) forgetFrontends(pv *model.PortView) {
	for _, k := range ctFrontends(pv) {
		p.ctGone[k] = ctGonePasses
	}
}

// staleLocked reports whether an entry must go. p.ctMu is held.
func (p *Proxier) staleLocked(f *conntrack.Flow) bool {
	k := ctKey{f.OrigDst, f.OrigDstPort}
	ports, ok := p.ctIndex[k]
	if !ok {
		if _, gone := p.ctGone[k]; gone {
			return true
		}
		np := ctKey{port: f.OrigDstPort}
		var gone bool
		ports, ok = p.ctIndex[np]
		_, gone = p.ctGone[np]
		if !ok && !gone {
			return false
		}
		// A NodePort matches by port. An entry that was not DNATed is the
		// NodePort's only when it was addressed to the node (it was made
		// while the port had no endpoints); otherwise it is traffic through
		// or from the node to some host that happens to use that port.
		if !f.DNATed() && !slices.Contains(p.ctNodeAddrs, f.OrigDst) {
			return false
		}
		if !ok {
			return true
		}
	}
	reply := netip.AddrPortFrom(f.ReplySrc, f.ReplySrcPort)
	for _, port := range ports {
		if slices.Contains(port.serving, reply) {
			return false
		}
	}
	return true
}

// ctMatchChunk is how many listed entries are matched per hold of p.ctMu
// (read): a sync's index update waits at most for one chunk (~0.1 ms).
const ctMatchChunk = 256

// ReconcileConntrack runs one full reconcile pass now and returns how many
// entries it deleted. After syncs, a worker of its own runs the passes (see
// startConntrackWorker); tests and benchmarks call this directly.
func (p *Proxier) ReconcileConntrack() (int, error) { return p.reconcile(nil) }

// ctTargetedMax is the most frontends a targeted pass lists one by one; more
// make a full pass. Listing one frontend's entries costs the kernel a walk of
// the table without sending it (~20 ms of CPU at 100,000 entries, measured),
// a full pass ~170 ms (dump, parsing and matching).
const ctTargetedMax = 8

// reconcile lists the UDP entries of the frontends keys (all, if nil) and
// deletes the stale ones.
func (p *Proxier) reconcile(keys map[ctKey]struct{}) (int, error) {
	if p.ctTable == nil {
		return 0, nil
	}
	p.ctPass.Lock()
	defer p.ctPass.Unlock()
	start := time.Now()
	total := 0
	var errs []error
	var batch, stale []conntrack.Flow
	match := func() {
		p.ctMu.RLock()
		for i := range batch {
			if p.staleLocked(&batch[i]) {
				stale = append(stale, batch[i])
			}
		}
		p.ctMu.RUnlock()
		batch = batch[:0]
	}
	listed := 0
	collect := func(f *conntrack.Flow) {
		listed++
		batch = append(batch, *f)
		if len(batch) == ctMatchChunk {
			match()
		}
	}
	for _, fam := range p.fams {
		stale = stale[:0]
		var err error
		if keys == nil {
			err = p.ctTable.List(fam.ctFamily(), protoUDP, collect)
		} else {
			for k := range keys {
				if k.addr.IsValid() && !fam.contains(k.addr) {
					continue
				}
				err = errors.Join(err, p.ctTable.ListDest(fam.ctFamily(), protoUDP, conntrack.Dest{Addr: k.addr, Port: k.port}, collect))
			}
		}
		match()
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s conntrack entries: %w", fam, err))
			// A partial list is still worth cleaning.
		}
		if len(stale) == 0 {
			continue
		}
		n, err := p.ctTable.Delete(fam.ctFamily(), stale)
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("delete %s conntrack entries: %w", fam, err))
		}
	}
	p.ctMu.Lock()
	for k, n := range p.ctGone {
		if n <= 1 {
			delete(p.ctGone, k)
		} else {
			p.ctGone[k] = n - 1
		}
	}
	p.ctMu.Unlock()
	err := errors.Join(errs...)
	if p.m != nil {
		p.m.ConntrackCleanupEntriesTotal.Add(float64(total))
		if err != nil {
			p.m.ConntrackCleanupFailuresTotal.Inc()
		}
	}
	p.log.Debug("conntrack reconciled", "frontends", len(keys), "listed", listed, "deleted", total, "took", time.Since(start))
	return total, err
}

// ctWork is what a pass has to look at: everything, or some frontends.
type ctWork struct {
	full bool
	keys map[ctKey]struct{}
}

func (w *ctWork) merge(o ctWork) {
	w.full = w.full || o.full
	if !w.full {
		for k := range o.keys {
			if w.keys == nil {
				w.keys = map[ctKey]struct{}{}
			}
			w.keys[k] = struct{}{}
		}
	}
	if w.full || len(w.keys) > ctTargetedMax {
		w.full, w.keys = true, nil
	}
}

func (w ctWork) empty() bool { return !w.full && len(w.keys) == 0 }

// Config.ConntrackInterval (one second) is the least time between the
// starts of two passes, and the delay of a second pass after a sync's (over
// the same frontends): a packet that took the old rules just before the
// commit has its entry confirmed a moment later, possibly after the first
// pass listed the table. A full pass lists every UDP entry: at 100,000
// entries it costs the kernel's dump and kproxy's matching, ~170 ms of CPU
// (see the package README), which must not run after every sync of a burst
// of changes. A stale flow is thus fixed within a second of the change, as
// with kube-proxy, whose syncs (and their reconciles) are at least its
// minSyncPeriod, one second by default, apart.

// ctWorker runs reconcile passes off the sync path: a sync only kicks it.
type ctWorker struct {
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	pending ctWork
}

func (p *Proxier) startConntrackWorker() {
	w := &ctWorker{kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	p.ctWorker = w
	interval := p.cfg.ConntrackInterval
	hasPending := func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return !w.pending.empty()
	}
	go func() {
		defer close(w.done)
		var lastStart, recheckAt time.Time
		var recheck ctWork
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-w.kick:
			case <-timer.C:
			}
			now := time.Now()
			pendingDue := hasPending() && now.Sub(lastStart) >= interval
			recheckDue := !recheck.empty() && !now.Before(recheckAt)
			if pendingDue || recheckDue {
				var work ctWork
				if recheckDue {
					work.merge(recheck)
					recheck = ctWork{}
				}
				if pendingDue {
					w.mu.Lock()
					took := w.pending
					w.pending = ctWork{}
					w.mu.Unlock()
					work.merge(took)
					recheck, recheckAt = took, now.Add(interval)
				}
				lastStart = now
				var err error
				if work.full {
					_, err = p.reconcile(nil)
				} else {
					_, err = p.reconcile(work.keys)
				}
				if err != nil {
					p.log.Warn("conntrack reconcile failed; the next pass retries", "err", err)
					w.mu.Lock()
					w.pending.merge(ctWork{full: true})
					w.mu.Unlock()
				}
			}
			var next time.Time
			if hasPending() {
				next = lastStart.Add(interval)
			}
			if !recheck.empty() && (next.IsZero() || recheckAt.Before(next)) {
				next = recheckAt
			}
			timer.Stop()
			if !next.IsZero() {
				timer.Reset(time.Until(next))
			}
		}
	}()
}

// kickConntrack asks the worker for a pass over work (merged with a pending one).
func (p *Proxier) kickConntrack(work ctWork) {
	if p.ctWorker == nil || work.empty() {
		return
	}
	p.ctWorker.mu.Lock()
	p.ctWorker.pending.merge(work)
	p.ctWorker.mu.Unlock()
	select {
	case p.ctWorker.kick <- struct{}{}:
	default:
	}
}

func (p *Proxier) stopConntrackWorker() {
	if w := p.ctWorker; w != nil {
		w.once.Do(func() { close(w.stop) })
		<-w.done
	}
}
