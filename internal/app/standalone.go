package app

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/healthcheck"
	"github.com/kproxy/kproxy/internal/manifest"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

type manifestSource struct{ s *manifest.Source }

func (m manifestSource) run(ctx context.Context) error { return m.s.Run(ctx) }

func (m manifestSource) errors() []string {
	var out []string
	for _, p := range m.s.Problems() {
		out = append(out, p.String())
	}
	return out
}

func (m manifestSource) reachability() healthcheck.SourceStatus { return nil }

func manifestConfig(log *slog.Logger, cfg config.Config) manifest.Config {
	return manifest.Config{
		Dir:      cfg.Manifests,
		NodeName: cfg.HostnameOverride,
		Allocator: allocator.Config{
			ServiceCIDRs:  cfg.ServiceClusterIPRanges,
			NodePortRange: cfg.ServiceNodePortRange,
			StateDir:      cfg.StateDir,
		},
		Logger: log,
	}
}

func newManifestSource(log *slog.Logger, cfg config.Config, h model.Handler, m *metrics.Metrics) (source, error) {
	s, err := manifest.New(manifestConfig(log.With("source", "manifests"), cfg), &hostNode{Handler: h, name: cfg.HostnameOverride}, m)
	if err != nil {
		return nil, err
	}
	return manifestSource{s}, nil
}

// hostNode stands in for the Node object in standalone mode when the manifests
// carry none for this node: the node's addresses are the host's, so NodePorts
// answer on them. A Node manifest, when present, wins; deleting it falls back to
// the host's view instead of marking the node as going away.
type hostNode struct {
	model.Handler
	name string
	seen bool
}

func (h *hostNode) OnNodeAdd(node *v1.Node) {
	h.seen = true
	h.Handler.OnNodeAdd(node)
}

func (h *hostNode) OnNodeUpdate(old, node *v1.Node) {
	h.seen = true
	h.Handler.OnNodeUpdate(old, node)
}

func (h *hostNode) OnNodeDelete(node *v1.Node) {
	h.Handler.OnNodeUpdate(node, h.synthesize())
}

func (h *hostNode) OnNodeSynced() {
	if !h.seen {
		h.Handler.OnNodeAdd(h.synthesize())
	}
	h.Handler.OnNodeSynced()
}

func (h *hostNode) synthesize() *v1.Node {
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.name}}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.Unmap().String()})
	}
	return node
}
