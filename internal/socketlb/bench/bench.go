// Package bench measures kproxy's socket LB (kproxy-bench-socketlb): bulk TCP,
// connect and request/response latency and new connections per second from a
// pod through a cluster IP, by the socket LB and by nftables DNAT, against the
// pod reaching the endpoint directly, alternating the paths in one run; and
// the BPF maps' cold load, one endpoint change and kernel memory at scale.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/socketlb"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
)

// runT lets the test harnesses run outside go test; a failure panics with
// the message and Run turns it into an error.
type runT struct{ cleanups []func() }

type failure string

func (r *runT) Helper()                   {}
func (r *runT) Fatal(args ...any)         { panic(failure(fmt.Sprint(args...))) }
func (r *runT) Fatalf(f string, a ...any) { panic(failure(fmt.Sprintf(f, a...))) }
func (r *runT) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *runT) close() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
}

// guard runs f with a fresh runT, cleaning up after it and turning a Fatal
// into an error.
func guard(f func(rt *runT) error) (err error) {
	rt := &runT{}
	defer rt.close()
	defer func() {
		if p := recover(); p != nil {
			if msg, ok := p.(failure); ok {
				err = errors.New(string(msg))
				return
			}
			panic(p)
		}
	}()
	return f(rt)
}

// Run is the kproxy-bench-socketlb command.
func Run(args []string) int {
	fs := flag.NewFlagSet("kproxy-bench-socketlb", flag.ContinueOnError)
	rounds := fs.Int("rounds", 6, "rounds of the traffic measurements; each round runs every path once, in a rotating order")
	mib := fs.Int("mib", 512, "MiB sent per bulk measurement")
	conns := fs.Int("conns", 2000, "connections (and round trips) timed per path and round")
	services := fs.Int("services", 10000, "services (10 endpoints each) for the map measurements")
	changes := fs.Int("changes", 300, "single endpoint changes timed")
	only := fs.String("only", "", "traffic or maps: run only that part")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "kproxy-bench-socketlb: needs root (network namespaces, a test cgroup, BPF)")
		return 1
	}
	fmt.Printf("kproxy-bench-socketlb on %s, %d CPUs\n\n", kernelRelease(), numCPU())
	if *only != "maps" {
		res, err := Traffic(*rounds, *mib, *conns)
		if err != nil {
			fmt.Fprintln(os.Stderr, "traffic:", err)
			return 1
		}
		res.Print(os.Stdout)
	}
	if *only != "traffic" {
		res, err := Maps(*services, *changes)
		if err != nil {
			fmt.Fprintln(os.Stderr, "maps:", err)
			return 1
		}
		res.Print(os.Stdout)
	}
	return 0
}

// Paths measured.
const (
	PathDirect   = "pod → pod direct"
	PathSocketLB = "pod → ClusterIP, socket LB"
	PathNFTables = "pod → ClusterIP, nftables DNAT"
)

var paths = []string{PathDirect, PathSocketLB, PathNFTables}

// TrafficResult holds every round's result per path.
type TrafficResult struct {
	Rounds       int
	MiB, Conns   int
	Results      map[string][]PathResult
	Translations uint64 // connects the socket LB translated during the run
}

// Traffic measures the three paths from a client pod to a server pod on one
// node, alternating them.
func Traffic(rounds, mib, conns int) (TrafficResult, error) {
	res := TrafficResult{Rounds: rounds, MiB: mib, Conns: conns, Results: map[string][]PathResult{}}
	err := guard(func(rt *runT) error {
		node := netnstest.NewNode(rt)
		server, client := node.AddPod(rt, "server"), node.AddPod(rt, "client")
		// Tens of thousands of connects from one client to one server: a wide
		// port range and TIME_WAIT reuse in the client pod (its own netns).
		client.MustExec("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1")
		if err := serve(rt, server); err != nil {
			return err
		}
		tr := newTracker()
		// Three services: the line server (connect latency), the sink (bulk)
		// and the echo (request/response), each with the server pod alone.
		for i, port := range []int32{8080, 9000, 9001} {
			tr.OnServiceAdd(service(i, clusterIP(i), port))
			tr.OnEndpointSliceAdd(slice(i, port, server.V4))
		}
		snap := tr.Snapshot()
		nft, err := nftables.New(nftables.Config{NetNSPath: node.Path(), IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Logger: slog.New(slog.DiscardHandler)}, nil)
		if err != nil {
			return err
		}
		rt.Cleanup(func() { nft.Close() })
		if err := nft.Sync(context.Background(), snap, true); err != nil {
			return err
		}
		sb := lbtest.New(rt)
		slb, err := socketlb.New(socketlb.Config{CgroupPath: sb.Cgroup, PinDir: sb.PinDir,
			NodeAddrs: func() ([]netip.Addr, error) { return node.Addrs(), nil }}, nil)
		if err != nil {
			return err
		}
		rt.Cleanup(func() { slb.Close() })
		if err := slb.Sync(context.Background(), snap, true); err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		vip := func(i int) string { return netip.AddrPortFrom(clusterIP(i), 80).String() }
		direct := func(port int) string { return netip.AddrPortFrom(server.V4, uint16(port)).String() }
		for round := 0; round < rounds; round++ {
			order := slices.Clone(paths)
			for k := 0; k < round%len(paths); k++ {
				order = append(order[1:], order[0])
			}
			for _, path := range order {
				var cmd *exec.Cmd
				var dsts []string
				switch path {
				case PathDirect:
					cmd = exec.Command("ip", "netns", "exec", client.Name, exe)
					dsts = []string{direct(9000), direct(8080), direct(9001)}
				case PathSocketLB:
					cmd = sb.Command(client.Name, exe)
					dsts = []string{vip(1), vip(0), vip(2)}
				case PathNFTables:
					cmd = exec.Command("ip", "netns", "exec", client.Name, exe)
					dsts = []string{vip(1), vip(0), vip(2)}
				}
				cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(append(dsts, strconv.Itoa(mib), strconv.Itoa(conns)), " "))
				cmd.Stderr = os.Stderr
				out, err := cmd.Output()
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				var r PathResult
				if err := json.Unmarshal(out, &r); err != nil {
					return fmt.Errorf("%s: %q: %w", path, out, err)
				}
				res.Results[path] = append(res.Results[path], r)
			}
		}
		for _, n := range slb.Translations() {
			res.Translations += n
		}
		return nil
	})
	return res, err
}

// serve starts, in the pod, a line server on 8080 (a line, then close), a
// sink on 9000 (reads to EOF, answers one byte) and an echo on 9001.
func serve(rt *runT, pod *netnstest.Pod) error {
	handlers := map[int]func(net.Conn){
		// The client closes first, so TIME_WAIT stays on its side, where
		// tcp_tw_reuse lets the next connects reuse the ports.
		8080: func(c net.Conn) {
			_, _ = c.Write([]byte("server\n"))
			_, _ = io.Copy(io.Discard, c)
		},
		9000: func(c net.Conn) {
			_, _ = io.Copy(io.Discard, c)
			_, _ = c.Write([]byte{1})
		},
		9001: func(c net.Conn) {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			_, _ = io.Copy(c, c)
		},
	}
	return pod.Do(func() error {
		for port, h := range handlers {
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			rt.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { h(c); c.Close() }()
				}
			}()
		}
		return nil
	})
}

// Print writes the traffic table: medians over the rounds, and the ratio to
// the direct path.
func (r TrafficResult) Print(w io.Writer) {
	fmt.Fprintf(w, "Traffic, one node, client pod → server pod (IPv4): %d rounds, paths alternating; medians over the rounds\n", r.Rounds)
	fmt.Fprintf(w, "(bulk: %d MiB per round; latency: p50 of %d connects / %d one-byte round trips per round)\n\n", r.MiB, r.Conns, r.Conns)
	fmt.Fprintf(w, "| path | bulk MB/s | × direct | connect p50 µs | × direct | req/resp p50 µs | × direct | new conn/s | × direct |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	med := func(path string, f func(PathResult) float64) float64 {
		var v []float64
		for _, x := range r.Results[path] {
			v = append(v, f(x))
		}
		return median(v)
	}
	fields := []func(PathResult) float64{
		func(x PathResult) float64 { return x.MBps }, func(x PathResult) float64 { return x.ConnectP50 },
		func(x PathResult) float64 { return x.RRP50 }, func(x PathResult) float64 { return x.ConnsPerSec },
	}
	for _, path := range paths {
		fmt.Fprintf(w, "| %s |", path)
		for _, f := range fields {
			v, d := med(path, f), med(PathDirect, f)
			fmt.Fprintf(w, " %.0f | %.3f |", v, v/d)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\nThe socket LB translated %d connects in this run (it must be every socket LB connect: %d per round).\n\n",
		r.Translations, r.Conns+2)
}

// MapsResult is the socket LB's map work at scale.
type MapsResult struct {
	Services, Endpoints int
	ColdSeconds         []float64
	ColdCPUSeconds      []float64 // user+system CPU of the process during the cold load
	ChangeMicros        []float64 // one endpoint change: Sync of the snapshot
	MapMemory           map[string]uint64
}

// Maps loads n services with 10 endpoints each into fresh maps (3 times),
// then times single endpoint changes and reads the maps' kernel memory.
func Maps(n, changes int) (MapsResult, error) {
	res := MapsResult{Services: n, Endpoints: 10 * n}
	tr := newTracker()
	for i := 0; i < n; i++ {
		tr.OnServiceAdd(service(i, clusterIP(i), 8080))
		tr.OnEndpointSliceAdd(slice(i, 8080, endpoints(i, 0)...))
	}
	snap := tr.Snapshot()
	err := guard(func(rt *runT) error {
		var p *socketlb.Proxier
		for rep := 0; rep < 3; rep++ {
			if p != nil {
				p.Close()
				rt.close()
			}
			sb := lbtest.New(rt)
			var err error
			// NodeAddrs unset: every sync reads this namespace's addresses,
			// as kproxy does.
			p, err = socketlb.New(socketlb.Config{CgroupPath: sb.Cgroup, PinDir: sb.PinDir}, nil)
			if err != nil {
				return err
			}
			c0 := cpuSeconds()
			t0 := time.Now()
			if err := p.Sync(context.Background(), snap, true); err != nil {
				return err
			}
			res.ColdSeconds = append(res.ColdSeconds, time.Since(t0).Seconds())
			res.ColdCPUSeconds = append(res.ColdCPUSeconds, cpuSeconds()-c0)
		}
		defer p.Close()
		var err error
		if res.MapMemory, err = p.MapMemory(); err != nil {
			return err
		}
		for k := 1; k <= changes; k++ {
			i := (k * 7919) % n
			eps := endpoints(i, 0)
			eps[k%10] = endpointIP(i, k%10, 1+k%2)
			tr.OnEndpointSliceUpdate(nil, slice(i, 8080, eps...))
			s := tr.Snapshot()
			t0 := time.Now()
			if err := p.Sync(context.Background(), s, false); err != nil {
				return err
			}
			res.ChangeMicros = append(res.ChangeMicros, float64(time.Since(t0).Nanoseconds())/1000)
		}
		return nil
	})
	return res, err
}

// Print writes the map table.
func (r MapsResult) Print(w io.Writer) {
	fmt.Fprintf(w, "BPF maps: %d services × 10 endpoints (%d endpoints)\n\n", r.Services, r.Endpoints)
	fmt.Fprintf(w, "| measure | value |\n|---|---|\n")
	cold := slices.Clone(r.ColdSeconds)
	sort.Float64s(cold)
	fmt.Fprintf(w, "| cold load into empty maps (best / median of %d) | %.3f s / %.3f s |\n", len(cold), cold[0], median(cold))
	fmt.Fprintf(w, "| CPU time of that cold load (median; the wall time above includes waiting for a CPU) | %.3f s |\n", median(r.ColdCPUSeconds))
	ch := slices.Clone(r.ChangeMicros)
	sort.Float64s(ch)
	fmt.Fprintf(w, "| one endpoint change, sync (p50 / p99 of %d) | %.0f µs / %.0f µs |\n", len(ch), median(ch), ch[len(ch)*99/100])
	var total uint64
	names := make([]string, 0, len(r.MapMemory))
	for name, n := range r.MapMemory {
		total += n
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "| kernel memory, %s | %.1f MiB |\n", name, float64(r.MapMemory[name])/(1<<20))
	}
	fmt.Fprintf(w, "| kernel memory, all maps | %.1f MiB |\n\n", float64(total)/(1<<20))
}

// Synthetic IP plan: service i has cluster IP 10.96.0.0 + i and endpoints
// 10.128.0.0 + 10*i + j (generation g adds g<<19), port 8080.
func clusterIP(i int) netip.Addr { return addAddr(netip.MustParseAddr("10.96.0.0"), i) }

func endpointIP(i, j, gen int) netip.Addr {
	return addAddr(netip.MustParseAddr("10.128.0.0"), (i*10+j)+gen*(1<<19))
}

func addAddr(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func endpoints(i, gen int) []netip.Addr {
	out := make([]netip.Addr, 10)
	for j := range out {
		out[j] = endpointIP(i, j, gen)
	}
	return out
}

func service(i int, ip netip.Addr, target int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: ip.String(), ClusterIPs: []string{ip.String()},
			Ports: []v1.ServicePort{{Name: "tcp", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(target)}},
		},
	}
}

func slice(i int, port int32, ips ...netip.Addr) *discovery.EndpointSlice {
	name, proto, yes, no := "tcp", v1.ProtocolTCP, true, false
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d-abc", i),
			Labels: map[string]string{discovery.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	node := "bench"
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip.String()}, NodeName: &node,
			Conditions: discovery.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}})
	}
	return s
}

func newTracker() *model.Tracker {
	tr := model.NewTracker("bench", nil)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench"}})
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	return tr
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}

// cpuSeconds is the process's user and system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func numCPU() int { return runtime.NumCPU() }
