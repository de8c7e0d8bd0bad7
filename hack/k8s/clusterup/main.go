// Command clusterup starts the test control plane of internal/cluster (etcd,
// kube-apiserver, kube-controller-manager on loopback) for manual use, prints
// its kubeconfig, and runs until interrupted:
//
//	hack/k8s/build.sh && go run ./hack/k8s/clusterup [-dir DIR] [-node NAME=IP ...]
//	kproxy run --kubeconfig DIR/admin.kubeconfig ...
//
// There is no kubelet: pods stay Pending unless something sets their status.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kproxy/kproxy/internal/cluster"
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
	flag.Parse()
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
