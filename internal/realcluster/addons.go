package realcluster

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KproxyServerPlaceholder is the API server URL in deploy/kproxy.yaml's
// kubeconfig, the one value an operator sets.
const KproxyServerPlaceholder = "https://kube-apiserver.invalid:6443"

// ImagesDir is where hack/k8s/build.sh writes the test images' archives.
func ImagesDir(toolsDir string) string { return filepath.Join(toolsDir, "images") }

// ArchiveTags returns the image references an archive (docker-archive
// manifest.json, or an OCI layout's index.json) carries.
func ArchiveTags(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: no manifest.json or index.json", path)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		switch strings.TrimPrefix(hdr.Name, "./") {
		case "manifest.json":
			var m []struct{ RepoTags []string }
			if err := json.NewDecoder(tr).Decode(&m); err != nil {
				return nil, fmt.Errorf("%s: manifest.json: %w", path, err)
			}
			var tags []string
			for _, e := range m {
				tags = append(tags, e.RepoTags...)
			}
			return tags, nil
		case "index.json":
			var idx struct {
				Manifests []struct{ Annotations map[string]string }
			}
			if err := json.NewDecoder(tr).Decode(&idx); err != nil {
				return nil, fmt.Errorf("%s: index.json: %w", path, err)
			}
			var tags []string
			for _, m := range idx.Manifests {
				if n := m.Annotations["io.containerd.image.name"]; n != "" {
					tags = append(tags, n)
				} else if n := m.Annotations["org.opencontainers.image.ref.name"]; n != "" {
					tags = append(tags, n)
				}
			}
			return tags, nil
		}
	}
}

// FindImage returns the archive in dir whose tag contains substr, and the tag.
func FindImage(dir, substr string) (archive, tag string, err error) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	for _, f := range files {
		tags, err := ArchiveTags(f)
		if err != nil {
			continue
		}
		for _, t := range tags {
			if strings.Contains(t, substr) {
				return f, t, nil
			}
		}
	}
	return "", "", fmt.Errorf("no image archive with a tag containing %q in %s (run hack/k8s/build.sh)", substr, dir)
}

// Apply runs kubectl apply with manifest on stdin.
func (h *Harness) Apply(ctx context.Context, manifest string) error {
	cmd := exec.CommandContext(ctx, h.Tool("kubectl"), "--kubeconfig="+h.Kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply: %w: %s", err, out)
	}
	return nil
}

// KproxyManifest returns deploy/kproxy.yaml with the one documented value set:
// the API server's URL.
func (h *Harness) KproxyManifest(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if !strings.Contains(string(b), KproxyServerPlaceholder) {
		return "", fmt.Errorf("%s: no %s to set", path, KproxyServerPlaceholder)
	}
	return strings.ReplaceAll(string(b), KproxyServerPlaceholder, h.Server), nil
}

// DeployKproxy applies deploy/kproxy.yaml (see KproxyManifest) and waits for
// its DaemonSet to be ready on every node.
func (h *Harness) DeployKproxy(ctx context.Context, manifestPath string) error {
	m, err := h.KproxyManifest(manifestPath)
	if err != nil {
		return err
	}
	if err := h.Apply(ctx, m); err != nil {
		return err
	}
	return h.WaitDaemonSet(ctx, "kube-system", "kproxy")
}

// WaitDaemonSet waits until the DaemonSet's pods run the current template and
// are ready on every node.
func (h *Harness) WaitDaemonSet(ctx context.Context, ns, name string) error {
	out, err := h.Kubectl(ctx, "-n", ns, "rollout", "status", "ds/"+name, "--timeout=4m")
	if err != nil {
		return fmt.Errorf("%w\n%s", err, h.describePods(ctx, ns))
	}
	_ = out
	return nil
}

// WaitDeployment waits until the Deployment is rolled out.
func (h *Harness) WaitDeployment(ctx context.Context, ns, name string) error {
	if _, err := h.Kubectl(ctx, "-n", ns, "rollout", "status", "deploy/"+name, "--timeout=4m"); err != nil {
		return fmt.Errorf("%w\n%s", err, h.describePods(ctx, ns))
	}
	return nil
}

func (h *Harness) describePods(ctx context.Context, ns string) string {
	out, _ := h.Kubectl(ctx, "-n", ns, "get", "pods", "-o", "wide")
	desc, _ := h.Kubectl(ctx, "-n", ns, "describe", "pods")
	d := string(desc)
	if len(d) > 6000 {
		d = d[len(d)-6000:]
	}
	return string(out) + "\n" + d
}

// coreDNSManifest is cluster DNS as kubeadm deploys it, with the Corefile of
// hack/k8s/coredns (its plugins only; no forward: only the cluster's zones
// answer).
const coreDNSManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: ["endpoints", "services", "pods", "namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
{{corefile}}---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  replicas: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations:
      - operator: Exists
      containers:
      - name: coredns
        image: {{image}}
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities:
            add: [NET_BIND_SERVICE]
            drop: [ALL]
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 10
          periodSeconds: 10
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap:
          name: coredns
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/name: CoreDNS
spec:
  selector:
    k8s-app: kube-dns
  clusterIP: {{dnsIP}}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
`

// DeployCoreDNS deploys cluster DNS (the kube-dns Service at KubeDNSIP) from
// the coredns image archive and waits until it is ready. CoreDNS reaches the
// API server through the kubernetes Service: a service proxy must run first.
func (h *Harness) DeployCoreDNS(ctx context.Context, image string) error {
	p, err := RepoFile(CorefilePath)
	if err != nil {
		return err
	}
	corefile, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	indented := "    " + strings.ReplaceAll(strings.TrimRight(string(corefile), "\n"), "\n", "\n    ") + "\n"
	m := render(coreDNSManifest, map[string]string{"corefile": indented, "image": image, "dnsIP": KubeDNSIP})
	if err := h.Apply(ctx, m); err != nil {
		return err
	}
	return h.WaitDeployment(ctx, "kube-system", "coredns")
}

// WaitKubeSystemReady waits until every kube-system pod is Ready, as the e2e
// framework does before it runs a spec.
func (h *Harness) WaitKubeSystemReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		pods, err := h.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
		notReady := []string{}
		if err == nil {
			for _, p := range pods.Items {
				ready := false
				for _, c := range p.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
						ready = true
					}
				}
				if !ready {
					notReady = append(notReady, p.Name)
				}
			}
			if len(notReady) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-system pods not ready %v: %w\n%s", notReady, ctx.Err(), h.describePods(context.Background(), "kube-system"))
		case <-time.After(time.Second):
		}
	}
}

// KubeProxyImage is the reference of the upstream kube-proxy image the
// harness builds (BuildKubeProxyImage).
const KubeProxyImage = "registry.k8s.io/kube-proxy:v1.37.2"

// kubeProxyManifest is upstream kube-proxy as kubeadm deploys it: a
// DaemonSet with host networking, privileged, its configuration and a
// kubeconfig (the API server's real address, the ServiceAccount's token) in a
// ConfigMap. In nftables mode; conntrack.maxPerCore 0 leaves nf_conntrack_max
// (a machine-wide setting, read-only in a node's network namespace) alone, as
// kind does.
const kubeProxyManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: kube-proxy
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-proxier
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-proxier
subjects:
- kind: ServiceAccount
  name: kube-proxy
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-proxy
  namespace: kube-system
  labels:
    app: kube-proxy
data:
  config.conf: |
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    kind: KubeProxyConfiguration
    mode: nftables
    clusterCIDR: {{clusterCIDR}}
    clientConnection:
      kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
    conntrack:
      maxPerCore: 0
  kubeconfig.conf: |
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: {{server}}
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels:
    k8s-app: kube-proxy
spec:
  selector:
    matchLabels:
      k8s-app: kube-proxy
  updateStrategy:
    type: RollingUpdate
  template:
    metadata:
      labels:
        k8s-app: kube-proxy
    spec:
      serviceAccountName: kube-proxy
      priorityClassName: system-node-critical
      hostNetwork: true
      nodeSelector:
        kubernetes.io/os: linux
      tolerations:
      - operator: Exists
      containers:
      - name: kube-proxy
        image: {{image}}
        imagePullPolicy: Never
        command:
        - /usr/local/bin/kube-proxy
        - --config=/var/lib/kube-proxy/config.conf
        - --hostname-override=$(NODE_NAME)
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        securityContext:
          privileged: true
        volumeMounts:
        - name: kube-proxy
          mountPath: /var/lib/kube-proxy
      volumes:
      - name: kube-proxy
        configMap:
          name: kube-proxy
`

// KubeProxyManifest returns the kube-proxy DaemonSet's manifest for this cluster.
func (h *Harness) KubeProxyManifest() string {
	return render(kubeProxyManifest, map[string]string{"clusterCIDR": h.ClusterCIDR.String(), "server": h.Server, "image": KubeProxyImage})
}

// DeployKubeProxy deploys upstream kube-proxy (nftables mode) as a DaemonSet
// and waits until it is ready on every node. Its image must be imported.
func (h *Harness) DeployKubeProxy(ctx context.Context) error {
	if err := h.Apply(ctx, h.KubeProxyManifest()); err != nil {
		return err
	}
	return h.WaitDaemonSet(ctx, "kube-system", "kube-proxy")
}
