package app

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kproxy/kproxy/internal/config"
	"github.com/kproxy/kproxy/internal/conntrack"
)

const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: ["192.168.100.0/24"]
healthzBindAddress: 0.0.0.0:20256
metricsBindAddress: 127.0.0.1:20249
hostnameOverride: node-a
oomScoreAdj: -500
clientConnection:
  kubeconfig: /var/lib/kproxy/kubeconfig
  qps: 50
  burst: 100
conntrack:
  maxPerCore: 0
  min: 131072
  tcpEstablishedTimeout: 24h0m0s
  tcpCloseWaitTimeout: 1h0m0s
  udpTimeout: 30s
nftables:
  masqueradeAll: true
  syncPeriod: 45s
  minSyncPeriod: 2s
ipvs:
  scheduler: rr
`

func TestKubeProxyConfigurationFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(kubeProxyConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		flags []string
		check func(t *testing.T, c config.Config)
	}{
		{"the file's fields carry over", nil, func(t *testing.T, c config.Config) {
			if c.Mode != config.ModeNFTables || !c.MasqueradeAll || c.SyncPeriod != 45*time.Second ||
				c.MinSyncPeriod != 2*time.Second || c.HostnameOverride != "node-a" ||
				c.Kubeconfig != "/var/lib/kproxy/kubeconfig" || c.KubeQPS != 50 || c.KubeBurst != 100 ||
				c.HealthzBindAddress != "0.0.0.0:20256" || c.MetricsBindAddress != "127.0.0.1:20249" || c.OOMScoreAdj != -500 {
				t.Errorf("config = %+v", c)
			}
			want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
			if !slices.Equal(c.ClusterCIDRs, want) {
				t.Errorf("cluster CIDRs = %v", c.ClusterCIDRs)
			}
			if !slices.Equal(c.NodePortAddresses, []netip.Prefix{netip.MustParsePrefix("192.168.100.0/24")}) {
				t.Errorf("nodeport addresses = %v", c.NodePortAddresses)
			}
			// maxPerCore 0 leaves the table size alone, as with kube-proxy.
			if want := (conntrack.Settings{Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour,
				UDPTimeout: 30 * time.Second}); c.Conntrack != want {
				t.Errorf("conntrack = %+v, want %+v", c.Conntrack, want)
			}
		}},
		{"conntrack flags win over the file", []string{"--conntrack-tcp-timeout-established=2h", "--conntrack-max-per-core=65536", "--conntrack-tcp-be-liberal"},
			func(t *testing.T, c config.Config) {
				if want := (conntrack.Settings{MaxPerCore: 65536, Min: 131072, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: time.Hour,
					UDPTimeout: 30 * time.Second, TCPBeLiberal: true}); c.Conntrack != want {
					t.Errorf("conntrack = %+v, want %+v", c.Conntrack, want)
				}
			}},
		{"flags on the command line win", []string{"--sync-period=1m", "--hostname-override=node-z", "--cluster-cidr=10.0.0.0/8", "--proxy-mode=userspace"},
			func(t *testing.T, c config.Config) {
				if c.SyncPeriod != time.Minute || c.HostnameOverride != "node-z" || c.Mode != config.ModeUserspace ||
					!slices.Equal(c.ClusterCIDRs, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}) {
					t.Errorf("config = %+v", c)
				}
				if c.MinSyncPeriod != 2*time.Second {
					t.Errorf("min sync period %v: fields without a flag still come from the file", c.MinSyncPeriod)
				}
			}},
		{"--nodeport-addresses=primary replaces the file's CIDRs", []string{"--nodeport-addresses=primary"},
			func(t *testing.T, c config.Config) {
				if !c.NodePortPrimary || c.NodePortAddresses != nil {
					t.Errorf("primary %v, addresses %v: want primary and no CIDRs", c.NodePortPrimary, c.NodePortAddresses)
				}
			}},
		{"CIDRs on the command line win over the file", []string{"--nodeport-addresses=10.1.0.0/16"},
			func(t *testing.T, c config.Config) {
				if c.NodePortPrimary || !slices.Equal(c.NodePortAddresses, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}) {
					t.Errorf("primary %v, addresses %v", c.NodePortPrimary, c.NodePortAddresses)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, warnings, err := runOptions(t, append([]string{"--config", path}, tc.flags...)...)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
			if !strings.Contains(strings.Join(warnings, "\n"), "ipvs") {
				t.Errorf("no warning for the ipvs section kproxy ignores: %q", warnings)
			}
		})
	}
}

func TestKubeProxyConfigurationErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(kubeProxyConfig, "mode: nftables", "mode: nftables\nbogusField: 1", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := runOptions(t, "--config", path)
	if err == nil || !strings.Contains(err.Error(), "bogusField") || !strings.Contains(err.Error(), path) {
		t.Fatalf("error = %v, want one naming the file and the unknown field", err)
	}
}

func TestKubeProxyConfigurationNodePortPrimary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := strings.Replace(kubeProxyConfig, `nodePortAddresses: ["192.168.100.0/24"]`, `nodePortAddresses: ["primary"]`, 1)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := runOptions(t, "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if !c.NodePortPrimary || c.NodePortAddresses != nil {
		t.Errorf("primary %v, addresses %v: want primary and no CIDRs", c.NodePortPrimary, c.NodePortAddresses)
	}
	if w := strings.Join(warnings, "\n"); strings.Contains(w, "nodePortAddresses") {
		t.Errorf("nodePortAddresses [primary] is supported, yet warned about: %q", w)
	}
}

// runOptions parses args as `kproxy run` does and completes the configuration,
// returning it with the warnings it drew.
func runOptions(t *testing.T, args ...string) (config.Config, []string, error) {
	t.Helper()
	o := &options{cfg: config.Defaults()}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	o.addRunFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	var warnings []string
	c, err := o.complete(fs, func(w string) { warnings = append(warnings, w) })
	return c, warnings, err
}

func TestDetectLocalMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := strings.Replace(kubeProxyConfig, "mode: nftables", "mode: nftables\ndetectLocalMode: NodeCIDR", 1)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := runOptions(t, "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if c.DetectLocalMode != config.DetectLocalNodeCIDR {
		t.Errorf("detect-local-mode %q from the file, want NodeCIDR", c.DetectLocalMode)
	}
	if w := strings.Join(warnings, "\n"); strings.Contains(w, "detectLocalMode") {
		t.Errorf("detectLocalMode NodeCIDR is supported, yet warned about: %q", w)
	}
	if c, _, err := runOptions(t, "--config", path, "--detect-local-mode=ClusterCIDR"); err != nil || c.DetectLocalMode != config.DetectLocalClusterCIDR {
		t.Errorf("the flag wins over the file: %q, %v", c.DetectLocalMode, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubeconfig=/k", "--detect-local-mode=InterfaceNamePrefix"}, `--detect-local-mode "InterfaceNamePrefix": want ClusterCIDR or NodeCIDR`},
		{[]string{"--manifests=" + t.TempDir(), "--state-dir=" + t.TempDir(), "--detect-local-mode=NodeCIDR"}, "needs cluster mode"},
	} {
		if _, _, err := runOptions(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}

// With nothing set, cluster mode and a configuration file start from
// kube-proxy's conntrack defaults; standalone mode from nothing; an explicit
// 0 leaves a value alone in every mode.
func TestConntrackDefaults(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kp := conntrack.KubeProxyDefaults()
	noMax := kp
	noMax.MaxPerCore = 0
	tests := []struct {
		name  string
		flags []string
		want  conntrack.Settings
	}{
		{"cluster mode", []string{"--kubeconfig=/dev/null"}, kp},
		{"an empty configuration file", []string{"--config", empty, "--kubeconfig=/dev/null"}, kp},
		{"standalone", []string{"--manifests", t.TempDir()}, conntrack.Settings{}},
		{"standalone with a configuration file", []string{"--manifests", t.TempDir(), "--config", empty}, kp},
		{"cluster mode, the table left alone", []string{"--kubeconfig=/dev/null", "--conntrack-max-per-core=0"}, noMax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := runOptions(t, tc.flags...)
			if err != nil {
				t.Fatal(err)
			}
			if c.Conntrack != tc.want {
				t.Errorf("conntrack = %+v, want %+v", c.Conntrack, tc.want)
			}
		})
	}
}
