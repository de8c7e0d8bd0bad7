package app

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/kube"
)

// applyKubeProxyConfiguration loads a KubeProxyConfiguration file into c. Flags
// given on the command line win over the file, as with kube-proxy.
func applyKubeProxyConfiguration(path string, c *config.Config, fs *pflag.FlagSet, warn func(string)) error {
	kp, warnings, err := kube.LoadKubeProxyConfiguration(path)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		warn("config " + path + ": " + w)
	}
	set := func(flag string, apply func()) {
		if !fs.Changed(flag) {
			apply()
		}
	}
	var errs []string
	parse := func(flag, field, v string, dst *config.Config, assign func(*config.Config, string) error) {
		if v == "" || fs.Changed(flag) {
			return
		}
		if err := assign(dst, v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", field, err))
		}
	}
	if kp.ClientConnection.Kubeconfig != "" {
		set("kubeconfig", func() { c.Kubeconfig = kp.ClientConnection.Kubeconfig })
	}
	c.KubeQPS, c.KubeBurst = kp.ClientConnection.QPS, int(kp.ClientConnection.Burst)
	c.KubeContentType = kp.ClientConnection.ContentType
	c.ConfigSyncPeriod = kp.ConfigSyncPeriod.Duration
	if kp.HostnameOverride != "" {
		set("hostname-override", func() { c.HostnameOverride = kp.HostnameOverride })
	}
	if kp.HealthzBindAddress != "" {
		set("healthz-bind-address", func() { c.HealthzBindAddress = kp.HealthzBindAddress })
	}
	if kp.MetricsBindAddress != "" {
		set("metrics-bind-address", func() { c.MetricsBindAddress = kp.MetricsBindAddress })
	}
	if kp.BindAddressHardFail {
		set("bind-address-hard-fail", func() { c.BindAddressHardFail = true })
	}
	ct := kp.Conntrack
	if ct.MaxPerCore != nil {
		set("conntrack-max-per-core", func() { c.Conntrack.MaxPerCore = int(*ct.MaxPerCore) })
	}
	if ct.Min != nil {
		set("conntrack-min", func() { c.Conntrack.Min = int(*ct.Min) })
	}
	if ct.TCPEstablishedTimeout != nil {
		set("conntrack-tcp-timeout-established", func() { c.Conntrack.TCPEstablishedTimeout = ct.TCPEstablishedTimeout.Duration })
	}
	if ct.TCPCloseWaitTimeout != nil {
		set("conntrack-tcp-timeout-close-wait", func() { c.Conntrack.TCPCloseWaitTimeout = ct.TCPCloseWaitTimeout.Duration })
	}
	if ct.TCPBeLiberal {
		set("conntrack-tcp-be-liberal", func() { c.Conntrack.TCPBeLiberal = true })
	}
	if ct.UDPTimeout.Duration != 0 {
		set("conntrack-udp-timeout", func() { c.Conntrack.UDPTimeout = ct.UDPTimeout.Duration })
	}
	if ct.UDPStreamTimeout.Duration != 0 {
		set("conntrack-udp-timeout-stream", func() { c.Conntrack.UDPStreamTimeout = ct.UDPStreamTimeout.Duration })
	}
	// The loader already warned about modes kproxy does not have (iptables, ipvs):
	// those fall back to the automatic choice.
	if kp.Mode == config.ModeNFTables {
		set("proxy-mode", func() { c.Mode = config.ModeNFTables })
	}
	if kp.OOMScoreAdj != nil {
		set("oom-score-adj", func() { c.OOMScoreAdj = int(*kp.OOMScoreAdj) })
	}
	switch kp.DetectLocalMode {
	case config.DetectLocalClusterCIDR, config.DetectLocalNodeCIDR:
		set("detect-local-mode", func() { c.DetectLocalMode = string(kp.DetectLocalMode) })
	}
	parse("cluster-cidr", "clusterCIDR", kp.ClusterCIDR, c, func(c *config.Config, v string) (err error) {
		c.ClusterCIDRs, err = config.ParseCIDRs(v)
		return err
	})
	if len(kp.NodePortAddresses) > 0 && !fs.Changed("nodeport-addresses") {
		if len(kp.NodePortAddresses) == 1 && kp.NodePortAddresses[0] == "primary" {
			c.NodePortPrimary, c.NodePortAddresses = true, nil
		} else if p, err := config.ParseCIDRs(strings.Join(kp.NodePortAddresses, ",")); err != nil {
			errs = append(errs, fmt.Sprintf("nodePortAddresses: %v", err))
		} else {
			c.NodePortAddresses = p
		}
	}
	// The nftables section wins over the iptables one when both are set: kproxy's
	// kernel data plane is nftables.
	for _, sec := range []struct {
		masq       bool
		sync, mins time.Duration
	}{
		{kp.IPTables.MasqueradeAll, kp.IPTables.SyncPeriod.Duration, kp.IPTables.MinSyncPeriod.Duration},
		{kp.NFTables.MasqueradeAll, kp.NFTables.SyncPeriod.Duration, kp.NFTables.MinSyncPeriod.Duration},
	} {
		if sec.masq {
			set("masquerade-all", func() { c.MasqueradeAll = true })
		}
		if sec.sync > 0 {
			set("sync-period", func() { c.SyncPeriod = sec.sync })
		}
		if sec.mins > 0 {
			set("min-sync-period", func() { c.MinSyncPeriod = sec.mins })
		}
	}
	if v := int(kp.Logging.Verbosity); v > 0 {
		set("v", func() { c.Verbosity = v })
	}
	if len(errs) > 0 {
		return fmt.Errorf("config %s: %s", path, strings.Join(errs, "; "))
	}
	return nil
}
