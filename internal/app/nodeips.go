package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/kube"
	"github.com/kproxy/kproxy/internal/model"
)

// nodeWait is how long cluster mode waits for this node's Node object to learn
// its primary addresses, podCIDRWait how long for its pod CIDRs (kube-proxy
// waits as long for each), and nodePoll how often it asks.
const (
	nodeWait    = 30 * time.Second
	podCIDRWait = 5 * time.Minute
	nodePoll    = time.Second
)

// primaryNodePortAddresses resolves --nodeport-addresses=primary at start, as
// kube-proxy does: the node's primary address of each family, from its Node
// object in cluster mode and from the host's addresses in standalone mode (the
// addresses the standalone source gives the node). When none can be found,
// NodePorts answer on every node address, with a warning.
func primaryNodePortAddresses(ctx context.Context, log *slog.Logger, cfg config.Config) []netip.Prefix {
	var node *v1.Node
	if cfg.Standalone() {
		node = (&hostNode{name: cfg.HostnameOverride}).synthesize()
	} else {
		var err error
		if node, err = fetchNode(ctx, cfg, nodeWait, nil); err != nil {
			log.Warn("cannot learn this node's primary addresses; NodePorts answer on every node address", "err", err)
			return nil
		}
	}
	var out []netip.Prefix
	for _, ip := range primaryIPs(node) {
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	if len(out) == 0 {
		log.Warn("the node has no address; NodePorts answer on every node address", "node", node.Name)
		return nil
	}
	log.Info("NodePorts answer on the node's primary addresses", "addresses", fmt.Sprint(out))
	return out
}

// primaryIPs returns the node's first address of each family, InternalIPs
// before ExternalIPs, the first family found first.
func primaryIPs(node *v1.Node) []netip.Addr {
	var out []netip.Addr
	var have4, have6 bool
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if a.Type != typ || err != nil {
				continue
			}
			ip = ip.Unmap()
			if ip.Is4() && !have4 || ip.Is6() && !have6 {
				have4, have6 = have4 || ip.Is4(), have6 || ip.Is6()
				out = append(out, ip)
			}
		}
	}
	return out
}

// nodePodCIDRs resolves --detect-local-mode=NodeCIDR at start, as kube-proxy
// does: the Node's spec.podCIDRs become the prefixes that tell this node's pod
// traffic from the rest. It waits up to wait for the Node to have them; without
// them kproxy cannot tell which traffic to masquerade, and does not start.
func nodePodCIDRs(ctx context.Context, log *slog.Logger, cfg config.Config, wait time.Duration) ([]netip.Prefix, error) {
	node, err := fetchNode(ctx, cfg, wait, func(n *v1.Node) bool { return len(model.NodeFrom(n).PodCIDRs) > 0 })
	if err != nil {
		return nil, fmt.Errorf("--detect-local-mode NodeCIDR: no pod CIDR on the Node after %s: %w", wait, err)
	}
	cidrs := model.NodeFrom(node).PodCIDRs
	log.Info("local traffic is the node's pod CIDRs (--detect-local-mode NodeCIDR)", "podCIDRs", fmt.Sprint(cidrs))
	return cidrs, nil
}

// fetchNode reads this node's Node object, retrying until ready (nil: any)
// accepts it or wait has passed.
func fetchNode(ctx context.Context, cfg config.Config, wait time.Duration, ready func(*v1.Node) bool) (*v1.Node, error) {
	rc, err := kube.RESTConfig(kube.Config{Kubeconfig: cfg.Kubeconfig, Master: cfg.Master})
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		node, err := client.CoreV1().Nodes().Get(ctx, cfg.HostnameOverride, metav1.GetOptions{})
		if err == nil {
			if ready == nil || ready(node) {
				return node, nil
			}
			err = errors.New("not there yet")
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %q: %w", cfg.HostnameOverride, err)
		case <-time.After(nodePoll):
		}
	}
}
