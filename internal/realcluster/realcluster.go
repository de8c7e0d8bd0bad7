// Package realcluster runs a real Kubernetes v1.37.2 cluster on one machine
// for kproxy's end-to-end tests: the control plane of internal/cluster (etcd,
// kube-apiserver, kube-controller-manager with every default controller) plus
// kube-scheduler, and nodes that each live in their own network namespace with
// their own containerd and kubelet. Pods are real containers (runc), on a CNI
// bridge per node (bridge + host-local), with routes between the nodes' pod
// CIDRs. Images are imported from archives; nothing is pulled.
//
// The machine's root network namespace gets one bridge (the nodes' link, with
// the API server's address), routes of the service and pod CIDRs into it, and
// one nftables table that drops anything forwarded from the bridge to another
// interface: no packet of the cluster leaves the machine. The service proxies
// (kproxy, kube-proxy) run as DaemonSets with host networking, so their
// nftables tables and conntrack sysctls are in the nodes' namespaces.
//
// Everything the harness makes is recorded in DIR/state.json (DIR is
// /tmp/kpx-ID) and removed by Stop, on success and on failure, and by the next
// harness (or `go run ./hack/k8s/clusterup -cleanup`) if the process died.
package realcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/testenv"
)

// Tools are the binaries the harness needs in the tools directory, besides
// those of internal/cluster.
var Tools = []string{"kubelet", "kube-scheduler"}

// Commands are the machine's commands the harness runs.
var Commands = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "ip", "nft"}

// CNIBinDir holds Debian's containernetworking-plugins.
const CNIBinDir = "/usr/lib/cni"

// Versions the harness and the e2e framework agree on.
const (
	PauseImage   = "registry.k8s.io/pause:3.10.2"
	ServiceCIDR  = "10.96.0.0/16"
	KubeDNSIP    = "10.96.0.10"
	ClusterDNS   = "cluster.local"
	nodePrefix   = "node-"
	kubeletPort  = 10250
	stopGraceful = 5 * time.Second
)

// Options configure a harness. The zero value makes two nodes.
type Options struct {
	// ToolsDir holds the binaries (default cluster.ToolsDir()).
	ToolsDir string
	// Nodes is the number of nodes (default 2).
	Nodes int
	// Logf receives progress lines.
	Logf func(format string, args ...any)
}

// Harness is a running cluster.
type Harness struct {
	*cluster.Cluster
	ID       string
	Dir      string
	Bridge   string
	Subnet   netip.Prefix
	BridgeIP netip.Addr
	// ClusterCIDR holds the nodes' pod CIDRs (node N: the Nth /24):
	// 10.244.0.0/16, or the next /16 up that no other harness on the machine
	// routes (the API server reaches pods, for services/proxy and
	// pods/proxy, through the root namespace's routes, one set per prefix).
	ClusterCIDR netip.Prefix
	Nodes       []*Node

	opts      Options
	state     *State
	scheduler *cluster.Process
	stopOnce  sync.Once
	stopErr   error
	sigStop   func() bool
}

// Node is one kubelet node.
type Node struct {
	Name    string
	Index   int
	IP      netip.Addr
	PodCIDR netip.Prefix
	// Netns is the node's network namespace (a name under /run/netns).
	Netns      string
	Dir        string
	CgroupRoot string
	Socket     string // containerd's socket

	containerd, kubelet *cluster.Process
}

// NetnsPath is the node namespace's file.
func (n *Node) NetnsPath() string { return "/run/netns/" + n.Netns }

// ForTest starts a harness for a test and stops it when the test ends (and on
// SIGINT/SIGTERM). Without root, the tools or the commands it skips the test
// (fails it in CI).
func ForTest(t testing.TB, opts Options) *Harness {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, Commands...)
	if opts.ToolsDir == "" {
		opts.ToolsDir = cluster.ToolsDir()
	}
	if missing := cluster.MissingTools(opts.ToolsDir, append(cluster.Tools, Tools...)...); len(missing) > 0 {
		testenv.Unavailable(t, "missing %v in %s: run hack/k8s/build.sh", missing, opts.ToolsDir)
	}
	if _, err := os.Stat(filepath.Join(CNIBinDir, "bridge")); err != nil {
		testenv.Unavailable(t, "missing the CNI plugins in %s: install containernetworking-plugins", CNIBinDir)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			h.DumpLogs(t.Logf)
		}
		if err := h.Stop(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return h
}

func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start brings the cluster up: network, control plane, scheduler, and the
// nodes' containerd and kubelet, until every node is Ready. No service proxy
// runs yet: see DeployKproxy and DeployKubeProxy, then DeployCoreDNS.
func Start(ctx context.Context, opts Options) (_ *Harness, err error) {
	if opts.ToolsDir == "" {
		opts.ToolsDir = cluster.ToolsDir()
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	for _, d := range Leftovers() {
		if s, err := LoadState(d); err == nil {
			opts.Logf("realcluster: removing the leftovers of harness %s (owner %d gone)", s.ID, s.OwnerPID)
			if err := Teardown(s, opts.Logf); err != nil {
				opts.Logf("realcluster: leftovers of %s: %v", s.ID, err)
			}
		}
	}
	id := randomID()
	h := &Harness{ID: id, Dir: StateDirPrefix + id, Bridge: "kpx-h" + id, opts: opts}
	if err := os.Mkdir(h.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("harness dir: %w", err)
	}
	h.state = &State{ID: id, OwnerPID: os.Getpid(), OwnerStart: processStart(os.Getpid()), Dir: h.Dir, Bridge: h.Bridge, Table: h.Bridge}
	if err := h.state.save(); err != nil {
		return nil, err
	}
	h.catchSignals()
	defer func() {
		if err != nil {
			h.DumpLogs(opts.Logf)
			if serr := h.Stop(); serr != nil {
				opts.Logf("realcluster: teardown after a failed start: %v", serr)
			}
		}
	}()
	start := time.Now()
	if err := os.MkdirAll(filepath.Join(h.Dir, "cp"), 0o755); err != nil {
		return nil, err
	}
	if err := h.setupNetwork(); err != nil {
		return nil, err
	}
	h.Cluster, err = cluster.Start(ctx, cluster.Options{
		ToolsDir:           opts.ToolsDir,
		Dir:                filepath.Join(h.Dir, "cp"),
		ServiceCIDRs:       ServiceCIDR,
		Controllers:        []string{"*"},
		AdvertiseAddress:   h.BridgeIP.String(),
		BindAddress:        h.BridgeIP.String(),
		AuthorizationModes: "Node,RBAC",
		APIServerArgs: []string{
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-preferred-address-types=InternalIP",
		},
		Logf: opts.Logf,
	})
	if err != nil {
		return nil, err
	}
	if err := h.startScheduler(); err != nil {
		return nil, err
	}
	for _, n := range h.Nodes {
		if err := h.startNode(ctx, n); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := h.waitNodesReady(ctx); err != nil {
		return nil, err
	}
	opts.Logf("realcluster %s: %d nodes ready in %v (dir %s)", id, len(h.Nodes), time.Since(start).Round(time.Millisecond), h.Dir)
	return h, nil
}

// running are the process's harnesses, which SIGINT and SIGTERM (an
// interrupted `go test`) tear down, all of them, before the process exits.
var running struct {
	sync.Mutex
	set     map[*Harness]bool
	watched bool
}

func (h *Harness) catchSignals() {
	running.Lock()
	defer running.Unlock()
	if running.set == nil {
		running.set = map[*Harness]bool{}
	}
	running.set[h] = true
	h.sigStop = func() bool {
		running.Lock()
		defer running.Unlock()
		delete(running.set, h)
		return true
	}
	if running.watched {
		return
	}
	running.watched = true
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		running.Lock()
		hs := make([]*Harness, 0, len(running.set))
		for r := range running.set {
			hs = append(hs, r)
		}
		running.Unlock()
		var wg sync.WaitGroup
		for _, r := range hs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.opts.Logf("realcluster %s: %v: tearing down", r.ID, sig)
				_ = r.Stop()
			}()
		}
		wg.Wait()
		os.Exit(2)
	}()
}

// Stop removes everything the harness made. It can be called more than once.
func (h *Harness) Stop() error {
	h.stopOnce.Do(func() {
		var errs []error
		for _, n := range h.Nodes {
			if n.kubelet != nil {
				n.kubelet.Stop(stopGraceful)
			}
		}
		if h.scheduler != nil {
			h.scheduler.Stop(stopGraceful)
		}
		if h.Cluster != nil {
			// Before the nodes' teardown: nothing then recreates pods.
			h.Cluster.Stop()
		}
		if err := Teardown(h.state, h.opts.Logf); err != nil {
			errs = append(errs, err)
		}
		if h.sigStop != nil {
			h.sigStop()
		}
		h.stopErr = errors.Join(errs...)
	})
	return h.stopErr
}

// DumpLogs writes the tails of the components' logs.
func (h *Harness) DumpLogs(logf func(string, ...any)) {
	for _, n := range h.Nodes {
		for _, p := range []*cluster.Process{n.kubelet, n.containerd} {
			if p != nil {
				logf("==== %s: tail of %s:\n%s", n.Name, p.LogPath(), p.LogTail())
			}
		}
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// pickSubnet returns a /24 in 172.31.0.0/16 that no interface of the root
// namespace uses (parallel harnesses get different ones).
func pickSubnet() (netip.Prefix, error) {
	used := map[netip.Prefix]bool{}
	ifaces, _ := net.Interfaces()
	for _, i := range ifaces {
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				if b, err := p.Addr().Prefix(24); err == nil {
					used[b] = true
				}
			}
		}
	}
	for range 50 {
		b := make([]byte, 1)
		_, _ = rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 31, b[0], 0}), 24)
		if !used[p] {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /24 in 172.31.0.0/16")
}

// setupNetwork makes the bridge, the nftables table, the node namespaces and
// their links and routes.
func (h *Harness) setupNetwork() error {
	var err error
	if h.Subnet, err = pickSubnet(); err != nil {
		return err
	}
	// Held until the pod CIDR routes exist, so that two harnesses starting
	// at once do not pick the same cluster CIDR. An abstract socket: nothing
	// is left on the file system.
	lock, err := lockMachine("kpx-realcluster-cidr")
	if err != nil {
		return err
	}
	defer lock.Close()
	if h.ClusterCIDR, err = pickClusterCIDR(); err != nil {
		return err
	}
	h.BridgeIP = h.Subnet.Addr().Next()
	if err := run("ip", "link", "add", h.Bridge, "type", "bridge"); err != nil {
		return err
	}
	table := fmt.Sprintf(`table inet %[1]s {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		# The cluster stays on the machine: nothing from its bridge is routed
		# to another interface.
		iifname "%[1]s" oifname != "%[1]s" counter drop
		oifname "%[1]s" iifname != "%[1]s" counter drop
	}
}
`, h.Bridge)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft table %s: %v: %s", h.Bridge, err, out)
	}
	if err := run("ip", "addr", "add", netip.PrefixFrom(h.BridgeIP, 24).String(), "dev", h.Bridge); err != nil {
		return err
	}
	if err := run("ip", "link", "set", h.Bridge, "up"); err != nil {
		return err
	}
	base := h.BridgeIP.As4()
	for i := 1; i <= h.opts.Nodes; i++ {
		ip := base
		ip[3] = byte(10 + i)
		n := &Node{
			Name:       nodePrefix + strconv.Itoa(i),
			Index:      i,
			IP:         netip.AddrFrom4(ip),
			PodCIDR:    netip.PrefixFrom(nthSubnet(h.ClusterCIDR, i), 24),
			Netns:      fmt.Sprintf("kpx-%s-n%d", h.ID, i),
			Dir:        filepath.Join(h.Dir, "n"+strconv.Itoa(i)),
			CgroupRoot: fmt.Sprintf("/kpx-%s-n%d", h.ID, i),
		}
		n.Socket = filepath.Join(n.Dir, "containerd.sock")
		h.Nodes = append(h.Nodes, n)
		h.state.Netns = append(h.state.Netns, n.Netns)
		h.state.CgroupRoots = append(h.state.CgroupRoots, n.CgroupRoot)
		h.state.CNINetworks = append(h.state.CNINetworks, n.cniNetwork(h.ID))
		if err := h.state.save(); err != nil {
			return err
		}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		if err := run("ip", "netns", "add", n.Netns); err != nil {
			return err
		}
		veth := fmt.Sprintf("kpx%sn%d", h.ID, i)
		steps := [][]string{
			{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
			{"ip", "link", "set", veth, "master", h.Bridge, "up"},
			{"ip", "-n", n.Netns, "link", "set", "lo", "up"},
			{"ip", "-n", n.Netns, "addr", "add", netip.PrefixFrom(n.IP, 24).String(), "dev", "eth0"},
			{"ip", "-n", n.Netns, "link", "set", "eth0", "up"},
			// A ClusterIP with no rule for it (yet) goes to the root
			// namespace, which forwards nothing, instead of failing with
			// "Network is unreachable" before the proxy's NAT could run.
			{"ip", "-n", n.Netns, "route", "add", ServiceCIDR, "via", h.BridgeIP.String(), "src", n.IP.String()},
			{"ip", "netns", "exec", n.Netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		}
		for _, s := range steps {
			if err := run(s[0], s[1:]...); err != nil {
				return err
			}
		}
		// Pods reach the API server with the node's address: its replies
		// then need no route to a pod CIDR in the root namespace, which
		// another harness running at the same time may own.
		nat := fmt.Sprintf(`table ip kpx-node {
	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		oifname "eth0" ip saddr %s ip daddr %s masquerade
	}
}
`, n.PodCIDR, h.BridgeIP)
		cmd := exec.Command("ip", "netns", "exec", n.Netns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(nat)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %v: %s", n.Netns, err, out)
		}
	}
	// Routes between the nodes' pod CIDRs, with the node's own address as the
	// source (what a client of another node's NodePort must see), and from
	// the root namespace (the API server reaches pods: services/proxy).
	for _, n := range h.Nodes {
		for _, o := range h.Nodes {
			if o != n {
				if err := run("ip", "-n", n.Netns, "route", "add", o.PodCIDR.String(), "via", o.IP.String(), "src", n.IP.String()); err != nil {
					return err
				}
			}
		}
		if err := run("ip", "route", "add", n.PodCIDR.String(), "via", n.IP.String(), "dev", h.Bridge, "metric", h.metric()); err != nil {
			return err
		}
	}
	// Anything of the machine's own addressed to a ClusterIP goes into the
	// bridge, never out of the default route.
	if err := run("ip", "route", "add", ServiceCIDR, "dev", h.Bridge, "metric", h.metric()); err != nil {
		return err
	}
	return nil
}

// lockMachine takes a machine-wide lock: an abstract unix socket named name,
// retried for up to a minute while another process holds it.
func lockMachine(name string) (io.Closer, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		l, err := net.Listen("unix", "@"+name)
		if err == nil {
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pickClusterCIDR returns the first of 10.244.0.0/16, 10.245.0.0/16, ...
// that no route of the root namespace falls in.
func pickClusterCIDR() (netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip route: %w", err)
	}
	var routed []netip.Prefix
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil {
			routed = append(routed, p)
		}
	}
	for b := 244; b < 254; b++ {
		c := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(b), 0, 0}), 16)
		free := true
		for _, r := range routed {
			if c.Overlaps(r) {
				free = false
			}
		}
		if free {
			return c, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /16 in 10.244.0.0-10.253.255.255 for the pod CIDRs")
}

// nthSubnet is the address of the nth /24 of a /16.
func nthSubnet(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	a[2] = byte(n)
	return netip.AddrFrom4(a)
}

// metric is the harness's route metric: routes for the same prefix from two
// harnesses (parallel runs) then differ and can be added and removed apart.
func (h *Harness) metric() string {
	v, _ := strconv.ParseUint(h.ID, 16, 32)
	return strconv.FormatUint(1000+v%60000, 10)
}

func (n *Node) cniNetwork(id string) string { return fmt.Sprintf("kpx-%s-n%d", id, n.Index) }
