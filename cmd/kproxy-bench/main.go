// Command kproxy-bench measures kproxy's userspace data plane over loopback
// against the same three kproxy-echo backends reached directly and through
// HAProxy (mode tcp, roundrobin), and prints a table: bulk TCP throughput,
// keep-alive request/response rate and latency, new connections per second,
// and UDP request/response rate and loss (kproxy against direct).
//
//	go run ./cmd/kproxy-bench            # builds kproxy-echo if it is not next to it or on PATH
//	go build -o bin/ ./cmd/kproxy-echo ./cmd/kproxy-bench && bin/kproxy-bench
//
// The load generator runs in this process; kproxy (this binary re-executed
// with the "proxy" argument), HAProxy and the backends are separate processes
// on the same machine, so all of them share its cores. The new-connection
// workers connect from addresses of their own (127.0.50.*), so that the
// client's ephemeral ports do not cap the rate (see clientNet).
package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() { os.Exit(run()) }

// IP plan: backends 127.0.40.1-3, kproxy's service address 127.10.40.1,
// HAProxy 127.10.40.2, all on port 9000 (TCP and UDP).
const (
	benchPort   = 9000
	kproxyAddr  = "127.10.40.1"
	haproxyAddr = "127.10.40.2"
)

var backendAddrs = []string{"127.0.40.1", "127.0.40.2", "127.0.40.3"}

// clientNet is where the new-connection workers' source addresses come from:
// worker i connects from 127.0.50.(i+1). From one source address, a client can
// open only about 14,000 connections per second to one destination: the
// connect half of the ephemeral port range (even ports, 32768-60999) is then
// full of TIME_WAIT sockets, and the kernel reuses one only after
// net.ipv4.tcp_tw_reuse_delay (1 s). Both proxies would sit at that limit
// rather than at their own; spread sources take it away.
var clientNet = netip.MustParseAddr("127.0.50.0")

type options struct {
	duration   time.Duration
	echo       string
	haproxy    string
	bulkConns  int
	rrConns    int
	connConns  int
	udpFlows   int
	udpRate    int
	msgSize    int
	spliceAuto bool
	rounds     int
	tests      string
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "proxy" {
		return runProxy(os.Args[2:])
	}
	var o options
	fs := flag.NewFlagSet("kproxy-bench", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measurement")
	fs.StringVar(&o.echo, "echo", "", "kproxy-echo binary (default: next to this binary, then PATH)")
	fs.StringVar(&o.haproxy, "haproxy", "haproxy", "HAProxy binary; empty skips HAProxy")
	fs.IntVar(&o.bulkConns, "bulk-conns", 4, "connections for the bulk transfer")
	fs.IntVar(&o.rrConns, "rr-conns", 32, "kept-alive connections for request/response")
	fs.IntVar(&o.connConns, "connect-workers", 16, "concurrent workers opening new connections")
	fs.IntVar(&o.udpFlows, "udp-flows", 16, "UDP client flows")
	fs.IntVar(&o.udpRate, "udp-rate", 20000, "offered UDP load, requests per second in total")
	fs.IntVar(&o.msgSize, "msg-size", 64, "request and response size in bytes")
	fs.BoolVar(&o.spliceAuto, "haproxy-splice", false, "give HAProxy 'option splice-auto' (off: its default)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds over all targets; the table shows medians")
	fs.StringVar(&o.tests, "tests", "bulk,rr,connect,udp", "measurements to run")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if o.rounds < 1 || o.msgSize < 8 {
		fmt.Fprintln(os.Stderr, "kproxy-bench: --rounds must be at least 1 and --msg-size at least 8")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-bench:", err)
		return 1
	}
	return 0
}

// proc is a child process, stopped by PID.
type proc struct {
	name string
	cmd  *exec.Cmd
}

func start(name string, args ...string) (*proc, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{name: name, cmd: cmd}, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// findEcho finds kproxy-echo: the flag, next to this binary, on PATH, or else
// built from this module's source into tmp (so that `go run ./cmd/kproxy-bench`
// from the repository is the one command needed).
func findEcho(flagValue, tmp string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "kproxy-echo")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("kproxy-echo"); err == nil {
		return p, nil
	}
	out := filepath.Join(tmp, "kproxy-echo")
	fmt.Fprintln(os.Stderr, "building kproxy-echo...")
	cmd := exec.Command("go", "build", "-o", out, "github.com/kproxy/kproxy/cmd/kproxy-echo")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kproxy-echo not found and building it failed (build it: go build -o bin/ ./cmd/kproxy-echo): %w", err)
	}
	return out, nil
}

// waitTCP waits until addr accepts connections.
func waitTCP(ctx context.Context, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s never accepted: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type target struct {
	name  string
	addrs []string // TCP/UDP addresses; the client rotates over them (direct) or uses one
	pid   int      // the proxy process, for its CPU time; 0 for direct
}

// cpuTime is the user+system CPU time a process used so far, from /proc.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func bench(ctx context.Context, o options) error {
	tmp, err := os.MkdirTemp("", "kproxy-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	echo, err := findEcho(o.echo, tmp)
	if err != nil {
		return err
	}
	var procs []*proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	var backends []string
	for i, ip := range backendAddrs {
		addr := net.JoinHostPort(ip, fmt.Sprint(benchPort))
		p, err := start(fmt.Sprintf("backend-%d", i+1), echo, "--tcp-echo", "--udp", "--listen", addr, "--name", fmt.Sprintf("backend-%d", i+1))
		if err != nil {
			return err
		}
		procs = append(procs, p)
		backends = append(backends, addr)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	kp := net.JoinHostPort(kproxyAddr, fmt.Sprint(benchPort))
	p, err := start("kproxy", append([]string{self, "proxy", kp}, backends...)...)
	if err != nil {
		return err
	}
	procs = append(procs, p)

	targets := []target{{"direct", backends, 0}, {"kproxy userspace", []string{kp}, p.cmd.Process.Pid}}
	if o.haproxy != "" {
		hp := net.JoinHostPort(haproxyAddr, fmt.Sprint(benchPort))
		cfgPath := filepath.Join(tmp, "haproxy.cfg")
		if err := os.WriteFile(cfgPath, []byte(haproxyConfig(hp, backends, o.spliceAuto)), 0o644); err != nil {
			return fmt.Errorf("write haproxy config: %w", err)
		}
		p, err := start("haproxy", o.haproxy, "-db", "-f", cfgPath)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		targets = append(targets, target{"haproxy", []string{hp}, p.cmd.Process.Pid})
	}
	for _, b := range backends {
		if err := waitTCP(ctx, b); err != nil {
			return err
		}
	}
	for _, t := range targets {
		if err := waitTCP(ctx, t.addrs[0]); err != nil {
			return err
		}
	}

	fmt.Printf("kproxy-bench: 3 kproxy-echo backends, %v per measurement, %d-byte messages, GOMAXPROCS shared on %d CPUs\n",
		o.duration, o.msgSize, runtime.NumCPU())
	want := map[string]bool{}
	for _, name := range strings.Split(o.tests, ",") {
		want[strings.TrimSpace(name)] = true
	}
	tests := []struct {
		name, key string
		run       func(context.Context, target, options) (result, error)
	}{
		{"bulk", "bulk", bulk}, {"request/response", "rr", reqResp}, {"new connections", "connect", connects},
	}
	// Rounds interleave the targets so that a noisy neighbour hurts them all
	// alike; the table shows medians.
	runs := make([][]result, len(targets))
	udpRuns := make([][]udpResult, 2)
	for round := range o.rounds {
		fmt.Fprintf(os.Stderr, "round %d of %d\n", round+1, o.rounds)
		res := make([]result, len(targets))
		for _, tc := range tests {
			if !want[tc.key] {
				continue
			}
			for i, t := range targets {
				cpu0 := cpuTime(t.pid)
				r, err := tc.run(ctx, t, o)
				if err != nil {
					return fmt.Errorf("%s via %s: %w", tc.name, t.name, err)
				}
				if t.pid != 0 {
					fmt.Fprintf(os.Stderr, "  %-16s %-18s proxy CPU %.0f%% of one core\n", tc.key, t.name,
						100*(cpuTime(t.pid)-cpu0).Seconds()/o.duration.Seconds())
				}
				res[i].merge(r)
			}
		}
		for i := range targets {
			runs[i] = append(runs[i], res[i])
		}
		if !want["udp"] {
			continue
		}
		for i, t := range targets[:2] {
			r, err := udpLoad(ctx, t, o)
			if err != nil {
				return fmt.Errorf("udp via %s: %w", t.name, err)
			}
			udpRuns[i] = append(udpRuns[i], r)
		}
	}
	results := make([]result, len(targets))
	for i := range targets {
		results[i] = medianResult(runs[i])
	}
	var udp []udpResult
	for i := range udpRuns {
		if len(udpRuns[i]) > 0 {
			udp = append(udp, medianUDP(udpRuns[i]))
		}
	}
	printTable(targets, results, udp, o)
	if len(targets) > 2 && o.rounds > 1 {
		printRatios(runs[1], runs[2])
	}
	return nil
}

// printRatios shows kproxy/HAProxy per round: on a shared machine the spread
// says more than one ratio of medians.
func printRatios(k, h []result) {
	type ratio struct {
		name string
		f    func(r result) float64
	}
	fmt.Println()
	fmt.Println("kproxy / haproxy per round (min median max):")
	for _, r := range []ratio{
		{"throughput", func(r result) float64 { return r.bulkGBps }},
		{"keep-alive req/s", func(r result) float64 { return r.rrRate }},
		{"p99", func(r result) float64 { return float64(r.p99) }},
		{"new conn/s", func(r result) float64 { return r.connRate }},
	} {
		var v []float64
		for i := range min(len(k), len(h)) {
			if d := r.f(h[i]); d != 0 {
				v = append(v, r.f(k[i])/d)
			}
		}
		if len(v) == 0 {
			continue
		}
		slices.Sort(v)
		fmt.Printf("  %-17s %.2f %.2f %.2f\n", r.name, v[0], v[len(v)/2], v[len(v)-1])
	}
}

func median[T any](xs []T, key func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = key(x)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

func medianResult(rs []result) result {
	return result{
		bulkGBps: median(rs, func(r result) float64 { return r.bulkGBps }),
		rrRate:   median(rs, func(r result) float64 { return r.rrRate }),
		p50:      time.Duration(median(rs, func(r result) float64 { return float64(r.p50) })),
		p99:      time.Duration(median(rs, func(r result) float64 { return float64(r.p99) })),
		connRate: median(rs, func(r result) float64 { return r.connRate }),
		errs:     int(median(rs, func(r result) float64 { return float64(r.errs) })),
	}
}

func medianUDP(rs []udpResult) udpResult {
	return udpResult{
		sent:     int(median(rs, func(r udpResult) float64 { return float64(r.sent) })),
		received: int(median(rs, func(r udpResult) float64 { return float64(r.received) })),
		rate:     median(rs, func(r udpResult) float64 { return r.rate }),
		p50:      time.Duration(median(rs, func(r udpResult) float64 { return float64(r.p50) })),
		p99:      time.Duration(median(rs, func(r udpResult) float64 { return float64(r.p99) })),
	}
}

func haproxyConfig(listen string, backends []string, splice bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
`)
	if splice {
		b.WriteString("    option splice-auto\n")
	}
	fmt.Fprintf(&b, "frontend fe\n    bind %s\n    default_backend be\nbackend be\n    balance roundrobin\n", listen)
	for i, addr := range backends {
		fmt.Fprintf(&b, "    server b%d %s\n", i+1, addr)
	}
	return b.String()
}

type result struct {
	bulkGBps float64
	rrRate   float64
	p50, p99 time.Duration
	connRate float64
	errs     int
}

func (r *result) merge(o result) {
	if o.bulkGBps != 0 {
		r.bulkGBps = o.bulkGBps
	}
	if o.rrRate != 0 {
		r.rrRate, r.p50, r.p99 = o.rrRate, o.p50, o.p99
	}
	if o.connRate != 0 {
		r.connRate = o.connRate
	}
	r.errs += o.errs
}

func dialAddr(t target, i int) string { return t.addrs[i%len(t.addrs)] }

// bulk streams data through echo connections: writers send as fast as they
// can, readers count what comes back. Every byte crosses the proxy twice.
func bulk(ctx context.Context, t target, o options) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	type out struct {
		n   int64
		err error
	}
	results := make(chan out, o.bulkConns)
	start := time.Now()
	for i := range o.bulkConns {
		go func() {
			c, err := net.Dial("tcp", dialAddr(t, i))
			if err != nil {
				results <- out{err: err}
				return
			}
			defer c.Close()
			go func() {
				buf := make([]byte, 256<<10)
				for ctx.Err() == nil {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
			go func() { <-ctx.Done(); _ = c.SetReadDeadline(time.Now()) }()
			n, err := io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
			results <- out{n: n, err: err}
		}()
	}
	var total int64
	for range o.bulkConns {
		r := <-results
		if r.err != nil {
			return result{}, r.err
		}
		total += r.n
	}
	el := time.Since(start).Seconds()
	return result{bulkGBps: float64(total) / el / 1e9}, nil
}

// reqResp sends fixed-size requests over kept-alive connections, one at a time
// per connection, and records each round trip.
func reqResp(ctx context.Context, t target, o options) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	type out struct {
		lat []time.Duration
		err error
	}
	results := make(chan out, o.rrConns)
	for i := range o.rrConns {
		go func() {
			c, err := net.Dial("tcp", dialAddr(t, i))
			if err != nil {
				results <- out{err: err}
				return
			}
			defer c.Close()
			req := make([]byte, o.msgSize)
			resp := make([]byte, o.msgSize)
			lat := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				s := time.Now()
				if _, err := c.Write(req); err != nil {
					results <- out{err: err}
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					results <- out{err: err}
					return
				}
				lat = append(lat, time.Since(s))
			}
			results <- out{lat: lat}
		}()
	}
	start := time.Now()
	var all []time.Duration
	for range o.rrConns {
		r := <-results
		if r.err != nil {
			return result{}, r.err
		}
		all = append(all, r.lat...)
	}
	el := time.Since(start).Seconds()
	slices.Sort(all)
	res := result{rrRate: float64(len(all)) / el}
	if len(all) > 0 {
		res.p50 = all[len(all)/2]
		res.p99 = all[len(all)*99/100]
	}
	return res, nil
}

// connects opens a connection per request: connect, one exchange, close.
func connects(ctx context.Context, t target, o options) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	type out struct {
		n, errs  int
		firstErr error
	}
	results := make(chan out, o.connConns)
	start := time.Now()
	for i := range o.connConns {
		go func() {
			var r out
			req := make([]byte, o.msgSize)
			resp := make([]byte, o.msgSize)
			d := clientDialer(i)
			for j := i; ctx.Err() == nil; j++ {
				c, err := d.Dial("tcp", dialAddr(t, j))
				if err != nil {
					r.errs++
					r.firstErr = cmp.Or(r.firstErr, err)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				_, err = c.Write(req)
				if err == nil {
					_, err = io.ReadFull(c, resp)
				}
				c.Close()
				if err != nil {
					r.errs++
					r.firstErr = cmp.Or(r.firstErr, err)
					continue
				}
				r.n++
			}
			results <- r
		}()
	}
	var total out
	for range o.connConns {
		r := <-results
		total.n += r.n
		total.errs += r.errs
		total.firstErr = cmp.Or(total.firstErr, r.firstErr)
	}
	if total.firstErr != nil {
		fmt.Fprintf(os.Stderr, "  %d failed connections via %s, the first: %v\n", total.errs, t.name, total.firstErr)
	}
	el := time.Since(start).Seconds()
	return result{connRate: float64(total.n) / el, errs: total.errs}, nil
}

// clientDialer dials from worker i's own source address (see clientNet), with
// IP_BIND_ADDRESS_NO_PORT so that the port is picked at connect time, per
// destination, as for an unbound socket, and not reserved by bind.
func clientDialer(i int) *net.Dialer {
	a := clientNet.As4()
	a[2] += byte((i + 1) / 256)
	a[3] = byte((i + 1) % 256)
	return &net.Dialer{
		Timeout:   2 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IP(a[:])},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h).
const ipBindAddressNoPort = 24

type udpResult struct {
	sent, received int
	rate           float64
	p50, p99       time.Duration
}

// udpLoad offers a fixed request rate over several flows and counts answers.
// Each request carries its send time, so the answer gives the round trip.
func udpLoad(ctx context.Context, t target, o options) (udpResult, error) {
	perFlow := time.Duration(float64(time.Second) * float64(o.udpFlows) / float64(o.udpRate))
	type out struct {
		sent, recv int
		lat        []time.Duration
		err        error
	}
	results := make(chan out, o.udpFlows)
	base := time.Now()
	end := base.Add(o.duration)
	for i := range o.udpFlows {
		go func() {
			dst, err := netip.ParseAddrPort(dialAddr(t, i))
			if err != nil {
				results <- out{err: err}
				return
			}
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
			if err != nil {
				results <- out{err: err}
				return
			}
			defer c.Close()
			var r out
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				_ = c.SetReadDeadline(end.Add(500 * time.Millisecond))
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if n >= 8 {
						r.recv++
						sent := time.Duration(binary.LittleEndian.Uint64(buf))
						r.lat = append(r.lat, time.Since(base)-sent)
					}
				}
			}()
			req := make([]byte, max(o.msgSize, 8))
			next := time.Now()
			for time.Now().Before(end) && ctx.Err() == nil {
				binary.LittleEndian.PutUint64(req, uint64(time.Since(base)))
				if _, err := c.Write(req); err == nil {
					r.sent++
				}
				next = next.Add(perFlow)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
			<-done
			results <- r
		}()
	}
	var total out
	for range o.udpFlows {
		r := <-results
		if r.err != nil {
			return udpResult{}, r.err
		}
		total.sent += r.sent
		total.recv += r.recv
		total.lat = append(total.lat, r.lat...)
	}
	res := udpResult{sent: total.sent, received: total.recv, rate: float64(total.recv) / o.duration.Seconds()}
	if len(total.lat) > 0 {
		slices.Sort(total.lat)
		res.p50 = total.lat[len(total.lat)/2]
		res.p99 = total.lat[len(total.lat)*99/100]
	}
	return res, nil
}

func printTable(targets []target, res []result, udp []udpResult, o options) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "target\tbulk GB/s\tkeep-alive req/s\tp50 µs\tp99 µs\tnew conn/s\terrors\t")
	for i, t := range targets {
		r := res[i]
		fmt.Fprintf(w, "%s\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n", t.name, r.bulkGBps, r.rrRate,
			float64(r.p50.Microseconds()), float64(r.p99.Microseconds()), r.connRate, r.errs)
	}
	w.Flush()
	if len(targets) > 2 {
		k, h := res[1], res[2]
		fmt.Println()
		fmt.Printf("kproxy / haproxy: throughput %.2fx (target >= 1.0), p99 %.2fx (target <= 1.2), new conn/s %.2fx (target >= 1.0), keep-alive req/s %.2fx\n",
			k.bulkGBps/h.bulkGBps, float64(k.p99)/float64(h.p99), k.connRate/h.connRate, k.rrRate/h.rrRate)
	}
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "UDP (%d flows, %d req/s offered)\tsent\tanswered\tanswered/s\tloss %%\tp50 µs\tp99 µs\t\n", o.udpFlows, o.udpRate)
	for i, u := range udp {
		loss := 0.0
		if u.sent > 0 {
			loss = 100 * float64(u.sent-u.received) / float64(u.sent)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f\t%.2f\t%d\t%d\t\n", targets[i].name, u.sent, u.received, u.rate, loss,
			u.p50.Microseconds(), u.p99.Microseconds())
	}
	w.Flush()
}
