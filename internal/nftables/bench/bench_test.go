package bench

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/testenv"
)

// go test -bench . -benchtime 3x ./internal/nftables/bench/ (root): the same
// measurements as kproxy-bench-nft, in go test's format.

func newProxier(b *testing.B) *nftables.Proxier {
	b.Helper()
	testenv.RequireRoot(b)
	node := netnstest.NewNode(b)
	p, err := nftables.New(nftables.Config{NetNSPath: node.Path(), IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
		Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

func BenchmarkColdSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tr := newTracker()
			addServices(tr, 0, n)
			snap := tr.Snapshot()
			for b.Loop() {
				b.StopTimer()
				p := newProxier(b) // a fresh, empty namespace each time
				b.StartTimer()
				if err := p.Sync(context.Background(), snap, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOneServiceChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			p := newProxier(b)
			tr := newTracker()
			addServices(tr, 0, n)
			if err := p.Sync(context.Background(), tr.Snapshot(), true); err != nil {
				b.Fatal(err)
			}
			k := 0
			for b.Loop() {
				k++
				i := (k * 7919) % n
				tr.OnEndpointSliceUpdate(nil, slice(i, 8080, endpoints(i, 1+k%2)...))
				if err := p.Sync(context.Background(), tr.Snapshot(), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
