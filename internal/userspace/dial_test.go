package userspace

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/testenv"
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

// freeFDs returns the two lowest descriptor numbers not in use.
func freeFDs(t *testing.T) (int, int) {
	t.Helper()
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	names, err := dir.Readdirnames(-1)
	own := int(dir.Fd()) // listed, but free again once closed
	dir.Close()
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, name := range names {
		if n, err := strconv.Atoi(name); err == nil && n != own {
			used[n] = true
		}
	}
	var free []int
	for n := 0; len(free) < 2; n++ {
		if !used[n] {
			free = append(free, n)
		}
	}
	return free[0], free[1]
}

// Out of file descriptors, accept fails with EMFILE: the loop stops watching
// the listener for a while instead of spinning on it, and the connection
// waiting in the accept queue is served once descriptors are free again.
func TestAcceptBackoffOutOfDescriptors(t *testing.T) {
	var logs testenv.Buffer
	cfg := testConfig()
	cfg.EventLoops = 1
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.160"} }))
	h.setEndpoints("web", v1.ProtocolTCP, tcpBackend(t, "127.0.4.1:0", "backend-1"))
	h.sync()
	const target = "127.10.4.160:18080"
	if c, err := dialService(t, "", target); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	eventually(t, 2*time.Second, func() error {
		if n := h.p.active.Load(); n != 0 {
			return fmt.Errorf("%d connections still open", n)
		}
		return nil
	})

	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	restore := sync.OnceFunc(func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
	t.Cleanup(restore)
	// The client's socket takes the lowest free number; the proxy's accept
	// would need the next one, which the limit forbids.
	_, next := freeFDs(t)
	lim := old
	lim.Cur = uint64(next)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", target, 2*time.Second) // the kernel completes the handshake
	if err != nil {
		restore()
		t.Fatalf("client: %v", err)
	}
	defer c.Close()
	eventually(t, 3*time.Second, func() error {
		if !strings.Contains(logs.String(), "accept failed") {
			return fmt.Errorf("no accept failure logged yet: %q", logs.String())
		}
		return nil
	})
	restore()
	out := logs.String()
	if !strings.Contains(out, "too many open files") {
		t.Errorf("accept failure without EMFILE: %q", out)
	}
	// With a growing delay (5 ms, 10 ms, ...) a few failures at most, not
	// a loop spinning on the listener.
	if n := strings.Count(out, "accept failed"); n > 10 {
		t.Errorf("%d accept failures logged: the loop spun on the listener", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "backend-1\n" {
		t.Fatalf("after descriptors were free again: %q, %v; want the backend's greeting", line, err)
	}
}
