package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/dns"
	"github.com/kproxy/kproxy/internal/model"
)

type options struct {
	services, headless, endpoints int
	duration                      time.Duration
	concurrency                   int
	mixes                         string
	servers                       string
	loads                         string
	udpSockets                    int
	clients                       int
	verbose                       bool
	rate                          int
	coredns                       string
}

func run(args []string) int {
	var o options
	fs := flag.NewFlagSet("kproxy-bench-dns", flag.ContinueOnError)
	fs.IntVar(&o.services, "services", 1000, "ClusterIP services")
	fs.IntVar(&o.headless, "headless", 100, "headless services")
	fs.IntVar(&o.endpoints, "endpoints", 10, "ready endpoints per headless service")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measurement")
	fs.IntVar(&o.concurrency, "concurrency", 50, "queries in flight")
	fs.StringVar(&o.mixes, "mix", "clusterip,mix", "query mixes: clusterip (ClusterIP A only), mix (ClusterIP, headless, SRV, search-path NXDOMAIN)")
	fs.StringVar(&o.servers, "server", "kproxy,miekg", "servers to measure: kproxy, miekg (naive baseline), coredns (needs -coredns)")
	fs.StringVar(&o.coredns, "coredns", "", "path of a coredns binary; it serves the same names from a zone file (file plugin)")
	fs.StringVar(&o.loads, "load", "dnsperf,go", "load generators: dnsperf (if installed), go")
	fs.IntVar(&o.udpSockets, "udp-sockets", 0, "kproxy UDP sockets (0: GOMAXPROCS)")
	fs.IntVar(&o.clients, "dnsperf-clients", 8, "dnsperf client sockets (-c)")
	fs.BoolVar(&o.verbose, "v", false, "print dnsperf's own report")
	fs.IntVar(&o.rate, "rate", 0, "offered load in queries per second (0: as fast as answers come back); latency under a fixed load is the fair comparison")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := bench(o); err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-bench-dns:", err)
		return 1
	}
	return 0
}

// cluster is the fixture: services, and the names the mixes query.
type cluster struct {
	snap     *model.Snapshot
	a        map[string][]netip.Addr // name → addresses, for the baseline server
	srv      map[string][]*mdns.SRV
	clusterA []string
	headA    []string
	srvNames []string
}

func makeCluster(o options) *cluster {
	c := &cluster{
		snap: &model.Snapshot{Generation: 1, Services: map[types.NamespacedName]*v1.Service{},
			Slices: map[types.NamespacedName][]*discovery.EndpointSlice{}},
		a:   map[string][]netip.Addr{},
		srv: map[string][]*mdns.SRV{},
	}
	for i := range o.services {
		ns, name := fmt.Sprintf("ns%d", i%50), fmt.Sprintf("svc%d", i)
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip.String(), ClusterIPs: []string{ip.String()},
				Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
		c.snap.Services[types.NamespacedName{Namespace: ns, Name: name}] = svc
		fq := name + "." + ns + ".svc.cluster.local."
		c.a[fq] = []netip.Addr{ip}
		c.clusterA = append(c.clusterA, fq)
		srvName := "_http._tcp." + fq
		c.srv[srvName] = []*mdns.SRV{{Priority: 0, Weight: 100, Port: 80, Target: fq}}
		c.srvNames = append(c.srvNames, srvName)
	}
	for i := range o.headless {
		ns, name := fmt.Sprintf("ns%d", i%50), fmt.Sprintf("db%d", i)
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: v1.ClusterIPNone, ClusterIPs: []string{v1.ClusterIPNone}}}
		sl := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-x"},
			AddressType: discovery.AddressTypeIPv4}
		fq := name + "." + ns + ".svc.cluster.local."
		for j := range o.endpoints {
			ip := netip.AddrFrom4([4]byte{10, 244, byte(i), byte(j + 1)})
			sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{Addresses: []string{ip.String()},
				Conditions: discovery.EndpointConditions{Ready: new(true)}})
			c.a[fq] = append(c.a[fq], ip)
		}
		k := types.NamespacedName{Namespace: ns, Name: name}
		c.snap.Services[k] = svc
		c.snap.Slices[k] = []*discovery.EndpointSlice{sl}
		c.headA = append(c.headA, fq)
	}
	return c
}

// queries returns the query list of a mix, in dnsperf's "name type" form.
func (c *cluster) queries(mix string) ([][2]string, error) {
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(names []string) string { return names[r.IntN(len(names))] }
	var out [][2]string
	for range 10000 {
		switch mix {
		case "clusterip":
			out = append(out, [2]string{pick(c.clusterA), "A"})
		case "mix":
			// Roughly what a pod's resolver sends: mostly service lookups, some
			// headless, some SRV, and search-path misses (ndots:5).
			switch p := r.IntN(100); {
			case p < 55:
				out = append(out, [2]string{pick(c.clusterA), "A"})
			case p < 75 && len(c.headA) > 0:
				out = append(out, [2]string{pick(c.headA), "A"})
			case p < 85:
				out = append(out, [2]string{pick(c.srvNames), "SRV"})
			default:
				_, zone, _ := strings.Cut(pick(c.clusterA), ".") // "nsN.svc.cluster.local."
				out = append(out, [2]string{"www.example.com." + zone, "A"})
			}
		default:
			return nil, fmt.Errorf("unknown mix %q", mix)
		}
	}
	return out, nil
}

type server interface {
	addr() string
	close()
}

type kproxyServer struct{ s *dns.Server }

func (k kproxyServer) addr() string { return k.s.Addr().String() }
func (k kproxyServer) close()       { _ = k.s.Close() }

func startKproxy(c *cluster, o options) (server, error) {
	s, err := dns.New(dns.Config{BindAddress: "127.0.0.1:0", UDPSockets: o.udpSockets,
		Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	s.Update(c.snap)
	fmt.Printf("kproxy index for %d services built in %v\n", len(c.snap.Services), time.Since(start).Round(time.Microsecond))
	if err := s.Start(); err != nil {
		return nil, err
	}
	return kproxyServer{s}, nil
}

// miekgServer is the naive baseline: a miekg/dns handler building each answer
// from a map, as a first implementation would.
type miekgServer struct {
	udp *mdns.Server
	a   string
}

func (m miekgServer) addr() string { return m.a }
func (m miekgServer) close()       { _ = m.udp.Shutdown() }

func startMiekg(c *cluster) (server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case q.Qtype == mdns.TypeA && c.a[name] != nil:
			for _, ip := range c.a[name] {
				m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 5}, A: ip.AsSlice()})
			}
		case q.Qtype == mdns.TypeSRV && c.srv[name] != nil:
			for _, s := range c.srv[name] {
				rr := *s
				rr.Hdr = mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: 5}
				m.Answer = append(m.Answer, &rr)
			}
		default:
			m.Rcode = mdns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	s := &mdns.Server{PacketConn: pc, Handler: h}
	go func() { _ = s.ActivateAndServe() }()
	return miekgServer{udp: s, a: pc.LocalAddr().String()}, nil
}

type result struct {
	qps                  float64
	p50, p99, p999, mean time.Duration
	errors, timeouts     int64
}

func bench(o options) error {
	c := makeCluster(o)
	rate := "unlimited"
	if o.rate > 0 {
		rate = fmt.Sprintf("%d qps", o.rate)
	}
	fmt.Printf("fixture: %d ClusterIP services, %d headless × %d endpoints; concurrency %d, offered load %s, %v per run, GOMAXPROCS %d\n",
		o.services, o.headless, o.endpoints, o.concurrency, rate, o.duration, runtime.GOMAXPROCS(0))
	haveDnsperf := false
	if _, err := exec.LookPath("dnsperf"); err == nil {
		haveDnsperf = true
	}
	fmt.Printf("%-8s %-10s %-8s %12s %10s %10s %10s %10s %8s\n", "server", "mix", "load", "qps", "mean", "p50", "p99", "p99.9", "lost")
	for _, mix := range strings.Split(o.mixes, ",") {
		qs, err := c.queries(mix)
		if err != nil {
			return err
		}
		for _, name := range strings.Split(o.servers, ",") {
			var srv server
			switch name {
			case "kproxy":
				srv, err = startKproxy(c, o)
			case "miekg":
				srv, err = startMiekg(c)
			case "coredns":
				srv, err = startCoreDNS(c, o.coredns)
			default:
				err = fmt.Errorf("unknown server %q", name)
			}
			if err != nil {
				return err
			}
			for _, load := range strings.Split(o.loads, ",") {
				var r result
				switch load {
				case "dnsperf":
					if !haveDnsperf {
						fmt.Printf("%-8s %-10s %-8s %12s\n", name, mix, load, "(dnsperf not installed)")
						continue
					}
					r, err = runDnsperf(srv.addr(), qs, o)
				case "go":
					r, err = runGo(srv.addr(), qs, o)
				default:
					err = fmt.Errorf("unknown load %q", load)
				}
				if err != nil {
					srv.close()
					return err
				}
				fmt.Printf("%-8s %-10s %-8s %12.0f %10s %10s %10s %10s %8d\n", name, mix, load, r.qps,
					fmtDur(r.mean), fmtDur(r.p50), fmtDur(r.p99), fmtDur(r.p999), r.timeouts)
			}
			srv.close()
		}
	}
	return nil
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}

var (
	reQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLost = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reAvg  = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
)

// runDnsperf runs dnsperf with the queries in flight capped at the concurrency.
// dnsperf 2.10 prints no percentiles: qps, mean latency and losses come from it,
// percentiles from the Go client.
func runDnsperf(addr string, qs [][2]string, o options) (result, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return result{}, fmt.Errorf("server address: %w", err)
	}
	f, err := os.CreateTemp("", "kproxy-dnsperf-*.txt")
	if err != nil {
		return result{}, fmt.Errorf("query file: %w", err)
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	for _, q := range qs {
		fmt.Fprintf(w, "%s %s\n", q[0], q[1])
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return result{}, fmt.Errorf("query file: %w", err)
	}
	secs := max(1, int(o.duration/time.Second))
	cmd := exec.Command("dnsperf", "-s", ap.Addr().String(), "-p", strconv.Itoa(int(ap.Port())),
		"-d", f.Name(), "-l", strconv.Itoa(secs), "-c", strconv.Itoa(o.clients), "-T", "1", "-q", strconv.Itoa(o.concurrency), "-t", "2")
	if o.rate > 0 {
		cmd.Args = append(cmd.Args, "-Q", strconv.Itoa(o.rate))
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("dnsperf: %w\n%s", err, out)
	}
	if o.verbose {
		os.Stdout.Write(out)
	}
	var r result
	if m := reQPS.FindSubmatch(out); m != nil {
		r.qps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := reLost.FindSubmatch(out); m != nil {
		r.timeouts, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := reAvg.FindSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		r.mean = time.Duration(v * float64(time.Second))
	}
	return r, nil
}

// runGo is a closed-loop client: concurrency workers, each on its own UDP socket,
// send a query and wait for its answer. Latencies go into per-worker histograms
// of 1 µs buckets (up to 100 ms) for the percentiles.
func runGo(addr string, qs [][2]string, o options) (result, error) {
	msgs := make([][]byte, len(qs))
	for i, q := range qs {
		m := new(mdns.Msg)
		m.SetQuestion(q[0], mdns.StringToType[q[1]])
		m.SetEdns0(1232, false)
		b, err := m.Pack()
		if err != nil {
			return result{}, fmt.Errorf("pack %s: %w", q[0], err)
		}
		msgs[i] = b
	}
	const buckets = 100_000
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		hist     = make([]int64, buckets+1)
		total    atomic.Int64
		timeouts atomic.Int64
		sumUS    atomic.Int64
		firstErr error
	)
	start := time.Now()
	for w := range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]int64, buckets+1)
			defer func() {
				mu.Lock()
				for i, v := range local {
					hist[i] += v
				}
				mu.Unlock()
			}()
			conn, err := net.Dial("udp", addr)
			if err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
				return
			}
			defer conn.Close()
			buf := make([]byte, 65535)
			id := uint16(w * 1000)
			// With a rate, each worker sends on its own schedule; latency counts
			// from the send, as dnsperf's does.
			var interval time.Duration
			next := time.Now()
			if o.rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(o.concurrency) / float64(o.rate))
				next = next.Add(time.Duration(w) * interval / time.Duration(o.concurrency))
			}
			for i := w; ctx.Err() == nil; i++ {
				msg := msgs[i%len(msgs)]
				id++
				msg = append([]byte{byte(id >> 8), byte(id)}, msg[2:]...)
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					// A worker that fell behind (a late timer on a busy machine)
					// does not try to catch up in a burst.
					if late := time.Now().Add(-interval); next.Before(late) {
						next = late
					}
					next = next.Add(interval)
				}
				t0 := time.Now()
				if _, err := conn.Write(msg); err != nil {
					continue
				}
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				for {
					n, err := conn.Read(buf)
					if err != nil {
						timeouts.Add(1)
						break
					}
					if n >= 2 && buf[0] == byte(id>>8) && buf[1] == byte(id) {
						us := time.Since(t0).Microseconds()
						local[min(us, buckets)]++
						total.Add(1)
						sumUS.Add(us)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return result{}, firstErr
	}
	elapsed := time.Since(start)
	r := result{qps: float64(total.Load()) / elapsed.Seconds(), timeouts: timeouts.Load()}
	n := total.Load()
	pct := func(p float64) time.Duration {
		want := int64(p * float64(n))
		var acc int64
		for us, v := range hist {
			acc += v
			if acc > want {
				return time.Duration(us) * time.Microsecond
			}
		}
		return 0
	}
	if n > 0 {
		r.mean = time.Duration(sumUS.Load()/n) * time.Microsecond
		r.p50, r.p99, r.p999 = pct(0.50), pct(0.99), pct(0.999)
	}
	return r, nil
}

// coreDNS runs a coredns binary serving the fixture from a zone file: CoreDNS's
// own engine on the same names, without the API-server-backed kubernetes plugin.
type coreDNS struct {
	cmd *exec.Cmd
	dir string
	a   string
}

func (c *coreDNS) addr() string { return c.a }
func (c *coreDNS) close() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	_ = os.RemoveAll(c.dir)
}

func startCoreDNS(c *cluster, bin string) (server, error) {
	if bin == "" {
		return nil, errors.New("-server coredns needs -coredns PATH")
	}
	dir, err := os.MkdirTemp("", "kproxy-bench-coredns-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	var zone strings.Builder
	zone.WriteString("$ORIGIN cluster.local.\n" +
		"@ 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n" +
		"@ 5 IN NS ns.dns.cluster.local.\nns.dns 5 IN A 127.0.0.1\n")
	for name, ips := range c.a {
		for _, ip := range ips {
			fmt.Fprintf(&zone, "%s 5 IN A %s\n", name, ip)
		}
	}
	for name, srvs := range c.srv {
		for _, s := range srvs {
			fmt.Fprintf(&zone, "%s 5 IN SRV %d %d %d %s\n", name, s.Priority, s.Weight, s.Port, s.Target)
		}
	}
	// Pick a free port (TCP first, see the DNS server's listen).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick a port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	corefile := fmt.Sprintf("cluster.local:%d {\n  bind 127.0.0.1\n  file %s/db.cluster.local\n}\n", port, dir)
	if err := errors.Join(os.WriteFile(dir+"/db.cluster.local", []byte(zone.String()), 0o644),
		os.WriteFile(dir+"/Corefile", []byte(corefile), 0o644)); err != nil {
		return nil, fmt.Errorf("coredns config: %w", err)
	}
	cmd := exec.Command(bin, "-conf", dir+"/Corefile", "-quiet")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start coredns: %w", err)
	}
	s := &coreDNS{cmd: cmd, dir: dir, a: fmt.Sprintf("127.0.0.1:%d", port)}
	probe := new(mdns.Msg)
	probe.SetQuestion(c.clusterA[0], mdns.TypeA)
	for range 100 {
		if r, err := mdns.Exchange(probe, s.a); err == nil && len(r.Answer) == 1 {
			return s, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.close()
	return nil, errors.New("coredns did not answer within 10s")
}
