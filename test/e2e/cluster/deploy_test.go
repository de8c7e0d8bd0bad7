// Package cluster_test holds kproxy's end-to-end tests against a real API server
// and controller manager (internal/cluster): the deploy manifests, and kproxy
// itself running as it would on a cluster's nodes.
package cluster_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/image"
	"github.com/kproxy/kproxy/internal/kube"
	"github.com/kproxy/kproxy/internal/model"
)

var manifest = filepath.Join("..", "..", "..", "deploy", "kproxy.yaml")

const serviceAccount = "system:serviceaccount:kube-system:kproxy"

// TestDeployManifests checks deploy/kproxy.yaml against a real API server: it
// passes server-side validation and admission, and its RBAC is enough for the
// kube source and no more than a service proxy needs.
func TestDeployManifests(t *testing.T) {
	c := cluster.ForTest(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	out, err := c.Kubectl(ctx, "apply", "--dry-run=server", "-f", manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"serviceaccount/kproxy", "clusterrole.rbac.authorization.k8s.io/kproxy",
		"clusterrolebinding.rbac.authorization.k8s.io/kproxy", "configmap/kproxy", "daemonset.apps/kproxy"} {
		if !strings.Contains(string(out), want+" created (server dry run)") {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}

	// The ConfigMap holds a kube-proxy configuration that kproxy loads without warnings.
	if _, err := c.Kubectl(ctx, "apply", "-f", manifest); err != nil {
		t.Fatal(err)
	}
	cm, err := c.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, "kproxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, warnings, err := kube.ParseKubeProxyConfiguration([]byte(cm.Data["config.conf"])); err != nil || len(warnings) > 0 {
		t.Errorf("config.conf: err %v, warnings %q", err, warnings)
	}

	t.Run("RBAC allows what a proxy needs", func(t *testing.T) {
		for _, check := range []struct {
			verb, resource string
			want           string
		}{
			{"list", "services", "yes"},
			{"watch", "services", "yes"},
			{"list", "endpointslices.discovery.k8s.io", "yes"},
			{"watch", "endpointslices.discovery.k8s.io", "yes"},
			{"watch", "nodes", "yes"},
			{"create", "events", "yes"},
			{"create", "events.events.k8s.io", "yes"},
			{"list", "endpoints", "no"},
			{"list", "pods", "no"},
			{"get", "secrets", "no"},
			{"update", "services", "no"},
			{"patch", "nodes", "no"},
		} {
			out, _ := c.Kubectl(ctx, "auth", "can-i", "--as="+serviceAccount, check.verb, check.resource, "--all-namespaces")
			if got := strings.TrimSpace(string(out)); got != check.want {
				t.Errorf("can-i %s %s = %q, want %q", check.verb, check.resource, got, check.want)
			}
		}
	})

	t.Run("the kube source syncs as the service account", func(t *testing.T) {
		rc := rest.CopyConfig(c.Config)
		rc.Impersonate = rest.ImpersonationConfig{UserName: serviceAccount}
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		tr := model.NewTracker("node-a", nil)
		src, err := kube.NewWithClient(kube.Config{NodeName: "node-a"}, client, tr)
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- src.Run(runCtx) }()
		deadline := time.Now().Add(30 * time.Second)
		for !tr.Synced() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !tr.Synced() {
			t.Fatalf("not synced as %s within 30s: %+v", serviceAccount, src.Status())
		}
	})
}

// Where Kubernetes mounts a pod's service account token and the cluster's CA.
const (
	saToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCA    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// TestDeployManifestBootstrap checks, without a cluster, what deploy/kproxy.yaml
// promises an operator: one value to set (the API server's address, a
// placeholder that kproxy refuses with a message saying where to set it); a
// kubeconfig with the service account's token file and CA; no hostPath; and the
// containers' privileges as the manifest's comments explain them.
func TestDeployManifestBootstrap(t *testing.T) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), kube.PlaceholderServer); n != 1 {
		t.Errorf("%s: the placeholder %s appears %d times, want once (the sed one-liner replaces every one)", manifest, kube.PlaceholderServer, n)
	}

	var cm corev1.ConfigMap
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if strings.Contains(doc, "\nkind: ConfigMap") {
			if err := yaml.UnmarshalStrict([]byte(doc), &cm); err != nil {
				t.Fatalf("ConfigMap: %v", err)
			}
		}
	}
	kp, warnings, err := kube.ParseKubeProxyConfiguration([]byte(cm.Data["config.conf"]))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("config.conf: err %v, warnings %q", err, warnings)
	}
	const configDir = "/var/lib/kproxy"
	if want := configDir + "/kubeconfig.conf"; kp.ClientConnection.Kubeconfig != want {
		t.Errorf("config.conf: clientConnection.kubeconfig %q, want %q (the ConfigMap's kubeconfig.conf)", kp.ClientConnection.Kubeconfig, want)
	}
	kc, err := clientcmd.Load([]byte(cm.Data["kubeconfig.conf"]))
	if err != nil {
		t.Fatalf("kubeconfig.conf: %v", err)
	}
	ctxt := kc.Contexts[kc.CurrentContext]
	if ctxt == nil || kc.Clusters[ctxt.Cluster] == nil || kc.AuthInfos[ctxt.AuthInfo] == nil {
		t.Fatalf("kubeconfig.conf: current context %q does not name a cluster and a user", kc.CurrentContext)
	}
	cl, user := kc.Clusters[ctxt.Cluster], kc.AuthInfos[ctxt.AuthInfo]
	if cl.Server != kube.PlaceholderServer || cl.CertificateAuthority != saCA || user.TokenFile != saToken {
		t.Errorf("kubeconfig.conf: server %q CA %q token file %q; want %q, %q, %q", cl.Server, cl.CertificateAuthority, user.TokenFile, kube.PlaceholderServer, saCA, saToken)
	}
	if len(kc.Clusters) != 1 || len(kc.AuthInfos) != 1 || user.Token != "" || len(user.ClientCertificateData) > 0 || cl.InsecureSkipTLSVerify {
		t.Errorf("kubeconfig.conf: want one cluster and one user, the service account's token file only, TLS verified")
	}
	path := filepath.Join(t.TempDir(), "kubeconfig.conf")
	if err := os.WriteFile(path, []byte(cm.Data["kubeconfig.conf"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.RESTConfig(kube.Config{Kubeconfig: path}); err == nil || !strings.Contains(err.Error(), "ConfigMap kube-system/kproxy, key kubeconfig.conf") {
		t.Errorf("kproxy with the placeholder: %v, want an error naming the ConfigMap key", err)
	}

	ds := manifestDaemonSet(t)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSDefault || spec.ServiceAccountName != "kproxy" ||
		(spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken) {
		t.Errorf("pod: hostNetwork %v, dnsPolicy %q (want Default: cluster DNS needs a running proxy), serviceAccountName %q, automount %v",
			spec.HostNetwork, spec.DNSPolicy, spec.ServiceAccountName, spec.AutomountServiceAccountToken)
	}
	for _, v := range spec.Volumes {
		if hp := v.HostPath; hp != nil && (hp.Type == nil || (*hp.Type != corev1.HostPathDirectory && *hp.Type != corev1.HostPathFile)) {
			t.Errorf("volume %s: hostPath %s without type Directory or File would be created on the host", v.Name, hp.Path)
		}
		if v.HostPath != nil {
			t.Errorf("volume %s: hostPath %s: kproxy needs none", v.Name, v.HostPath.Path)
		}
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container and one container, got %d and %d", len(spec.InitContainers), len(spec.Containers))
	}
	initC, mainC := spec.InitContainers[0], spec.Containers[0]
	if mainC.Image != image.DefaultRef || initC.Image != mainC.Image {
		t.Errorf("images %q and %q, want both %q (what make image names)", initC.Image, mainC.Image, image.DefaultRef)
	}
	if len(initC.Args) == 0 || initC.Args[0] != "init-node" || len(mainC.Args) == 0 || mainC.Args[0] != "run" ||
		!slices.Equal(initC.Args[1:], mainC.Args[1:]) || !slices.Contains(mainC.Args, "--config="+configDir+"/config.conf") {
		t.Errorf("args: init %q, kproxy %q; want init-node and run with the same flags and --config=%s/config.conf", initC.Args, mainC.Args, configDir)
	}
	for _, c := range []corev1.Container{initC, mainC} {
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.MountPath == configDir && m.ReadOnly)
		}
		if !mounted {
			t.Errorf("%s: the ConfigMap is not mounted read-only at %s", c.Name, configDir)
		}
	}
	if sc := initC.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("init-node: want privileged (only that makes /proc/sys writable): %+v", sc)
	}
	sc := mainC.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("kproxy: no securityContext")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("kproxy: privileged")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("kproxy: allowPrivilegeEscalation is not false")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("kproxy: readOnlyRootFilesystem is not true")
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("kproxy: seccompProfile is not RuntimeDefault")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}):
		t.Errorf("kproxy: capabilities %+v, want drop ALL, add NET_ADMIN", sc.Capabilities)
	}
}
