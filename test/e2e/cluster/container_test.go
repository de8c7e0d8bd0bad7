package cluster_test

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/image"
	"github.com/kproxy/kproxy/internal/kube"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// IP plan: node netns 10.244.0.1/24 (bridge) with pod-a 10.244.0.2; the API
// server reached through a relay at 127.0.0.1:PORT inside the node namespace;
// services from the cluster's service range.

// TestDeployContainer runs kproxy from its image as deploy/kproxy.yaml runs it
// in a pod, without a container runtime: the image archive `make image` writes
// is unpacked into a root file system; the ConfigMap, as applied with the
// documented one-line server substitution, and a service account token and CA
// are put where the kubelet mounts them; the init container runs with every
// capability, kproxy itself chrooted into the read-only image with only the
// capabilities the manifest grants, no_new_privs, and /proc/sys and /sys
// read-only as in an unprivileged container. It must program the kernel and
// carry traffic to a cluster IP. (The runtime's seccomp profile is not
// reproduced here.)
func TestDeployContainer(t *testing.T) {
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	for _, tool := range []string{"capsh", "unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, "%s not installed", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := cluster.ForTest(t, cluster.Options{})
	node := netnstest.NewNodeIndex(t, 0)
	relay, err := c.RelayInto("/run/netns/" + node.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Close() })

	// The operator's one value, set with the documented one-liner.
	server := "https://" + relay.Addr
	apply := exec.CommandContext(ctx, "sh", "-c", `sed "s#https://kube-apiserver.invalid:6443#$SERVER#" "$MANIFEST" | "$KUBECTL" --kubeconfig="$KUBECONFIG" apply -f -`)
	apply.Env = append(os.Environ(), "SERVER="+server, "MANIFEST="+manifest, "KUBECTL="+c.Tool("kubectl"), "KUBECONFIG="+c.Kubeconfig)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	ds, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "kproxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm, err := c.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, "kproxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["kubeconfig.conf"], "server: "+server) {
		t.Fatalf("the applied kubeconfig.conf does not name %s:\n%s", server, cm.Data["kubeconfig.conf"])
	}
	tok, err := c.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kproxy",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(c.Config.TLSClientConfig.CAFile)
	if err != nil {
		t.Fatal(err)
	}

	// The image, as `make image` builds it, unpacked.
	root := filepath.Join(t.TempDir(), "rootfs")
	unpackImage(t, ctx, root)
	files := map[string][]byte{
		"var/lib/kproxy/config.conf":                             []byte(cm.Data["config.conf"]),
		"var/lib/kproxy/kubeconfig.conf":                         []byte(cm.Data["kubeconfig.conf"]),
		"var/run/secrets/kubernetes.io/serviceaccount/token":     []byte(tok.Status.Token),
		"var/run/secrets/kubernetes.io/serviceaccount/ca.crt":    ca,
		"var/run/secrets/kubernetes.io/serviceaccount/namespace": []byte("kube-system"),
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := c.CreateNode(ctx, cluster.NodeSpec{Name: "node-a", InternalIPs: []netip.Addr{node.BridgeV4}, PodCIDRs: []string{"10.244.0.0/24"}}); err != nil {
		t.Fatal(err)
	}
	pod := node.AddPod(t, "pod-a")
	pod.Serve(t, "pod-a", 8080)
	if _, err := c.RunPod(ctx, webPod("pod-a"), "node-a", pod.V4); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)

	// The containers' arguments, read from the DaemonSet itself; a conntrack
	// setting that a network namespace may change is added to both, as an
	// operator would put it in config.conf, to see the init container set it
	// and kproxy leave it.
	initC, mainC := ds.Spec.Template.Spec.InitContainers[0], ds.Spec.Template.Spec.Containers[0]
	const udpTimeout = "--conntrack-udp-timeout=37s"
	initArgs := append(podArgs(initC.Args, "node-a"), udpTimeout)
	mainArgs := append(podArgs(mainC.Args, "node-a"), udpTimeout)

	// The init container: privileged, so /proc/sys and /sys are writable.
	initProc, err := c.StartProcess("kproxy-init-node", "ip", append([]string{"netns", "exec", node.Name,
		"unshare", "-m", "--propagation", "private", "sh", "-c", containerScript(root, false) + ` exec chroot "$ROOT" ` + image.BinaryPath + ` "$@"`, "sh"}, initArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := initProc.Wait(); err != nil {
		t.Fatalf("init-node: %v\n%s", err, initProc.LogTail())
	}
	if got := strings.TrimSpace(node.MustExec("cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout")); got != "37" {
		t.Errorf("nf_conntrack_udp_timeout after init-node = %s, want 37\n%s", got, initProc.LogTail())
	}

	// kproxy: the capabilities the manifest grants, the bounding set cut to them.
	keep := map[int]bool{}
	for _, capName := range mainC.SecurityContext.Capabilities.Add {
		n, ok := capNumbers[strings.ToUpper(string(capName))]
		if !ok {
			t.Fatalf("the manifest adds %s, which this test does not know", capName)
		}
		keep[n] = true
	}
	last, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	lastCap, _ := strconv.Atoi(strings.TrimSpace(string(last)))
	var drop []string
	var want uint64
	for i := 0; i <= lastCap; i++ {
		if keep[i] {
			want |= 1 << i
		} else {
			drop = append(drop, strconv.Itoa(i))
		}
	}
	sc := mainC.SecurityContext
	if sc.Privileged != nil && *sc.Privileged || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Fatalf("kproxy's securityContext is not what this test reproduces: %+v", sc)
	}
	proc, err := c.StartProcess("kproxy-container", "ip", append([]string{"netns", "exec", node.Name,
		"unshare", "-m", "--propagation", "private", "sh", "-c", containerScript(root, true) +
			` exec capsh --chroot="$ROOT" --drop=` + strings.Join(drop, ",") + ` --no-new-privs --shell=` + image.BinaryPath + ` -- "$@"`, "sh"}, mainArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("==== kproxy's log:\n%s", proc.LogTail())
		}
	})

	eventually(t, "cluster IP through kproxy in its container", wantPods(t, pod.NS, vip, "pod-a"))

	t.Run("kproxy runs with only the granted capabilities", func(t *testing.T) {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.PID()))
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for line := range strings.Lines(string(status)) {
			k, v, _ := strings.Cut(line, ":")
			fields[k] = strings.TrimSpace(v)
		}
		if fields["Name"] != "kproxy" {
			t.Fatalf("pid %d is %q, not kproxy", proc.PID(), fields["Name"])
		}
		for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if got, _ := strconv.ParseUint(fields[k], 16, 64); got != want {
				t.Errorf("%s = %s, want %016x", k, fields[k], want)
			}
		}
		if fields["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs = %s", fields["NoNewPrivs"])
		}
	})
	t.Run("kproxy found the sysctls in place and wrote none", func(t *testing.T) {
		log, err := os.ReadFile(proc.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"could not apply", "read-only file system", "level=ERROR"} {
			if strings.Contains(string(log), bad) {
				t.Errorf("kproxy's log says %q:\n%s", bad, log)
			}
		}
	})
	t.Run("with the placeholder server kproxy exits saying what to set", func(t *testing.T) {
		kc := strings.ReplaceAll(cm.Data["kubeconfig.conf"], server, kube.PlaceholderServer)
		bad := filepath.Join(t.TempDir(), "kubeconfig.conf")
		if err := os.WriteFile(bad, []byte(kc), 0o644); err != nil {
			t.Fatal(err)
		}
		bin, err := kproxyBinary()
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, bin, "run", "--kubeconfig="+bad, "--proxy-mode=userspace", "--healthz-bind-address=", "--metrics-bind-address=").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(string(out), "ConfigMap kube-system/kproxy, key kubeconfig.conf") {
			t.Errorf("kproxy with the placeholder: %v\n%s", err, out)
		}
	})
}

// containerScript mounts what a container runtime would under $ROOT, in the
// private mount namespace the script runs in: the image read-only, proc, and
// for an unprivileged container /proc/sys and /sys read-only.
func containerScript(root string, unprivileged bool) string {
	ro := ""
	if unprivileged {
		ro = `mount --bind "$ROOT/proc/sys" "$ROOT/proc/sys" && mount -o remount,bind,ro "$ROOT/proc/sys" && `
	}
	sysOpt := "rw"
	if unprivileged {
		sysOpt = "ro"
	}
	return `set -e; ROOT='` + root + `'; mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT" && ` +
		`mount -t proc proc "$ROOT/proc" && mount -t sysfs -o ` + sysOpt + ` sysfs "$ROOT/sys" && ` + ro + `true;`
}

// podArgs expands $(NODE_NAME) in a container's arguments as the kubelet does.
func podArgs(args []string, nodeName string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, "$(NODE_NAME)", nodeName)
	}
	return out
}

var capNumbers = map[string]int{"NET_ADMIN": 12, "NET_RAW": 13, "SYS_RESOURCE": 24, "NET_BIND_SERVICE": 10}

func ptr[T any](v T) *T { return &v }

// unpackImage builds the image from a static kproxy (as `make image` does),
// writes the archive, reads it back and extracts its file system into root.
func unpackImage(t *testing.T, ctx context.Context, root string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "kproxy")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/kproxy/kproxy/cmd/kproxy")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(data)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "kproxy-image.tar")
	if err := image.WriteArchive(archive, image.DefaultRef, img); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(image.DefaultRef)
	if err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != image.BinaryPath {
		t.Fatalf("entrypoint %q", cf.Config.Entrypoint)
	}
	rc := mutate.Extract(back)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode)&0o777)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				var f *os.File
				if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777); err == nil {
					_, err = io.Copy(f, tr)
					err = errors.Join(err, f.Close())
				}
			}
		default:
			t.Fatalf("unexpected %s in the image (type %c)", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// manifestDaemonSet decodes the DaemonSet of deploy/kproxy.yaml.
func manifestDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if !strings.Contains(doc, "kind: DaemonSet") {
			continue
		}
		var ds appsv1.DaemonSet
		if err := yaml.UnmarshalStrict([]byte(doc), &ds); err != nil {
			t.Fatalf("%s: DaemonSet: %v", manifest, err)
		}
		return &ds
	}
	t.Fatalf("%s: no DaemonSet", manifest)
	return nil
}
