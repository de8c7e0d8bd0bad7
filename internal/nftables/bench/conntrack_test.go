package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/conntrack"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/testenv"
)

// The UDP conntrack reconcile at scale: 10,000 UDP services × 10 endpoints
// and 100,000 real UDP entries in the kernel table of a fresh namespace
// (created through ctnetlink, ten per service, each DNATed to one of the
// service's endpoints), as after a busy period of DNS traffic.
//
//	go test -run '^$' -bench Conntrack -benchtime 10x ./internal/nftables/bench/

const (
	ctServices = 10000
	ctEntries  = 100000
)

func udpService(i int) *v1.Service {
	s := service(i, clusterIP(i))
	s.Spec.Ports[0].Protocol = v1.ProtocolUDP
	return s
}

func addUDPServices(tr *model.Tracker, n int) {
	for i := range n {
		tr.OnServiceAdd(udpService(i))
		s := slice(i, 8080, endpoints(i, 0)...)
		s.Ports[0].Protocol = ptrTo(v1.ProtocolUDP)
		tr.OnEndpointSliceAdd(s)
	}
}

func ptrTo[T any](v T) *T { return &v }

// cpuTime is the process's user + system CPU time: on a loaded machine it
// measures the work of a pass (the kernel's dump runs in kproxy's recvmsg,
// as system time) better than the wall clock. Only meaningful when nothing
// else in the process works meanwhile (no reconcile worker pass under way).
func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuPerOp reports the CPU time per iteration of b.Loop run by loop.
func cpuPerOp(b *testing.B, loop func()) {
	start := cpuTime()
	n := 0
	for b.Loop() {
		loop()
		n++
	}
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(n), "cpu-ms/op")
}

// ctEntry is entry k: from client 10.244.(k/60000).x, to service k%n,
// DNATed to endpoint j of generation gen.
func ctEntry(k, n, gen int) conntrack.Flow {
	i := k % n
	return conntrack.Flow{Proto: unix.IPPROTO_UDP,
		OrigSrc: addAddr(clientBase, k/50000), OrigSrcPort: uint16(1024 + k%50000),
		OrigDst: clusterIP(i), OrigDstPort: 80,
		ReplySrc: endpointIP(i, (k/n)%10, gen), ReplySrcPort: 8080}
}

var clientBase = addAddr(clusterIP(0), 0).Prev().Prev() // 10.95.255.254: outside the service range

type ctBed struct {
	node *netnstest.Node
	p    *nftables.Proxier
	tr   *model.Tracker
	sock *conntrack.Socket
}

func newCTBed(b *testing.B, reconcile bool) *ctBed {
	b.Helper()
	testenv.RequireRoot(b)
	node := netnstest.NewNode(b)
	p, err := nftables.New(nftables.Config{NetNSPath: node.Path(), IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
		ConntrackCleanup: &reconcile, Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	tr := newTracker()
	addUDPServices(tr, ctServices)
	if err := p.Sync(context.Background(), tr.Snapshot(), true); err != nil {
		b.Fatal(err)
	}
	sock, err := conntrack.NewSocket(node.Path())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sock.Close() })
	return &ctBed{node: node, p: p, tr: tr, sock: sock}
}

// fill inserts entries [from, to) of generation gen.
func (c *ctBed) fill(b *testing.B, from, to, gen int) {
	b.Helper()
	flows := make([]conntrack.Flow, 0, to-from)
	for k := from; k < to; k++ {
		flows = append(flows, ctEntry(k, ctServices, gen))
	}
	if err := c.sock.Insert(unix.AF_INET, flows, 3600); err != nil {
		b.Fatal(err)
	}
}

func (c *ctBed) count(b *testing.B) int {
	n := 0
	if err := c.sock.List(unix.AF_INET, unix.IPPROTO_UDP, func(*conntrack.Flow) { n++ }); err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkConntrackReconcile times the parts of one pass over 100,000
// entries: the kernel's dump alone (with the protocol filter, parsed into
// Flows), and a whole pass (dump, match against the index, delete) when
// nothing is stale and when 1,000 entries are.
func BenchmarkConntrackReconcile(b *testing.B) {
	c := newCTBed(b, true)
	start := time.Now()
	c.fill(b, 0, ctEntries, 0)
	b.Logf("inserted %d entries in %v", ctEntries, time.Since(start).Round(time.Millisecond))
	if n := c.count(b); n != ctEntries {
		b.Fatalf("table has %d UDP entries, want %d", n, ctEntries)
	}
	p := c.p
	time.Sleep(2 * time.Second) // the worker's passes after the first sync are over
	b.Run("dump", func(b *testing.B) {
		cpuPerOp(b, func() {
			if n := c.count(b); n != ctEntries {
				b.Fatalf("listed %d", n)
			}
		})
	})
	b.Run("dump-one-frontend", func(b *testing.B) {
		cpuPerOp(b, func() {
			n := 0
			if err := c.sock.ListDest(unix.AF_INET, unix.IPPROTO_UDP, conntrack.Dest{Addr: clusterIP(7), Port: 80},
				func(*conntrack.Flow) { n++ }); err != nil || n != ctEntries/ctServices {
				b.Fatalf("listed %d, %v", n, err)
			}
		})
	})
	b.Run("pass-nothing-stale", func(b *testing.B) {
		cpuPerOp(b, func() {
			n, err := p.ReconcileConntrack()
			if err != nil || n != 0 {
				b.Fatalf("deleted %d, %v; want 0", n, err)
			}
		})
	})
	b.Run("pass-1000-stale", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			c.fill(b, ctEntries, ctEntries+1000, 1) // to endpoints of another generation
			b.StartTimer()
			n, err := p.ReconcileConntrack()
			if err != nil || n != 1000 {
				b.Fatalf("deleted %d, %v; want 1000", n, err)
			}
		}
	})
	// The targeted deletion kproxy used to do after a change (and kube-proxy
	// does): netlink filters for one service's ten removed endpoints. The
	// library lists the whole table and deletes the matches, so it pays the
	// same dump as a pass, through a slower parser.
	b.Run("targeted-one-service", func(b *testing.B) {
		h, err := netlinkHandle(c.node)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		cpuPerOp(b, func() {
			var fs []netlink.CustomConntrackFilter
			for j := range 10 {
				f := &netlink.ConntrackFilter{}
				_ = f.AddProtocol(unix.IPPROTO_UDP)
				_ = f.AddIP(netlink.ConntrackOrigDstIP, net.IP(clusterIP(7).AsSlice()))
				_ = f.AddPort(netlink.ConntrackOrigDstPort, 80)
				_ = f.AddIP(netlink.ConntrackReplySrcIP, net.IP(endpointIP(7, j, 5).AsSlice()))
				fs = append(fs, f)
			}
			if _, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, fs...); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// BenchmarkConntrackChangeLatency is BenchmarkOneServiceChange on the UDP
// services with 100,000 entries in the table, with the reconcile worker on
// (every change kicks a pass, at most one a second, which runs beside the
// next syncs) and off, in the same run. It reports the syncs' p50 and p99:
// a sync waits at most for one matching chunk of a pass.
func BenchmarkConntrackChangeLatency(b *testing.B) {
	for _, on := range []bool{true, false, true, false} { // alternated: a bed's teardown loads the kernel during the next
		b.Run(fmt.Sprintf("reconcile=%v", on), func(b *testing.B) {
			c := newCTBed(b, on)
			c.fill(b, 0, ctEntries, 0)
			var lat []time.Duration
			k := 0
			for b.Loop() {
				k++
				i := (k * 7919) % ctServices
				s := slice(i, 8080, endpoints(i, 1+k%2)...)
				s.Ports[0].Protocol = ptrTo(v1.ProtocolUDP)
				start := time.Now()
				c.tr.OnEndpointSliceUpdate(nil, s)
				if err := c.p.Sync(context.Background(), c.tr.Snapshot(), false); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				// Changes spaced as a runner with a small min-sync-period
				// would space a steady stream of them.
				b.StopTimer()
				time.Sleep(20 * time.Millisecond)
				b.StartTimer()
			}
			slices.Sort(lat)
			q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000 }
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(float64(c.count(b)), "entries-left")
		})
	}
}

func netlinkHandle(node *netnstest.Node) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := node.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
		return err
	})
	return h, err
}
