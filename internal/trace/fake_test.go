package trace

import (
	"context"
	"strings"
	"sync"
)

// FakeKernel is a KernelState for tests: it answers from a table of paths
// keyed by packet, and records the queries it got.
type FakeKernel struct {
	mu      sync.Mutex
	Paths   map[Packet]*KernelPath
	Err     error
	Queries []KernelQuery
}

var _ KernelState = (*FakeKernel)(nil)

// TraceKernel returns the path stored for the packet, or VerdictNone.
func (f *FakeKernel) TraceKernel(_ context.Context, q KernelQuery) (*KernelPath, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Queries = append(f.Queries, q)
	if f.Err != nil {
		return nil, f.Err
	}
	if kp, ok := f.Paths[q.Packet]; ok {
		return kp, nil
	}
	return &KernelPath{Verdict: VerdictNone}, nil
}

// PathOf converts a model answer into the kernel's shape: what a correct data
// plane's rules would say. Data-plane tests can compare their reader's output
// with it.
func PathOf(r *Result) *KernelPath {
	kp := &KernelPath{Verdict: r.Verdict, Masquerade: r.Masquerade}
	if r.Match != nil {
		kp.Service = r.Match.Service
	}
	for _, ep := range r.Endpoints {
		kp.Endpoints = append(kp.Endpoints, KernelEndpoint{
			Address:     ep.Address,
			Probability: ep.Probability,
			Masquerade:  ep.Masquerade && !r.Masquerade,
		})
	}
	if r.Affinity != nil {
		kp.AffinityTimeoutSeconds = r.Affinity.TimeoutSeconds
	}
	kp.Rules = []string{"(from the model) " + strings.Join(r.Steps, "; ")}
	return kp
}
