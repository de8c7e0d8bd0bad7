package realcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/cluster"
)

// ContainerdTemplate is the nodes' containerd configuration, from the
// repository: see hack/k8s/README.md for what it sets and why.
const ContainerdTemplate = "hack/k8s/containerd-config.toml"

// CorefilePath is cluster DNS's configuration, from the repository.
const CorefilePath = "hack/k8s/coredns/Corefile"

// RepoFile finds rel (a path from the repository's top) from the working
// directory or one of its parents: tests run in their package's directory,
// commands from the top.
func RepoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found in the working directory or its parents", rel)
		}
		dir = parent
	}
}

func containerdConfig(n *Node) (string, error) {
	p, err := RepoFile(ContainerdTemplate)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return strings.NewReplacer(
		"@ROOT@", filepath.Join(n.Dir, "containerd", "root"),
		"@STATE@", filepath.Join(n.Dir, "containerd", "state"),
		"@ADDRESS@", n.Socket,
		"@CNI_BIN_DIR@", CNIBinDir,
		"@CNI_CONF_DIR@", filepath.Join(n.Dir, "cni", "net.d"),
		"@SANDBOX_IMAGE@", PauseImage,
	).Replace(string(b)), nil
}

// cniConfig is a node's pod network: a bridge in the node's namespace whose
// address is the pods' gateway, host-local addresses from the node's pod CIDR
// (its state in the node's directory), hairpin for pods calling their own
// service, and no masquerade: traffic between nodes keeps the pod's address.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "{{name}}",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "{{dir}}/cni/ipam",
      "ranges": [[{"subnet": "{{cidr}}"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
`

// kubeletConfig is a node's KubeletConfiguration. cgroupfs and failCgroupV1:
// the machine is a cgroup v1 hybrid; cgroupRoot: the node's own cgroups, one
// tree per node; eviction and image GC thresholds low enough that a busy
// shared disk evicts nothing and deletes no imported image (they cannot be
// pulled again).
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{cgroupRoot}}
containerRuntimeEndpoint: unix://{{dir}}/containerd.sock
address: {{ip}}
port: {{port}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {{servingCert}}
tlsPrivateKeyFile: {{servingKey}}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{ca}}
authorization:
  mode: Webhook
clusterDomain: {{domain}}
clusterDNS:
- {{dns}}
resolvConf: {{dir}}/resolv.conf
podLogsDir: {{dir}}/pod-logs
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
nodeStatusReportFrequency: 10s
shutdownGracePeriod: 0s
`

func render(tmpl string, vals map[string]string) string {
	for k, v := range vals {
		tmpl = strings.ReplaceAll(tmpl, "{{"+k+"}}", v)
	}
	return tmpl
}

func (h *Harness) inNode(n *Node, name, path string, args ...string) (*cluster.Process, error) {
	return h.StartProcess(n.Name+"-"+name, "/usr/bin/nsenter", append([]string{"--net=" + n.NetnsPath(), "--", path}, args...)...)
}

// startNode writes the node's configuration, registers its Node (with its pod
// CIDR: there is no IPAM controller) and starts containerd and the kubelet in
// the node's namespace. Both are started with nsenter --net, which (unlike ip
// netns exec) leaves /sys, and so the cgroup hierarchy, as it is.
func (h *Harness) startNode(ctx context.Context, n *Node) error {
	vals := map[string]string{
		"dir": n.Dir, "pause": PauseImage, "cnibin": CNIBinDir, "name": n.cniNetwork(h.ID), "cidr": n.PodCIDR.String(),
		"cgroupRoot": n.CgroupRoot, "ip": n.IP.String(), "port": strconv.Itoa(kubeletPort), "ca": h.CAFile(),
		"domain": ClusterDNS, "dns": KubeDNSIP,
	}
	var err error
	if vals["servingCert"], vals["servingKey"], err = h.IssueServingCert(n.Name+"-kubelet", []net.IP{n.IP.AsSlice()}, n.Name); err != nil {
		return err
	}
	cert, key, err := h.IssueClientCert(n.Name+"-client", "system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := h.WriteKubeconfigFor(kubeconfig, cert, key); err != nil {
		return err
	}
	ctrd, err := containerdConfig(n)
	if err != nil {
		return err
	}
	files := map[string]string{
		"containerd.toml":            ctrd,
		"cni/net.d/10-pods.conflist": render(cniConfig, vals),
		"kubelet.yaml":               render(kubeletConfig, vals),
		// Pods with dnsPolicy Default get this: the bridge's address, where no
		// DNS server answers, rather than the machine's resolver.
		"resolv.conf": "nameserver " + h.BridgeIP.String() + "\n",
	}
	for name, content := range files {
		p := filepath.Join(n.Dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux"}},
		Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	if _, err := h.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	// A pull of a missing image fails at once on the closed port instead of
	// leaving the machine.
	if n.containerd, err = h.inNode(n, "containerd", "/usr/bin/env",
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=",
		mustLook("containerd"), "--config", filepath.Join(n.Dir, "containerd.toml")); err != nil {
		return err
	}
	if err := waitFile(ctx, n.Socket, n.containerd); err != nil {
		return err
	}
	if n.kubelet, err = h.inNode(n, "kubelet", h.Tool("kubelet"),
		"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig="+kubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--v=1"); err != nil {
		return err
	}
	return nil
}

func mustLook(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

func waitFile(ctx context.Context, path string, p *cluster.Process) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if !p.Running() {
			return fmt.Errorf("%s exited: %v\n%s", p.LogPath(), p.Wait(), p.LogTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w\n%s", path, ctx.Err(), p.LogTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (h *Harness) waitNodesReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		ready := 0
		for _, n := range h.Nodes {
			if !n.kubelet.Running() {
				return fmt.Errorf("kubelet of %s exited: %v\n%s", n.Name, n.kubelet.Wait(), n.kubelet.LogTail())
			}
			node, err := h.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				continue
			}
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready == len(h.Nodes) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes not ready: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (h *Harness) startScheduler() error {
	cert, key, err := h.IssueClientCert("scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(h.Dir, "scheduler.kubeconfig")
	if err := h.WriteKubeconfigFor(kubeconfig, cert, key); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	h.scheduler, err = h.StartProcess("kube-scheduler", h.Tool("kube-scheduler"),
		"--kubeconfig="+kubeconfig, "--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(port))
	return err
}

// Ctr runs ctr against a node's containerd, in the k8s.io namespace (the
// kubelet's).
func (h *Harness) Ctr(ctx context.Context, n *Node, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.Socket, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// ImportImages imports image archives (docker or OCI) into every node's
// containerd.
func (h *Harness) ImportImages(ctx context.Context, archives ...string) error {
	for _, n := range h.Nodes {
		for _, a := range archives {
			if _, err := h.Ctr(ctx, n, "images", "import", a); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

// makeCgroupRoot creates the node's cgroup root in every hierarchy (the
// kubelet refuses a cgroupRoot that does not exist), with the machine's CPUs
// and memory nodes in cpuset (a new v1 cpuset cgroup starts with none).
func makeCgroupRoot(root string) error {
	for _, m := range cgroupMounts() {
		p := filepath.Join(m, root)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("cgroup root: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if err := os.WriteFile(filepath.Join(p, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup root %s: %w", f, err)
				}
			}
		}
	}
	return nil
}
