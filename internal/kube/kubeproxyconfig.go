package kube

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// KubeProxyConfigAPIVersion and KubeProxyConfigKind identify the only
// configuration file format accepted, kube-proxy's own.
const (
	KubeProxyConfigAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	KubeProxyConfigKind       = "KubeProxyConfiguration"
)

// honoured lists the KubeProxyConfiguration fields (JSON paths) whose meaning
// carries over to kproxy. A prefix ending in "." covers every field below it.
// Anything else that is set to a non-zero value draws a warning: the user must
// learn that a setting they rely on does nothing here, but a kube-proxy file
// (for example kubeadm's, which spells out every field) must still load.
var honoured = []string{
	"apiVersion",
	"kind",
	"clientConnection.kubeconfig",
	"clientConnection.qps",
	"clientConnection.burst",
	"clientConnection.contentType",
	"hostnameOverride",
	"healthzBindAddress",
	"metricsBindAddress",
	"bindAddressHardFail",
	"mode",
	"clusterCIDR",
	"nodePortAddresses",
	"detectLocalMode",
	"oomScoreAdj",
	"configSyncPeriod",
	"conntrack.",
	"nftables.masqueradeAll",
	"nftables.syncPeriod",
	"nftables.minSyncPeriod",
	"iptables.masqueradeAll",
	"iptables.syncPeriod",
	"iptables.minSyncPeriod",
	"logging.verbosity",
}

// LoadKubeProxyConfiguration reads a kube-proxy configuration file
// (kubeproxy.config.k8s.io/v1alpha1, YAML or JSON) strictly: unknown or
// duplicate fields are errors, as they are for kube-proxy. The warnings name the
// fields that are set but that kproxy does not honour, and values it treats
// differently. No defaults are applied: a zero field means "not set".
func LoadKubeProxyConfiguration(path string) (*kpv1alpha1.KubeProxyConfiguration, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read kube-proxy config: %w", err)
	}
	cfg, warnings, err := ParseKubeProxyConfiguration(data)
	if err != nil {
		return nil, nil, fmt.Errorf("kube-proxy config %s: %w", path, err)
	}
	return cfg, warnings, nil
}

// ParseKubeProxyConfiguration is LoadKubeProxyConfiguration on bytes.
func ParseKubeProxyConfiguration(data []byte) (*kpv1alpha1.KubeProxyConfiguration, []string, error) {
	var cfg kpv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, nil, fmt.Errorf("decode: %w", err)
	}
	if cfg.APIVersion != KubeProxyConfigAPIVersion || cfg.Kind != KubeProxyConfigKind {
		return nil, nil, fmt.Errorf("apiVersion %q kind %q: want %s %s",
			cfg.APIVersion, cfg.Kind, KubeProxyConfigAPIVersion, KubeProxyConfigKind)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, nil, fmt.Errorf("decode: %w", err)
	}
	var warnings []string
	for _, p := range setFields("", raw) {
		if !isHonoured(p) {
			warnings = append(warnings, fmt.Sprintf("%s is set but not supported by kproxy; ignored", p))
		}
	}
	switch cfg.Mode {
	case "", "nftables":
	default:
		warnings = append(warnings, fmt.Sprintf("mode %q is not supported by kproxy; its nftables data plane is used", cfg.Mode))
	}
	switch cfg.DetectLocalMode {
	case "", "ClusterCIDR", "NodeCIDR":
	default:
		warnings = append(warnings, fmt.Sprintf("detectLocalMode %q is not supported by kproxy; ClusterCIDR is used", cfg.DetectLocalMode))
	}
	for _, gate := range slices.Sorted(maps.Keys(cfg.FeatureGates)) {
		warnings = append(warnings, fmt.Sprintf("featureGates.%s: kproxy has no feature gates; ignored", gate))
	}
	slices.Sort(warnings)
	return &cfg, slices.Compact(warnings), nil
}

func isHonoured(path string) bool {
	if strings.HasPrefix(path, "featureGates.") {
		return true // reported with its own message
	}
	for _, h := range honoured {
		if path == h || (strings.HasSuffix(h, ".") && strings.HasPrefix(path, h)) {
			return true
		}
	}
	return false
}

// setFields lists the dotted paths of the leaves of a decoded document that hold
// a non-zero value. Lists are leaves.
func setFields(prefix string, v any) []string {
	switch x := v.(type) {
	case map[string]any:
		var out []string
		for k, child := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			out = append(out, setFields(p, child)...)
		}
		return out
	case nil:
		return nil
	case bool:
		if !x {
			return nil
		}
	case string:
		// Durations and quantities spelled as zero ("0s", "0") are not settings.
		if x == "" || x == "0" || x == "0s" {
			return nil
		}
	case float64:
		if x == 0 {
			return nil
		}
	case json.Number:
		if x == "0" {
			return nil
		}
	case []any:
		if len(x) == 0 {
			return nil
		}
	}
	if prefix == "" {
		return nil
	}
	return []string{prefix}
}
