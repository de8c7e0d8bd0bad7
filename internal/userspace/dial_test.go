package userspace

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// blackhole is an address that never answers a SYN: a listener with an
// accept queue of one, filled by a connection nobody accepts, drops them.
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 4, 8}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 4, 8}), uint16(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.DialTimeout("tcp", addr.String(), time.Second)
	if err != nil {
		t.Fatalf("filling the accept queue: %v", err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// A dial that gets no answer fails after DialTimeout and the connection
// moves on to the next endpoint; with none left the client is reset.
func TestDialTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.DialTimeout = 200 * time.Millisecond
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.150"} }))
	hole := blackhole(t)
	h.setEndpoints("web", v1.ProtocolTCP, hole, tcpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	const target = "127.10.4.150:18080"

	var slowest time.Duration
	for range 2 { // round-robin: one of the two tries the black hole first
		start := time.Now()
		c, err := dialService(t, "", target)
		if err != nil {
			t.Fatalf("connection through a service with one live endpoint: %v", err)
		}
		if c.backend != "backend-1" {
			t.Fatalf("answered by %q", c.backend)
		}
		slowest = max(slowest, time.Since(start))
	}
	if slowest < cfg.DialTimeout || slowest > 5*cfg.DialTimeout {
		t.Fatalf("the failover took %v, want a dial timeout (%v) first", slowest, cfg.DialTimeout)
	}
	for _, e := range h.p.Stats()[0].Endpoints {
		if e.Endpoint == hole.String() && (e.DialFailures != 1 || !e.BackingOff || e.Total != 0) {
			t.Fatalf("black-holed endpoint: %+v, want one dial failure and a backoff", e)
		}
	}

	t.Run("no endpoint answers", func(t *testing.T) {
		h.setEndpoints("web", v1.ProtocolTCP, hole)
		h.sync()
		start := time.Now()
		_, err := dialService(t, "", target)
		took := time.Since(start)
		if err == nil {
			t.Fatal("connected through a service whose only endpoint never answers")
		}
		if took < cfg.DialTimeout || took > 5*cfg.DialTimeout {
			t.Fatalf("client refused after %v, want after the dial timeout (%v)", took, cfg.DialTimeout)
		}
		eventually(t, time.Second, func() error {
			if n := h.p.active.Load(); n != 0 {
				return fmt.Errorf("%d connections still counted", n)
			}
			return nil
		})
	})
}

// What a client sends while its connection is still dialing, including its
// half-close, reaches the endpoint the connection fails over to.
func TestDataWhileDialing(t *testing.T) {
	cfg := testConfig()
	cfg.DialTimeout = 200 * time.Millisecond
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.151"} }))
	h.setEndpoints("web", v1.ProtocolTCP, blackhole(t), tcpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	var slowest time.Duration
	for range 2 { // round-robin: one of the two dials the black hole first
		start := time.Now()
		c, err := net.Dial("tcp", "127.10.4.151:18080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("early data")); err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(got) != "backend-1\nearly data" {
			t.Fatalf("got %q, want the greeting and the early data echoed, then EOF", got)
		}
		slowest = max(slowest, time.Since(start))
	}
	if slowest < cfg.DialTimeout {
		t.Fatalf("no connection waited for the dial timeout (slowest %v)", slowest)
	}
}

// pauseLoop blocks the loop until the returned function is called, so that
// connections wait in the accept queue meanwhile.
func pauseLoop(t *testing.T, lp *loop) (resume func()) {
	t.Helper()
	entered, release := make(chan struct{}), make(chan struct{})
	if !lp.post(func() { close(entered); <-release }) {
		t.Fatal("loop stopped")
	}
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not run the pause command")
	}
	return func() { close(release) }
}

// What the client sent before its connection was accepted is read at once
// and sent with the connect (startEarly). When the endpoint refuses, the
// same data goes to the next one, and is counted for the endpoint that got it.
func TestEarlyDataFailsOver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.4.9:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	cfg := testConfig()
	cfg.EventLoops = 1
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.152"} }))
	live := tcpBackend(t, "127.0.4.1:0", "backend-1")
	h.setEndpoints("web", v1.ProtocolTCP, dead, live)
	h.sync()
	const msg = "early data"
	for range 2 { // round-robin: one of the two dials the dead endpoint first
		resume := pauseLoop(t, h.p.loops[0])
		c, err := net.Dial("tcp", "127.10.4.152:18080") // the kernel completes the handshake
		if err != nil {
			resume()
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		resume()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(got) != "backend-1\n"+msg {
			t.Fatalf("got %q, want the greeting and the early data echoed, then EOF", got)
		}
	}
	eventually(t, 2*time.Second, func() error {
		for _, e := range h.p.Stats()[0].Endpoints {
			switch e.Endpoint {
			case dead.String():
				if e.DialFailures != 1 || e.Total != 0 || e.BytesIn != 0 {
					return fmt.Errorf("dead endpoint: %+v, want one dial failure and nothing sent", e)
				}
			case live.String():
				if e.Total != 2 || e.BytesIn != 2*uint64(len(msg)) || e.Active != 0 {
					return fmt.Errorf("live endpoint: %+v, want 2 closed connections and %d bytes in", e, 2*len(msg))
				}
			}
		}
		return nil
	})
}
