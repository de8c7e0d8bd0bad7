package conntrack

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

func TestSettingsApply(t *testing.T) {
	files := map[string]int{
		"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 432000,
		"nf_conntrack_tcp_timeout_close_wait": 60, "nf_conntrack_udp_timeout": 30,
		"nf_conntrack_udp_timeout_stream": 120, "nf_conntrack_tcp_be_liberal": 0,
	}
	setup := func(t *testing.T) (root, hash string) {
		root = t.TempDir()
		for name, v := range files {
			if err := os.WriteFile(filepath.Join(root, name), []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		hash = filepath.Join(root, "hashsize")
		if err := os.WriteFile(hash, []byte("32768\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return root, hash
	}
	read := func(t *testing.T, path string) int {
		v, err := readInt(path)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name        string
		s           Settings
		wantChanged []string
		want        map[string]int
	}{
		{"nothing set changes nothing", Settings{}, nil, files},
		{"timeouts and be_liberal", Settings{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour,
			UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute, TCPBeLiberal: true},
			[]string{"nf_conntrack_tcp_timeout_established 432000 -> 86400", "nf_conntrack_tcp_timeout_close_wait 60 -> 3600",
				"nf_conntrack_tcp_be_liberal 0 -> 1"},
			map[string]int{"nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600,
				"nf_conntrack_udp_timeout": 30, "nf_conntrack_udp_timeout_stream": 120, "nf_conntrack_tcp_be_liberal": 1}},
		{"the table grows to max per core × CPUs, with a bucket per four entries", Settings{MaxPerCore: 32768, Min: 131072},
			[]string{"nf_conntrack_max 131072 -> 262144", "hashsize 32768 -> 65536"},
			map[string]int{"nf_conntrack_max": 262144, "hashsize": 65536}},
		{"min wins over a small max per core", Settings{MaxPerCore: 1000, Min: 200000},
			[]string{"nf_conntrack_max 131072 -> 200000", "hashsize 32768 -> 50000"}, map[string]int{"nf_conntrack_max": 200000}},
		{"the table never shrinks", Settings{MaxPerCore: 1000, Min: 1000}, nil, map[string]int{"nf_conntrack_max": 131072, "hashsize": 32768}},
		{"the table is capped at 1Mi entries", Settings{MaxPerCore: 1 << 20, Min: 131072},
			[]string{"nf_conntrack_max 131072 -> 1048576", "hashsize 32768 -> 262144"}, map[string]int{"nf_conntrack_max": 1 << 20}},
		{"kube-proxy's defaults on 8 CPUs", KubeProxyDefaults(),
			[]string{"nf_conntrack_max 131072 -> 262144", "hashsize 32768 -> 65536",
				"nf_conntrack_tcp_timeout_established 432000 -> 86400", "nf_conntrack_tcp_timeout_close_wait 60 -> 3600"},
			map[string]int{"nf_conntrack_udp_timeout": 30, "nf_conntrack_udp_timeout_stream": 120, "nf_conntrack_tcp_be_liberal": 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, hash := setup(t)
			vals, err := tc.s.apply(root, hash, 8)
			changed := changedOf(vals)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(changed, tc.wantChanged) {
				t.Errorf("changed %q, want %q", changed, tc.wantChanged)
			}
			for name, v := range tc.want {
				path := filepath.Join(root, name)
				if name == "hashsize" {
					path = hash
				}
				if got := read(t, path); got != v {
					t.Errorf("%s = %d, want %d", name, got, v)
				}
			}
		})
	}
	t.Run("an unknown sysctl is an error naming it; the others are still set", func(t *testing.T) {
		root, hash := setup(t)
		if err := os.Remove(filepath.Join(root, "nf_conntrack_udp_timeout")); err != nil {
			t.Fatal(err)
		}
		vals, err := Settings{UDPTimeout: time.Minute, TCPBeLiberal: true}.apply(root, hash, 2)
		changed := changedOf(vals)
		if err == nil || !strings.Contains(err.Error(), "nf_conntrack_udp_timeout") {
			t.Errorf("error %v, want one naming nf_conntrack_udp_timeout", err)
		}
		if !slices.Equal(changed, []string{"nf_conntrack_tcp_be_liberal 0 -> 1"}) {
			t.Errorf("changed %q", changed)
		}
	})
}

func changedOf(vals []Value) []string {
	var out []string
	for _, v := range vals {
		if v.Changed {
			out = append(out, v.String())
		}
	}
	return out
}

func TestOnlineCPUs(t *testing.T) {
	for in, want := range map[string]int{"0\n": 1, "0-1\n": 2, "0-3,8,10-11\n": 7} {
		path := filepath.Join(t.TempDir(), "online")
		if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := onlineCPUs(path); got != want || err != nil {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
}

// TestSettingsApplyKernel sets the real sysctls of a fresh network namespace
// and reads them back there with sysctl(8); the host's stay as they were.
func TestSettingsApplyKernel(t *testing.T) {
	testenv.RequireRoot(t)
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	hostBefore, err := os.ReadFile(filepath.Join(sysctlRoot, "nf_conntrack_tcp_timeout_established"))
	if err != nil {
		testenv.Unavailable(t, "no conntrack sysctls: %v", err)
	}
	ns := netnstest.NewNode(t).NS
	s := Settings{TCPEstablishedTimeout: 12345 * time.Second, TCPCloseWaitTimeout: 321 * time.Second,
		UDPTimeout: 42 * time.Second, UDPStreamTimeout: 99 * time.Second, TCPBeLiberal: true}
	var vals []Value
	if err := ns.Do(func() (err error) { vals, err = s.Apply(); return err }); err != nil {
		t.Fatal(err)
	}
	changed := changedOf(vals)
	if len(changed) != 5 {
		t.Errorf("changed %q, want all five", changed)
	}
	for name, want := range map[string]string{
		"net.netfilter.nf_conntrack_tcp_timeout_established": "12345", "net.netfilter.nf_conntrack_tcp_timeout_close_wait": "321",
		"net.netfilter.nf_conntrack_udp_timeout": "42", "net.netfilter.nf_conntrack_udp_timeout_stream": "99",
		"net.netfilter.nf_conntrack_tcp_be_liberal": "1",
	} {
		if got := strings.TrimSpace(ns.MustExec("sysctl", "-n", name)); got != want {
			t.Errorf("%s in the namespace = %s, want %s", name, got, want)
		}
	}
	hostAfter, err := os.ReadFile(filepath.Join(sysctlRoot, "nf_conntrack_tcp_timeout_established"))
	if err != nil || string(hostAfter) != string(hostBefore) {
		t.Errorf("host value changed: %q -> %q (%v)", hostBefore, hostAfter, err)
	}
	// The table size is the host's: a namespace may not change it.
	err = ns.Do(func() error { _, err := (Settings{MaxPerCore: 1 << 20}).Apply(); return err })
	if err == nil || !strings.Contains(err.Error(), "nf_conntrack_max") {
		t.Errorf("raising the table size from a namespace: %v, want an error naming nf_conntrack_max", err)
	}
}

// TestKubeProxyDefaultsKernel applies kube-proxy's defaults in a fresh
// network namespace, as kproxy does at start with an empty configuration,
// and reads the namespace's sysctls back: the timeouts are the namespace's
// own; the table size and hash size are the host's, already big enough here
// or reported as read-only, and never written from the namespace.
func TestKubeProxyDefaultsKernel(t *testing.T) {
	testenv.RequireRoot(t)
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	hostMax, err := readInt(filepath.Join(sysctlRoot, "nf_conntrack_max"))
	if err != nil {
		testenv.Unavailable(t, "no conntrack sysctls: %v", err)
	}
	hostHash, err := readInt(hashsizePath)
	if err != nil {
		t.Fatal(err)
	}
	hostCloseWait, err := readInt(filepath.Join(sysctlRoot, "nf_conntrack_tcp_timeout_close_wait"))
	if err != nil {
		t.Fatal(err)
	}
	ns := netnstest.NewNode(t).NS
	before := strings.TrimSpace(ns.MustExec("sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"))
	var vals []Value
	err = ns.Do(func() (err error) { vals, err = KubeProxyDefaults().Apply(); return err })
	wantMax := KubeProxyDefaults().TableSize(numCPU())
	if hostMax >= wantMax {
		if err != nil {
			t.Fatalf("defaults in a namespace: %v", err)
		}
	} else if err == nil || !strings.Contains(err.Error(), "read-only here") {
		t.Fatalf("defaults in a namespace with a host table of %d < %d: %v, want a read-only error", hostMax, wantMax, err)
	}
	for _, v := range vals {
		t.Logf("%v", v)
	}
	for name, want := range map[string]string{
		"net.netfilter.nf_conntrack_tcp_timeout_established": "86400",
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  "3600",
	} {
		if got := strings.TrimSpace(ns.MustExec("sysctl", "-n", name)); got != want {
			t.Errorf("%s in the namespace = %s, want %s", name, got, want)
		}
	}
	t.Logf("nf_conntrack_tcp_timeout_close_wait in a fresh namespace: %s before, 3600 after", before)
	if m, _ := readInt(filepath.Join(sysctlRoot, "nf_conntrack_max")); m != hostMax {
		t.Errorf("host nf_conntrack_max changed: %d -> %d", hostMax, m)
	}
	if h, _ := readInt(hashsizePath); h != hostHash {
		t.Errorf("host hashsize changed: %d -> %d", hostHash, h)
	}
	if c, _ := readInt(filepath.Join(sysctlRoot, "nf_conntrack_tcp_timeout_close_wait")); c != hostCloseWait {
		t.Errorf("host close_wait timeout changed: %d -> %d", hostCloseWait, c)
	}
}
