package userspace

import (
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// connEvents: both sockets of a connection are registered once, edge-triggered
// for reading and writing, so their interest never has to change.
const connEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

type connState uint8

const (
	connDialing connState = iota // the backend socket is connecting
	connOpen                     // bytes flow both ways
	connClosed
)

// tcpConn is one proxied TCP connection, owned by one loop at a time.
type tcpConn struct {
	lp *loop // the owner; only the owner's goroutine uses the connection
	// owner is lp for other goroutines (abort): a bulk connection may move
	// to another loop (see balance).
	owner atomic.Pointer[loop]
	f     *front
	sp    *servicePort
	src   netip.Addr
	fam   family
	// ep is the endpoint dialed; once the connection is tracked it no longer
	// changes, and the service port reads it (under its lock) to find the
	// connections of a deleted endpoint.
	ep       *endpoint
	tried    []*endpoint
	triedBuf [4]*endpoint

	client, backend sock
	up, down        flow // client → backend, backend → client

	state    connState
	tracked  bool
	early    int   // bytes read from the client before the endpoint was connected, not yet counted
	bulk     bool  // a direction splices; counted in lp.bulk
	held     bool  // in its owner's set: false while moving to another loop
	moveTo   *loop // set by balance or settle: move after the current event
	deadline int64 // of the dial in progress, on the loop clock
	last     int64 // when data last moved, on the loop clock
	idx      int   // in lp.conns
	born     int64 // when accepted, on the loop clock
}

// sock is one of a connection's sockets with the readiness its events
// reported. Edge-triggered: readable stays set until a read finds the socket
// drained, writable until a write finds it full.
type sock struct {
	c        *tcpConn
	fd       int
	readable bool
	writable bool
	rdhup    bool // the peer's FIN arrived: a short read reached the end of the stream
}

func (s *sock) onEvent(ev uint32) { s.c.onEvent(s, ev) }

func newTCPConn(lp *loop, f *front, fd int, src netip.Addr, fam family) *tcpConn {
	c := &tcpConn{lp: lp, f: f, sp: f.sp, src: src, fam: fam, born: lp.now}
	c.owner.Store(lp)
	c.held = true
	c.tried = c.triedBuf[:0]
	c.client = sock{c: c, fd: fd}
	c.backend = sock{c: c, fd: -1}
	c.up = flow{src: &c.client, dst: &c.backend, other: &c.down}
	c.down = flow{src: &c.backend, dst: &c.client, other: &c.up}
	return c
}

func (c *tcpConn) endpoint() *endpoint { return c.ep }

// abort closes the connection from any goroutine (grace period over,
// service port removed, proxier closing).
func (c *tcpConn) abort() {
	lp := c.owner.Load()
	lp.post(func() { c.closeOn(lp) })
}

// closeOn closes the connection if lp owns it, else asks the loop it moved
// to; a loop that owns it but has not taken it in yet (the command doing so
// is queued) asks itself again later.
func (c *tcpConn) closeOn(lp *loop) {
	if o := c.owner.Load(); o != lp || !c.held {
		o.post(func() { c.closeOn(o) })
		return
	}
	c.close()
}

// dial starts connecting to the next endpoint, at most MaxDialAttempts per
// client; false when none is left. The connect completes (or fails) in an
// event on the backend socket, or times out in the loop's tick.
func (c *tcpConn) dial() bool {
	p := c.lp.p
	for len(c.tried) < p.cfg.MaxDialAttempts {
		ep := c.f.bal.pick(c.src, c.fam, c.tried)
		if ep == nil {
			return false
		}
		c.tried = append(c.tried, ep)
		fd, err := connectTCP(ep.addr)
		if err == nil {
			c.backend = sock{c: c, fd: fd}
			if err = c.lp.register(fd, &c.backend, connEvents); err == nil {
				c.ep = ep
				c.state = connDialing
				c.deadline = c.lp.now + int64(p.cfg.DialTimeout)
				return true
			}
			sysClose(fd)
			c.backend.fd = -1
		}
		p.dialFailed(c.f, c.src, ep, err)
	}
	return false
}

// connectTCP starts a non-blocking connect to ap. It connects without binding
// first: bind(port 0) neither shares ephemeral ports across destinations nor
// reuses TIME_WAIT ports as connect does, and runs out of ports under a high
// connection rate.
func connectTCP(ap netip.AddrPort) (int, error) {
	fd, op, e := sysConnect(ap)
	if e != 0 {
		return -1, os.NewSyscallError(op, e)
	}
	return fd, nil
}

// dialFailed backs the endpoint off, so that other clients skip it for a while.
func (p *Proxier) dialFailed(f *front, src netip.Addr, ep *endpoint, err error) {
	ep.dialFailures.Add(1)
	ep.backoffUntil.Store(p.now() + int64(p.cfg.EndpointBackoff))
	if f.sp.dialFailures != nil {
		f.sp.dialFailures.Inc()
	}
	f.bal.forget(src, ep)
	p.log.Debug("dial failed", "servicePort", f.sp.label, "endpoint", ep.str, "err", err)
}

// redial gives up the connect in progress and moves on to the next endpoint;
// the client is reset when none is left.
func (c *tcpConn) redial(err error) {
	c.lp.forget(c.backend.fd)
	sysClose(c.backend.fd)
	c.backend = sock{c: c, fd: -1}
	c.lp.p.dialFailed(c.f, c.src, c.ep, err)
	c.ep = nil
	if !c.dial() {
		c.reset()
		return
	}
	if c.up.buf != nil {
		c.sendEarly()
	}
}

// startEarly runs right after the first connect was started. It reads what
// the client has already sent (usually its request: the client writes as
// soon as its own connect returns) and tries to pass it on at once, without
// waiting for the connect's EPOLLOUT. Over loopback and veth the handshake
// completes inside connect, so the write usually succeeds, which proves the
// connection is up, and the request reaches the endpoint one loop round
// earlier. When the client has sent nothing yet the read costs one call that
// returns EAGAIN.
//
// The client socket was registered before this read: edge-triggered epoll
// re-reads the readiness of a queued event when it is reported, so the
// drained socket is not reported readable again.
func (c *tcpConn) startEarly() {
	lp := c.lp
	n, err := sysRead(c.client.fd, lp.scratch)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR || (err == 0 && n == 0):
		// Nothing yet, or only the client's FIN: the events will tell.
		return
	case err != 0:
		c.close()
		return
	}
	c.early = n
	c.last = lp.now
	c.client.readable = n == len(lp.scratch)
	d := &c.up
	d.buf, d.off, d.end = lp.scratch, 0, n
	lp.scratch = lp.getBuf()
	c.sendEarly()
}

// sendEarly writes the client's data held by the up flow to the endpoint
// being dialed. EAGAIN: the connect is still in progress, and its EPOLLOUT
// will flush the data. Another error: the connect failed, and the next
// endpoint is tried with the same data.
func (c *tcpConn) sendEarly() {
	d := &c.up
	n, err := sysWrite(c.backend.fd, d.buf[d.off:d.end])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != 0:
		c.redial(os.NewSyscallError("connect", err))
		return
	}
	// The write took data: the connection is up. What the send buffer did
	// not take is flushed on its EPOLLOUT.
	d.off += n
	c.backend.writable = d.off == d.end
	if c.backend.writable {
		c.lp.putBuf(d.buf)
		d.buf = nil
	}
	c.connected()
	c.pump(&c.up)
}

// connected runs when the backend's connect completed.
func (c *tcpConn) connected() {
	c.state = connOpen
	c.last = c.lp.now
	ep, sp := c.ep, c.sp
	c.up.epBytes, c.up.bytes = &ep.bytesIn, sp.bytesIn
	c.down.epBytes, c.down.bytes = &ep.bytesOut, sp.bytesOut
	if c.early > 0 {
		c.up.account(c.early)
		c.early = 0
	}
	ep.connOpened()
	if !sp.track(c) {
		// The service port was removed while dialing.
		c.close()
		return
	}
	c.tracked = true
}

func (c *tcpConn) onEvent(s *sock, ev uint32) {
	if c.state == connClosed {
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev&unix.EPOLLRDHUP != 0 {
		s.rdhup = true
	}
	if ev&unix.EPOLLOUT != 0 {
		s.writable = true
	}
	if c.state == connDialing {
		if s != &c.backend {
			if ev&unix.EPOLLERR != 0 {
				c.close() // the client gave up (RST) before the backend answered
			}
			return // its data waits for the backend
		}
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			c.redial(soError(s.fd, "connect"))
			return
		}
		if ev&unix.EPOLLOUT == 0 {
			return
		}
		c.connected()
		if c.state != connOpen {
			return
		}
	}
	c.pump(&c.up)
	c.pump(&c.down)
	if ev&unix.EPOLLERR != 0 {
		// A reset or another socket error: the connection is over, once
		// what could still be read and passed on was.
		c.close()
	}
	if c.lp.helper && c.moveTo == nil && !c.bulk && c.state == connOpen && c.lp.now-c.born >= settleAfter {
		c.settle()
	}
	if to := c.moveTo; to != nil {
		// Cleared first: once moved, the connection is the other loop's.
		c.moveTo = nil
		if c.state == connOpen {
			c.move(to)
		}
	}
}

// soError is the pending error of a socket, for a failed connect.
func soError(fd int, op string) error {
	errno, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return os.NewSyscallError("getsockopt", err)
	}
	if errno == 0 {
		return os.NewSyscallError(op, unix.ECONNRESET)
	}
	return os.NewSyscallError(op, unix.Errno(errno))
}

// close closes both sockets (a FIN each, or an RST where data was left
// unread) and releases the connection. Closing a descriptor also removes it
// from the epoll set.
func (c *tcpConn) close() {
	if c.state == connClosed {
		return
	}
	open := c.state == connOpen
	c.state = connClosed
	lp := c.lp
	lp.forget(c.client.fd)
	sysClose(c.client.fd)
	if c.backend.fd >= 0 {
		lp.forget(c.backend.fd)
		sysClose(c.backend.fd)
	}
	c.up.release(lp)
	c.down.release(lp)
	lp.removeConn(c)
	if c.bulk {
		lp.bulk.Add(-1)
	}
	if open {
		c.ep.connClosed()
		if c.tracked {
			c.sp.untrack(c)
		}
	}
	lp.p.active.Add(-1)
}

// reset refuses the client with an RST: no endpoint could be reached.
func (c *tcpConn) reset() {
	sysResetOnClose(c.client.fd)
	c.close()
}
