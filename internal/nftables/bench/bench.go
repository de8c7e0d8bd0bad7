package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	v1 "k8s.io/api/core/v1"
)

// runT lets the netnstest harness run outside "go test".
type runT struct{ cleanups []func() }

func (r *runT) Helper()                   {}
func (r *runT) Fatal(args ...any)         { r.fail(fmt.Sprint(args...)) }
func (r *runT) Fatalf(f string, a ...any) { r.fail(fmt.Sprintf(f, a...)) }
func (r *runT) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }

func (r *runT) fail(msg string) {
	fmt.Fprintln(os.Stderr, "kproxy-bench-nft:", msg)
	r.close()
	os.Exit(1)
}

func (r *runT) close() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
}

// ScaleResult is one service count's measurements, from a fresh process.
type ScaleResult struct {
	N         int
	ModelSec  float64   // building the model's snapshot
	ColdSec   float64   // first full sync into an empty namespace
	ResyncSec float64   // periodic full resync of an unchanged model (rules rewritten, elements diffed)
	ChangeMs  []float64 // one service's endpoints changed: model change → kernel
	RSSMiB    float64   // peak RSS of the process (model + data plane)
	// ModelRSSMiB and ColdRSSMiB are the peak RSS after building the model and
	// after the cold sync.
	ModelRSSMiB, ColdRSSMiB float64
	HeapMiB                 float64   // live heap after the syncs
	ColdRuns                []float64 // the cold sync of every run (-repeat)
}

// Run is the command's entry point; it returns the exit code.
func Run(args []string) int {
	fs := flag.NewFlagSet("kproxy-bench-nft", flag.ContinueOnError)
	sizes := fs.String("sizes", "1000,10000,30000", "service counts (10 endpoints each)")
	upstream := fs.String("upstream-sizes", "1000", "service counts for the upstream-shaped ruleset via nft -f (10000 takes ~3 minutes)")
	out := fs.String("out", "bench-nft.png", "PNG plot of sync time against service count")
	perf := fs.Bool("traffic", true, "measure connect latency and DNAT throughput")
	tpRounds := fs.Int("throughput-rounds", 12, "alternating throughput runs per path")
	tpMiB := fs.Int("throughput-mib", 512, "MiB sent per throughput run")
	repeat := fs.Int("repeat", 3, "runs per size; the table shows the best cold sync and all runs' changes (the machine is shared)")
	child := fs.String("child", "", "internal: run one measurement (scale) and print JSON")
	n := fs.Int("n", 0, "internal: service count for -child")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the -child run")
	memprofile := fs.String("memprofile", "", "write a heap profile at the end of the -child run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "kproxy-bench-nft: needs root (it creates network namespaces)")
		return 1
	}
	if *child == "scale" {
		if *cpuprofile != "" {
			f, err := os.Create(*cpuprofile)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kproxy-bench-nft:", err)
				return 1
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				fmt.Fprintln(os.Stderr, "kproxy-bench-nft:", err)
				return 1
			}
			defer pprof.StopCPUProfile()
		}
		return childScale(*n, *memprofile)
	}
	var rep Report
	for _, s := range parseInts(*sizes) {
		var r ScaleResult
		for i := 0; i < max(1, *repeat); i++ {
			x, err := runChild(s)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kproxy-bench-nft:", err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "  run %d: cold %.2fs, change p50 %.1fms, peak RSS %.0f MiB\n", i+1, x.ColdSec, median(x.ChangeMs), x.RSSMiB)
			changes := append(r.ChangeMs, x.ChangeMs...)
			colds := append(r.ColdRuns, x.ColdSec)
			if i == 0 || x.ColdSec < r.ColdSec {
				r = x
			}
			r.ChangeMs, r.ColdRuns = changes, colds
		}
		rep.Scale = append(rep.Scale, r)
		fmt.Fprintf(os.Stderr, "netlink %d services: cold %.2fs, change p50 %.1fms\n", s, r.ColdSec, median(r.ChangeMs))
		t, err := bestOf(*repeat, func() (float64, error) { return loadText(s, textShapeMaps) })
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench-nft: nft text:", err)
			return 1
		}
		rep.Text = append(rep.Text, Point{N: s, Sec: t})
		fmt.Fprintf(os.Stderr, "same shape as nft text %d services: %.2fs\n", s, t)
	}
	for _, s := range parseInts(*upstream) {
		t, err := loadText(s, textShapeUpstream)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench-nft: upstream shape:", err)
			return 1
		}
		rep.Upstream = append(rep.Upstream, Point{N: s, Sec: t})
		fmt.Fprintf(os.Stderr, "upstream shape %d services: %.2fs\n", s, t)
	}
	if *perf {
		rt := &runT{}
		lat, err := measureLatency(rt)
		if err != nil {
			rt.close()
			fmt.Fprintln(os.Stderr, "kproxy-bench-nft: latency:", err)
			return 1
		}
		rep.Latency = lat
		tp, err := measureThroughput(rt, *tpRounds, *tpMiB)
		rt.close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench-nft: throughput:", err)
			return 1
		}
		rep.Throughput = tp
	}
	rep.Print(os.Stdout)
	if *out != "" {
		if err := rep.Plot(*out); err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench-nft: plot:", err)
			return 1
		}
		fmt.Printf("\nplot: %s\n", *out)
	}
	return 0
}

func bestOf(n int, f func() (float64, error)) (float64, error) {
	best := 0.0
	for i := 0; i < max(1, n); i++ {
		v, err := f()
		if err != nil {
			return 0, err
		}
		if i == 0 || v < best {
			best = v
		}
	}
	return best, nil
}

func parseInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	return out
}

func runChild(n int) (ScaleResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return ScaleResult{}, err
	}
	cmd := exec.Command(exe, "-child", "scale", "-n", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return ScaleResult{}, fmt.Errorf("scale %d: %w", n, err)
	}
	var r ScaleResult
	if err := json.Unmarshal(b, &r); err != nil {
		return ScaleResult{}, fmt.Errorf("scale %d: %w", n, err)
	}
	return r, nil
}

// childScale measures one service count in a fresh process, so that its peak
// RSS is the data plane's and the model's alone.
func childScale(n int, memprofile string) int {
	rt := &runT{}
	defer rt.close()
	node := netnstest.NewNode(rt)
	cfg := nftables.Config{NetNSPath: node.Path(), IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
		Logger: slog.New(slog.DiscardHandler)}
	p, err := nftables.New(cfg, nil)
	if err != nil {
		rt.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	tr := newTracker()
	addServices(tr, 0, n)
	res := ScaleResult{N: n}
	t0 := time.Now()
	snap := tr.Snapshot()
	res.ModelSec = time.Since(t0).Seconds()
	res.ModelRSSMiB = procStatusMiB("VmHWM")
	t0 = time.Now()
	if err := p.Sync(ctx, snap, true); err != nil {
		rt.Fatal(err)
	}
	res.ColdSec = time.Since(t0).Seconds()
	res.ColdRSSMiB = procStatusMiB("VmHWM")
	for k := 0; k < 25; k++ {
		i := (k*7919 + 13) % n
		if n < 50 {
			i = k % n
		}
		t0 = time.Now()
		// Replace the service's endpoints (all ten move), the worst single change.
		tr.OnEndpointSliceUpdate(nil, slice(i, 8080, endpoints(i, 1+k)...))
		s := tr.Snapshot()
		if err := p.Sync(ctx, s, false); err != nil {
			rt.Fatal(err)
		}
		res.ChangeMs = append(res.ChangeMs, float64(time.Since(t0).Microseconds())/1000)
	}
	t0 = time.Now()
	if err := p.Sync(ctx, tr.Snapshot(), true); err != nil {
		rt.Fatal(err)
	}
	res.ResyncSec = time.Since(t0).Seconds()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapMiB = float64(ms.HeapInuse) / (1 << 20)
	res.RSSMiB = procStatusMiB("VmHWM")
	if memprofile != "" {
		f, err := os.Create(memprofile)
		if err != nil {
			rt.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			rt.Fatal(err)
		}
		f.Close()
	}
	runtime.KeepAlive(tr)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		rt.Fatal(err)
	}
	return 0
}

func procStatusMiB(key string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

type textShape int

const (
	textShapeMaps     textShape = iota // kproxy's shape (per-count maps) as nft text
	textShapeUpstream                  // a chain per service and per endpoint, anonymous numgen vmaps
)

// loadText loads a ruleset as nft text into a fresh namespace and returns the wall time.
func loadText(n int, shape textShape) (float64, error) {
	rt := &runT{}
	defer rt.close()
	node := netnstest.NewNode(rt)
	var b strings.Builder
	switch shape {
	case textShapeMaps:
		writeMapsText(&b, n)
	case textShapeUpstream:
		writeUpstreamText(&b, n)
	}
	cmd := exec.Command("ip", "netns", "exec", node.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	t0 := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("nft -f: %w: %.500s", err, out)
	}
	return time.Since(t0).Seconds(), nil
}

// writeMapsText is kproxy's ruleset shape written for the nft binary: the
// DNAT part (which is nearly all of the elements).
func writeMapsText(b *strings.Builder, n int) {
	b.WriteString("table ip kpt {\n map backends-10 { typeof ip daddr . meta l4proto . th dport . numgen random mod 10 : ip daddr . tcp dport\n  elements = {\n")
	for i := 0; i < n; i++ {
		for j, ep := range endpoints(i, 0) {
			fmt.Fprintf(b, "   %s . tcp . 80 . %d : %s . 8080,\n", clusterIP(i), j, ep)
		}
	}
	b.WriteString("  }\n }\n map frontends { type ipv4_addr . inet_proto . inet_service : verdict\n  elements = {\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(b, "   %s . tcp . 80 : goto dnat-10,\n", clusterIP(i))
	}
	b.WriteString("  }\n }\n chain dnat-10 {\n  dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 10 map @backends-10\n }\n")
	b.WriteString(" chain prerouting {\n  type nat hook prerouting priority dstnat;\n  ip daddr . meta l4proto . th dport vmap @frontends\n }\n}\n")
}

// writeUpstreamText is the ruleset shape of kube-proxy's nftables mode before
// 1.36: service-ips vmap → a chain per service with an
// anonymous numgen vmap → a chain per endpoint doing the DNAT.
func writeUpstreamText(b *strings.Builder, n int) {
	b.WriteString("table ip kube-proxy {\n chain mark-for-masquerade {\n  meta mark set meta mark | 0x4000\n }\n")
	b.WriteString(" chain nat-prerouting {\n  type nat hook prerouting priority dstnat;\n  jump services\n }\n")
	b.WriteString(" map service-ips {\n  type ipv4_addr . inet_proto . inet_service : verdict\n  elements = {\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(b, "   %s . tcp . 80 : goto service-%d,\n", clusterIP(i), i)
	}
	b.WriteString("  }\n }\n chain services {\n  ip daddr . meta l4proto . th dport vmap @service-ips\n }\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(b, " chain service-%d {\n  ip daddr %s tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n  numgen random mod 10 vmap {", i, clusterIP(i))
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(b, " %d : goto endpoint-%d-%d", j, i, j)
		}
		b.WriteString(" }\n }\n")
		for j, ep := range endpoints(i, 0) {
			fmt.Fprintf(b, " chain endpoint-%d-%d {\n  ip saddr %s jump mark-for-masquerade\n  meta l4proto tcp dnat to %s:8080\n }\n", i, j, ep, ep)
		}
	}
	b.WriteString("}\n")
}

// LatencyResult compares connect latency with few and many services.
type LatencyResult struct {
	Direct, Few, Many  Stats // pod → pod, pod → ClusterIP at 10 and at 10,000 services
	FewN, ManyN, Conns int
}

// Stats summarizes durations in microseconds.
type Stats struct{ P50, P90, P99 float64 }

func statsOf(us []float64) Stats {
	slices.Sort(us)
	q := func(p float64) float64 { return us[int(p*float64(len(us)-1))] }
	return Stats{P50: q(0.5), P90: q(0.9), P99: q(0.99)}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

// trafficBed is a node with a server pod and a client pod, and a Proxier.
type trafficBed struct {
	node           *netnstest.Node
	server, client *netnstest.Pod
	p              *nftables.Proxier
}

func newTrafficBed(rt *runT, extraCIDRs ...netip.Prefix) (*trafficBed, error) {
	node := netnstest.NewNode(rt)
	tb := &trafficBed{node: node, server: node.AddPod(rt, "server"), client: node.AddPod(rt, "client")}
	tb.server.Serve(rt, "server", 8080)
	cfg := nftables.Config{NetNSPath: node.Path(), IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
		ClusterCIDRs: append([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, extraCIDRs...), Logger: slog.New(slog.DiscardHandler)}
	p, err := nftables.New(cfg, nil)
	if err != nil {
		return nil, err
	}
	rt.Cleanup(func() { p.Close() })
	tb.p = p
	return tb, nil
}

// connectLatencies times n TCP connections (connect, read the server's line).
func (tb *trafficBed) connectLatencies(dst netip.AddrPort, n int) ([]float64, error) {
	out := make([]float64, 0, n)
	err := tb.client.Do(func() error {
		buf := make([]byte, 128)
		for i := 0; i < n; i++ {
			t0 := time.Now()
			c, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
			if err != nil {
				return err
			}
			if _, err := c.Read(buf); err != nil {
				c.Close()
				return err
			}
			out = append(out, float64(time.Since(t0).Nanoseconds())/1000)
			c.Close()
		}
		return nil
	})
	return out, err
}

func measureLatency(rt *runT) (LatencyResult, error) {
	const few, many, conns = 10, 10000, 3000
	tb, err := newTrafficBed(rt)
	if err != nil {
		return LatencyResult{}, err
	}
	ctx := context.Background()
	tr := newTracker()
	// Service 0 is the measured one, with the real server as its only endpoint;
	// the others have ten (unreachable) endpoints each.
	tr.OnServiceAdd(service(0, clusterIP(0)))
	tr.OnEndpointSliceAdd(slice(0, 8080, tb.server.V4))
	addServices(tr, 1, few)
	if err := tb.p.Sync(ctx, tr.Snapshot(), true); err != nil {
		return LatencyResult{}, err
	}
	vip := netip.AddrPortFrom(clusterIP(0), 80)
	direct := netip.AddrPortFrom(tb.server.V4, 8080)
	var d, f, m []float64
	// Alternate few and many twice, so that drift on a shared machine hits both.
	for round := 0; round < 2; round++ {
		x, err := tb.connectLatencies(direct, conns/2)
		if err != nil {
			return LatencyResult{}, err
		}
		d = append(d, x...)
		if x, err = tb.connectLatencies(vip, conns/2); err != nil {
			return LatencyResult{}, err
		}
		f = append(f, x...)
		addServices(tr, few, many)
		if err := tb.p.Sync(ctx, tr.Snapshot(), false); err != nil {
			return LatencyResult{}, err
		}
		if x, err = tb.connectLatencies(vip, conns/2); err != nil {
			return LatencyResult{}, err
		}
		m = append(m, x...)
		for i := few; i < many; i++ {
			tr.OnServiceDelete(service(i, clusterIP(i)))
			tr.OnEndpointSliceDelete(slice(i, 8080))
		}
		if err := tb.p.Sync(ctx, tr.Snapshot(), false); err != nil {
			return LatencyResult{}, err
		}
	}
	return LatencyResult{Direct: statsOf(d), Few: statsOf(f), Many: statsOf(m), FewN: few, ManyN: many, Conns: conns}, nil
}

// ThroughputResult compares bulk TCP throughput pod → pod, direct and through a ClusterIP.
type ThroughputResult struct {
	DirectMBps, DNATMBps []float64
}

// measureThroughput sends from the external client through the node to the
// server pod: directly (routed) and through a ClusterIP (routed and DNATed), so
// that the difference is the DNAT path alone. The client is inside the cluster
// CIDRs here, so nothing is masqueraded.
func measureThroughput(rt *runT, rounds, mib int) (ThroughputResult, error) {
	tb, err := newTrafficBed(rt, netip.MustParsePrefix("192.168.100.0/24"))
	if err != nil {
		return ThroughputResult{}, err
	}
	client := tb.node.AddClient(rt)
	// A sink on port 9000 in the server pod.
	var ln net.Listener
	if err := tb.server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", ":9000")
		return err
	}); err != nil {
		return ThroughputResult{}, err
	}
	rt.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	tr := newTracker()
	tr.OnServiceAdd(service(0, clusterIP(0)))
	tr.OnEndpointSliceAdd(slice(0, 9000, tb.server.V4))
	if err := tb.p.Sync(context.Background(), tr.Snapshot(), true); err != nil {
		return ThroughputResult{}, err
	}
	send := func(dst netip.AddrPort) (float64, error) {
		total := mib << 20
		var mbps float64
		err := client.Do(func() error {
			c, err := net.Dial("tcp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 256<<10)
			t0 := time.Now()
			for sent := 0; sent < total; sent += len(buf) {
				if _, err := c.Write(buf); err != nil {
					return err
				}
			}
			mbps = float64(mib) / time.Since(t0).Seconds()
			return nil
		})
		return mbps, err
	}
	var res ThroughputResult
	for round := 0; round < rounds; round++ {
		// Alternate which path goes first, so that warm-up and neighbours' load
		// do not favour one of them.
		first, second := netip.AddrPortFrom(tb.server.V4, 9000), netip.AddrPortFrom(clusterIP(0), 80)
		if round%2 == 1 {
			first, second = second, first
		}
		a, err := send(first)
		if err != nil {
			return res, err
		}
		b, err := send(second)
		if err != nil {
			return res, err
		}
		d, v := a, b
		if round%2 == 1 {
			d, v = b, a
		}
		res.DirectMBps = append(res.DirectMBps, d)
		res.DNATMBps = append(res.DNATMBps, v)
	}
	return res, nil
}
