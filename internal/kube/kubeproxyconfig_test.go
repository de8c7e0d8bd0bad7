package kube

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadKubeProxyConfigurationKubeadm(t *testing.T) {
	cfg, warnings, err := LoadKubeProxyConfiguration("testdata/kubeadm-kube-proxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != "nftables" || cfg.ClusterCIDR != "10.244.0.0/16,fd00:10:244::/56" ||
		cfg.ClientConnection.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" {
		t.Errorf("decoded %+v", cfg)
	}
	// bindAddress 0.0.0.0 is the only non-zero field kproxy does not honour.
	want := []string{"bindAddress is set but not supported by kproxy; ignored"}
	if !slices.Equal(warnings, want) {
		t.Errorf("warnings = %q, want %q", warnings, want)
	}
}

func TestParseKubeProxyConfiguration(t *testing.T) {
	tests := []struct {
		name         string
		doc          string
		wantErr      string
		wantWarnings []string
		check        func(t *testing.T, syncPeriod time.Duration, masqAll bool)
	}{
		{
			name: "honoured fields, no warnings",
			doc: `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
nftables: {masqueradeAll: true, syncPeriod: 30s, minSyncPeriod: 1s}
nodePortAddresses: [primary]
hostnameOverride: node-a
conntrack: {maxPerCore: 32768, min: 131072, tcpEstablishedTimeout: 24h, tcpCloseWaitTimeout: 1h, tcpBeLiberal: true, udpTimeout: 30s, udpStreamTimeout: 2m}
`,
			check: func(t *testing.T, syncPeriod time.Duration, masqAll bool) {
				if syncPeriod != 30*time.Second || !masqAll {
					t.Errorf("syncPeriod %v masqueradeAll %v", syncPeriod, masqAll)
				}
			},
		},
		{
			name: "unsupported fields and values warn",
			doc: `{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
"mode": "ipvs", "ipvs": {"scheduler": "rr", "strictARP": true}, "featureGates": {"Foo": true},
"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {"interfaceNamePrefix": "veth"}}`,
			wantWarnings: []string{
				"detectLocal.interfaceNamePrefix is set but not supported by kproxy; ignored",
				`detectLocalMode "InterfaceNamePrefix" is not supported by kproxy; ClusterCIDR is used`,
				"featureGates.Foo: kproxy has no feature gates; ignored",
				"ipvs.scheduler is set but not supported by kproxy; ignored",
				"ipvs.strictARP is set but not supported by kproxy; ignored",
				`mode "ipvs" is not supported by kproxy; its nftables data plane is used`,
			},
		},
		{
			name:    "unknown field is an error",
			doc:     "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftable: {}\n",
			wantErr: "unknown field",
		},
		{
			name:    "duplicate field is an error",
			doc:     "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nmode: iptables\n",
			wantErr: "already set",
		},
		{
			name:    "wrong kind",
			doc:     "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
			wantErr: "want kubeproxy.config.k8s.io/v1alpha1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warnings, err := ParseKubeProxyConfiguration([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(warnings, tt.wantWarnings) {
				t.Errorf("warnings:\n got %q\nwant %q", warnings, tt.wantWarnings)
			}
			if tt.check != nil {
				tt.check(t, cfg.NFTables.SyncPeriod.Duration, cfg.NFTables.MasqueradeAll)
			}
		})
	}
}
