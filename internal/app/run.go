package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/conntrack"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/runner"
)

// options are the command-line flags of `kproxy run` before they become a Config.
type options struct {
	cfg          config.Config
	configFile   string
	clusterCIDR  string
	serviceCIDR  string
	nodePortAddr string
}

func (o *options) addSourceFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.cfg.Manifests, "manifests", o.cfg.Manifests, "Standalone mode: the directory of Service, Pod, EndpointSlice, Endpoints, Node and Namespace manifests (*.yaml, *.yml, *.json) to serve")
	fs.StringVar(&o.cfg.StateDir, "state-dir", o.cfg.StateDir, "Standalone mode: where allocated cluster IPs and node ports are kept (default: /var/lib/kproxy/<dir> for root, ~/.local/state/kproxy/<dir> otherwise)")
	fs.StringVar(&o.serviceCIDR, "service-cluster-ip-range", o.serviceCIDR, "Standalone mode: CIDR[,CIDR] to allocate cluster IPs from, one per IP family, the primary family first (default 10.96.0.0/16; 127.10.0.0/16 in userspace mode without root)")
	fs.Var(&o.cfg.ServiceNodePortRange, "service-node-port-range", "Standalone mode: the range node ports are allocated from")
}

func (o *options) addRunFlags(fs *pflag.FlagSet) {
	c := &o.cfg
	o.addSourceFlags(fs)
	fs.StringVar(&o.configFile, "config", "", "A kube-proxy KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags given on the command line win")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "Cluster mode: path to a kubeconfig file (in a pod, the in-cluster configuration is used when neither this nor --manifests is given)")
	fs.StringVar(&c.Master, "master", c.Master, "Cluster mode: the API server address, overriding the kubeconfig")
	fs.BoolVar(&c.KubeCompression, "kube-api-compression", c.KubeCompression, "Cluster mode: ask the API server to gzip its responses (off: protobuf over a cluster network is cheaper uncompressed, for the API server and for kproxy)")
	fs.StringVar(&c.HostnameOverride, "hostname-override", c.HostnameOverride, "The name of this node (default: the host name)")
	fs.StringVar(&c.ServiceProxyName, "service-proxy-name", c.ServiceProxyName, "Also serve services labelled service.kubernetes.io/service-proxy-name with this value")
	fs.StringVar(&c.Mode, "proxy-mode", c.Mode, "nftables or userspace (default: nftables as root when nftables works, otherwise userspace)")
	fs.StringVar(&o.clusterCIDR, "cluster-cidr", o.clusterCIDR, "CIDR[,CIDR] of the pod network: traffic to services from outside it is masqueraded")
	fs.StringVar(&c.DetectLocalMode, "detect-local-mode", c.DetectLocalMode, "How this node's pod traffic is told from the rest: ClusterCIDR (by --cluster-cidr) or NodeCIDR (by the Node's spec.podCIDRs, read at start; cluster mode)")
	fs.StringVar(&o.nodePortAddr, "nodeport-addresses", o.nodePortAddr, "CIDR[,CIDR] of the node addresses NodePorts answer on, or primary for the node's primary address of each family (default: every node address except loopback)")
	fs.BoolVar(&c.MasqueradeAll, "masquerade-all", c.MasqueradeAll, "Masquerade all traffic sent to service addresses")
	fs.BoolVar(&c.LocalhostNodePorts, "localhost-nodeports", c.LocalhostNodePorts, "nftables mode: let NodePorts answer on 127.0.0.1 (sets net.ipv4.conf.all.route_localnet=1; see CVE-2020-8558)")
	fs.DurationVar(&c.SyncPeriod, "sync-period", c.SyncPeriod, "The longest time between full syncs of the data plane")
	fs.DurationVar(&c.MinSyncPeriod, "min-sync-period", c.MinSyncPeriod, "The shortest time between syncs (changes arriving faster are batched)")
	fs.IntVar(&c.Conntrack.MaxPerCore, "conntrack-max-per-core", c.Conntrack.MaxPerCore, "nftables mode: raise nf_conntrack_max to this many entries per CPU (at least --conntrack-min, at most 1Mi); 0 leaves it alone (default 32768 in cluster mode and with --config, as kube-proxy; 0 standalone)")
	fs.IntVar(&c.Conntrack.Min, "conntrack-min", c.Conntrack.Min, "nftables mode: the least nf_conntrack_max that --conntrack-max-per-core sets (default 131072 in cluster mode and with --config)")
	fs.DurationVar(&c.Conntrack.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", c.Conntrack.TCPEstablishedTimeout, "nftables mode: conntrack timeout of established TCP connections; 0 leaves it alone (default 24h in cluster mode and with --config, as kube-proxy; 0 standalone)")
	fs.DurationVar(&c.Conntrack.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", c.Conntrack.TCPCloseWaitTimeout, "nftables mode: conntrack timeout of TCP connections in CLOSE_WAIT; 0 leaves it alone (default 1h in cluster mode and with --config, as kube-proxy; 0 standalone)")
	fs.BoolVar(&c.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", c.Conntrack.TCPBeLiberal, "nftables mode: let conntrack accept out-of-window TCP packets instead of marking them invalid (kproxy drops INVALID forwarded packets instead; see internal/nftables)")
	fs.DurationVar(&c.Conntrack.UDPTimeout, "conntrack-udp-timeout", c.Conntrack.UDPTimeout, "nftables mode: conntrack timeout of UDP entries without replies (0: leave it)")
	fs.DurationVar(&c.Conntrack.UDPStreamTimeout, "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout, "nftables mode: conntrack timeout of UDP entries with replies (0: leave it)")
	fs.StringVar(&c.SocketLB, "socket-lb", c.SocketLB, "auto, on or off: the eBPF socket load balancer beside nftables, which picks the endpoint at connect() for the node's and its pods' sockets (no per-packet NAT). auto: on where the kernel, a cgroup v2 hierarchy and a bpf filesystem allow it (cluster mode; standalone mode defaults to off)")
	fs.StringVar(&c.SocketLBCgroup, "socket-lb-cgroup", c.SocketLBCgroup, "The cgroup v2 directory the socket LB's programs attach to; every process in it and below is served (default: the cgroup v2 root, found in /proc/self/mountinfo)")
	fs.StringVar(&c.SocketLBPinDir, "socket-lb-pin-dir", c.SocketLBPinDir, "The directory on a bpf filesystem where the socket LB pins its maps and links, so that they outlive a kproxy restart")
	fs.StringVar(&c.NFTablesTable, "nftables-table", c.NFTablesTable, "The name of kproxy's own nftables tables (ip and ip6 families)")
	fs.DurationVar(&c.UserspaceIdleTimeout, "userspace-idle-timeout", c.UserspaceIdleTimeout, "Userspace mode: close TCP connections idle this long")
	fs.IntVar(&c.UserspaceMaxConns, "userspace-max-connections", c.UserspaceMaxConns, "Userspace mode: the most TCP connections open at once (0: no limit)")
	fs.DurationVar(&c.UserspaceGracePeriod, "userspace-grace-period", c.UserspaceGracePeriod, "Userspace mode: how long connections to a deleted endpoint keep running")
	fs.StringVar(&c.HealthzBindAddress, "healthz-bind-address", c.HealthzBindAddress, "HOST:PORT of the health server (/healthz, /livez); empty to disable")
	fs.StringVar(&c.MetricsBindAddress, "metrics-bind-address", c.MetricsBindAddress, "HOST:PORT of the metrics and admin server (/metrics, /debug/kproxy/...); empty to disable")
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "exit when the health or metrics address cannot be served (default: log, count in kproxy_server_failures_total, and try again every 5s)")
	fs.BoolVar(&c.Profiling, "profiling", c.Profiling, "Serve pprof under /debug/pprof on the metrics address")
	fs.IntVar(&c.OOMScoreAdj, "oom-score-adj", c.OOMScoreAdj, "The oom_score_adj of the kproxy process, -1000 to 1000 (lowering it needs CAP_SYS_RESOURCE)")
	fs.StringVar(&c.DNSBindAddress, "dns-bind-address", c.DNSBindAddress, "HOST:PORT of the service DNS server (default 127.0.0.1:10053 in standalone mode, off in cluster mode; empty to disable)")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", c.ClusterDomain, "The cluster's DNS domain")
	fs.DurationVar(&c.DNSTTL, "dns-ttl", c.DNSTTL, "TTL of DNS answers")
	fs.StringVar(&c.DNSUpstream, "dns-upstream", c.DNSUpstream, "HOST:PORT to forward names outside the cluster domain to (default: refuse them)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	fs.IntVarP(&c.Verbosity, "v", "v", c.Verbosity, "Log verbosity: 0 one line per sync, 4 per-object detail")
}

// complete turns the flags (and the config file) into the effective Config.
func (o *options) complete(fs *pflag.FlagSet, warn func(string)) (config.Config, error) {
	c := o.cfg
	if c.Manifests == "" || o.configFile != "" {
		// In cluster mode and with a KubeProxyConfiguration, an empty
		// configuration means kube-proxy's defaults, so that kproxy as a
		// drop-in leaves the node as kube-proxy would. Standalone, kproxy
		// changes only what it is asked to.
		conntrackDefaults(&c, fs)
	}
	if o.configFile != "" {
		if err := applyKubeProxyConfiguration(o.configFile, &c, fs, warn); err != nil {
			return c, err
		}
	}
	var err error
	if o.serviceCIDR != "" {
		if c.ServiceClusterIPRanges, err = allocator.ParseServiceCIDRs(o.serviceCIDR); err != nil {
			return c, fmt.Errorf("--service-cluster-ip-range: %w", err)
		}
	}
	if o.clusterCIDR != "" {
		if c.ClusterCIDRs, err = config.ParseCIDRs(o.clusterCIDR); err != nil {
			return c, fmt.Errorf("--cluster-cidr: %w", err)
		}
	}
	switch o.nodePortAddr {
	case "":
	case "primary":
		c.NodePortPrimary, c.NodePortAddresses = true, nil
	default:
		if c.NodePortAddresses, err = config.ParseCIDRs(o.nodePortAddr); err != nil {
			return c, fmt.Errorf("--nodeport-addresses: %w (or the single word primary)", err)
		}
		c.NodePortPrimary = false
	}
	if c.HostnameOverride == "" {
		c.HostnameOverride = defaultNodeName()
	}
	if c.Manifests == "" && c.Kubeconfig == "" && c.Master == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return c, errors.New("no source: give --manifests DIR (standalone) or --kubeconfig FILE (cluster mode)")
	}
	if c.Standalone() {
		if c.StateDir == "" {
			if c.StateDir, err = allocator.DefaultStateDir(c.Manifests); err != nil {
				return c, err
			}
		}
		if !fs.Changed("dns-bind-address") && c.DNSBindAddress == "" {
			c.DNSBindAddress = config.DefaultDNSBindAddress
		}
		if !fs.Changed("socket-lb") {
			// A manifest directory is no cluster: hooking every socket of
			// the machine is for nodes, asked for explicitly.
			c.SocketLB = config.SocketLBOff
		}
	}
	return c, c.Validate()
}

// completeWithLogger completes the configuration and returns it with the
// logger it asks for, the configuration file's warnings logged.
func (o *options) completeWithLogger(cmd *cobra.Command) (config.Config, *slog.Logger, error) {
	var warnings []string
	cfg, err := o.complete(cmd.Flags(), func(w string) { warnings = append(warnings, w) })
	if err != nil {
		return cfg, nil, err
	}
	log := newLogger(cmd.ErrOrStderr(), cfg.LogFormat, cfg.Verbosity)
	for _, w := range warnings {
		log.Warn(w)
	}
	return cfg, log, nil
}

func newRunCommand() *cobra.Command {
	o := &options{cfg: config.Defaults()}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the proxy: standalone from a manifest directory, or against a cluster's API server",
		Example: `  kproxy run --manifests ./examples                 # standalone, no cluster
  kproxy run --kubeconfig ~/.kube/config --proxy-mode=nftables`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := o.completeWithLogger(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runProxy(ctx, log, cfg)
		},
	}
	o.addRunFlags(cmd.Flags())
	return cmd
}

// defaultNodeName is the host name, lowercased, as kube-proxy does.
func defaultNodeName() string {
	h, _ := os.Hostname()
	return strings.ToLower(strings.TrimSpace(h))
}

func newLogger(w interface{ Write([]byte) (int, error) }, format string, verbosity int) *slog.Logger {
	level := slog.LevelInfo
	if verbosity >= 4 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func buildInfo() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// runProxy runs kproxy until ctx is done.
func runProxy(ctx context.Context, log *slog.Logger, cfg config.Config) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	mode, why := chooseMode(cfg)
	if cfg.Mode == config.ModeAuto && why != "" {
		log.Info("using the userspace proxy", "reason", why)
	}
	if mode == config.ModeUserspace && cfg.Standalone() && len(cfg.ServiceClusterIPRanges) == 0 && os.Geteuid() != 0 {
		// Any 127/8 address can be bound without privileges, so a loopback
		// service range lets the userspace proxy serve cluster IPs as a normal user.
		cfg.ServiceClusterIPRanges = []netip.Prefix{netip.MustParsePrefix(config.DefaultUserspaceCIDR)}
	}
	source := "kubernetes"
	if cfg.Standalone() {
		source = "manifests"
	}
	log.Info("starting kproxy", "version", Version, "go", buildInfo(), "mode", mode, "source", source,
		"node", cfg.HostnameOverride, "config", fmt.Sprintf("%+v", cfg))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)

	tracker := model.NewTracker(cfg.HostnameOverride, nil)
	if cfg.Standalone() {
		tracker.AssumeUnassignedLocal()
	}
	families := familiesOf(cfg)

	if cfg.NodePortPrimary {
		cfg.NodePortAddresses = primaryNodePortAddresses(ctx, log, cfg)
	}
	if cfg.DetectLocalMode == config.DetectLocalNodeCIDR {
		cidrs, err := nodePodCIDRs(ctx, log, cfg, podCIDRWait)
		if err != nil {
			return err
		}
		cfg.ClusterCIDRs = cidrs
	}
	applyConntrack(log, cfg.Conntrack, mode)
	applyOOMScoreAdj(log, cfg.OOMScoreAdj)
	plane, err := newDataplane(ctx, log, cfg, mode, m)
	if err != nil {
		return err
	}
	defer func() {
		if err := plane.Close(); err != nil {
			log.Error("closing the data plane", "err", err)
		}
	}()

	synced := plane
	sock, err := socketLB(log, cfg, mode, reg)
	if err != nil {
		return err
	}
	if sock != nil {
		synced = planes{Dataplane: plane, socket: sock}
		defer func() {
			if err := sock.Close(); err != nil {
				log.Error("closing the socket LB", "err", err)
			}
		}()
	}

	s := newSyncer(log, tracker, synced, m, cfg.SyncPeriod)
	r := runner.New(s.sync, cfg.MinSyncPeriod, cfg.SyncPeriod, cfg.MinSyncPeriod+time.Second)
	podCIDRsChanged := make(chan []netip.Prefix, 1)
	tracker.SetNotify(func() {
		s.queued()
		r.Run()
		if cfg.DetectLocalMode == config.DetectLocalNodeCIDR {
			// As kube-proxy: the rules were built for the pod CIDRs read at
			// start; a new one needs a restart.
			if now := tracker.Node().PodCIDRs; len(now) > 0 && !slices.Equal(now, cfg.ClusterCIDRs) {
				select {
				case podCIDRsChanged <- now:
				default:
				}
			}
		}
	})

	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	src, err := newSource(ctx, log, cfg, tracker, m)
	if err != nil {
		return err
	}

	comp, err := startComponents(ctx, log, cfg, m, s, tracker, families, src.reachability())
	if err != nil {
		return err
	}
	closers = append(closers, comp.close)

	if cfg.MetricsBindAddress != "" {
		admin := newAdminServer(log, cfg.MetricsBindAddress, adminDeps{
			registry: reg,
			snapshot: tracker.Current,
			describe: func(st State) State {
				st.Mode, st.Source, st.Manifests = mode, source, cfg.Manifests
				st.Errors = src.errors()
				return st
			},
			stats:     statsOf(plane),
			rules:     rulesOf(plane),
			trace:     comp.trace,
			profiling: cfg.Profiling,
		})
		closers = append(closers, startServing(ctx, log, server{name: "metrics", addr: cfg.MetricsBindAddress, run: admin.run, failures: m.ServerFailuresTotal},
			cfg.BindAddressHardFail, comp.fatal))
	}

	// The data plane is closed (deferred above) only after the loop has returned,
	// so a sync in progress finishes first.
	loopDone := make(chan struct{})
	go func() { r.Loop(ctx); close(loopDone) }()
	defer func() { <-loopDone }()
	errc := make(chan error, 1)
	go func() { errc <- src.run(ctx) }()
	select {
	case <-ctx.Done():
	case err := <-comp.fatal:
		stop()
		return err
	case now := <-podCIDRsChanged:
		stop()
		return fmt.Errorf("the Node's pod CIDRs changed from %v to %v: restarting, as --detect-local-mode NodeCIDR reads them at start", cfg.ClusterCIDRs, now)
	case err := <-errc:
		if err != nil && ctx.Err() == nil {
			stop()
			return fmt.Errorf("source: %w", err)
		}
		<-ctx.Done()
	}
	log.Info("shutting down")
	return nil
}

func familiesOf(cfg config.Config) []v1.IPFamily {
	fams := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	if cfg.Standalone() && len(cfg.ServiceClusterIPRanges) > 0 {
		fams = fams[:0]
		for _, p := range cfg.ServiceClusterIPRanges {
			fams = append(fams, model.FamilyOf(p.Addr()))
		}
	}
	return fams
}

func statsOf(plane Dataplane) func() any {
	if sp, ok := plane.(interface{ StatsJSON() any }); ok {
		return sp.StatsJSON
	}
	return nil
}

func rulesOf(plane Dataplane) func(ctx context.Context) (string, error) {
	if d, ok := plane.(interface {
		Dump(ctx context.Context) (string, error)
	}); ok {
		return d.Dump
	}
	return nil
}

// applyOOMScoreAdj sets the process's oom_score_adj, as kube-proxy does, so
// that the OOM killer takes the node proxy last. Lowering it needs
// CAP_SYS_RESOURCE, which a normal user (and root in some containers) lacks;
// that is no reason not to start.
func applyOOMScoreAdj(log *slog.Logger, v int) {
	if cur, err := os.ReadFile("/proc/self/oom_score_adj"); err == nil && strings.TrimSpace(string(cur)) == strconv.Itoa(v) {
		// Already so (the kubelet gives a system-node-critical pod -997):
		// nothing to write, and nothing to warn about without CAP_SYS_RESOURCE.
		log.Debug("oom_score_adj already set", "value", v)
		return
	}
	err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(v)), 0)
	switch {
	case err == nil:
		log.Debug("oom_score_adj set", "value", v)
	case os.Geteuid() != 0:
		log.Info("cannot set oom_score_adj without root; left as it is", "value", v, "err", err)
	default:
		log.Warn("cannot set oom_score_adj (lowering it needs CAP_SYS_RESOURCE); left as it is", "value", v, "err", err)
	}
}

// conntrackDefaults fills the conntrack settings no flag set with
// kube-proxy's defaults (a configuration file, read next, overrides them).
func conntrackDefaults(c *config.Config, fs *pflag.FlagSet) {
	d := conntrack.KubeProxyDefaults()
	for _, f := range []struct {
		flag  string
		apply func()
	}{
		{"conntrack-max-per-core", func() { c.Conntrack.MaxPerCore = d.MaxPerCore }},
		{"conntrack-min", func() { c.Conntrack.Min = d.Min }},
		{"conntrack-tcp-timeout-established", func() { c.Conntrack.TCPEstablishedTimeout = d.TCPEstablishedTimeout }},
		{"conntrack-tcp-timeout-close-wait", func() { c.Conntrack.TCPCloseWaitTimeout = d.TCPCloseWaitTimeout }},
	} {
		if !fs.Changed(f.flag) {
			f.apply()
		}
	}
}

// applyConntrack sets the conntrack sysctls asked for, as kube-proxy does at
// start, and logs every value it looked at. A failure is logged, not fatal
// (kube-proxy exits): the proxy works with the kernel's values.
func applyConntrack(log *slog.Logger, s conntrack.Settings, mode string) {
	if s.Empty() {
		return
	}
	if mode != config.ModeNFTables {
		log.Warn("conntrack settings apply to the nftables mode only; ignored", "mode", mode)
		return
	}
	vals, err := s.Apply()
	for _, v := range vals {
		if v.Changed {
			log.Info("conntrack sysctl set", "name", v.Name, "value", v.Value, "was", v.Was)
		} else {
			log.Info("conntrack sysctl kept", "name", v.Name, "value", v.Value, "wanted", v.Wanted)
		}
	}
	if err != nil {
		if errors.Is(err, syscall.EROFS) {
			log.Error("could not apply every conntrack setting: /proc/sys is read-only here; in an unprivileged container, run `kproxy init-node` with the same configuration in a privileged init container first (deploy/kproxy.yaml does)", "err", err)
			return
		}
		log.Error("could not apply every conntrack setting", "err", err)
	}
}
