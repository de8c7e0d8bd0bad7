// Package cluster starts a real, minimal Kubernetes control plane on loopback for
// kproxy's tests: etcd, kube-apiserver and kube-controller-manager (the
// EndpointSlice controller writes the slices, exactly as in a real cluster), with
// certificates made on the fly. There is no kubelet: the harness plays it,
// creating Node objects and setting pod status (IPs, phase, readiness) through
// the status subresource.
//
// The binaries come from hack/k8s/build.sh, in the tools directory
// ($KPROXY_TOOLS_DIR, default ~/.cache/kproxy-tools). Tests call ForTest, which
// skips on a developer machine without them and fails in CI.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kproxy/kproxy/internal/testenv"
)

// Tools are the binaries the harness needs in the tools directory.
var Tools = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}

// DefaultControllers are the controller-manager controllers the harness runs:
// the two that write EndpointSlices, the one that creates each namespace's
// default ServiceAccount (pod admission requires it) and namespace deletion.
var DefaultControllers = []string{
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	"serviceaccount-controller",
	"namespace-controller",
}

// ToolsDir is where hack/k8s/build.sh puts the binaries.
func ToolsDir() string {
	if d := os.Getenv("KPROXY_TOOLS_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "kproxy-tools")
}

// MissingTools lists the binaries of names missing from dir.
func MissingTools(dir string, names ...string) []string {
	var missing []string
	for _, n := range names {
		if st, err := os.Stat(filepath.Join(dir, n)); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, n)
		}
	}
	return missing
}

// Options configure a cluster. The zero value works.
type Options struct {
	// ToolsDir holds the binaries; default ToolsDir().
	ToolsDir string
	// Dir holds certificates, kubeconfigs, etcd data and component logs; default
	// a new temporary directory (removed by Stop).
	Dir string
	// ServiceCIDRs is --service-cluster-ip-range; default dual-stack
	// "10.96.0.0/16,fd00:10:96::/112".
	ServiceCIDRs string
	// Controllers for kube-controller-manager; default DefaultControllers.
	Controllers []string
	// AdvertiseAddress must not be loopback (the API server refuses it); default
	// 192.0.2.10, a TEST-NET address nothing listens on.
	AdvertiseAddress string
	// BindAddress is where the API server listens; default 127.0.0.1. A real
	// cluster's nodes and pods reach it there, so it is then also the address
	// of Server and of every kubeconfig the harness writes.
	BindAddress string
	// AuthorizationModes is --authorization-mode; default "RBAC".
	AuthorizationModes string
	// APIServerArgs and ControllerManagerArgs are extra flags.
	APIServerArgs, ControllerManagerArgs []string
	// Logf, if set, receives progress lines (t.Logf in tests).
	Logf func(format string, args ...any)
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds the certificates, kubeconfigs, data and logs.
	Dir string
	// Kubeconfig is a cluster-admin kubeconfig file.
	Kubeconfig string
	// Server is the API server's URL.
	Server string
	// Config and Client are cluster-admin client configuration and clientset.
	Config *rest.Config
	Client kubernetes.Interface

	opts    Options
	ownDir  bool
	pki     *pki
	sp      *spawner
	etcd    *Process
	api     *Process
	kcm     *Process
	apiPort int
	kcmPort int

	mu      sync.Mutex
	stopped bool
	extra   []*Process // from StartProcess
}

// ForTest starts a cluster for a test and stops it when the test ends. Without
// root or the binaries it skips the test (fails it in CI).
func ForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	testenv.RequireRoot(t)
	if opts.ToolsDir == "" {
		opts.ToolsDir = ToolsDir()
	}
	if missing := MissingTools(opts.ToolsDir, Tools...); len(missing) > 0 {
		testenv.Unavailable(t, "missing %v in %s: run hack/k8s/build.sh", missing, opts.ToolsDir)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs are in %s", c.Dir)
			for _, p := range []*Process{c.api, c.kcm} {
				t.Logf("==== tail of %s log:\n%s", p.name, p.LogTail())
			}
		}
		c.Stop()
	})
	return c
}

// Start starts etcd, the API server and the controller manager and waits until
// the API server is ready and the default ServiceAccount exists.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.ToolsDir == "" {
		opts.ToolsDir = ToolsDir()
	}
	if opts.ServiceCIDRs == "" {
		opts.ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"
	}
	if opts.Controllers == nil {
		opts.Controllers = DefaultControllers
	}
	if opts.AdvertiseAddress == "" {
		opts.AdvertiseAddress = "192.0.2.10"
	}
	if opts.AuthorizationModes == "" {
		opts.AuthorizationModes = "RBAC"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if missing := MissingTools(opts.ToolsDir, Tools...); len(missing) > 0 {
		return nil, fmt.Errorf("missing %v in %s: run hack/k8s/build.sh", missing, opts.ToolsDir)
	}
	c := &Cluster{opts: opts, Dir: opts.Dir}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "kproxy-cluster-"); err != nil {
			return nil, fmt.Errorf("cluster dir: %w", err)
		}
		c.ownDir = true
	}
	c.sp = newSpawner()
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()

	// Retried: a load test elsewhere on the machine can exhaust the ephemeral
	// ports (TIME_WAIT) for a while.
	var ports []int
	err = poll(ctx, time.Second, func() (bool, error) {
		var perr error
		ports, perr = freePorts(4)
		if perr != nil {
			opts.Logf("cluster: %v; retrying", perr)
		}
		return perr == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("free ports: %w", err)
	}
	etcdClient, etcdPeer := ports[0], ports[1]
	c.apiPort, c.kcmPort = ports[2], ports[3]
	bind := opts.BindAddress
	if bind == "" {
		bind = "127.0.0.1"
	}
	c.Server = "https://" + net.JoinHostPort(bind, strconv.Itoa(c.apiPort))

	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP(opts.AdvertiseAddress)}
	if opts.BindAddress != "" {
		ips = append(ips, net.ParseIP(opts.BindAddress))
	}
	for _, cidr := range strings.Split(opts.ServiceCIDRs, ",") {
		// The first address of each service range is the "kubernetes" service.
		if _, n, err := net.ParseCIDR(strings.TrimSpace(cidr)); err == nil {
			first := append(net.IP(nil), n.IP...)
			first[len(first)-1]++
			ips = append(ips, first)
		}
	}
	if c.pki, err = newPKI(c.Dir, ips); err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Server, c.pki.CAFile, c.pki.AdminCert, c.pki.AdminKey); err != nil {
		return nil, err
	}
	kcmKubeconfig := filepath.Join(c.Dir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(kcmKubeconfig, c.Server, c.pki.CAFile, c.pki.KCMCert, c.pki.KCMKey); err != nil {
		return nil, err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("admin client config: %w", err)
	}
	c.Config.QPS, c.Config.Burst = 1000, 2000
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	c.etcd = &Process{
		name: "etcd", path: filepath.Join(opts.ToolsDir, "etcd"), logPath: filepath.Join(c.Dir, "etcd.log"),
		args: []string{
			"--name=default", "--data-dir=" + filepath.Join(c.Dir, "etcd"),
			"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=default=" + peerURL,
			// Test data: durability is not worth the fsync latency.
			"--unsafe-no-fsync", "--log-level=warn",
		},
	}
	c.api = &Process{
		name: "kube-apiserver", path: filepath.Join(opts.ToolsDir, "kube-apiserver"), logPath: filepath.Join(c.Dir, "kube-apiserver.log"),
		args: append([]string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=" + bind, "--secure-port=" + strconv.Itoa(c.apiPort),
			"--advertise-address=" + opts.AdvertiseAddress,
			"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
			"--tls-cert-file=" + c.pki.ServingCert, "--tls-private-key-file=" + c.pki.ServingKey,
			"--client-ca-file=" + c.pki.CAFile,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + c.pki.SAPublicKey,
			"--service-account-signing-key-file=" + c.pki.SAPrivateKey,
			"--service-cluster-ip-range=" + opts.ServiceCIDRs,
			"--authorization-mode=" + opts.AuthorizationModes,
			"--allow-privileged=true",
			"--profiling=false",
			// For kubectl exec and logs when there are kubelets.
			"--kubelet-client-certificate=" + c.pki.AdminCert, "--kubelet-client-key=" + c.pki.AdminKey,
		}, opts.APIServerArgs...),
	}
	c.kcm = &Process{
		name: "kube-controller-manager", path: filepath.Join(opts.ToolsDir, "kube-controller-manager"),
		logPath: filepath.Join(c.Dir, "kube-controller-manager.log"),
		args: append([]string{
			"--kubeconfig=" + kcmKubeconfig,
			"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(c.kcmPort),
			"--cert-dir=" + filepath.Join(c.Dir, "controller-manager-certs"),
			"--leader-elect=false",
			"--controllers=" + strings.Join(opts.Controllers, ","),
			"--use-service-account-credentials=false",
			"--root-ca-file=" + c.pki.CAFile,
			"--service-account-private-key-file=" + c.pki.SAPrivateKey,
		}, opts.ControllerManagerArgs...),
	}

	start := time.Now()
	if err := c.etcd.start(c.sp); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, c.etcd, etcdURL+"/health", nil); err != nil {
		return nil, err
	}
	if err := c.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := c.StartControllerManager(ctx); err != nil {
		return nil, err
	}
	if err := c.WaitServiceAccount(ctx, metav1.NamespaceDefault); err != nil {
		return nil, err
	}
	opts.Logf("cluster: control plane ready at %s in %v (dir %s)", c.Server, time.Since(start).Round(time.Millisecond), c.Dir)
	return c, nil
}

// StartAPIServer starts (or restarts) the API server on its port and waits until it is ready.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	if c.api.Running() {
		return nil
	}
	start := time.Now()
	if err := c.api.start(c.sp); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	c.opts.Logf("cluster: kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
	return nil
}

// StopAPIServer stops the API server (SIGTERM, SIGKILL after 5 s); etcd keeps
// the data. It stops listening at once, but with watches open (the
// controller-manager's, kproxy's) a graceful exit takes about 30 s, which a
// test need not wait for.
func (c *Cluster) StopAPIServer() {
	start := time.Now()
	c.api.Stop(5 * time.Second)
	c.opts.Logf("cluster: kube-apiserver stopped in %v", time.Since(start).Round(time.Millisecond))
}

// KillAPIServer kills the API server, as a crash would.
func (c *Cluster) KillAPIServer() { c.api.Kill() }

// RestartAPIServer stops the API server and starts it again on the same port.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	c.StopAPIServer()
	return c.StartAPIServer(ctx)
}

// StartControllerManager starts the controller manager and waits for its /healthz.
func (c *Cluster) StartControllerManager(ctx context.Context) error {
	if c.kcm.Running() {
		return nil
	}
	if err := c.kcm.start(c.sp); err != nil {
		return err
	}
	// Its serving certificate is self-signed in --cert-dir.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return waitHTTP(ctx, c.kcm, "https://127.0.0.1:"+strconv.Itoa(c.kcmPort)+"/healthz", insecure)
}

// StopControllerManager stops the controller manager: EndpointSlices then stop following pods.
func (c *Cluster) StopControllerManager() { c.kcm.Stop(10 * time.Second) }

// Stop stops every component and, if the harness made the directory, removes it.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	c.stopped = true
	for _, p := range append(c.extra, c.kcm, c.api, c.etcd) {
		if p != nil {
			p.Stop(3 * time.Second)
		}
	}
	if c.sp != nil {
		c.sp.close()
	}
	if c.ownDir {
		_ = os.RemoveAll(c.Dir)
	}
}

// APIServerPID returns the API server's process ID (0 when it is not running),
// for memory and CPU measurements.
func (c *Cluster) APIServerPID() int {
	if !c.api.Running() {
		return 0
	}
	return c.api.cmd.Process.Pid
}

// Kubectl runs the harness's kubectl against the cluster and returns its
// combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.opts.ToolsDir, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Tool returns the path of a binary in the tools directory.
func (c *Cluster) Tool(name string) string { return filepath.Join(c.opts.ToolsDir, name) }

// WriteKubeconfig writes a kubeconfig for the admin user that reaches the API
// server at server (for example a relay inside a network namespace).
func (c *Cluster) WriteKubeconfig(path, server string) error {
	return writeKubeconfig(path, server, c.pki.CAFile, c.pki.AdminCert, c.pki.AdminKey)
}

// CAFile is the cluster CA's certificate (PEM).
func (c *Cluster) CAFile() string { return c.pki.CAFile }

// AdminCertFiles are the admin client certificate and key (system:masters).
func (c *Cluster) AdminCertFiles() (cert, key string) { return c.pki.AdminCert, c.pki.AdminKey }

// APIPort is the API server's port.
func (c *Cluster) APIPort() int { return c.apiPort }

// IssueClientCert signs a client certificate for the user cn in the groups orgs
// and writes NAME.crt and NAME.key into Dir.
func (c *Cluster) IssueClientCert(name, cn string, orgs ...string) (cert, key string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pki.issue(name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// IssueServingCert signs a serving certificate for the given IPs and DNS names
// and writes NAME.crt and NAME.key into Dir.
func (c *Cluster) IssueServingCert(name string, ips []net.IP, dnsNames ...string) (cert, key string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pki.issue(name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		IPAddresses: ips,
		DNSNames:    dnsNames,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// WriteKubeconfigFor writes a kubeconfig for the client certificate cert/key
// that reaches the API server at Server.
func (c *Cluster) WriteKubeconfigFor(path, cert, key string) error {
	return writeKubeconfig(path, c.Server, c.pki.CAFile, cert, key)
}

// WaitServiceAccount waits until the namespace's default ServiceAccount exists;
// until then the API server rejects pods in it.
func (c *Cluster) WaitServiceAccount(ctx context.Context, namespace string) error {
	return poll(ctx, 50*time.Millisecond, func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last error
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		if !c.api.Running() {
			return false, fmt.Errorf("kube-apiserver exited: %v\n%s", c.api.waitErr, c.api.LogTail())
		}
		last = c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver not ready (last: %v): %w", last, err)
	}
	return nil
}

func waitHTTP(ctx context.Context, p *Process, url string, client *http.Client) error {
	if client == nil {
		client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		if !p.Running() {
			return false, fmt.Errorf("%s exited: %v\n%s", p.name, p.waitErr, p.LogTail())
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("wait for %s: %w", p.name, err)
	}
	return nil
}

// poll calls f every interval until it returns true or an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, f func() (bool, error)) error {
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		addr, ok := l.Addr().(*net.TCPAddr)
		if !ok {
			return nil, errors.New("free port: not a TCP address")
		}
		ports = append(ports, addr.Port)
	}
	return ports, nil
}

func writeKubeconfig(path, server, ca, cert, key string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kproxy-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["kproxy-test"] = &clientcmdapi.Context{Cluster: "kproxy-test", AuthInfo: "admin"}
	cfg.CurrentContext = "kproxy-test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
