package userspace

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listenBacklog asks for the longest accept queue; the kernel caps it at
// net.core.somaxconn.
const listenBacklog = 1 << 16

// acceptBatch bounds the connections one loop accepts per listener event, so
// that one busy listener does not starve the loop's connections.
const acceptBatch = 32

func notLocal(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }

// tcpListener is a raw listening socket, registered in two loops, a home
// loop and a helper (acceptLoops), or in the only loop: the loop that accepts
// a connection keeps it unless it settles or turns bulk (balance.go). A new
// connection makes both loops poll if idle; the one that loses the race gets
// EAGAIN. Two and not all: on a large node every loop would poll for every
// connection.
// (EPOLLEXCLUSIVE would not help: it limits the wakeups of threads blocked in
// epoll_wait on the set, and the loops wait in Go's netpoller instead.
// One SO_REUSEPORT socket per loop measured no better, and would let other
// processes of the same user bind the service's address too.)
type tcpListener struct {
	fd        int
	acceptors []*acceptor
}

// acceptor is a listener's registration in one loop.
type acceptor struct {
	lp     *loop
	fd     int
	l      *listener
	on     bool // in the loop's epoll set
	closed bool
	delay  time.Duration // backoff after accept errors such as EMFILE
}

// listenTCP opens a listening socket on ap, not registered anywhere yet.
// TCP_NODELAY is set here once: accepted sockets inherit it.
func listenTCP(ap netip.AddrPort) (int, error) {
	sa, fam := sockaddr(ap)
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("listen", err)
	}
	return fd, nil
}

// openTCPListener opens the listening socket of ap and hands it to the loops.
func (p *Proxier) openTCPListener(l *listener, ap netip.AddrPort) (*tcpListener, error) {
	fd, err := listenTCP(ap)
	if err != nil {
		return nil, err
	}
	tl := &tcpListener{fd: fd}
	for _, lp := range p.acceptLoops() {
		a := &acceptor{lp: lp, fd: fd, l: l}
		tl.acceptors = append(tl.acceptors, a)
		lp.post(a.start)
	}
	return tl, nil
}

// acceptLoops picks the loops a new listener is registered in: the next home
// loop and the next helper, in turn, so that listeners spread over the loops.
func (p *Proxier) acceptLoops() []*loop {
	k := int(p.listenerSeq.Add(1) - 1)
	out := []*loop{p.homes[k%len(p.homes)]}
	if helpers := p.loops[len(p.homes):]; len(helpers) > 0 {
		out = append(out, helpers[k%len(helpers)])
	}
	return out
}

// close takes the socket out of every loop, waiting for each, before closing
// it: a loop must never accept on a descriptor number that was reused.
func (tl *tcpListener) close() {
	var wg sync.WaitGroup
	for _, a := range tl.acceptors {
		wg.Add(1)
		if !a.lp.post(func() { a.stop(); wg.Done() }) {
			wg.Done()
		}
	}
	wg.Wait()
	_ = unix.Close(tl.fd)
}

func (a *acceptor) start() {
	if a.closed || a.on {
		return
	}
	// Level-triggered, so connections left in the queue after a batch are
	// reported again.
	if err := a.lp.register(a.fd, a, unix.EPOLLIN); err != nil {
		a.lp.p.log.Error("cannot watch listener", "listener", a.l.key.String(), "err", err)
		return
	}
	a.on = true
}

func (a *acceptor) stop() {
	a.closed = true
	a.pause()
}

func (a *acceptor) pause() {
	if !a.on {
		return
	}
	a.on = false
	a.lp.forget(a.fd)
	_ = unix.EpollCtl(a.lp.epfd, unix.EPOLL_CTL_DEL, a.fd, nil)
}

func (a *acceptor) onEvent(uint32) {
	for range acceptBatch {
		fd, src, err := sysAccept(a.fd)
		switch err {
		case 0:
			a.delay = 0
			a.lp.serve(a.l, fd, src)
			continue
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue
		}
		// Out of file descriptors or similar: stop watching the listener
		// for a while instead of spinning on it.
		a.delay = min(max(2*a.delay, 5*time.Millisecond), time.Second)
		a.lp.p.log.Warn("accept failed", "listener", a.l.key.String(), "err", os.NewSyscallError("accept4", err), "retryIn", a.delay)
		a.pause()
		lp := a.lp
		time.AfterFunc(a.delay, func() { lp.post(a.start) })
		return
	}
}

// serve starts proxying a client connection accepted by the loop.
func (lp *loop) serve(l *listener, fd int, src netip.Addr) {
	p := lp.p
	f := l.front.Load()
	sp := f.sp
	if !f.allowed(src, l.key.addr.Addr()) {
		reset(fd)
		return
	}
	n := p.active.Add(1)
	if limit := p.cfg.MaxConnections; limit > 0 && n > int64(limit) {
		p.active.Add(-1)
		p.log.Debug("connection limit reached", "servicePort", sp.label, "limit", limit)
		reset(fd)
		return
	}
	if sp.connsTotal != nil {
		sp.connsTotal.Inc()
	}
	c := newTCPConn(lp, f, fd, src, familyOf(l.key.addr.Addr()))
	if err := lp.register(fd, &c.client, connEvents); err != nil {
		p.active.Add(-1)
		reset(fd)
		return
	}
	lp.addConn(c)
	if !c.dial() {
		c.reset()
		return
	}
	c.startEarly()
}

// reset closes a socket with an RST, so the client sees a refusal at once
// rather than a clean end of stream.
func reset(fd int) {
	sysResetOnClose(fd)
	sysClose(fd)
}

func sockaddr(ap netip.AddrPort) (unix.Sockaddr, int) {
	a := ap.Addr()
	if a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}, unix.AF_INET6
}
