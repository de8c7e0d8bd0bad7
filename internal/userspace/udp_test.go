package userspace

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// udpClient is one client address (one flow).
type udpClient struct {
	t    *testing.T
	conn *net.UDPConn
	dst  netip.AddrPort
}

func newUDPClient(t *testing.T, dst string) *udpClient {
	t.Helper()
	d := ap(dst)
	local := "127.0.0.1:0"
	if d.Addr().Is6() {
		local = "[::1]:0"
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap(local)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpClient{t: t, conn: conn, dst: d}
}

// ask sends msg and returns the backend that answered. The reply must come
// from the service address itself.
func (c *udpClient) ask(msg string) (string, error) {
	if _, err := c.conn.WriteToUDPAddrPort([]byte(msg), c.dst); err != nil {
		return "", err
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", err
	}
	if from != c.dst {
		return "", fmt.Errorf("reply from %s, want the service address %s", from, c.dst)
	}
	name, payload, ok := strings.Cut(string(buf[:n]), ":")
	if !ok || payload != msg {
		return "", fmt.Errorf("reply %q to %q", buf[:n], msg)
	}
	return name, nil
}

func (c *udpClient) mustAsk(msg string) string {
	c.t.Helper()
	b, err := c.ask(msg)
	if err != nil {
		c.t.Fatalf("ask %s: %v", c.dst, err)
	}
	return b
}

func udpService(ip string) *v1.Service {
	return makeTestService("dns", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{ip}
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
	})
}

func TestUDPFlows(t *testing.T) {
	cfg := testConfig()
	cfg.UDPIdleTimeout = 300 * time.Millisecond
	h := newHarness(t, cfg)
	h.setService(udpService("127.10.4.120"))
	b1 := udpBackend(t, "127.0.4.1:0", "backend-1")
	b2 := udpBackend(t, "127.0.4.2:0", "backend-2")
	b3 := udpBackend(t, "127.0.4.3:0", "backend-3")
	h.setEndpoints("dns", v1.ProtocolUDP, b1, b2)
	h.sync()
	const svc = "127.10.4.120:18080"

	a, b := newUDPClient(t, svc), newUDPClient(t, svc)
	first := a.mustAsk("a1")
	for i := range 5 {
		if got := a.mustAsk(fmt.Sprintf("a%d", i+2)); got != first {
			t.Fatalf("flow moved from %s to %s", first, got)
		}
	}
	second := b.mustAsk("b1")
	if second == first {
		t.Fatalf("two flows both went to %s, want round-robin", first)
	}

	t.Run("a new endpoint takes new flows, live flows stay", func(t *testing.T) {
		h.setEndpoints("dns", v1.ProtocolUDP, b1, b2, b3)
		h.sync()
		if got := a.mustAsk("stay"); got != first {
			t.Fatalf("live flow moved from %s to %s", first, got)
		}
		seen := map[string]bool{}
		for range 3 {
			seen[newUDPClient(t, svc).mustAsk("new")] = true
		}
		if !seen["backend-3"] {
			t.Fatalf("new flows went to %v, never to the new endpoint", seen)
		}
	})

	t.Run("removing a flow's endpoint moves it", func(t *testing.T) {
		var keep []netip.AddrPort
		for name, e := range map[string]netip.AddrPort{"backend-1": b1, "backend-2": b2, "backend-3": b3} {
			if name != first {
				keep = append(keep, e)
			}
		}
		h.setEndpoints("dns", v1.ProtocolUDP, keep...)
		h.sync()
		if got := a.mustAsk("moved"); got == first {
			t.Fatalf("flow still goes to the deleted endpoint %s", got)
		}
	})

	t.Run("idle flows expire", func(t *testing.T) {
		eventually(t, 2*time.Second, func() error {
			for _, e := range h.p.Stats()[0].Endpoints {
				if e.Active != 0 {
					return fmt.Errorf("flows still active: %+v", h.p.Stats()[0].Endpoints)
				}
			}
			return nil
		})
	})
}

func TestUDPSourceRanges(t *testing.T) {
	h := newHarness(t, testConfig())
	h.setService(makeTestService("dns", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"127.10.4.121"}
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30121
		s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "127.10.6.121"}}
	}))
	h.setEndpoints("dns", v1.ProtocolUDP, udpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	if _, err := newUDPClient(t, "127.10.6.121:18080").ask("blocked"); !isTimeout(err) {
		t.Fatalf("source outside the ranges: err=%v, want no answer", err)
	}
	newUDPClient(t, "127.10.4.121:18080").mustAsk("cluster IP is open")
}

func TestIPv6(t *testing.T) {
	t.Run("TCP", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.setService(makeTestService("web6", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"::1"}
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
			s.Spec.Ports[0].Port = 18130
		}))
		h.setEndpoints("web6", v1.ProtocolTCP,
			tcpBackend(t, "[::1]:0", "backend-1"), tcpBackend(t, "[::1]:0", "backend-2"))
		h.sync()
		if got := whoAnswers(t, "", "[::1]:18130", 6); got["backend-1"] != 3 || got["backend-2"] != 3 {
			t.Fatalf("answers %v", got)
		}
	})
	t.Run("UDP", func(t *testing.T) {
		h := newHarness(t, testConfig())
		svc := udpService("::1")
		svc.Spec.Ports[0].Port = 18131
		h.setService(svc)
		h.setEndpoints("dns", v1.ProtocolUDP, udpBackend(t, "[::1]:0", "backend-1"))
		h.sync()
		if got := newUDPClient(t, "[::1]:18131").mustAsk("six"); got != "backend-1" {
			t.Fatalf("answered by %s", got)
		}
	})
	t.Run("dual-stack picks the listener's family", func(t *testing.T) {
		h := newHarness(t, testConfig())
		h.setService(makeTestService("dual", func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"127.10.4.132", "::1"}
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
			s.Spec.Ports[0].Port = 18132
		}))
		h.setEndpoints("dual", v1.ProtocolTCP,
			tcpBackend(t, "127.0.4.1:0", "v4-backend"), tcpBackend(t, "[::1]:0", "v6-backend"))
		h.sync()
		if got := whoAnswers(t, "", "127.10.4.132:18132", 4); got["v4-backend"] != 4 {
			t.Fatalf("IPv4 service address answered by %v", got)
		}
		if got := whoAnswers(t, "", "[::1]:18132", 4); got["v6-backend"] != 4 {
			t.Fatalf("IPv6 service address answered by %v", got)
		}
	})
}

func TestUDPFlowLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnections = 1
	cfg.UDPIdleTimeout = 300 * time.Millisecond
	h := newHarness(t, cfg)
	h.setService(udpService("127.10.4.122"))
	h.setEndpoints("dns", v1.ProtocolUDP, udpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	const svc = "127.10.4.122:18080"
	newUDPClient(t, svc).mustAsk("first flow")
	late := newUDPClient(t, svc)
	if _, err := late.ask("over the limit"); !isTimeout(err) {
		t.Fatalf("second flow over a limit of 1: err=%v, want no answer", err)
	}
	// The first flow has idled out by now (the ask above waited a second).
	late.mustAsk("after the first flow expired")
}
