package userspace

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Commands posted from many goroutines all run, each loop's in order; a
// stopped loop refuses new ones.
func TestLoopCommands(t *testing.T) {
	cfg := testConfig()
	cfg.EventLoops = 3
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.loops) != 3 {
		t.Fatalf("%d loops, want 3", len(p.loops))
	}
	const posters, each = 8, 500
	var ran atomic.Int64
	var wg sync.WaitGroup
	for i := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lp := p.loops[i%len(p.loops)]
			last := -1
			for j := range each {
				// Runs on the loop; last is only touched there, in order.
				if !lp.post(func() {
					if j != last+1 {
						t.Errorf("poster %d: command %d ran after %d", i, j, last)
					}
					last = j
					ran.Add(1)
				}) {
					t.Error("post to a running loop failed")
				}
			}
		}()
	}
	wg.Wait()
	for _, lp := range p.loops {
		done := make(chan struct{})
		lp.post(func() { close(done) })
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("a loop did not run its commands")
		}
	}
	if n := ran.Load(); n != posters*each {
		t.Fatalf("%d commands ran, want %d", n, posters*each)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.loops[0].post(func() {}) {
		t.Fatal("a stopped loop accepted a command")
	}
}

// Linux copies TCP_NODELAY from the listener to accepted sockets, which is
// why listenTCP sets it once instead of once per connection.
func TestAcceptedSocketsInheritNoDelay(t *testing.T) {
	fd, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var nfd int
	var src netip.Addr
	var e unix.Errno
	for range 100 { // the listener is non-blocking
		if nfd, src, e = sysAccept(fd); e != unix.EAGAIN {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e != 0 {
		t.Fatalf("accept: %v", e)
	}
	defer unix.Close(nfd)
	if src != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("client address %v", src)
	}
	v, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	if err != nil || v == 0 {
		t.Fatalf("TCP_NODELAY on the accepted socket: %d, %v", v, err)
	}
	fl, err := unix.FcntlInt(uintptr(nfd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Fatalf("accepted socket is not non-blocking: %#x, %v", fl, err)
	}
}

// Bulk connections accepted by one loop spread over the loops as they turn
// bulk, and their data stays intact through the move.
func TestBulkConnectionsSpread(t *testing.T) {
	cfg := testConfig()
	cfg.EventLoops = 2
	h := newHarness(t, cfg)
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.170"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	const conns = 4
	stop := make(chan struct{})
	errs := make(chan error, conns)
	for i := range conns {
		c, err := dialService(t, "", "127.10.4.170:18080")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 64<<10)
			var sent int
			for {
				select {
				case <-stop:
					_ = c.CloseWrite()
					return
				default:
				}
				for j := range buf {
					buf[j] = byte(sent + j + i)
				}
				n, err := c.Write(buf)
				sent += n
				if err != nil {
					return
				}
			}
		}()
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			buf := make([]byte, 64<<10)
			var got int
			for {
				n, err := c.r.Read(buf)
				for j := range n {
					if buf[j] != byte(got+j+i) {
						errs <- fmt.Errorf("connection %d: byte %d is %d, want %d", i, got+j, buf[j], byte(got+j+i))
						return
					}
				}
				got += n
				if err != nil {
					if err == io.EOF && got > 0 {
						err = nil
					}
					errs <- err
					return
				}
			}
		}()
	}
	eventually(t, 5*time.Second, func() error {
		a, b := h.p.loops[0].bulk.Load(), h.p.loops[1].bulk.Load()
		if a != 2 || b != 2 {
			return fmt.Errorf("bulk connections per loop: %d and %d, want 2 and 2", a, b)
		}
		return nil
	})
	close(stop)
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Connections that a helper loop accepted and that stay open move to the home
// loop (settle), and keep carrying data both ways, half-close included.
func TestLongLivedConnectionsSettleHome(t *testing.T) {
	cfg := testConfig()
	cfg.EventLoops = 2
	h := newHarness(t, cfg)
	if len(h.p.homes) != 1 || h.p.homes[0] != h.p.loops[0] || !h.p.loops[1].helper || h.p.loops[0].helper {
		t.Fatalf("want loop 0 home and loop 1 helper, got homes %d, helper %v/%v", len(h.p.homes), h.p.loops[0].helper, h.p.loops[1].helper)
	}
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.171"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	home, helper := h.p.loops[0], h.p.loops[1]

	// With the home loop paused, the helper accepts every connection.
	start := time.Now()
	conns := dialPaused(t, "127.10.4.171:18080", 6, home)
	// Before settleAfter, traffic leaves them where they are (checked only
	// if the machine was quick enough to get here in time).
	for i, c := range conns {
		if err := c.roundTrip(fmt.Sprintf("early %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if time.Since(start) < time.Duration(settleAfter) {
		if n, m := home.open.Load(), helper.open.Load(); n != 0 || m != 6 {
			t.Fatalf("before settleAfter the home loop has %d connections, the helper %d; want 0 and 6", n, m)
		}
	} else {
		t.Log("too slow to check the connections before settleAfter")
	}
	time.Sleep(time.Duration(settleAfter) + 10*time.Millisecond)
	// The next event moves each; the exchanges after the move still work.
	for round := range 3 {
		for i, c := range conns {
			if err := c.roundTrip(fmt.Sprintf("round %d conn %d", round, i)); err != nil {
				t.Fatalf("after settling, conn %d: %v", i, err)
			}
		}
	}
	if n, m := home.open.Load(), helper.open.Load(); n != 6 || m != 0 {
		t.Fatalf("home loop has %d connections, helper %d; want 6 and 0", n, m)
	}
	// Half-close passes through the home loop: the backend echoes, then ends.
	for i, c := range conns {
		if _, err := io.WriteString(c, "bye"); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		rest, err := io.ReadAll(c.r)
		if err != nil || string(rest) != "bye" {
			t.Fatalf("conn %d after half-close: %q, %v", i, rest, err)
		}
	}
	eventually(t, 3*time.Second, func() error {
		if n, m := home.open.Load(), helper.open.Load(); n != 0 || m != 0 {
			return fmt.Errorf("%d and %d connections still open", n, m)
		}
		return nil
	})
}

// With two home loops, the connections settling from the helpers spread over
// both.
func TestSettlingSpreadsOverHomeLoops(t *testing.T) {
	cfg := testConfig()
	cfg.EventLoops = 4
	h := newHarness(t, cfg)
	if len(h.p.homes) != 2 {
		t.Fatalf("%d home loops of 4, want 2", len(h.p.homes))
	}
	h.setService(makeTestService("web", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"127.10.4.172"} }))
	h.setEndpoints("web", v1.ProtocolTCP, threeBackends(t)...)
	h.sync()
	conns := dialPaused(t, "127.10.4.172:18080", 8, h.p.loops[0], h.p.loops[1])
	time.Sleep(time.Duration(settleAfter) + 10*time.Millisecond)
	// Requests on every connection while the helpers are paused: each helper
	// then settles its connections in one batch.
	resume2, resume3 := pauseLoop(t, h.p.loops[2]), pauseLoop(t, h.p.loops[3])
	for i, c := range conns {
		if _, err := fmt.Fprintf(c, "conn %d;", i); err != nil {
			resume2()
			resume3()
			t.Fatal(err)
		}
	}
	resume2()
	resume3()
	for i, c := range conns {
		want := fmt.Sprintf("conn %d;", i)
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c.r, got); err != nil || string(got) != want {
			t.Fatalf("conn %d: %q, %v", i, got, err)
		}
	}
	eventually(t, 2*time.Second, func() error {
		a, b := h.p.loops[0].open.Load(), h.p.loops[1].open.Load()
		if a+b != 8 || a < 2 || b < 2 {
			return fmt.Errorf("home loops have %d and %d connections, want 8 spread over both", a, b)
		}
		return nil
	})
}

// Each TCP listener is registered in one home loop and one helper, and
// listeners take the loops in turn, so that on a large node a new connection
// does not make every loop poll.
func TestListenersSpreadOverLoops(t *testing.T) {
	cfg := testConfig()
	cfg.EventLoops = 4
	h := newHarness(t, cfg)
	backends := threeBackends(t)
	for _, svc := range []struct{ name, ip string }{{"web", "127.10.4.173"}, {"api", "127.10.4.174"}} {
		h.setService(makeTestService(svc.name, func(s *v1.Service) { s.Spec.ClusterIPs = []string{svc.ip} }))
		h.setEndpoints(svc.name, v1.ProtocolTCP, backends...)
	}
	h.sync()
	used := map[*loop]bool{}
	for key, l := range h.p.listeners {
		if l.tcp == nil {
			continue
		}
		if len(l.tcp.acceptors) != 2 || l.tcp.acceptors[0].lp.helper || !l.tcp.acceptors[1].lp.helper {
			t.Fatalf("listener %s: want a home loop and a helper, got %d acceptors", key, len(l.tcp.acceptors))
		}
		for _, a := range l.tcp.acceptors {
			if used[a.lp] {
				t.Errorf("listener %s shares a loop with the other listener", key)
			}
			used[a.lp] = true
		}
	}
	if len(used) != 4 {
		t.Fatalf("the two listeners use %d loops, want 4", len(used))
	}
	for _, dst := range []string{"127.10.4.173:18080", "127.10.4.174:18080"} {
		if got := whoAnswers(t, "", dst, 6); len(got) != 3 {
			t.Errorf("%s: backends answering %v, want all three", dst, got)
		}
	}
}
