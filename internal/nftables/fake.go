package nftables

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
)

// Fake is an in-memory nf_tables for unit tests. It checks what the kernel
// checks (sets and chains exist, keys have the right length, deleted elements
// exist, referenced chains exist) and applies a transaction all or nothing.
type Fake struct {
	mu     sync.Mutex
	tables map[family]*fakeTable
	failOn func(*transaction) error
	// Transactions counts applied transactions.
	Transactions int
	// LastElements counts the element additions and deletions of the last
	// applied transaction: what an incremental sync cost.
	LastElements int
}

type fakeTable struct {
	chains map[string]ChainInfo
	sets   map[string]*fakeSet
}

type fakeSet struct {
	spec  setSpec
	elems map[string]Element
}

// NewFakeKernel returns an empty fake.
func NewFakeKernel() *Fake { return &Fake{tables: map[family]*fakeTable{}} }

// FailNext makes the next transaction fail with err.
func (k *Fake) FailNext(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.failOn = func(*transaction) error { k.failOn = nil; return err }
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: maps.Clone(t.chains), sets: map[string]*fakeSet{}}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{spec: s.spec, elems: maps.Clone(s.elems)}
	}
	return c
}

// Apply implements kernel.
func (k *Fake) Apply(_ context.Context, tx *transaction) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failOn != nil {
		if err := k.failOn(tx); err != nil {
			return &TransactionError{Err: err}
		}
	}
	k.LastElements = 0
	next := map[family]*fakeTable{}
	for f, t := range k.tables {
		next[f] = t
	}
	for _, ft := range tx.fams {
		if ft.empty() {
			continue
		}
		t := next[ft.fam]
		if t == nil {
			t = &fakeTable{chains: map[string]ChainInfo{}, sets: map[string]*fakeSet{}}
		} else {
			t = t.clone()
		}
		if err := t.apply(k, tx.cfg, ft); err != nil {
			return &TransactionError{Err: fmt.Errorf("%s: %w", ft.fam, err)}
		}
		next[ft.fam] = t
	}
	k.tables = next
	k.Transactions++
	for _, ft := range tx.fams {
		for _, els := range ft.adds {
			k.LastElements += len(els)
		}
		for _, els := range ft.dels {
			k.LastElements += len(els)
		}
	}
	return nil
}

func (t *fakeTable) apply(k *Fake, cfg *Config, ft *familyTx) error {
	f := ft.fam
	for _, c := range ft.flushChains {
		ci, ok := t.chains[c]
		if !ok {
			return fmt.Errorf("flush chain %s: no such chain", c)
		}
		ci.Rules = 0
		t.chains[c] = ci
	}
	for _, c := range ft.delChainsEarly {
		delete(t.chains, c)
	}
	for _, s := range ft.delSetsEarly {
		delete(t.sets, s)
	}
	for _, name := range ft.flushSets {
		s, ok := t.sets[name]
		if !ok {
			return fmt.Errorf("flush set %s: no such set", name)
		}
		k.LastElements += len(s.elems)
		s.elems = map[string]Element{}
	}
	for _, s := range ft.newSets {
		if old, ok := t.sets[s.name]; ok {
			if old.spec.keyLen(f) != s.keyLen(f) {
				return fmt.Errorf("add set %s: exists with another definition", s.name)
			}
			continue
		}
		t.sets[s.name] = &fakeSet{spec: s, elems: map[string]Element{}}
	}
	for _, c := range ft.newChains {
		if _, ok := t.chains[c]; ok {
			continue
		}
		ci := ChainInfo{}
		for _, b := range baseChains {
			if b.name == c {
				ci = ChainInfo{Hook: hookName(b.hook), Priority: b.prio, Type: string(b.typ)}
			}
		}
		t.chains[c] = ci
	}
	for _, name := range sortedKeys(ft.dels) {
		s, ok := t.sets[name]
		if !ok {
			return fmt.Errorf("delete elements: no set %s", name)
		}
		for _, e := range ft.dels[name] {
			if _, ok := s.elems[e.id()]; !ok {
				return fmt.Errorf("delete element from %s: no such element %x", name, e.Key)
			}
			delete(s.elems, e.id())
		}
	}
	for _, name := range sortedKeys(ft.adds) {
		s, ok := t.sets[name]
		if !ok {
			return fmt.Errorf("add elements: no set %s", name)
		}
		for _, e := range ft.adds[name] {
			if len(e.Key) != s.spec.keyLen(f) {
				return fmt.Errorf("add element to %s: key of %d bytes, want %d", name, len(e.Key), s.spec.keyLen(f))
			}
			if e.Verdict != "" && e.Verdict != verdictDrop {
				if _, ok := t.chains[e.Verdict]; !ok {
					return fmt.Errorf("add element to %s: goto %s: no such chain", name, e.Verdict)
				}
			}
			if old, ok := s.elems[e.id()]; ok && !old.sameValue(e) {
				return fmt.Errorf("add element to %s: exists with another value", name)
			}
			s.elems[e.id()] = e
		}
	}
	p := newProgram(cfg, f, ft.affinity)
	for _, c := range ft.ruleChains {
		ci, ok := t.chains[c]
		if !ok {
			return fmt.Errorf("add rules: no chain %s", c)
		}
		ci.Rules += len(p.rules(c))
		t.chains[c] = ci
	}
	for _, c := range ft.delChains {
		for _, s := range t.sets {
			for _, e := range s.elems {
				if e.Verdict == c {
					return fmt.Errorf("delete chain %s: still referenced from %s", c, s.spec.name)
				}
			}
		}
		delete(t.chains, c)
	}
	for _, s := range ft.delSets {
		delete(t.sets, s)
	}
	return nil
}

// Read implements kernel.
func (k *Fake) Read(_ context.Context, f family, elements bool) (*Table, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	t := k.tables[f]
	if t == nil {
		return nil, nil
	}
	out := &Table{Family: f.v1, Chains: maps.Clone(t.chains), Sets: map[string]*SetData{}}
	for n, s := range t.sets {
		sd := &SetData{KeyLen: s.spec.keyLen(f), DataLen: s.spec.dataLen(f)}
		for _, e := range s.elems {
			if elements {
				sd.Elements = append(sd.Elements, e)
			}
		}
		out.Sets[n] = sd
	}
	return out, nil
}

// Remove implements kernel.
func (k *Fake) Remove(_ context.Context, families []family) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, f := range families {
		delete(k.tables, f)
	}
	return nil
}

// Dump implements kernel; rules are rendered from the program.
func (k *Fake) Dump(ctx context.Context, families []family) (string, error) {
	var b strings.Builder
	for _, f := range families {
		t, _ := k.Read(ctx, f, true)
		if t == nil {
			continue
		}
		writeTable(&b, "kproxy", t, nil)
	}
	return b.String(), nil
}

// SetAffinity plants a dynamic affinity entry, as the packet path would when
// client connects to fe and is sent to ep: in the client set of ep that fe's
// owner names.
func (k *Fake) SetAffinity(client netip.Addr, fe Frontend, ep netip.AddrPort) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := ipv4
	if client.Is6() {
		f = ipv6
	}
	t := k.tables[f]
	if t == nil || t.sets[mapAffinityPick] == nil {
		return
	}
	owner, found := Frontend{}, false
	for _, e := range t.sets[mapAffinityPick].elems {
		d := &dec{f: f, b: e.Key}
		if d.frontend() == fe {
			owner, _, found = parseAffinityName(f, strings.TrimPrefix(e.Verdict, affEPChainPrefix))
			break
		}
	}
	if !found {
		return
	}
	for name, set := range t.sets {
		if sowner, sep, _, ok := parseAffinitySet(f, name); ok && strings.HasPrefix(name, affSetPrefix) && sowner == owner && sep == ep {
			key := enc(nil).addr(client)
			set.elems[string(key)] = Element{Key: key}
		}
	}
}

// Close implements kernel.
func (k *Fake) Close() error { return nil }
