package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kproxy/kproxy/internal/cgroups"
	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/socketlb"
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

// socketLB starts the socket load balancer beside the nftables data plane, as
// cfg.SocketLB asks. With auto, anything that stands in the way (not root, no
// cgroup v2, no bpf filesystem, a kernel that refuses the programs) is one log
// line and kproxy runs with nftables alone; with on, it is an error.
func socketLB(log *slog.Logger, cfg config.Config, mode string, reg prometheus.Registerer) (*socketlb.Proxier, error) {
	if cfg.SocketLB == config.SocketLBOff {
		return nil, nil
	}
	off := func(why error) (*socketlb.Proxier, error) {
		if cfg.SocketLB == config.SocketLBOn {
			return nil, fmt.Errorf("--socket-lb=on: %w", why)
		}
		log.Info("socket LB off", "reason", why.Error())
		return nil, nil
	}
	if mode != config.ModeNFTables {
		return off(fmt.Errorf("it runs beside the nftables data plane, and the mode is %s", mode))
	}
	if os.Geteuid() != 0 {
		return off(errors.New("not running as root"))
	}
	cgroup := cfg.SocketLBCgroup
	if cgroup == "" {
		var err error
		if cgroup, err = cgroups.V2Root(); err != nil {
			return off(err)
		}
	}
	if err := socketlb.Usable(cgroup, cfg.SocketLBPinDir); err != nil {
		return off(err)
	}
	p, err := socketlb.New(socketlb.Config{
		CgroupPath:        cgroup,
		PinDir:            cfg.SocketLBPinDir,
		NodePortAddresses: cfg.NodePortAddresses,
		Logger:            log,
	}, socketlb.NewMetrics(reg))
	if err != nil {
		return off(err)
	}
	log.Info("socket LB on", "cgroup", cgroup, "pinDir", cfg.SocketLBPinDir)
	return p, nil
}

// planes syncs the nftables data plane and then the socket LB from the same
// snapshot. nftables keeps every rule (it serves traffic from outside the
// node and whatever the socket LB leaves alone), so the order only matters
// for failures: either failing fails the sync, and the next one is full.
type planes struct {
	Dataplane
	socket *socketlb.Proxier
}

func (p planes) Sync(ctx context.Context, snap *model.Snapshot, full bool) error {
	if err := p.Dataplane.Sync(ctx, snap, full); err != nil {
		return err
	}
	if err := p.socket.Sync(ctx, snap, full); err != nil {
		return fmt.Errorf("socket LB: %w", err)
	}
	return nil
}

// primary returns the data plane behind the socket LB, for the admin
// endpoints that read nftables state.
func primary(d Dataplane) Dataplane {
	if p, ok := d.(planes); ok {
		return p.Dataplane
	}
	return d
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
