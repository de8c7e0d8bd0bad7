package cluster_test

// TestTwoNodes runs kproxy (nftables data plane) on two node namespaces
// against the real API server and checks real traffic.
//
// IP plan:
//
//	node-a netns  bridge 10.244.0.1/24, node link 192.168.10.1/24, uplink 192.168.100.1/24
//	node-b netns  bridge 10.244.1.1/24, node link 192.168.10.2/24
//	pod-a         10.244.0.2 on node-a        pod-b  10.244.1.2 on node-b
//	client        192.168.100.2, routes 10/8, 192.168.10.0/24 via node-a
//	services      10.96.0.0/16 (API server), node ports 30000-32767

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/cluster"
	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

type twoNodes struct {
	c            *cluster.Cluster
	a, b         *netnstest.Node
	podA, podB   *netnstest.Pod
	client       *netnstest.Client
	linkA, linkB netip.Addr
	proxies      map[string]*proxyRun
}

func setupTwoNodes(t *testing.T, ctx context.Context) *twoNodes {
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	bin, err := kproxyBinary()
	if err != nil {
		t.Fatal(err)
	}
	env := &twoNodes{c: cluster.ForTest(t, cluster.Options{}), proxies: map[string]*proxyRun{}}
	env.a, env.b = netnstest.NewNodeIndex(t, 0), netnstest.NewNodeIndex(t, 1)
	env.client = env.a.AddClient(t)
	env.linkA, env.linkB = netip.MustParseAddr("192.168.10.1"), netip.MustParseAddr("192.168.10.2")
	env.a.MustExec("ip", "link", "add", "n2n", "type", "veth", "peer", "name", "n2n", "netns", env.b.Name)
	env.a.MustExec("ip", "addr", "add", env.linkA.String()+"/24", "dev", "n2n")
	env.a.MustExec("ip", "link", "set", "n2n", "up")
	env.b.MustExec("ip", "addr", "add", env.linkB.String()+"/24", "dev", "n2n")
	env.b.MustExec("ip", "link", "set", "n2n", "up")
	env.a.MustExec("ip", "route", "add", "10.244.1.0/24", "via", env.linkB.String())
	env.b.MustExec("ip", "route", "add", "10.244.0.0/24", "via", env.linkA.String())
	env.b.MustExec("ip", "route", "add", "192.168.100.0/24", "via", env.linkA.String())
	// Node b needs a route covering the service range, or a connect to a
	// cluster IP fails before NAT; its default route is node a.
	env.b.MustExec("ip", "route", "add", "default", "via", env.linkA.String())
	env.b.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
	env.client.MustExec("ip", "route", "add", "192.168.10.0/24", "via", "192.168.100.1")

	c := env.c
	for _, n := range []struct {
		name string
		ip   netip.Addr
		cidr string
	}{{"node-a", env.linkA, "10.244.0.0/24"}, {"node-b", env.linkB, "10.244.1.0/24"}} {
		if _, err := c.CreateNode(ctx, cluster.NodeSpec{Name: n.name, InternalIPs: []netip.Addr{n.ip}, PodCIDRs: []string{n.cidr}}); err != nil {
			t.Fatal(err)
		}
	}
	env.podA, env.podB = env.a.AddPod(t, "pod-a"), env.b.AddPod(t, "pod-b")
	env.podA.Serve(t, "pod-a", 8080)
	env.podB.Serve(t, "pod-b", 8080)
	for _, p := range []struct {
		pod  *netnstest.Pod
		node string
	}{{env.podA, "node-a"}, {env.podB, "node-b"}} {
		if _, err := c.RunPod(ctx, webPod(p.pod.PodName), p.node, p.pod.V4); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []struct {
		name string
		ns   *netnstest.Node
	}{{"node-a", env.a}, {"node-b", env.b}} {
		env.proxies[n.name] = startProxy(t, c, "kproxy-"+n.name, n.ns.Name, bin, func(kubeconfig string) []string {
			args := []string{"run", "--kubeconfig=" + kubeconfig, "--proxy-mode=nftables", "--socket-lb=off", "--hostname-override=" + n.name,
				"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=0.0.0.0:10256"}
			if n.name == "node-a" {
				// Node a serves NodePorts on its InternalIP (192.168.10.1) only,
				// not on its uplink or bridge; node b on all its addresses.
				// Node a tells its pods' traffic by the cluster CIDR, node b
				// by its Node's pod CIDR.
				args = append(args, "--nodeport-addresses=primary", "--cluster-cidr=10.244.0.0/16")
			} else {
				args = append(args, "--detect-local-mode=NodeCIDR", "--oom-score-adj=500")
			}
			return args
		})
	}
	for name, p := range env.proxies {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		d := p.waitFirstSync(wctx, t)
		cancel()
		t.Logf("%s: first sync %v after start", name, d)
	}
	return env
}

func webPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "registry.k8s.io/pause:3.10",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}
}

// answers sends n requests and returns the set of pods that answered and the
// peers they saw; it fails on errors when mustAnswer.
func answers(t *testing.T, from *netnstest.NS, dst netip.AddrPort, n int) (names map[string]int, peers map[netip.Addr]bool, errs int) {
	t.Helper()
	names, peers = map[string]int{}, map[netip.Addr]bool{}
	for range n {
		r, err := from.Request("tcp", dst, 0, 2*time.Second)
		if err != nil {
			errs++
			continue
		}
		names[r.Name]++
		peers[r.Peer.Addr()] = true
	}
	return names, peers, errs
}

// eventually retries check until it returns nil or 30 s pass (rules follow
// API changes asynchronously).
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func wantPods(t *testing.T, from *netnstest.NS, dst netip.AddrPort, want ...string) func() error {
	return func() error {
		names, _, errs := answers(t, from, dst, 12)
		got := make([]string, 0, len(names))
		for n := range names {
			got = append(got, n)
		}
		slices.Sort(got)
		slices.Sort(want)
		if errs > 0 || !slices.Equal(got, want) {
			return fmt.Errorf("%v answered (%d errors), want %v", names, errs, want)
		}
		return nil
	}
}

// healthStatus GETs / on addr from inside ns. The connection is dialled on
// the namespace's thread itself: http.Transport would dial from another
// goroutine, in whatever namespace that thread is in.
func healthStatus(ns *netnstest.NS, addr netip.AddrPort) (int, error) {
	var code int
	err := ns.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: "+addr.String()+"\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		code = resp.StatusCode
		return nil
	})
	return code, err
}

func TestTwoNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env := setupTwoNodes(t, ctx)
	c := env.c
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	vip := netip.AddrPortFrom(clusterIP, 80)
	npA, npB := netip.AddrPortFrom(env.linkA, nodePort), netip.AddrPortFrom(env.linkB, nodePort)

	t.Run("cluster IP from a pod reaches pods on both nodes", func(t *testing.T) {
		eventually(t, "cluster IP", wantPods(t, env.podA.NS, vip, "pod-a", "pod-b"))
	})
	t.Run("oom_score_adj: kube-proxy's -999 by default, or --oom-score-adj", func(t *testing.T) {
		adj := func(node string) string {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", env.proxies[node].proc.PID()))
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(b))
		}
		if got := adj("node-b"); got != "500" {
			t.Errorf("node b (--oom-score-adj=500): %s", got)
		}
		// Lowering it needs CAP_SYS_RESOURCE, which root may lack (in a
		// container, or on this test machine); kproxy then says so and runs on.
		log, err := os.ReadFile(env.proxies["node-a"].proc.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		warned := strings.Contains(string(log), `msg="cannot set oom_score_adj (lowering it needs CAP_SYS_RESOURCE); left as it is" value=-999`)
		if got := adj("node-a"); got != "-999" && (hasCapability(t, unix.CAP_SYS_RESOURCE) || !warned) {
			t.Errorf("node a: oom_score_adj %s (warned: %v)", got, warned)
		}
	})
	t.Run("NodePort on node a reaches pods on node b", func(t *testing.T) {
		eventually(t, "node port a", wantPods(t, env.client.NS, npA, "pod-a", "pod-b"))
		eventually(t, "node port b", wantPods(t, env.client.NS, npB, "pod-a", "pod-b"))
	})
	t.Run("--nodeport-addresses=primary: NodePorts on the Node's InternalIP only", func(t *testing.T) {
		// Node a's uplink address is a node address but not its primary one.
		uplinkA := netip.AddrPortFrom(env.a.UplinkV4, nodePort)
		if names, _, errs := answers(t, env.client.NS, uplinkA, 3); errs != 3 {
			t.Errorf("node a answered the NodePort on %v (pods %v): want refused, primary is %v", uplinkA, names, env.linkA)
		}
		// Node b, without the flag, answers on any of its addresses, its bridge too.
		eventually(t, "node b's bridge address", wantPods(t, env.podB.NS, netip.AddrPortFrom(env.b.BridgeV4, nodePort), "pod-a", "pod-b"))
	})

	_, err = c.Client.CoreV1().Services("default").Patch(ctx, "web", types.MergePatchType,
		[]byte(`{"spec":{"externalTrafficPolicy":"Local"}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err = c.Client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hcPort := uint16(svc.Spec.HealthCheckNodePort)
	if hcPort == 0 {
		t.Fatal("no healthCheckNodePort allocated")
	}
	t.Run("externalTrafficPolicy Local: node-local pods only, client IP kept", func(t *testing.T) {
		eventually(t, "local on a", wantPods(t, env.client.NS, npA, "pod-a"))
		eventually(t, "local on b", wantPods(t, env.client.NS, npB, "pod-b"))
		_, peers, _ := answers(t, env.client.NS, npB, 4)
		if !peers[env.client.V4] || len(peers) != 1 {
			t.Errorf("pod-b saw peers %v, want only the client %v", peers, env.client.V4)
		}
	})
	t.Run("healthCheckNodePort follows local endpoints", func(t *testing.T) {
		for _, n := range []netip.Addr{env.linkA, env.linkB} {
			eventually(t, "health 200", func() error {
				code, err := healthStatus(env.client.NS, netip.AddrPortFrom(n, hcPort))
				if err != nil || code != http.StatusOK {
					return fmt.Errorf("node %v: %d %v", n, code, err)
				}
				return nil
			})
		}
		if err := c.ForceDeletePod(ctx, "default", "pod-a"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "health 503 on node a", func() error {
			code, err := healthStatus(env.client.NS, netip.AddrPortFrom(env.linkA, hcPort))
			if err != nil || code != http.StatusServiceUnavailable {
				return fmt.Errorf("%d %v", code, err)
			}
			return nil
		})
		code, err := healthStatus(env.client.NS, netip.AddrPortFrom(env.linkB, hcPort))
		if err != nil || code != http.StatusOK {
			t.Errorf("node b health: %d %v", code, err)
		}
	})
	var podA2 *netnstest.Pod
	parent := t
	t.Run("API server restart: traffic flows, a change right after is programmed", func(t *testing.T) {
		stop := make(chan struct{})
		failures := make(chan int, 1)
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					failures <- n
					return
				default:
				}
				if _, err := env.podB.Request("tcp", vip, 0, 2*time.Second); err != nil {
					n++
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		c.StopAPIServer()
		time.Sleep(2 * time.Second)
		if err := c.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		// pod-a comes back with a new address.
		// Registered on the parent test: the pod must outlive this subtest.
		podA2 = env.a.AddPod(parent, "pod-a2")
		podA2.Serve(parent, "pod-a2", 8080)
		if _, err := c.RunPod(ctx, webPod("pod-a2"), "node-a", podA2.V4); err != nil {
			t.Fatal(err)
		}
		eventually(t, "new pod after restart", wantPods(t, env.podB.NS, vip, "pod-a2", "pod-b"))
		close(stop)
		if n := <-failures; n > 0 {
			t.Errorf("%d requests to the cluster IP failed around the API server restart", n)
		}
	})
	t.Run("network cut: rules stay, changes made meanwhile arrive after", func(t *testing.T) {
		relay := env.proxies["node-b"].relay
		relay.Pause()
		defer relay.Resume()
		time.Sleep(time.Second)
		// A new pod while node b is cut off: node a follows, node b keeps its
		// rules and its traffic, and catches up once the network is back.
		podB2 := env.b.AddPod(t, "pod-b2")
		podB2.Serve(t, "pod-b2", 8080)
		if _, err := c.RunPod(ctx, webPod("pod-b2"), "node-b", podB2.V4); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the controller-manager publishes pod-b2", func() error {
			slices, err := c.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=web"})
			if err != nil {
				return err
			}
			for _, sl := range slices.Items {
				for _, ep := range sl.Endpoints {
					if slices2contains(ep.Addresses, podB2.V4.String()) {
						return nil
					}
				}
			}
			return fmt.Errorf("pod-b2 not in the slices yet")
		})
		time.Sleep(2 * time.Second) // what a connected node b would need to follow
		if err := wantPods(t, env.podB.NS, vip, "pod-a2", "pod-b")(); err != nil {
			t.Fatalf("node b changed its rules while cut off: %v", err)
		}
		relay.Resume()
		eventually(t, "node b catches up", wantPods(t, env.podB.NS, vip, "pod-a2", "pod-b", "pod-b2"))
	})
	t.Run("kproxy describe service matches kubectl describe svc", func(t *testing.T) {
		bin, err := kproxyBinary()
		if err != nil {
			t.Fatal(err)
		}
		dual, single := corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicySingleStack
		timeout := int32(600)
		local := corev1.ServiceInternalTrafficPolicyLocal
		td := corev1.ServiceTrafficDistributionPreferClose
		for _, s := range []*corev1.Service{
			{
				ObjectMeta: metav1.ObjectMeta{Name: "dual", Labels: map[string]string{"tier": "web"},
					Annotations: map[string]string{"example.com/owner": "kproxy"}},
				Spec: corev1.ServiceSpec{
					Selector: map[string]string{"app": "web"}, IPFamilyPolicy: &dual,
					SessionAffinity:       corev1.ServiceAffinityClientIP,
					SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}},
					InternalTrafficPolicy: &local, TrafficDistribution: &td,
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
						{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)},
					},
				},
			},
			{
				ObjectMeta: metav1.ObjectMeta{Name: "np"},
				Spec: corev1.ServiceSpec{
					Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"}, IPFamilyPolicy: &single,
					ExternalIPs: []string{"192.168.200.10"},
					Ports:       []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080)}},
				},
			},
			{
				ObjectMeta: metav1.ObjectMeta{Name: "headless"},
				Spec: corev1.ServiceSpec{
					ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "web"},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80}},
				},
			},
			{
				ObjectMeta: metav1.ObjectMeta{Name: "ext"},
				Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"},
			},
		} {
			if _, err := c.Client.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range []string{"web", "dual", "np", "headless", "ext"} {
			t.Run(name, func(t *testing.T) {
				var (
					kp string
					kc []byte
				)
				eventually(t, "describe outputs equal", func() error {
					kc, err = c.Kubectl(ctx, "describe", "svc", name, "-n", "default")
					if err != nil {
						return err
					}
					kp, err = env.a.Exec(bin, "describe", "service", name, "-n", "default", "--admin-address=127.0.0.1:10249")
					if err != nil {
						return err
					}
					// Events are the cluster's (here the controller-manager's
					// warnings while the API server was down): kproxy does not read
					// Event objects (its RBAC cannot), so that section is left out.
					if withoutEvents(kp) != withoutEvents(string(kc)) {
						return fmt.Errorf("kproxy describe:\n%s\nkubectl describe:\n%s", kp, kc)
					}
					return nil
				})
			})
		}
	})
	// Last: it restarts node b's kproxy.
	t.Run("--detect-local-mode=NodeCIDR: the Node's pod CIDR; a new one restarts kproxy", func(t *testing.T) {
		out, err := env.b.Exec("nft", "list", "chain", "ip", "kproxy", "masq-check")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "ip saddr 10.244.1.0/24 return") || strings.Contains(out, "10.244.0.0") {
			t.Fatalf("node b's masq-check chain does not use its pod CIDR 10.244.1.0/24 alone:\n%s", out)
		}
		// A Node's pod CIDRs cannot change; it is deleted and re-created.
		if err := c.Client.CoreV1().Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateNode(ctx, cluster.NodeSpec{Name: "node-b", InternalIPs: []netip.Addr{env.linkB}, PodCIDRs: []string{"10.244.2.0/24"}}); err != nil {
			t.Fatal(err)
		}
		proc := env.proxies["node-b"].proc
		eventually(t, "node b's kproxy exits", func() error {
			if proc.Running() {
				return errors.New("still running")
			}
			return nil
		})
		if err := proc.Wait(); err == nil || !strings.Contains(proc.LogTail(), "pod CIDRs changed from [10.244.1.0/24] to [10.244.2.0/24]") {
			t.Fatalf("exit %v; log:\n%s", err, proc.LogTail())
		}
		// Its rules stay until the next kproxy takes them over.
		if out, err := env.b.Exec("nft", "list", "chain", "ip", "kproxy", "masq-check"); err != nil || !strings.Contains(out, "10.244.1.0/24") {
			t.Fatalf("after the exit: %v\n%s", err, out)
		}
	})
}

// hasCapability reports whether the test process has capability c.
func hasCapability(t *testing.T, c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && v&(1<<c) != 0
		}
	}
	return false
}

// withoutEvents cuts a describe output at its "Events:" line.
func withoutEvents(s string) string {
	if i := strings.Index(s, "\nEvents:"); i >= 0 {
		return s[:i+1]
	}
	return s
}

func slices2contains(ss []string, s string) bool { return slices.Contains(ss, s) }
