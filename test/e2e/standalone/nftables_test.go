package standalone

// IP plan (internal/netnstest): node bridge 10.244.0.1/24 and fd00:10:244::1/64,
// pods from 10.244.0.2 and fd00:10:244::2, the external client 192.168.100.2 and
// fd00:100::2 on the node's uplink (192.168.100.1, fd00:100::1); services are
// allocated from 10.96.0.0/16 and fd00:10:96::/112.

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

const dualStackService = `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
    nodePort: 30080
  - name: dns
    protocol: UDP
    port: 53
    targetPort: 8080
`

func dualStackPod(name string, v4, v6 netip.Addr) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  labels:
    app: web
spec:
  containers:
  - name: server
    image: server
    ports:
    - name: http
      containerPort: 8080
status:
  phase: Running
  podIP: %s
  podIPs:
  - ip: %s
  - ip: %s
  conditions:
  - type: Ready
    status: "True"
`, name, v4, v4, v6)
}

// TestRunNFTablesInANamespace runs the kproxy binary as root inside a node network
// namespace, in nftables mode on a manifest directory, and checks real packets from
// a pod and from an external client, plus describe, DNS and trace against the same
// running process.
func TestRunNFTablesInANamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "nft", "dig")
	node := netnstest.NewNode(t)
	client := node.AddClient(t)
	a, b, c := node.AddPod(t, "web-a"), node.AddPod(t, "web-b"), node.AddPod(t, "client")
	a.Serve(t, "web-a", 8080)
	b.Serve(t, "web-b", 8080)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.yaml"), dualStackService)
	writeFile(t, filepath.Join(dir, "pods.yaml"), dualStackPod("web-a", a.V4, a.V6)+"---\n"+dualStackPod("web-b", b.V4, b.V6))

	kp := &proc{cmd: exec.Command("ip", "netns", "exec", node.Name, filepath.Join(binDir, "kproxy"), "run",
		"--manifests", dir, "--state-dir", t.TempDir(), "--proxy-mode", "nftables",
		"--nftables-table", "kproxy-e2e",
		"--service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/112",
		"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/48",
		"--conntrack-tcp-timeout-close-wait", "1234s", "--conntrack-udp-timeout", "45s",
		"--min-sync-period", "100ms"), out: &testenv.Buffer{}}
	kp.cmd.Stdout, kp.cmd.Stderr = kp.out, kp.out
	if err := kp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kp.stop(t) })

	// The admin endpoint listens on 127.0.0.1 inside the node namespace; ask
	// through the kproxy CLI run in that namespace, as an operator on the node would.
	kproxyCLI := func(args ...string) (string, error) {
		return node.Exec(append([]string{filepath.Join(binDir, "kproxy")}, args...)...)
	}
	var described string
	eventually(t, "describe shows both endpoints", 20*time.Second, func() (bool, string) {
		out, err := kproxyCLI("describe", "service", "web")
		described = out
		return err == nil && strings.Contains(out, a.V4.String()+":8080") && strings.Contains(out, b.V4.String()+":8080"), out
	})
	// The conntrack flags reached the node namespace's sysctls (set at start).
	for name, want := range map[string]string{"net.netfilter.nf_conntrack_tcp_timeout_close_wait": "1234", "net.netfilter.nf_conntrack_udp_timeout": "45"} {
		if got := strings.TrimSpace(node.MustExec("sysctl", "-n", name)); got != want {
			t.Errorf("%s in the node namespace = %s, want %s", name, got, want)
		}
	}
	vip4, vip6 := field(described, "IPs:", 0), field(described, "IPs:", 1)
	if !strings.HasPrefix(vip4, "10.96.") || !strings.HasPrefix(vip6, "fd00:10:96::") {
		t.Fatalf("cluster IPs %q %q not allocated from the ranges:\n%s", vip4, vip6, described)
	}

	reach := func(t *testing.T, from *netnstest.NS, proto string, dst netip.AddrPort) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for range 24 {
			r, err := from.Request(proto, dst, 0, 2*time.Second)
			if err != nil {
				seen["error: "+err.Error()]++
				continue
			}
			seen[r.Name+" from "+r.Peer.Addr().String()]++
		}
		return seen
	}
	type want struct{ a, b netip.Addr } // the source web-a and web-b must see
	tests := []struct {
		name string
		from *netnstest.NS
		src  want
		dst  netip.AddrPort
		prot string
	}{
		{"pod to ClusterIP over IPv4 keeps the pod's address", c.NS, want{c.V4, c.V4}, netip.AddrPortFrom(netip.MustParseAddr(vip4), 80), "tcp"},
		{"pod to ClusterIP over IPv6", c.NS, want{c.V6, c.V6}, netip.AddrPortFrom(netip.MustParseAddr(vip6), 80), "tcp"},
		{"pod to ClusterIP over UDP", c.NS, want{c.V4, c.V4}, netip.AddrPortFrom(netip.MustParseAddr(vip4), 53), "udp"},
		{"hairpin: a backend reaching itself is masqueraded, the other is not", a.NS, want{node.BridgeV4, a.V4}, netip.AddrPortFrom(netip.MustParseAddr(vip4), 80), "tcp"},
		{"external client to the NodePort is masqueraded", client.NS, want{node.BridgeV4, node.BridgeV4}, netip.AddrPortFrom(node.UplinkV4, 30080), "tcp"},
		{"external client to the IPv6 NodePort", client.NS, want{node.BridgeV6, node.BridgeV6}, netip.AddrPortFrom(node.UplinkV6, 30080), "tcp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("ruleset:\n%s", node.MustExec("curl", "-s", "127.0.0.1:10249/debug/kproxy/rules"))
				}
			})
			seen := reach(t, tc.from, tc.prot, tc.dst)
			want := map[string]bool{"web-a from " + tc.src.a.String(): true, "web-b from " + tc.src.b.String(): true}
			ok := len(seen) == 2
			for k := range seen {
				ok = ok && want[k]
			}
			if !ok {
				t.Fatalf("answers = %v, want each of %v", seen, want)
			}
		})
	}

	t.Run("DNS answers the service name with its cluster IPs", func(t *testing.T) {
		for qtype, want := range map[string]string{"A": vip4, "AAAA": vip6} {
			out := node.MustExec("dig", "+short", "@127.0.0.1", "-p", "10053", "web.default.svc.cluster.local", qtype)
			if strings.TrimSpace(out) != want {
				t.Errorf("dig %s = %q, want %s", qtype, out, want)
			}
		}
	})

	t.Run("trace agrees with the traffic", func(t *testing.T) {
		out, err := kproxyCLI("trace", "--from", c.V4.String(), "--to", vip4+":80/tcp")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{a.V4.String() + ":8080", b.V4.String() + ":8080", "50"} {
			if !strings.Contains(out, want) {
				t.Errorf("trace output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("rules outlive the process and cleanup removes only kproxy's tables", func(t *testing.T) {
		kp.stop(t)
		if r, err := c.Request("tcp", netip.AddrPortFrom(netip.MustParseAddr(vip4), 80), 0, 2*time.Second); err != nil {
			t.Fatalf("traffic stopped when kproxy exited (rules must stay for a restart to take over): %v", err)
		} else if !strings.HasPrefix(r.Name, "web-") {
			t.Fatalf("reply %+v", r)
		}
		node.MustExec("nft", "add", "table", "ip", "someone-else")
		if out, err := kproxyCLI("cleanup", "--nftables-table", "kproxy-e2e"); err != nil {
			t.Fatal(out, err)
		}
		tables := node.MustExec("nft", "list", "tables")
		if strings.Contains(tables, "kproxy-e2e") || !strings.Contains(tables, "someone-else") {
			t.Fatalf("tables after cleanup:\n%s", tables)
		}
	})
}

// field returns the i-th comma-separated value of the describe line with the label.
func field(describe, label string, i int) string {
	for _, line := range strings.Split(describe, "\n") {
		if v, ok := strings.CutPrefix(line, label); ok {
			parts := strings.Split(strings.TrimSpace(v), ",")
			if i < len(parts) {
				return strings.TrimSpace(parts[i])
			}
		}
	}
	return ""
}
