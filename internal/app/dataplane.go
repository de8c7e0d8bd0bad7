package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/userspace"
)

// chooseMode returns the proxy mode to run, and, when the automatic choice falls
// back to userspace, why.
func chooseMode(cfg config.Config) (mode, why string) {
	if cfg.Mode != config.ModeAuto {
		return cfg.Mode, ""
	}
	if os.Geteuid() != 0 {
		return config.ModeUserspace, "not running as root, so the kernel's nftables cannot be programmed"
	}
	if err := nftablesAvailable(cfg); err != nil {
		return config.ModeUserspace, fmt.Sprintf("nftables is not usable here: %v", err)
	}
	return config.ModeNFTables, ""
}

func newDataplane(ctx context.Context, log *slog.Logger, cfg config.Config, mode string, m *metrics.Metrics) (Dataplane, error) {
	switch mode {
	case config.ModeUserspace:
		uc := userspace.Defaults()
		uc.NodePortAddresses = cfg.NodePortAddresses
		uc.BindServiceIPs = os.Geteuid() == 0
		uc.TCPIdleTimeout = cfg.UserspaceIdleTimeout
		uc.MaxConnections = cfg.UserspaceMaxConns
		uc.GracePeriod = cfg.UserspaceGracePeriod
		uc.Logger = log.With("dataplane", "userspace")
		p, err := userspace.New(uc, m)
		if err != nil {
			return nil, fmt.Errorf("userspace proxy: %w", err)
		}
		return p, nil
	case config.ModeNFTables:
		return newNFTables(ctx, log, cfg, m)
	}
	return nil, fmt.Errorf("unknown proxy mode %q", mode)
}

// nftablesAvailable asks the kernel, over netlink, whether kproxy's tables can
// be read and written here (nf_tables present, CAP_NET_ADMIN).
func nftablesAvailable(cfg config.Config) error {
	return nftables.Probe(nftables.Config{TableName: cfg.NFTablesTable, IPFamilies: familiesOf(cfg)})
}

func newNFTables(_ context.Context, log *slog.Logger, cfg config.Config, m *metrics.Metrics) (Dataplane, error) {
	p, err := nftables.New(nftablesConfig(log, cfg), m)
	if err != nil {
		return nil, fmt.Errorf("nftables data plane: %w", err)
	}
	return p, nil
}

func nftablesConfig(log *slog.Logger, cfg config.Config) nftables.Config {
	return nftables.Config{
		TableName:          cfg.NFTablesTable,
		IPFamilies:         familiesOf(cfg),
		ClusterCIDRs:       cfg.ClusterCIDRs,
		MasqueradeAll:      cfg.MasqueradeAll,
		NodePortAddresses:  cfg.NodePortAddresses,
		LocalhostNodePorts: cfg.LocalhostNodePorts,
		Logger:             log,
	}
}
