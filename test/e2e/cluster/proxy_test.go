package cluster_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kproxy/kproxy/internal/cluster"
)

// proxyRun is one node proxy (kproxy or upstream kube-proxy) running in its own
// network namespace, reaching the API server through a relay, with its metrics
// (kube-proxy's names: kproxy exports the same) read from inside the namespace.
type proxyRun struct {
	name    string
	ns      string
	nsPath  string
	proc    *cluster.Process
	relay   *cluster.Relay
	metrics *http.Client
	started time.Time

	peakMu            sync.Mutex
	peakMain, peakAll int64 // bytes of RSS: the proxy alone, and with its children (nft)
	stopSampler       chan struct{}
	synOnce           sync.Once
	syn               chan synReq
	synErr            error
	ctOnce            sync.Once
	ct                *netlink.Handle
	ctErr             error
	samplerDone       chan struct{}
}

// newNetns creates a named network namespace with loopback up, deleted at cleanup.
func newNetns(t testing.TB, prefix string) (name, path string) {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name = prefix + "-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", name, err, out)
	}
	return name, "/run/netns/" + name
}

// startProxy starts bin with args(kubeconfig) in namespace nsName (a new one when empty).
func startProxy(t testing.TB, c *cluster.Cluster, name, nsName, bin string, args func(kubeconfig string) []string) *proxyRun {
	t.Helper()
	p := &proxyRun{name: name, stopSampler: make(chan struct{}), samplerDone: make(chan struct{})}
	if nsName == "" {
		p.ns, p.nsPath = newNetns(t, "kpe2e-"+name)
	} else {
		p.ns, p.nsPath = nsName, "/run/netns/"+nsName
	}
	var err error
	if p.relay, err = c.RelayInto(p.nsPath); err != nil {
		t.Fatal(err)
	}
	p.metrics = cluster.HTTPClientIn(p.nsPath)
	p.started = time.Now()
	p.proc, err = c.StartProcess(name+"-"+p.ns, "ip", append([]string{"netns", "exec", p.ns, bin}, args(p.relay.Kubeconfig)...)...)
	if err != nil {
		t.Fatal(err)
	}
	go p.sample()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proxyRun) stop(t testing.TB) {
	select {
	case <-p.stopSampler:
		return
	default:
	}
	close(p.stopSampler)
	<-p.samplerDone
	p.proc.Stop(10 * time.Second)
	if t.Failed() {
		t.Logf("==== tail of %s log:\n%s", p.name, p.proc.LogTail())
	}
	_ = p.relay.Close()
}

// sample records the peak RSS of the proxy and of the proxy plus its children
// (kube-proxy runs nft for every sync; its memory counts too).
func (p *proxyRun) sample() {
	defer close(p.samplerDone)
	pid := p.proc.PID()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		main := rssOf(pid)
		all := main
		for _, child := range childrenOf(pid) {
			all += rssOf(child)
		}
		p.peakMu.Lock()
		p.peakMain = max(p.peakMain, main)
		p.peakAll = max(p.peakAll, all)
		p.peakMu.Unlock()
		select {
		case <-p.stopSampler:
			return
		case <-tick.C:
		}
	}
}

// peaks returns the peak RSS seen (proxy alone, proxy with children) and the
// kernel's own high-water mark for the proxy process.
func (p *proxyRun) peaks() (main, all, hwm int64) {
	p.peakMu.Lock()
	defer p.peakMu.Unlock()
	return p.peakMain, p.peakAll, statusKB(p.proc.PID(), "VmHWM:") * 1024
}

func rssOf(pid int) int64 { return statusKB(pid, "VmRSS:") * 1024 }

func statusKB(pid int, field string) int64 {
	if pid == 0 {
		return 0
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// childrenOf lists the descendants of pid. Each thread lists the children it
// forked, so every task of a multi-threaded proxy is read.
func childrenOf(pid int) []int {
	if pid == 0 {
		return nil
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
				out = append(out, childrenOf(n)...)
			}
		}
	}
	return out
}

// scrape reads the proxy's metrics by name, labels folded.
func (p *proxyRun) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10249/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.metrics.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		// Counters and histograms are summed over their labels (families,
		// protocols); a timestamp is the latest of its series.
		if strings.HasSuffix(name, "_timestamp_seconds") {
			out[name] = max(out[name], v)
		} else {
			out[name] += v
		}
	}
	return out, sc.Err()
}

const lastSyncMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

// waitFirstSync waits until the proxy reports a completed sync and returns the
// time from process start to the end of that sync.
func (p *proxyRun) waitFirstSync(ctx context.Context, t testing.TB) time.Duration {
	t.Helper()
	for {
		m, err := p.scrape(ctx)
		if err == nil && m[lastSyncMetric] > 0 {
			ts := time.Unix(0, int64(m[lastSyncMetric]*1e9))
			return ts.Sub(p.started)
		}
		if !p.proc.Running() {
			t.Fatalf("%s exited: %v\n%s", p.name, p.proc.Wait(), p.proc.LogTail())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no completed sync (last scrape error: %v)", p.name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kproxyBinary builds kproxy once per test binary run.
var kproxyBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "kproxy-e2e-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kproxy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/kproxy/kproxy/cmd/kproxy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build kproxy: %w: %s", err, out)
	}
	return bin, nil
})

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// enableProbes gives the proxy's namespace a route for every destination (a
// veth pair inside it, default route via the peer) so that a connect to a
// service IP leaves the socket layer and goes through the NAT hooks.
func enableProbes(t testing.TB, ns string) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", "probe0", "type", "veth", "peer", "name", "probe1"},
		{"addr", "add", "192.168.99.1/24", "dev", "probe0"},
		{"link", "set", "probe0", "up"},
		{"link", "set", "probe1", "up"},
		{"route", "add", "default", "via", "192.168.99.2"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in %s: %v: %s", args, ns, err, out)
		}
	}
}

var probePort atomic.Int32

// probe sends one TCP SYN from inside the namespace to dst and returns the
// address the kernel translated it to (from the conntrack entry), or an
// invalid address when it was not translated. It reads the kernel's state,
// whatever the proxy's metrics claim.
func (p *proxyRun) probe(ctx context.Context, dst netip.AddrPort) (netip.Addr, error) {
	port := 20000 + int(probePort.Add(1))%20000
	if err := p.sendSYN(port, dst); err != nil {
		return netip.Addr{}, err
	}
	// A netlink dump of the namespace's conntrack table: a few hundred
	// microseconds, where running conntrack(8) costs milliseconds.
	h, err := p.conntrackHandle()
	if err != nil {
		return netip.Addr{}, err
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("conntrack dump: %w", err)
	}
	for _, f := range flows {
		if f.Forward.Protocol != 6 || f.Forward.SrcPort != uint16(port) || !f.Forward.DstIP.Equal(dst.Addr().AsSlice()) {
			continue
		}
		ep, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
		if !ok || ep.Unmap() == dst.Addr() {
			return netip.Addr{}, nil
		}
		return ep.Unmap(), nil
	}
	return netip.Addr{}, nil
}

// sendSYN makes the kernel send one TCP SYN from the namespace: a
// non-blocking connect returns as soon as the SYN is out, and closing the
// socket leaves the conntrack entry behind. It runs on a thread that stays in
// the namespace, so a probe costs microseconds, not a thread.
func (p *proxyRun) sendSYN(port int, dst netip.AddrPort) error {
	p.synOnce.Do(func() {
		p.syn = make(chan synReq)
		started := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			ns, err := netns.GetFromPath(p.nsPath)
			if err == nil {
				err = netns.Set(ns)
				ns.Close()
			}
			started <- err
			if err != nil {
				return
			}
			for {
				select {
				case r := <-p.syn:
					r.err <- syn(r.port, r.dst)
				case <-p.stopSampler:
					return
				}
			}
		}()
		p.synErr = <-started
	})
	if p.synErr != nil {
		return fmt.Errorf("probe thread: %w", p.synErr)
	}
	r := synReq{port: port, dst: dst, err: make(chan error, 1)}
	p.syn <- r
	return <-r.err
}

type synReq struct {
	port int
	dst  netip.AddrPort
	err  chan error
}

func syn(port int, dst netip.AddrPort) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return fmt.Errorf("bind :%d: %w", port, err)
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("connect %v: %w", dst, err)
	}
	return nil
}

// conntrackHandle opens (once) a netlink handle in the proxy's namespace.
func (p *proxyRun) conntrackHandle() (*netlink.Handle, error) {
	p.ctOnce.Do(func() {
		ns, err := netns.GetFromPath(p.nsPath)
		if err != nil {
			p.ctErr = fmt.Errorf("open netns: %w", err)
			return
		}
		defer ns.Close()
		p.ct, p.ctErr = netlink.NewHandleAt(ns)
	})
	return p.ct, p.ctErr
}
