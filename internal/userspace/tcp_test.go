package userspace

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
)

func threeBackends(t *testing.T) []netip.AddrPort {
	return []netip.AddrPort{
		tcpBackend(t, "127.0.4.1:0", "backend-1"),
		tcpBackend(t, "127.0.4.2:0", "backend-2"),
		tcpBackend(t, "127.0.4.3:0", "backend-3"),
	}
}

func TestDistribution(t *testing.T) {
	tests := []struct {
		name   string
		mut    func(*v1.Service)
		cfg    func(*Config)
		target string
	}{
		{
			name:   "cluster IP",
			mut:    func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.1"} },
			target: "127.10.4.1:18080",
		},
		{
			name: "node port on the node address",
			mut: func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"127.10.4.2"}
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30081
			},
			target: "127.10.5.1:30081",
		},
		{
			name: "node port on a configured address",
			mut: func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"127.10.4.3"}
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30082
			},
			cfg:    func(c *Config) { c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("127.10.5.2/32")} },
			target: "127.10.5.2:30082",
		},
		{
			name: "external IP on a loopback address",
			mut: func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"127.10.4.4"}
				s.Spec.ExternalIPs = []string{"127.10.6.4"}
			},
			target: "127.10.6.4:18080",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			h := newHarness(t, cfg)
			h.setService(makeTestService("web", tc.mut))
			h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
			h.sync()
			counts := whoAnswers(t, "", tc.target, 30)
			for _, b := range []string{"backend-1", "backend-2", "backend-3"} {
				if counts[b] != 10 {
					t.Fatalf("round-robin: got %v, want 10 each", counts)
				}
			}
			st := h.p.Stats()
			if len(st) != 1 || len(st[0].Endpoints) != 3 || st[0].Endpoints[0].Total != 10 {
				t.Fatalf("stats: %+v", st)
			}
		})
	}
}

func TestAffinity(t *testing.T) {
	oneSecond := int32(1)
	setup := func(t *testing.T, ip string, backends int) *harness {
		h := newHarness(t, testConfig())
		h.setService(makeTestService("sticky", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{ip}
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &oneSecond}}
		}))
		h.setEndpoints("sticky", v1.ProtocolTCP, threeBackends(t)[:backends]...)
		h.sync()
		return h
	}
	t.Run("each client sticks to one backend", func(t *testing.T) {
		setup(t, "127.10.4.10", 3)
		seen := map[string]bool{}
		for _, client := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			counts := whoAnswers(t, client, "127.10.4.10:18080", 8)
			if len(counts) != 1 {
				t.Fatalf("client %s: answered by %v, want one backend", client, counts)
			}
			for b := range counts {
				seen[b] = true
			}
		}
		if len(seen) != 3 {
			t.Fatalf("three clients landed on %v, want them spread over the three backends", seen)
		}
	})
	t.Run("an ETP Local NodePort shares the cluster IP's pins", func(t *testing.T) {
		// The traffic policies differ, so the NodePort has a balancer of its
		// own, but the pins are the service port's.
		h := newHarness(t, testConfig())
		sixty := int32(60)
		h.setService(makeTestService("sticky-local", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"127.10.4.12"}
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30085
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &sixty}}
		}))
		h.setEndpoints("sticky-local", v1.ProtocolTCP, threeBackends(t)...)
		h.sync()
		// Another client first, so that the two balancers' turns differ.
		whoAnswers(t, "127.0.0.2", "127.10.4.12:18080", 1)
		cip := whoAnswers(t, "127.0.0.3", "127.10.4.12:18080", 3)
		np := whoAnswers(t, "127.0.0.3", "127.10.5.1:30085", 3)
		if len(cip) != 1 || !maps.Equal(cip, np) {
			t.Fatalf("the cluster IP answered with %v, the NodePort with %v; want the same single backend", cip, np)
		}
	})
	t.Run("expiry rebalances", func(t *testing.T) {
		setup(t, "127.10.4.11", 2)
		const target = "127.10.4.11:18080"
		if got := whoAnswers(t, "127.0.0.2", target, 5); got["backend-1"] != 5 {
			t.Fatalf("before expiry: %v, want backend-1 only", got)
		}
		// Connections within the timeout refresh it.
		time.Sleep(600 * time.Millisecond)
		if got := whoAnswers(t, "127.0.0.2", target, 1); got["backend-1"] != 1 {
			t.Fatalf("within the timeout: %v, want backend-1", got)
		}
		time.Sleep(1200 * time.Millisecond)
		if got := whoAnswers(t, "127.0.0.2", target, 5); got["backend-2"] != 5 {
			t.Fatalf("after expiry: %v, want the next backend in turn (backend-2), sticky again", got)
		}
	})
}

func TestFailover(t *testing.T) {
	// A closed port: dials fail with connection refused.
	ln, err := net.Listen("tcp", "127.0.4.9:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	h := newHarness(t, testConfig())
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.20"} }))
	eps := threeBackends(t)
	h.setEndpoints("web", v1.ProtocolTCP, append(eps[:2:2], dead)...)
	h.sync()
	counts := whoAnswers(t, "", "127.10.4.20:18080", 20)
	if counts["backend-1"]+counts["backend-2"] != 20 || counts["backend-1"] < 5 || counts["backend-2"] < 5 {
		t.Fatalf("answers %v, want all 20 spread over the two live backends", counts)
	}
	for _, e := range h.p.Stats()[0].Endpoints {
		if e.Endpoint == dead.String() {
			if e.DialFailures != 1 || !e.BackingOff {
				t.Fatalf("dead endpoint: %+v, want exactly one failure (then backoff)", e)
			}
		}
	}

	t.Run("every endpoint down", func(t *testing.T) {
		h.setEndpoints("web", v1.ProtocolTCP, dead)
		h.sync()
		_, err := dialService(t, "", "127.10.4.20:18080")
		if err == nil {
			t.Fatal("connected through a service whose only endpoint is down")
		}
	})
}

func TestHalfClose(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.30"} }))
	h.setEndpoints("web", v1.ProtocolTCP, tcpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	c, err := dialService(t, "", "127.10.4.30:18080")
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("half-close ", 100000) // 1.1 MB, more than the socket buffers
	go func() {
		_, _ = io.WriteString(c, payload)
		_ = c.CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c.r)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	// The backend saw our FIN (it finished its echo) and its FIN came back (EOF here).
	if string(got) != payload {
		t.Fatalf("echo: %d bytes, want %d", len(got), len(payload))
	}
	eventually(t, time.Second, func() error {
		e := h.p.Stats()[0].Endpoints[0]
		if e.BytesIn != uint64(len(payload)) || e.BytesOut != uint64(len(payload)+len("backend-1\n")) || e.Active != 0 {
			return fmt.Errorf("stats %+v", e)
		}
		return nil
	})
}

func TestEndpointRemovedDuringConnection(t *testing.T) {
	h := newHarness(t, testConfig()) // grace 300ms
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.40"} }))
	eps := threeBackends(t)[:2]
	h.setEndpoints("web", v1.ProtocolTCP, eps...)
	h.sync()
	const target = "127.10.4.40:18080"
	c1, err := dialService(t, "", target)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := dialService(t, "", target)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*testConn{c1.backend: c1, c2.backend: c2}
	keep, drop := byName["backend-1"], byName["backend-2"]
	if keep == nil || drop == nil {
		t.Fatalf("connections went to %s and %s", c1.backend, c2.backend)
	}

	h.setEndpoints("web", v1.ProtocolTCP, eps[0])
	removed := time.Now()
	h.sync()
	// Within the grace period the connection to the deleted endpoint still works.
	if err := drop.roundTrip("still here"); err != nil {
		t.Fatalf("connection to a deleted endpoint failed within the grace period: %v", err)
	}
	if err := drop.waitClosed(2 * time.Second); err != nil {
		t.Fatalf("connection to the deleted endpoint: %v", err)
	}
	if d := time.Since(removed); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the grace period", d)
	}
	if err := keep.roundTrip("unaffected"); err != nil {
		t.Fatalf("connection to a remaining endpoint: %v", err)
	}
	if got := whoAnswers(t, "", target, 4); got["backend-1"] != 4 {
		t.Fatalf("new connections went to %v", got)
	}
}

func TestServiceDeletedWithLiveConnections(t *testing.T) {
	h := newHarness(t, testConfig())
	svc := makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.50"} })
	h.setService(svc)
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	c, err := dialService(t, "", "127.10.4.50:18080")
	if err != nil {
		t.Fatal(err)
	}
	h.deleteService(svc)
	h.sync()
	if _, err := net.DialTimeout("tcp", "127.10.4.50:18080", time.Second); err == nil {
		t.Fatal("the listener of a deleted service still accepts")
	}
	if err := c.roundTrip("grace"); err != nil {
		t.Fatalf("live connection failed within the grace period: %v", err)
	}
	if err := c.waitClosed(2 * time.Second); err != nil {
		t.Fatalf("live connection of a deleted service: %v", err)
	}
	if st := h.p.Stats(); len(st) != 0 {
		t.Fatalf("stats still list %+v", st)
	}
}

func TestListenerRebinding(t *testing.T) {
	tests := []struct {
		name string
		from string // cluster IP, port
		to   func(*v1.Service)
		want string
	}{
		{name: "cluster IP changes", to: func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.61"} }, want: "127.10.4.61:18080"},
		{name: "port changes", to: func(s *v1.Service) { s.Spec.Ports[0].Port = 18081 }, want: "127.10.4.60:18081"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig())
			h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.60"} }))
			h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
			h.sync()
			live, err := dialService(t, "", "127.10.4.60:18080")
			if err != nil {
				t.Fatal(err)
			}
			h.setService(makeTestService("web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"127.10.4.60"}
				tc.to(s)
			}))
			h.sync()
			if _, err := net.DialTimeout("tcp", "127.10.4.60:18080", time.Second); err == nil {
				t.Fatal("old address still accepts")
			}
			if got := whoAnswers(t, "", tc.want, 3); len(got) != 3 {
				t.Fatalf("new address answered by %v", got)
			}
			if err := live.roundTrip("survives rebinding"); err != nil {
				t.Fatalf("existing connection: %v", err)
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.TCPIdleTimeout = 400 * time.Millisecond
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.70"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	busy, err := dialService(t, "", "127.10.4.70:18080")
	if err != nil {
		t.Fatal(err)
	}
	idle, err := dialService(t, "", "127.10.4.70:18080")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for time.Since(start) < 1200*time.Millisecond {
		if err := busy.roundTrip("ping"); err != nil {
			t.Fatalf("busy connection closed after %v: %v", time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := idle.waitClosed(100 * time.Millisecond); err != nil {
		t.Fatalf("idle connection: %v", err)
	}
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("lb", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"127.10.4.80"}
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30083
		s.Spec.LoadBalancerSourceRanges = []string{"127.0.0.2/32"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "127.10.6.80"}}
	}))
	h.setEndpoints("lb", v1.ProtocolTCP, threeBackends(t)...)
	// Its range covers the node's address (127.10.5.1).
	h.setService(makeTestService("lb-node", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"127.10.4.81"}
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30084
		s.Spec.LoadBalancerSourceRanges = []string{"127.10.5.0/24"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "127.10.6.81"}}
	}))
	h.setEndpoints("lb-node", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	tests := []struct {
		name, src, dst string
		allowed        bool
	}{
		{"load balancer IP, allowed source", "127.0.0.2", "127.10.6.80:18080", true},
		{"load balancer IP, other source", "127.0.0.3", "127.10.6.80:18080", false},
		// As kube-proxy: the VIP is an allowed source of its own traffic
		// when a range covers the node, and only then.
		{"the VIP as source, a range covers the node", "127.10.6.81", "127.10.6.81:18080", true},
		{"the VIP as source, no range covers the node", "127.10.6.80", "127.10.6.80:18080", false},
		{"cluster IP ignores the ranges", "127.0.0.3", "127.10.4.80:18080", true},
		{"node port ignores the ranges", "127.0.0.3", "127.10.5.1:30083", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialService(t, tc.src, tc.dst)
			if (err == nil) != tc.allowed {
				t.Fatalf("connect from %s to %s: err=%v, allowed=%v", tc.src, tc.dst, err, tc.allowed)
			}
		})
	}
}

func TestBindFailureIsolated(t *testing.T) {
	// 192.0.2.1 (TEST-NET-1) is not a local address: its listener cannot bind.
	h := newHarness(t, testConfig())
	h.setService(makeTestService("broken", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"192.0.2.1"} }))
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.90"} }))
	eps := threeBackends(t)
	h.setEndpoints("broken", v1.ProtocolTCP, eps...)
	h.setEndpoints("web", v1.ProtocolTCP, eps...)
	h.sync()
	if got := whoAnswers(t, "", "127.10.4.90:18080", 3); len(got) != 3 {
		t.Fatalf("healthy service answered by %v", got)
	}
	st := h.p.Stats()
	if len(st) != 2 || st[0].ServicePort != "demo/broken:p" || len(st[0].BindErrors) != 1 || len(st[1].BindErrors) != 0 {
		t.Fatalf("stats: %+v", st)
	}
	h.p.mu.Lock()
	err := h.p.ports[portName("broken", v1.ProtocolTCP)].bindErrs[listenerKey{v1.ProtocolTCP, ap("192.0.2.1:18080")}]
	h.p.mu.Unlock()
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("bind error is not EADDRNOTAVAIL: %v", err)
	}
}

func TestConnectionLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnections = 2
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.100"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	for i := range 2 {
		if _, err := dialService(t, "", "127.10.4.100:18080"); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
	}
	if _, err := dialService(t, "", "127.10.4.100:18080"); err == nil {
		t.Fatal("third connection accepted over a limit of 2")
	}
}

func portName(svc string, proto v1.Protocol) model.ServicePortName {
	return model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: testNS, Name: svc}, Port: "p", Protocol: proto}
}

func TestSCTPNotProxied(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("mixed", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"127.10.4.140"}
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "sctp", Port: 18081, Protocol: v1.ProtocolSCTP})
	}))
	h.setEndpoints("mixed", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	if got := whoAnswers(t, "", "127.10.4.140:18080", 3); len(got) != 3 {
		t.Fatalf("TCP port of a service that also has an SCTP port: %v", got)
	}
	if st := h.p.Stats(); len(st) != 1 || st[0].Protocol != "TCP" {
		t.Fatalf("stats %+v, want the TCP port only", st)
	}
}

// Many connections at once, small and bulk (spliced) ones, each checked byte
// for byte both ways; the counters add up and every connection is released.
func TestManyConnections(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.160"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	const conns = 200
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	var sent atomic.Uint64
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			size := 1 + i*i*7%(300<<10) // 1 B to 300 KiB
			payload := make([]byte, size)
			for j := range payload {
				payload[j] = byte(i + j)
			}
			c, err := net.DialTimeout("tcp", "127.10.4.160:18080", 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			go func() {
				_, _ = c.Write(payload)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
				return
			}
			greeting, echo, _ := strings.Cut(string(got), "\n")
			if !strings.HasPrefix(greeting, "backend-") || echo != string(payload) {
				errs <- fmt.Errorf("connection %d: %d bytes back, want a greeting and %d", i, len(got), size)
				return
			}
			sent.Add(uint64(size))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	eventually(t, 2*time.Second, func() error {
		var total, active, in uint64
		for _, e := range h.p.Stats()[0].Endpoints {
			total += e.Total
			active += uint64(e.Active)
			in += e.BytesIn
		}
		if total != conns || active != 0 || in != sent.Load() || h.p.active.Load() != 0 {
			return fmt.Errorf("total %d active %d (proxier %d) bytes in %d, want %d, 0 and %d",
				total, active, h.p.active.Load(), in, conns, sent.Load())
		}
		return nil
	})
}

// A client that resets its connection ends the proxied one at once.
func TestClientReset(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.161"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	c, err := dialService(t, "", "127.10.4.161:18080")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.roundTrip("before the reset"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetLinger(0)
	_ = c.Close()
	eventually(t, 2*time.Second, func() error {
		if n := h.p.active.Load(); n != 0 {
			return fmt.Errorf("%d connections open", n)
		}
		for _, e := range h.p.Stats()[0].Endpoints {
			if e.Active != 0 {
				return fmt.Errorf("endpoint %s: %d active", e.Endpoint, e.Active)
			}
		}
		return nil
	})
}
