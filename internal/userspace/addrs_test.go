package userspace

import (
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/testenv"
)

// inNetnsEnv marks the child process that runs a test inside its own network namespace.
const inNetnsEnv = "KPROXY_USERSPACE_TEST_NETNS"

// runInNetns re-runs the named test in a fresh network namespace (unshare -n),
// so that adding service IPs to lo never touches the machine's own lo. It
// returns true in the child, where the test body should run.
func runInNetns(t *testing.T, name string) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) != "" {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		return true
	}
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "unshare")
	cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run", "^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a network namespace: %v\n%s", err, out)
	}
	t.Logf("in a network namespace:\n%s", out)
	return false
}

func loAddrs(t *testing.T) map[netip.Addr]bool {
	t.Helper()
	got, err := (&netlinkAddrs{device: "lo"}).List()
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestServiceIPsOnLoopback(t *testing.T) {
	if !runInNetns(t, "TestServiceIPsOnLoopback") {
		return
	}
	// Present before kproxy starts: used by a service, but never removed by kproxy.
	pre := netip.MustParseAddr("10.96.4.9")
	if err := (&netlinkAddrs{device: "lo"}).Add(pre); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.BindServiceIPs = true
	h := newHarness(t, cfg)
	web := makeTestService("web", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.4.1", "fd00:10:96::4"}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	})
	other := makeTestService("other", func(s *v1.Service) { s.Spec.ClusterIPs = []string{pre.String()} })
	h.setService(web)
	h.setService(other)
	eps := []netip.AddrPort{tcpBackend(t, "127.0.4.1:0", "backend-1"), tcpBackend(t, "[::1]:0", "backend-6")}
	h.setEndpoints("web", v1.ProtocolTCP, eps...)
	h.setEndpoints("other", v1.ProtocolTCP, eps...)
	h.sync()

	check := func(want map[string]bool) {
		t.Helper()
		got := loAddrs(t)
		for ip, present := range want {
			if got[netip.MustParseAddr(ip)] != present {
				t.Fatalf("%s on lo: %v, want %v (lo has %v)", ip, !present, present, got)
			}
		}
	}
	check(map[string]bool{"10.96.4.1": true, "fd00:10:96::4": true, "10.96.4.9": true})
	// IPv6 on a freshly raised lo can take a moment to route its addresses
	// ("network is unreachable"); the listener itself is already bound.
	eventually(t, 3*time.Second, func() error {
		c, err := net.DialTimeout("tcp", "[fd00:10:96::4]:18080", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	for target, want := range map[string]string{"10.96.4.1:18080": "backend-1", "[fd00:10:96::4]:18080": "backend-6", "10.96.4.9:18080": "backend-1"} {
		if got := whoAnswers(t, "", target, 2); got[want] != 2 {
			t.Fatalf("%s answered by %v, want %s", target, got, want)
		}
	}

	t.Run("cluster IP changes", func(t *testing.T) {
		h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.96.4.2"} }))
		h.sync()
		check(map[string]bool{"10.96.4.1": false, "fd00:10:96::4": false, "10.96.4.2": true})
		if got := whoAnswers(t, "", "10.96.4.2:18080", 1); got["backend-1"] != 1 {
			t.Fatalf("answered by %v", got)
		}
	})
	t.Run("service deleted", func(t *testing.T) {
		h.deleteService(other)
		h.sync()
		check(map[string]bool{"10.96.4.9": true, "10.96.4.2": true})
	})
	t.Run("close removes what kproxy added", func(t *testing.T) {
		if err := h.p.Close(); err != nil {
			t.Fatal(err)
		}
		check(map[string]bool{"10.96.4.9": true, "10.96.4.2": false})
	})
}

func TestNetlinkAddrsErrors(t *testing.T) {
	n := &netlinkAddrs{device: "kproxy-no-such-device"}
	for name, err := range map[string]error{
		"list":   func() error { _, err := n.List(); return err }(),
		"add":    n.Add(netip.MustParseAddr("10.96.0.1")),
		"remove": n.Remove(netip.MustParseAddr("10.96.0.1")),
	} {
		t.Run(name, func(t *testing.T) {
			if err == nil {
				t.Fatalf("%s on a missing device succeeded", name)
			}
		})
	}
}

// fakeAddrs is an in-memory loopback device.
type fakeAddrs struct {
	mu   sync.Mutex
	have map[netip.Addr]bool
}

func (f *fakeAddrs) List() (map[netip.Addr]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.have), nil
}

func (f *fakeAddrs) Add(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.have[ip] = true
	return nil
}

func (f *fakeAddrs) Remove(ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.have, ip)
	return nil
}

// TestServiceIPOwnership checks, without root, which addresses the proxier
// adds and removes: cluster IPs that are not loopback addresses, never the
// ones it found on the device.
func TestServiceIPOwnership(t *testing.T) {
	pre := netip.MustParseAddr("10.96.4.51")
	fake := &fakeAddrs{have: map[netip.Addr]bool{pre: true}}
	cfg := testConfig()
	cfg.BindServiceIPs = true
	h := newHarness(t, cfg)
	h.p.Close() // replaced by one with the fake device
	p, err := newProxier(cfg, nil, fake)
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	t.Cleanup(func() { h.p.Close() })

	a := makeTestService("a", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.96.4.50", "127.10.4.50"} })
	b := makeTestService("b", func(s *v1.Service) { s.Spec.ClusterIPs = []string{pre.String()} })
	h.setService(a)
	h.setService(b)
	h.sync()
	tests := []struct {
		name string
		step func()
		want map[string]bool
	}{
		{"added, loopback skipped", func() {}, map[string]bool{"10.96.4.50": true, "127.10.4.50": false, "10.96.4.51": true}},
		{"service deleted", func() { h.deleteService(a); h.deleteService(b); h.sync() }, map[string]bool{"10.96.4.50": false, "10.96.4.51": true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.step()
			have, _ := fake.List()
			for ip, want := range tc.want {
				if have[netip.MustParseAddr(ip)] != want {
					t.Fatalf("%s on the device: %v, want %v (device: %v)", ip, !want, want, have)
				}
			}
		})
	}
}
