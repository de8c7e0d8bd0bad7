// Command clusterup starts the test control plane of internal/cluster (etcd,
// kube-apiserver, kube-controller-manager on loopback) for manual use, prints
// its kubeconfig, and runs until interrupted:
//
//	hack/k8s/build.sh && go run ./hack/k8s/clusterup [-dir DIR] [-node NAME=IP ...]
//	kproxy run --kubeconfig DIR/admin.kubeconfig ...
//
// There is no kubelet: pods stay Pending unless something sets their status.
//
// With -real it starts the two-node cluster of internal/realcluster instead
// (kubelets, containerd, CNI; no service proxy yet). With -cleanup it removes
// what harnesses of internal/realcluster left behind when their process died
// (-cleanup ID for one, -cleanup stale for every one whose owner is gone):
//
//	go run ./hack/k8s/clusterup -cleanup stale
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/realcluster"
)

func main() { os.Exit(run()) }

type nodeFlags []cluster.NodeSpec

func (n *nodeFlags) String() string { return fmt.Sprint(*n) }

func (n *nodeFlags) Set(v string) error {
	name, ips, _ := strings.Cut(v, "=")
	spec := cluster.NodeSpec{Name: name}
	for _, s := range strings.Split(ips, ",") {
		if s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		spec.InternalIPs = append(spec.InternalIPs, ip)
	}
	*n = append(*n, spec)
	return nil
}

func run() int {
	var (
		opts  cluster.Options
		nodes nodeFlags
	)
	flag.StringVar(&opts.Dir, "dir", "", "directory for certificates, kubeconfig, data and logs (default: a temporary one, removed on exit)")
	flag.StringVar(&opts.ToolsDir, "tools", cluster.ToolsDir(), "directory with the binaries from hack/k8s/build.sh")
	flag.Var(&nodes, "node", "register a Node NAME=IP[,IP] (repeatable)")
	real := flag.Bool("real", false, "start the two-node cluster with kubelets of internal/realcluster")
	cleanup := flag.String("cleanup", "", "remove the leftovers of a real-cluster harness: its ID, or \"stale\" for every one whose process is gone")
	flag.Parse()
	if *cleanup != "" {
		return reap(*cleanup)
	}
	if *real {
		return runReal(opts.ToolsDir)
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "clusterup:", err)
			return 1
		}
	}
	opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterup:", err)
		return 1
	}
	defer c.Stop()
	for _, n := range nodes {
		if _, err := c.CreateNode(ctx, n); err != nil {
			fmt.Fprintln(os.Stderr, "clusterup:", err)
			return 1
		}
	}
	fmt.Printf("export KUBECONFIG=%s\n", c.Kubeconfig)
	fmt.Fprintln(os.Stderr, "clusterup: running; interrupt to stop")
	<-ctx.Done()
	return 0
}

// reap tears down the harness with the given ID, or every stale one.
func reap(which string) int {
	var dirs []string
	if which == "stale" {
		dirs = realcluster.Leftovers()
	} else {
		dirs = []string{realcluster.StateDirPrefix + which}
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	rc := 0
	for _, d := range dirs {
		s, err := realcluster.LoadState(d)
		if err != nil {
			fmt.Fprintln(os.Stderr, "clusterup:", err)
			rc = 1
			continue
		}
		if !s.Stale() {
			fmt.Fprintf(os.Stderr, "clusterup: harness %s still runs (process %d): stop it instead\n", s.ID, s.OwnerPID)
			rc = 1
			continue
		}
		if err := realcluster.Teardown(s, logf); err != nil {
			fmt.Fprintln(os.Stderr, "clusterup:", err)
			rc = 1
		}
	}
	if len(dirs) == 0 {
		fmt.Fprintln(os.Stderr, "clusterup: nothing to clean up")
	}
	return rc
}

// runReal starts the real two-node cluster and runs until interrupted.
func runReal(tools string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := realcluster.Start(ctx, realcluster.Options{
		ToolsDir: tools,
		Logf:     func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterup:", err)
		return 1
	}
	defer func() {
		if err := h.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "clusterup:", err)
		}
	}()
	// The test images, kproxy's (if `make image` made it) and kube-proxy's.
	archives, _ := filepath.Glob(filepath.Join(realcluster.ImagesDir(tools), "*.tar"))
	if _, err := os.Stat("bin/kproxy-image.tar"); err == nil {
		archives = append(archives, "bin/kproxy-image.tar")
	}
	kp := filepath.Join(h.Dir, "kube-proxy-image.tar")
	if err := realcluster.BuildKubeProxyImage(tools, kp); err != nil {
		fmt.Fprintln(os.Stderr, "clusterup:", err)
	} else {
		archives = append(archives, kp)
	}
	if err := h.ImportImages(ctx, archives...); err != nil {
		fmt.Fprintln(os.Stderr, "clusterup:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "clusterup: imported %v\n", archives)
	fmt.Printf("export KUBECONFIG=%s\n", h.Kubeconfig)
	for _, n := range h.Nodes {
		fmt.Fprintf(os.Stderr, "clusterup: %s %s netns %s containerd %s\n", n.Name, n.IP, n.Netns, n.Socket)
	}
	fmt.Fprintln(os.Stderr, "clusterup: running; interrupt to stop")
	<-ctx.Done()
	return 0
}
