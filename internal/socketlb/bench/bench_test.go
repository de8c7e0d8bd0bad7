package bench

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/kproxy/kproxy/internal/socketlb"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// go test -bench . -benchtime 3x ./internal/socketlb/bench/ (root): the map
// measurements of kproxy-bench-socketlb in go test's format.

func TestMain(m *testing.M) {
	ChildMain()
	os.Exit(m.Run())
}

func BenchmarkColdSync(b *testing.B) {
	testenv.RequireRoot(b)
	tr := newTracker()
	for i := 0; i < 10000; i++ {
		tr.OnServiceAdd(service(i, clusterIP(i), 8080))
		tr.OnEndpointSliceAdd(slice(i, 8080, endpoints(i, 0)...))
	}
	snap := tr.Snapshot()
	for b.Loop() {
		b.StopTimer()
		sb := lbtest.New(b)
		p, err := socketlb.New(socketlb.Config{CgroupPath: sb.Cgroup, PinDir: sb.PinDir,
			NodeAddrs: func() ([]netip.Addr, error) { return nil, nil }}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := p.Sync(context.Background(), snap, true); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		p.Close()
		b.StartTimer()
	}
}
