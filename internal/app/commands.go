package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/describe"
	"github.com/kproxy/kproxy/internal/manifest"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/socketlb"
	"github.com/kproxy/kproxy/internal/trace"
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }

// adminFlags are shared by the commands that talk to a running kproxy.
type adminFlags struct {
	address string
	timeout time.Duration
}

func (a *adminFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&a.address, "admin-address", config.DefaultMetricsBindAddress, "HOST:PORT of the running kproxy's metrics and admin endpoint")
	cmd.Flags().DurationVar(&a.timeout, "timeout", 5*time.Second, "How long to wait for the running kproxy")
}

func (a *adminFlags) base() string { return "http://" + a.address }

func (a *adminFlags) fetchState(ctx context.Context) (*State, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base()+pathState, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decode %s: %w", req.URL, err)
	}
	return &st, nil
}

// view is what get and describe print from: a running kproxy's live state, or a
// one-shot load of a manifest directory.
type view struct {
	services []*v1.Service
	slices   []*discovery.EndpointSlice
	problems []string
	live     bool
}

// loadView reads the live state when a kproxy answers on the admin address (and,
// when --manifests is given, serves that same directory); otherwise it loads the
// directory exactly as `run` would, with the saved allocations.
func loadView(ctx context.Context, o *options, admin *adminFlags) (*view, error) {
	st, liveErr := admin.fetchState(ctx)
	if liveErr == nil && (o.cfg.Manifests == "" || sameDir(st.Manifests, o.cfg.Manifests)) {
		return &view{services: st.Services, slices: st.Slices, problems: st.Errors, live: true}, nil
	}
	if o.cfg.Manifests == "" {
		return nil, fmt.Errorf("no kproxy answers on %s (%v); give --manifests DIR to read a directory instead", admin.address, liveErr)
	}
	mc, err := offlineConfig(o)
	if err != nil {
		return nil, err
	}
	r, err := manifest.Load(mc)
	if err != nil {
		return nil, err
	}
	v := &view{services: r.Services, slices: r.EndpointSlices}
	for _, p := range r.Problems {
		v.problems = append(v.problems, p.String())
	}
	return v, nil
}

func sameDir(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && filepath.Clean(aa) == filepath.Clean(bb)
}

// offlineConfig is the manifest configuration `run` would use for the same flags.
func offlineConfig(o *options) (manifest.Config, error) {
	c := o.cfg
	var err error
	if o.serviceCIDR != "" {
		if c.ServiceClusterIPRanges, err = allocator.ParseServiceCIDRs(o.serviceCIDR); err != nil {
			return manifest.Config{}, fmt.Errorf("--service-cluster-ip-range: %w", err)
		}
	}
	if c.HostnameOverride == "" {
		c.HostnameOverride = defaultNodeName()
	}
	return manifestConfig(slog.New(slog.DiscardHandler), c), nil
}

func newValidateCommand() *cobra.Command {
	o := &options{cfg: config.Defaults()}
	cmd := &cobra.Command{
		Use:   "validate DIR",
		Short: "Check a manifest directory as kproxy run would; exit 1 on errors",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.cfg.Manifests = args[0]
			mc, err := offlineConfig(o)
			if err != nil {
				return err
			}
			r, err := manifest.Load(mc)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, p := range r.Problems {
				fmt.Fprintln(out, p.String())
			}
			if n := len(r.Errors()); n > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%s: %d error(s)", args[0], n)}
			}
			if len(r.Problems) == 0 && len(r.Services)+len(r.EndpointSlices)+len(r.Pods)+len(r.Nodes)+len(r.Namespaces) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: no Kubernetes objects in *.yaml, *.yml or *.json files under %s\n", args[0])
			}
			fmt.Fprintf(out, "%s: %d services, %d endpoint slices, %d pods: ok\n", args[0], len(r.Services), len(r.EndpointSlices), len(r.Pods))
			return nil
		},
	}
	o.addSourceFlags(cmd.Flags())
	cmd.Flags().Lookup("manifests").Hidden = true
	return cmd
}

func newGetCommand() *cobra.Command {
	o := &options{cfg: config.Defaults()}
	admin := &adminFlags{}
	var namespace string
	var all bool
	cmd := &cobra.Command{
		Use:     "get services [NAME...]",
		Short:   "List services in kubectl's layout, from the running kproxy or a manifest directory",
		Aliases: []string{"list"},
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !isServicesResource(args[0]) {
				return fmt.Errorf("unknown resource %q: kproxy gets services (svc)", args[0])
			}
			v, err := loadView(cmd.Context(), o, admin)
			if err != nil {
				return err
			}
			var svcs []*v1.Service
			for _, s := range v.services {
				if (all || s.Namespace == namespace) && (len(args) == 1 || slices.Contains(args[1:], s.Name)) {
					svcs = append(svcs, s)
				}
			}
			if len(svcs) == 0 {
				if all {
					fmt.Fprintln(cmd.ErrOrStderr(), "No resources found")
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "No resources found in %s namespace.\n", namespace)
				}
				return nil
			}
			return describe.ServicesTable(cmd.OutOrStdout(), svcs, all, time.Now())
		},
	}
	o.addSourceFlags(cmd.Flags())
	admin.add(cmd)
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "Namespace")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "All namespaces")
	return cmd
}

func isServicesResource(s string) bool {
	switch strings.ToLower(s) {
	case "services", "service", "svc":
		return true
	}
	return false
}

func newDescribeCommand() *cobra.Command {
	o := &options{cfg: config.Defaults()}
	admin := &adminFlags{}
	var namespace string
	cmd := &cobra.Command{
		Use:   "describe service NAME",
		Short: "Describe a service in kubectl's layout, from the running kproxy or a manifest directory",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !isServicesResource(args[0]) {
				return fmt.Errorf("unknown resource %q: kproxy describes services (svc)", args[0])
			}
			v, err := loadView(cmd.Context(), o, admin)
			if err != nil {
				return err
			}
			for _, s := range v.services {
				if s.Namespace != namespace || s.Name != args[1] {
					continue
				}
				var sl []*discovery.EndpointSlice
				for _, es := range v.slices {
					if es.Namespace == s.Namespace && es.Labels[discovery.LabelServiceName] == s.Name {
						sl = append(sl, es)
					}
				}
				return describe.Service(cmd.OutOrStdout(), s, sl, eventsFor(s, v.problems))
			}
			return &exitError{code: 1, err: fmt.Errorf("services %q not found in namespace %q", args[1], namespace)}
		},
	}
	o.addSourceFlags(cmd.Flags())
	admin.add(cmd)
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "Namespace")
	return cmd
}

// eventsFor turns manifest problems that name the service into Warning events,
// so describe shows why a change to it is not in force.
func eventsFor(svc *v1.Service, problems []string) []v1.Event {
	var out []v1.Event
	needle := "Service " + svc.Namespace + "/" + svc.Name
	for _, p := range problems {
		if strings.Contains(p, needle) {
			out = append(out, v1.Event{Type: v1.EventTypeWarning, Reason: "InvalidManifest", Message: p,
				Source: v1.EventSource{Component: "kproxy"}, Count: 1})
		}
	}
	return out
}

func newTraceCommand() *cobra.Command {
	admin := &adminFlags{}
	var from, to, proto, output string
	cmd := &cobra.Command{
		Use:   "trace --from SRC --to DST:PORT[/PROTO]",
		Short: "Explain where a packet to a service address would go, from the running kproxy's live state",
		Example: `  kproxy trace --from 10.244.0.5 --to 10.96.0.10:80/tcp
  kproxy trace --from 192.168.100.2 --to 192.168.100.1:30080/tcp     # a NodePort
  kproxy trace --from fd00:10:244::5 --to [fd00:10:96::a]:53/udp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return errors.New("--from and --to are required")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), admin.timeout)
			defer cancel()
			r, err := trace.Query(ctx, nil, admin.base(), from, to, proto)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return trace.WriteText(cmd.OutOrStdout(), r)
		},
	}
	admin.add(cmd)
	cmd.Flags().StringVar(&from, "from", "", "Source address of the packet")
	cmd.Flags().StringVar(&to, "to", "", "Destination ADDRESS:PORT, optionally /tcp, /udp or /sctp")
	cmd.Flags().StringVar(&proto, "proto", "", "Protocol, when --to does not say (default tcp)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newCleanupCommand() *cobra.Command {
	table := config.DefaultNFTablesTable
	pinDir := config.DefaultSocketLBPinDir
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove kproxy's nftables tables (ip and ip6) and its socket LB (detach the programs, remove the pinned maps), and exit; nothing else is touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if err := nftables.Cleanup(ctx, nftables.Config{TableName: table}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed nftables tables ip %s and ip6 %s (if they existed)\n", table, table)
			if err := socketlb.Cleanup(pinDir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached the socket LB and removed its pins in %s (if they existed)\n", pinDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&table, "nftables-table", table, "The name of kproxy's nftables tables")
	cmd.Flags().StringVar(&pinDir, "socket-lb-pin-dir", pinDir, "Where kproxy's socket LB pinned its maps and links")
	return cmd
}
