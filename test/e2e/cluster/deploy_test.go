// Package cluster_test holds kproxy's end-to-end tests against a real API server
// and controller manager (internal/cluster): the deploy manifests, and kproxy
// itself running as it would on a cluster's nodes.
package cluster_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kproxy/kproxy/internal/cluster"
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
