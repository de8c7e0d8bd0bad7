package app

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/nftables"
)

// newInitNodeCommand is `kproxy init-node`: it sets the node-wide sysctls that
// `kproxy run` with the same flags and configuration would set (conntrack table
// size and timeouts, route_localnet for --localhost-nodeports) and exits. A
// container that is not privileged has /proc/sys read-only, so the DaemonSet
// runs this once in a privileged init container and then kproxy itself with
// NET_ADMIN only; `run` then finds the values in place and writes nothing.
func newInitNodeCommand() *cobra.Command {
	o := &options{cfg: config.Defaults()}
	cmd := &cobra.Command{
		Use:     "init-node",
		Short:   "Set the node's sysctls that `kproxy run` with the same flags needs (for a privileged init container), then exit",
		Example: `  kproxy init-node --config /var/lib/kproxy/config.conf`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := o.completeWithLogger(cmd)
			if err != nil {
				return err
			}
			mode, _ := chooseMode(cfg)
			if mode != config.ModeNFTables {
				log.Info("nothing to set: the node's sysctls matter to the nftables mode only", "mode", mode)
				return nil
			}
			// Conntrack settings the kernel refuses are logged, as `run` does:
			// the proxy works with the kernel's values.
			applyConntrack(log, cfg.Conntrack, mode)
			if err := nftables.PrepareNode(nftablesConfig(log, cfg)); err != nil {
				return fmt.Errorf("init-node: %w", err)
			}
			log.Info("node ready for kproxy", "node", cfg.HostnameOverride)
			return nil
		},
	}
	o.addRunFlags(cmd.Flags())
	return cmd
}
