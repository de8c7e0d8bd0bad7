package standalone

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// TestSocketLBSurvivesSIGKILL runs the kproxy binary with the socket LB on,
// attached to a test cgroup (never the machine's root) with its pins on a
// private bpffs: a client pod's connects through the cluster IP go straight
// to an endpoint (no DNAT entry in the node's conntrack), keep doing so after
// kproxy is SIGKILLed, and `kproxy cleanup` detaches the programs.
func TestSocketLBSurvivesSIGKILL(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "nsenter", "conntrack")
	node := netnstest.NewNode(t)
	a, b, client := node.AddPod(t, "web-a"), node.AddPod(t, "web-b"), node.AddPod(t, "client")
	a.Serve(t, "web-a", 8080)
	b.Serve(t, "web-b", 8080)
	sb := lbtest.New(t)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.yaml"), dualStackService)
	writeFile(t, filepath.Join(dir, "pods.yaml"), dualStackPod("web-a", a.V4, a.V6)+"---\n"+dualStackPod("web-b", b.V4, b.V6))
	state := t.TempDir()
	// nsenter --net, not ip netns exec: that remounts /sys, hiding the cgroup2 mount.
	run := func() *proc {
		kp := &proc{cmd: exec.Command("nsenter", "--net="+node.Path(), filepath.Join(binDir, "kproxy"), "run",
			"--manifests", dir, "--state-dir", state, "--proxy-mode", "nftables", "--nftables-table", "kproxy-slb",
			"--service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/112",
			"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/48", "--min-sync-period", "100ms",
			"--socket-lb=on", "--socket-lb-cgroup", sb.Cgroup, "--socket-lb-pin-dir", sb.PinDir,
			"--healthz-bind-address=", "--metrics-bind-address=127.0.0.1:10249"), out: &testenv.Buffer{}}
		kp.cmd.Stdout, kp.cmd.Stderr = kp.out, kp.out
		if err := kp.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kp.stop(t) })
		return kp
	}
	kp := run()
	t.Cleanup(func() {
		_, _ = node.Exec(filepath.Join(binDir, "kproxy"), "cleanup", "--nftables-table", "kproxy-slb", "--socket-lb-pin-dir", sb.PinDir)
	})
	var described string
	eventually(t, "describe shows both endpoints", 20*time.Second, func() (bool, string) {
		out, err := node.Exec(filepath.Join(binDir, "kproxy"), "describe", "service", "web")
		described = out
		return err == nil && strings.Contains(out, a.V4.String()+":8080") && strings.Contains(out, b.V4.String()+":8080"), out + kp.out.String()
	})
	vip := netip.AddrPortFrom(netip.MustParseAddr(field(described, "IPs:", 0)), 80)

	reachBoth := func(when string) {
		t.Helper()
		node.MustExec("conntrack", "-F")
		seen := map[string]bool{}
		for i := 0; i < 30 && len(seen) < 2; i++ {
			r, err := sb.Client(client.Name, "tcp", vip)
			if err != nil {
				t.Fatal(err)
			}
			if r.Err != "" || r.Peer != vip.String() {
				t.Fatalf("%s: %+v, want an answer with the service as the socket's peer", when, r)
			}
			seen[r.Name] = true
		}
		if !seen["web-a"] || !seen["web-b"] {
			t.Fatalf("%s: reached %v, want both endpoints", when, seen)
		}
		if out, _ := node.Exec("conntrack", "-L", "-f", "ipv4", "--dst-nat"); strings.Contains(out, vip.Addr().String()) {
			t.Fatalf("%s: conntrack has a DNAT entry for the service, so nftables served it:\n%s", when, out)
		}
	}
	eventually(t, "the socket LB serves the cluster IP", 20*time.Second, func() (bool, string) {
		r, err := sb.Client(client.Name, "tcp", vip)
		return err == nil && r.Err == "" && r.Peer == vip.String(), kp.out.String()
	})
	reachBoth("with kproxy running")
	metrics, err := node.Exec("curl", "-s", "http://127.0.0.1:10249/metrics")
	if err != nil || !strings.Contains(metrics, `kproxy_socketlb_translations_total{protocol="TCP",service_port="default/web:http"}`) ||
		!strings.Contains(metrics, "kproxy_socketlb_sync_duration_seconds_count") {
		t.Errorf("metrics lack the socket LB's translations or sync duration (%v):\n%s", err, grepLines(metrics, "socketlb"))
	}

	// kproxy trace answers from the socket LB's maps for a pod's connect, and
	// says nftables serves a packet from outside the node.
	out, err := node.Exec(filepath.Join(binDir, "kproxy"), "trace", "--from", client.V4.String(), "--to", vip.String()+"/tcp")
	if err != nil || !strings.Contains(out, "datapath: socket LB") || !strings.Contains(out, "socket LB (BPF maps): frontend "+vip.String()) ||
		!strings.Contains(out, a.V4.String()+":8080") || strings.Contains(out, "disagree") {
		t.Errorf("trace from a pod (%v):\n%s", err, out)
	}
	out, err = node.Exec(filepath.Join(binDir, "kproxy"), "trace", "--from", "192.168.100.2", "--to", vip.String()+"/tcp")
	if err != nil || !strings.Contains(out, "datapath: nftables") {
		t.Errorf("trace from outside the node (%v):\n%s", err, out)
	}

	_ = kp.cmd.Process.Kill()
	_ = kp.cmd.Wait()
	reachBoth("after kproxy was SIGKILLed")

	kp = run()
	eventually(t, "the restarted kproxy synced", 20*time.Second, func() (bool, string) {
		return strings.Contains(kp.out.String(), "msg=synced"), kp.out.String()
	})
	reachBoth("after the restart")
	kp.stop(t)

	out, err = node.Exec(filepath.Join(binDir, "kproxy"), "cleanup", "--nftables-table", "kproxy-slb", "--socket-lb-pin-dir", sb.PinDir)
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if _, err := os.Stat(sb.PinDir); !os.IsNotExist(err) {
		t.Errorf("cleanup left the pin directory (%v): %s", err, out)
	}
	if r, err := sb.Client(client.Name, "tcp", vip); err != nil || r.Err == "" {
		t.Errorf("after cleanup (no nftables, no socket LB) the cluster IP still answers: %+v %v", r, err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
