package cluster_test

// BenchmarkVersusKubeProxy: kproxy next to upstream kube-proxy v1.37.2 (nftables
// mode, built by hack/k8s/build.sh) on the same objects in the same run.
//
//	KPROXY_BENCH_SERVICES=10000 go test -run '^$' -bench VersusKubeProxy -benchtime 1x -timeout 60m ./test/e2e/cluster/
//
// KPROXY_BENCH_SERVICES (default 1000) services × KPROXY_BENCH_ENDPOINTS (default
// 10) endpoints are written through the API; KPROXY_BENCH_PROXIES (default
// "kube-proxy,kproxy") chooses which proxies run, one after the other, each in
// a fresh network namespace. Measured per proxy, from the kernel's side:
//   - start → programmed: from exec until a TCP SYN sent inside the namespace to
//     the first, middle and last service's cluster IP is DNATed to one of its
//     endpoints (read back from conntrack); polled every 100 ms. The proxy's own
//     first-sync timestamp is logged next to it;
//   - one change → in the kernel: one service's EndpointSlice gets 10 new
//     endpoint addresses through the API; the wall time from the write until a
//     probe is DNATed to a new address (median of 5, changes 1.5 s apart so the
//     sync rate limiters do not count), and the proxy's own
//     kubeproxy_network_programming_duration_seconds for it;
//   - memory: peak RSS of the proxy, and with its children (kube-proxy's nft).
//
// Each proxy starts once the machine has been ≥ 80% idle for two seconds.
// KPROXY_BENCH_LOGS=1 prints the end of each proxy's log; KPROXY_BENCH_PPROF=DIR
// saves kproxy's CPU profile of its first 3 s and its heap profile after the run there.
//
// IP plan: endpoints 10.128.0.0/9 (Population.EndpointIP), changed endpoints
// 10.250.0.0/16; services from 10.96.0.0/16; the proxy's node "node-a" 192.168.10.1.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/cluster"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

type benchResult struct {
	proxy                    string
	firstSync                time.Duration
	changeMetric, changeWall time.Duration
	peakRSS, peakWithChild   int64
}

func BenchmarkVersusKubeProxy(b *testing.B) {
	services := envInt("KPROXY_BENCH_SERVICES", 1000)
	endpoints := envInt("KPROXY_BENCH_ENDPOINTS", 10)
	proxies := strings.Split(os.Getenv("KPROXY_BENCH_PROXIES"), ",")
	if os.Getenv("KPROXY_BENCH_PROXIES") == "" {
		proxies = []string{"kube-proxy", "kproxy"}
	}
	c := cluster.ForTest(b, cluster.Options{
		// Only the namespace machinery: the benchmark writes the slices itself.
		Controllers: []string{"serviceaccount-controller"},
		// 10,000 services fill the default /16 comfortably; a bigger etcd quota
		// and request limits keep the writers from being throttled.
		APIServerArgs: []string{"--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	if _, err := c.CreateNode(ctx, cluster.NodeSpec{Name: "node-a", InternalIPs: addrs("192.168.10.1")}); err != nil {
		b.Fatal(err)
	}
	pop := cluster.Population{Namespace: "bench", Services: services, EndpointsPerService: endpoints}
	start := time.Now()
	if err := c.Populate(ctx, pop); err != nil {
		b.Fatal(err)
	}
	b.Logf("created %d services × %d endpoints in %v", services, endpoints, time.Since(start).Round(time.Millisecond))

	var results []benchResult
	change := 0
	for _, name := range proxies {
		waitQuiet(ctx, b)
		results = append(results, runProxyBench(ctx, b, c, pop, name, &change))
	}
	// Printed, not logged: the testing package truncates benchmark logs.
	fmt.Fprintf(os.Stderr, "\n%d services × %d endpoints\n%-12s %16s %16s %16s %12s %16s\n", services, endpoints,
		"proxy", "start→programmed", "change (kernel)", "change (metric)", "peak RSS", "peak RSS+child")
	for _, r := range results {
		fmt.Fprintf(os.Stderr, "%-12s %16v %16v %16v %10.1fMB %14.1fMB\n", r.proxy, r.firstSync.Round(time.Millisecond),
			r.changeWall.Round(time.Millisecond), r.changeMetric.Round(time.Millisecond),
			float64(r.peakRSS)/1e6, float64(r.peakWithChild)/1e6)
	}
}

func runProxyBench(ctx context.Context, b *testing.B, c *cluster.Cluster, pop cluster.Population, name string, change *int) benchResult {
	var bin string
	var args func(string) []string
	switch name {
	case "kube-proxy":
		bin = c.Tool("kube-proxy")
		args = func(kubeconfig string) []string {
			return []string{"--kubeconfig=" + kubeconfig, "--proxy-mode=nftables", "--hostname-override=node-a",
				"--cluster-cidr=10.244.0.0/16", "--metrics-bind-address=127.0.0.1:10249",
				"--healthz-bind-address=127.0.0.1:10256", "--conntrack-max-per-core=0", "--v=1"}
		}
	case "kproxy":
		var err error
		if bin, err = kproxyBinary(); err != nil {
			b.Fatal(err)
		}
		args = func(kubeconfig string) []string {
			return []string{"run", "--kubeconfig=" + kubeconfig, "--proxy-mode=nftables", "--socket-lb=off", "--hostname-override=node-a",
				"--cluster-cidr=10.244.0.0/16", "--metrics-bind-address=127.0.0.1:10249",
				"--healthz-bind-address=127.0.0.1:10256", "--profiling=" + strconv.FormatBool(os.Getenv("KPROXY_BENCH_PPROF") != "")}
		}
	default:
		b.Fatalf("unknown proxy %q", name)
	}
	// The services probed to decide "fully programmed": first, middle, last.
	var probes []netip.AddrPort
	for _, i := range []int{0, pop.Services / 2, pop.Services - 1} {
		probes = append(probes, serviceVIP(ctx, b, c, pop, i))
	}
	ns, _ := newNetns(b, "kpbench-"+name)
	enableProbes(b, ns)
	p := startProxy(b, c, name, ns, bin, args)
	r := benchResult{proxy: name}
	if dir := os.Getenv("KPROXY_BENCH_PPROF"); dir != "" && name == "kproxy" {
		go saveStartProfile(ctx, b, p, filepath.Join(dir, "kproxy-start-cpu-"+ns+".pprof"))
	}
	// Fully programmed: the kernel translates connections to every probed
	// service into one of its endpoints. Polled every 25 ms.
	for {
		ok := true
		for _, vip := range probes {
			ep, err := p.probe(ctx, vip)
			if err != nil {
				b.Fatal(err)
			}
			if !ep.IsValid() {
				ok = false
				break
			}
		}
		if ok {
			r.firstSync = time.Since(p.started)
			break
		}
		if !p.proc.Running() {
			b.Fatalf("%s exited: %v\n%s", name, p.proc.Wait(), p.proc.LogTail())
		}
		if ctx.Err() != nil {
			b.Fatalf("%s: not programmed: %v", name, ctx.Err())
		}
		time.Sleep(25 * time.Millisecond)
	}
	metricSync := p.waitFirstSync(ctx, b)
	b.ReportMetric(r.firstSync.Seconds(), name+"-s-to-programmed")
	fmt.Fprintf(os.Stderr, "%s: programmed (kernel probes) %v after start; its sync metric says %v\n", name, r.firstSync, metricSync)

	// One service's endpoints replaced at a time, services spread over the range.
	var metricLat, wallLat, watchLat []time.Duration
	time.Sleep(1500 * time.Millisecond) // past the rate limiter after the first sync
	for k := range 5 {
		i := (k*pop.Services/5 + *change) % pop.Services
		*change++
		gen := *change
		vip := serviceVIP(ctx, b, c, pop, i)
		before, err := p.scrape(ctx)
		if err != nil {
			b.Fatal(err)
		}
		slice := pop.Slice(i, func(i, j int) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, byte(gen), byte(j + 1)}) })
		cur, err := c.Client.DiscoveryV1().EndpointSlices(pop.Namespace).Get(ctx, slice.Name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		slice.ResourceVersion = cur.ResourceVersion
		// The floor: how long the API server takes to tell any watcher (the test's
		// own watch here) about the write. A proxy cannot beat it.
		w, err := c.Client.DiscoveryV1().EndpointSlices(pop.Namespace).Watch(ctx, metav1.ListOptions{
			FieldSelector: "metadata.name=" + slice.Name, ResourceVersion: cur.ResourceVersion})
		if err != nil {
			b.Fatal(err)
		}
		seen := make(chan time.Time, 1)
		go func() {
			for range w.ResultChan() {
				seen <- time.Now()
				return
			}
		}()
		t0 := time.Now()
		if _, err := c.Client.DiscoveryV1().EndpointSlices(pop.Namespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		const count, sum = "kubeproxy_network_programming_duration_seconds_count", "kubeproxy_network_programming_duration_seconds_sum"
		deadline := time.Now().Add(2 * time.Minute)
		var wall time.Duration
		for {
			if wall == 0 {
				ep, err := p.probe(ctx, vip)
				if err != nil {
					b.Fatal(err)
				}
				if ep.As4()[1] == 250 && ep.As4()[2] == byte(gen) {
					wall = time.Since(t0)
				}
			}
			if wall > 0 {
				m, err := p.scrape(ctx)
				if err == nil && m[count] > before[count] {
					lat := time.Duration((m[sum] - before[sum]) / (m[count] - before[count]) * 1e9)
					metricLat, wallLat = append(metricLat, lat), append(wallLat, wall)
					break
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: change %d not programmed within 2 minutes (kernel: %v)", name, k, wall)
			}
			time.Sleep(2 * time.Millisecond)
		}
		select {
		case at := <-seen:
			watchLat = append(watchLat, at.Sub(t0))
		case <-time.After(10 * time.Second):
		}
		w.Stop()
		// Both proxies rate-limit syncs (kube-proxy's nftables minSyncPeriod is
		// 1 s): space the changes so that each measures one change, not the limiter.
		time.Sleep(1500 * time.Millisecond)
	}
	r.changeMetric, r.changeWall = median(metricLat), median(wallLat)
	b.ReportMetric(r.changeWall.Seconds(), name+"-s-per-change")
	main, all, hwm := p.peaks()
	r.peakRSS, r.peakWithChild = max(main, hwm), max(all, hwm)
	b.ReportMetric(float64(r.peakRSS)/1e6, name+"-MB-peak-RSS")
	fmt.Fprintf(os.Stderr, "%s: start→programmed %v, change %v in the kernel (its metric: %v), peak RSS %.1f MB (with children %.1f MB); changes: kernel %v metric %v; the API server's watch delivery to the test itself: %v\n",
		name, r.firstSync, r.changeWall, r.changeMetric, float64(r.peakRSS)/1e6, float64(r.peakWithChild)/1e6, wallLat, metricLat, watchLat)
	if dir := os.Getenv("KPROXY_BENCH_PPROF"); dir != "" && name == "kproxy" {
		saveProfile(ctx, b, p, filepath.Join(dir, "kproxy-heap.pprof"), "/debug/pprof/heap")
	}
	if os.Getenv("KPROXY_BENCH_LOGS") != "" {
		fmt.Fprintf(os.Stderr, "==== %s log tail:\n%s\n", name, p.proc.LogTail())
	}
	p.stop(b)
	return r
}

func saveProfile(ctx context.Context, b *testing.B, p *proxyRun, path, urlPath string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10249"+urlPath, nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := p.metrics.Do(req)
	if err != nil {
		b.Errorf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, data, 0o644)
	}
	if err != nil {
		b.Errorf("profile: %v", err)
	}
}

// waitQuiet waits, before each proxy's run, until the machine has been at
// least 80% idle for two seconds in a row (at most five minutes): on a shared
// machine another job's burst would otherwise land on one proxy and not the
// other. The API server's own settling after the writes counts too.
func waitQuiet(ctx context.Context, b *testing.B) {
	deadline := time.Now().Add(5 * time.Minute)
	quiet := 0
	prevIdle, prevTotal := cpuTimes(b)
	for quiet < 2 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(time.Second)
		idle, total := cpuTimes(b)
		if total > prevTotal && float64(idle-prevIdle)/float64(total-prevTotal) >= 0.8 {
			quiet++
		} else {
			quiet = 0
		}
		prevIdle, prevTotal = idle, total
	}
	if quiet < 2 {
		fmt.Fprintln(os.Stderr, "bench: the machine did not get quiet; measuring anyway")
	}
}

// cpuTimes returns the idle (idle + iowait) and total jiffies of all CPUs.
func cpuTimes(b *testing.B) (idle, total uint64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %v", err)
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}

// saveStartProfile records a 3 s CPU profile of kproxy from the moment its
// metrics address answers (a few milliseconds after exec): start-up as a whole.
func saveStartProfile(ctx context.Context, b *testing.B, p *proxyRun, path string) {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10249/debug/pprof/profile?seconds=3", nil)
		if err != nil {
			b.Error(err)
			return
		}
		resp, err := p.metrics.Do(req)
		if err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(path, data, 0o644)
		}
		if err != nil {
			b.Errorf("start profile: %v", err)
		}
		return
	}
}

// serviceVIP returns service i's cluster IP and port.
func serviceVIP(ctx context.Context, b *testing.B, c *cluster.Cluster, pop cluster.Population, i int) netip.AddrPort {
	svc, err := c.Client.CoreV1().Services(pop.Namespace).Get(ctx, pop.ServiceName(i), metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), uint16(svc.Spec.Ports[0].Port))
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
