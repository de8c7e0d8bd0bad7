package nftables

import (
	"context"
	"errors"
)

// kernel is what the Proxier needs from nf_tables. The netlink implementation
// talks to the kernel; the fake keeps tables in memory for unit tests.
type kernel interface {
	// Apply runs all families' changes as one atomic transaction.
	Apply(ctx context.Context, tx *transaction) error
	// Read returns kproxy's table of a family, or nil when it does not exist.
	// Reading elements costs O(n²/message) in the kernel (a set dump restarts
	// its walk for every message), so syncs read only the definitions.
	Read(ctx context.Context, f family, elements bool) (*Table, error)
	// Remove deletes kproxy's tables (for "kproxy cleanup").
	Remove(ctx context.Context, families []family) error
	// Dump renders kproxy's tables as the kernel has them.
	Dump(ctx context.Context, families []family) (string, error)
	Close() error
}

// transaction is one sync's worth of changes.
type transaction struct {
	cfg  *Config
	fams []*familyTx
}

// familyTx is the change to one family's table. The backend applies it in
// this order, which keeps every reference valid at every step:
//  1. create the table if missing; flush flushChains (full syncs rewrite every
//     rule; this drops the rules' references to sets);
//  2. delete delChainsEarly and delSetsEarly (objects whose definition changed),
//     flush flushSets (a takeover re-adds every element: atomic, so no gap);
//  3. create newSets and newChains (without rules yet);
//  4. delete dels, then add adds (set elements; a vmap element may goto a new chain);
//  5. add the rules of ruleChains;
//  6. delete delChains, then delSets (no longer referenced by any element or rule).
type familyTx struct {
	fam            family
	flushChains    []string
	delChainsEarly []string
	delSetsEarly   []string
	flushSets      []string
	newSets        []setSpec
	newChains      []string
	ruleChains     []string
	dels, adds     map[string][]Element
	delChains      []string
	delSets        []string
	// affinity holds the wanted affinity frontends by chain name: the rules of
	// their chains depend on them.
	affinity map[string]*affinity
}

func (t *familyTx) empty() bool {
	return len(t.flushChains)+len(t.delChainsEarly)+len(t.delSetsEarly)+len(t.flushSets)+len(t.newSets)+len(t.newChains)+
		len(t.ruleChains)+len(t.dels)+len(t.adds)+len(t.delChains)+len(t.delSets) == 0
}

// TransactionError is a transaction the kernel refused. Nothing of it took
// effect: nf_tables transactions are all or nothing.
type TransactionError struct{ Err error }

func (e *TransactionError) Error() string { return "nftables transaction: " + e.Err.Error() }
func (e *TransactionError) Unwrap() error { return e.Err }

// IsTransactionError reports whether err is a refused transaction.
func IsTransactionError(err error) bool {
	var te *TransactionError
	return errors.As(err, &te)
}
