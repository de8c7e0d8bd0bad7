package userspace

// IP plan of the tests (all loopback, no root needed):
//   service addresses   127.10.4.0/24 (one address per test), ::1 for IPv6
//   node address        127.10.5.1 (NodePorts), load balancer IPs 127.10.6.0/24
//   backends            127.0.4.1-127.0.4.9 on kernel-chosen ports, [::1] for IPv6
//   clients             127.0.0.1, or 127.0.0.2-127.0.0.9 when the source matters

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kproxy/kproxy/internal/model"
)

const testNS = "demo"

func makeTestService(name string, mut func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "p", Port: 18080, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromString("p")}},
		},
	}
	mut(svc)
	if len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIP == "" {
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	return svc
}

// makeTestSlices gives each endpoint its own slice, since the backends listen
// on different ports.
func makeTestSlices(svc string, proto v1.Protocol, eps ...netip.AddrPort) []*discovery.EndpointSlice {
	out := make([]*discovery.EndpointSlice, 0, len(eps))
	for i, ep := range eps {
		at := discovery.AddressTypeIPv4
		if ep.Addr().Is6() {
			at = discovery.AddressTypeIPv6
		}
		name, port, ready, node := "p", int32(ep.Port()), true, "node-1" // on this node
		out = append(out, &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: testNS, Name: fmt.Sprintf("%s-%d", svc, i),
				Labels: map[string]string{discovery.LabelServiceName: svc},
			},
			AddressType: at,
			Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
			Endpoints: []discovery.Endpoint{{
				Addresses:  []string{ep.Addr().String()},
				NodeName:   &node,
				Conditions: discovery.EndpointConditions{Ready: &ready},
			}},
		})
	}
	return out
}

// harness feeds a real model.Tracker and syncs a Proxier from its snapshots.
type harness struct {
	t       *testing.T
	tracker *model.Tracker
	p       *Proxier
	slices  map[string][]*discovery.EndpointSlice
}

func testConfig() Config {
	cfg := Defaults()
	cfg.DialTimeout = time.Second
	cfg.GracePeriod = 300 * time.Millisecond
	cfg.BindRetryInterval = 200 * time.Millisecond
	return cfg
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	h := &harness{t: t, tracker: model.NewTracker("node-1", nil), p: p, slices: map[string][]*discovery.EndpointSlice{}}
	h.tracker.OnNodeAdd(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.10.5.1"}}},
	})
	return h
}

func (h *harness) setService(svc *v1.Service) { h.tracker.OnServiceAdd(svc) }

func (h *harness) deleteService(svc *v1.Service) {
	h.tracker.OnServiceDelete(svc)
	h.setEndpoints(svc.Name, svc.Spec.Ports[0].Protocol)
}

// setEndpoints replaces the service's slices with one per endpoint.
func (h *harness) setEndpoints(svc string, proto v1.Protocol, eps ...netip.AddrPort) {
	for _, s := range h.slices[svc] {
		h.tracker.OnEndpointSliceDelete(s)
	}
	h.slices[svc] = makeTestSlices(svc, proto, eps...)
	for _, s := range h.slices[svc] {
		h.tracker.OnEndpointSliceAdd(s)
	}
}

func (h *harness) sync() {
	h.t.Helper()
	if err := h.p.Sync(context.Background(), h.tracker.Snapshot(), false); err != nil {
		h.t.Fatalf("Sync: %v", err)
	}
}

// tcpBackend greets every connection with its name and a newline, then echoes
// and passes the client's half-close back.
func tcpBackend(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// udpBackend answers each datagram with "name:" and the payload.
func udpBackend(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// testConn is a client connection that has read the backend's greeting.
type testConn struct {
	*net.TCPConn
	r       *bufio.Reader
	backend string
}

// dialService connects from src (empty: any) and returns the backend's name.
func dialService(t *testing.T, src, dst string) (*testConn, error) {
	t.Helper()
	tc, err := dialUngreeted(t, src, dst)
	if err != nil {
		return nil, err
	}
	if err := tc.readGreeting(); err != nil {
		return nil, err
	}
	return tc, nil
}

// dialUngreeted connects from src (empty: any) without waiting for the
// backend's greeting: the kernel completes the handshake whether or not a
// loop has accepted the connection yet.
func dialUngreeted(t *testing.T, src, dst string) (*testConn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		return nil, err
	}
	tc := &testConn{TCPConn: c.(*net.TCPConn), r: bufio.NewReader(c)}
	t.Cleanup(func() { tc.Close() })
	return tc, nil
}

// readGreeting reads the line a backend sends first: its name.
func (c *testConn) readGreeting() error {
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := c.r.ReadString('\n')
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return fmt.Errorf("read greeting: %w", err)
	}
	c.backend = strings.TrimSpace(line)
	return nil
}

// dialPaused opens n connections to dst while the loops in paused are
// stopped, waits until the running loops have accepted all n, then resumes
// the paused loops and reads the greetings. The greeting is not read while
// the loops are paused: a connection whose greeting comes later than
// settleAfter moves to a home loop, and would wait there.
func dialPaused(t *testing.T, dst string, n int, paused ...*loop) []*testConn {
	t.Helper()
	var resumes []func()
	resume := func() {
		for _, r := range resumes {
			r()
		}
		resumes = nil
	}
	defer resume()
	for _, lp := range paused {
		resumes = append(resumes, pauseLoop(t, lp))
	}
	conns := make([]*testConn, 0, n)
	for range n {
		c, err := dialUngreeted(t, "", dst)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	running := func() (open int64) {
		for _, lp := range paused[0].p.loops {
			if !slices.Contains(paused, lp) {
				open += lp.open.Load()
			}
		}
		return open
	}
	eventually(t, 3*time.Second, func() error {
		if got := running(); got != int64(n) {
			return fmt.Errorf("the running loops accepted %d of %d connections", got, n)
		}
		return nil
	})
	resume()
	for i, c := range conns {
		if err := c.readGreeting(); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	return conns
}

// whoAnswers opens n connections in turn and counts the backends that answered.
func whoAnswers(t *testing.T, src, dst string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		c, err := dialService(t, src, dst)
		if err != nil {
			t.Fatalf("connect to %s: %v", dst, err)
		}
		counts[c.backend]++
		c.Close()
	}
	return counts
}

// roundTrip writes msg and reads it back.
func (c *testConn) roundTrip(msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// waitClosed waits until the server side closed the connection (EOF or reset).
func (c *testConn) waitClosed(within time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c.r)
	if errors.Is(err, net.ErrClosed) || isTimeout(err) {
		return fmt.Errorf("still open after %v", within)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
