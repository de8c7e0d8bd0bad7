package userspace

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// spliceChunk bounds one splice run so that byte counters advance during long
// transfers; at several GB/s it costs one extra call every couple of milliseconds.
const spliceChunk = 4 << 20

// copyBufSize is the read/write buffer of a direction before it turns to
// splice; a read that fills it marks the direction as bulk.
const copyBufSize = 16 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

func notLocal(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }

func (p *Proxier) listen(key listenerKey, f *front) (*listener, error) {
	l := &listener{key: key}
	l.front.Store(f)
	switch key.proto {
	case v1.ProtocolTCP:
		// No TCP keepalive on proxied connections: Go's default costs four
		// setsockopt calls per connection on each side, and idle connections
		// are ended by the idle timeout instead.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err := lc.Listen(p.ctx, "tcp", key.addr.String())
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", key, err)
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			_ = ln.Close()
			return nil, fmt.Errorf("listen on %s: not a TCP listener", key)
		}
		l.tcp = tl
		for range p.cfg.AcceptLoops {
			p.wg.Add(1)
			go p.acceptLoop(l)
		}
	case v1.ProtocolUDP:
		conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(key.addr))
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", key, err)
		}
		// Bigger buffers absorb bursts; the kernel caps them at rmem_max/wmem_max.
		_ = conn.SetReadBuffer(4 << 20)
		_ = conn.SetWriteBuffer(4 << 20)
		l.udp = &udpListener{p: p, l: l, conn: conn, flows: map[netip.AddrPort]*udpFlow{}}
		p.wg.Add(1)
		go l.udp.readLoop()
	default:
		return nil, fmt.Errorf("listen on %s: protocol not proxied", key)
	}
	return l, nil
}

func (p *Proxier) acceptLoop(l *listener) {
	defer p.wg.Done()
	var delay time.Duration
	for {
		c, err := l.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or similar: back off like net/http does
			// instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "listener", l.key.String(), "err", err, "retryIn", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		p.workers.run(func() { p.serveTCP(l, c) })
	}
}

// reset closes a client connection with an RST, so the client sees a refusal
// at once rather than a clean end of stream.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

func (p *Proxier) serveTCP(l *listener, client *net.TCPConn) {
	f := l.front.Load()
	sp := f.sp
	src := addrOf(client.RemoteAddr())
	if !f.allowed(src) {
		reset(client)
		return
	}
	n := p.active.Add(1)
	if limit := p.cfg.MaxConnections; limit > 0 && n > int64(limit) {
		p.active.Add(-1)
		p.log.Debug("connection limit reached", "servicePort", sp.label, "limit", limit)
		reset(client)
		return
	}
	if sp.connsTotal != nil {
		sp.connsTotal.Inc()
	}
	backend, ep := p.dialEndpoint(f, src, familyOf(l.key.addr.Addr()))
	if backend == nil {
		p.active.Add(-1)
		reset(client)
		return
	}
	c := &tcpConn{p: p, sp: sp, client: client, backend: backend, ep: ep}
	ep.connOpened()
	if !sp.track(c) {
		c.finished.Add(1)
		c.finish()
		return
	}
	// One direction on another worker, the other on this one; whichever ends
	// last closes the connection, so neither waits for the other.
	idle := p.cfg.TCPIdleTimeout
	p.workers.run(func() {
		c.pipe(c.backend, c.client, idle, &ep.bytesIn, sp.bytesIn)
		c.finish()
	})
	c.pipe(c.client, c.backend, idle, &ep.bytesOut, sp.bytesOut)
	c.finish()
}

// finish is called when a direction ended; the second call closes the connection.
func (c *tcpConn) finish() {
	if c.finished.Add(1) < 2 {
		return
	}
	c.close()
	c.ep.connClosed()
	c.sp.untrack(c)
	c.p.active.Add(-1)
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// dialEndpoint connects to an endpoint of the front's balancer, moving on to the
// next one (at most MaxDialAttempts) when a dial fails or times out. A failed
// endpoint backs off so that other clients skip it for a while.
func (p *Proxier) dialEndpoint(f *front, src netip.Addr, fam family) (*net.TCPConn, *endpoint) {
	var buf [4]*endpoint
	tried := buf[:0]
	for range p.cfg.MaxDialAttempts {
		ep := f.bal.pick(src, fam, tried)
		if ep == nil {
			break
		}
		// DialContext, not Dialer.DialTCP: the latter binds an explicit (zero)
		// local address before connecting, and bind(port 0) neither shares
		// ports across destinations nor reuses TIME_WAIT ports the way
		// connect() does, so it runs out of ports under a high connection rate.
		conn, err := p.dial(ep.str)
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				return tc, ep
			}
			_ = conn.Close()
			err = errors.New("not a TCP connection")
		}
		ep.dialFailures.Add(1)
		ep.backoffUntil.Store(p.now() + int64(p.cfg.EndpointBackoff))
		if f.sp.dialFailures != nil {
			f.sp.dialFailures.Inc()
		}
		f.bal.forget(src, ep)
		tried = append(tried, ep)
		p.log.Debug("dial failed", "servicePort", f.sp.label, "endpoint", ep.addr.String(), "err", err)
	}
	return nil, nil
}

// dial connects to addr within DialTimeout. A timer shuts the connecting
// socket down when the timeout passes (a shutdown in SYN_SENT fails the
// connect at once), instead of Dialer.Timeout's deadline context, which costs a
// context with its timer, a write deadline on the socket and their removal on
// every dial: 5% of the proxy's CPU at high connection rates.
func (p *Proxier) dial(addr string) (net.Conn, error) {
	dt := &dialTimer{}
	d := net.Dialer{KeepAlive: -1, Control: dt.control}
	t := time.AfterFunc(p.cfg.DialTimeout, dt.expire)
	conn, err := d.DialContext(p.ctx, "tcp", addr)
	if !t.Stop() {
		// The timer fired: whether or not the connect completed, the
		// socket may have been shut down.
		if conn != nil {
			_ = conn.Close()
		}
		return nil, fmt.Errorf("dial tcp %s: %w", addr, os.ErrDeadlineExceeded)
	}
	return conn, err
}

// dialTimer ends a connect that takes longer than the dial timeout.
type dialTimer struct {
	mu      sync.Mutex
	rc      syscall.RawConn
	expired bool
}

// control runs before connect and hands the socket to the timer.
func (dt *dialTimer) control(_, _ string, rc syscall.RawConn) error {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if dt.expired {
		return os.ErrDeadlineExceeded
	}
	dt.rc = rc
	return nil
}

func (dt *dialTimer) expire() {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	dt.expired = true
	if dt.rc != nil {
		_ = dt.rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	}
}

// tcpConn is one proxied TCP connection.
type tcpConn struct {
	p               *Proxier
	sp              *servicePort
	client, backend *net.TCPConn
	ep              *endpoint
	aborted         atomic.Bool
	ended           atomic.Int32 // directions that reached end of stream
	finished        atomic.Int32 // directions whose copy loop returned
}

func (c *tcpConn) endpoint() *endpoint { return c.ep }

// abort ends both copy loops by shutting both sockets down; finish closes
// them once both loops returned. It must not close them itself: Close waits until
// no goroutine uses the socket, and a copy loop reading one socket may be
// blocked writing to the other.
func (c *tcpConn) abort() {
	if c.aborted.Swap(true) {
		return
	}
	shutdown(c.client)
	shutdown(c.backend)
}

func shutdown(conn *net.TCPConn) {
	if raw, err := conn.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	}
}

func (c *tcpConn) close() {
	c.aborted.Store(true)
	_ = c.client.Close()
	_ = c.backend.Close()
}

// pipe copies src to dst, passes a half-close on, and ends the connection
// after idle without data both ways.
//
// Small exchanges are copied through a pooled buffer with read/write; once a
// read fills the whole buffer the direction carries bulk data and switches to
// splice (io.Copy between two *net.TCPConn), which moves pages between the
// sockets without copying them to userspace. Splicing from the first byte
// costs a pipe per direction and two splice calls per message, which is
// slower than read/write for request/response traffic.
//
// The idle check asks the kernel when each socket last received data
// (TCP_INFO), because a running splice does not report progress until it returns.
func (c *tcpConn) pipe(dst, src *net.TCPConn, idle time.Duration, epBytes *atomic.Uint64, bytes prometheus.Counter) {
	wait := idle
	bulk := false
	var bp *[]byte
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	account := func(n int64) {
		if n > 0 {
			epBytes.Add(uint64(n))
			if bytes != nil {
				bytes.Add(float64(n))
			}
		}
	}
	rc, err := src.SyscallConn()
	if err != nil {
		c.abort()
		return
	}
	var until time.Time // the read deadline in force
	for {
		// Moving the deadline on every message would cost a timer update per
		// read; moving it when it has aged by an eighth is enough, since an
		// early expiry only leads to the TCP_INFO check below.
		if want := time.Now().Add(wait); wait != idle || want.Sub(until) > idle/8 {
			if err := src.SetReadDeadline(want); err != nil {
				c.abort()
				return
			}
			until = want
		}
		var n int64
		var err error
		eof := false
		if bulk {
			lr := io.LimitedReader{R: src, N: spliceChunk}
			n, err = dst.ReadFrom(&lr)
			eof = err == nil && lr.N > 0
			account(n)
		} else {
			if bp == nil {
				bp = bufPool.Get().(*[]byte)
			}
			var full bool
			var werr error
			n, full, eof, werr, err = c.relay(dst, rc, *bp, account)
			if werr != nil {
				c.abort()
				return
			}
			if full {
				if size := c.p.cfg.BulkSocketBuffer; size > 0 {
					// Fixed, moderate buffers beat the kernel's autotuning
					// (up to tcp_rmem[2], 32 MiB here) for relayed bulk
					// data: measured over loopback, splice through
					// autotuned buffers moved 0.5 GB/s, through 256 KiB
					// ones 0.8 GB/s (HAProxy: 0.7).
					_ = src.SetReadBuffer(size)
					_ = dst.SetWriteBuffer(size)
				}
				bulk = true
				bufPool.Put(bp)
				bp = nil
			}
		}
		switch {
		case eof:
			// End of stream: pass the half-close on; the other direction may
			// still carry the reply. If the other direction already ended, the
			// close that follows sends the FIN: a shutdown first would cost a
			// system call (7% of the proxy's CPU at high connection rates).
			if c.ended.Add(1) == 2 {
				return
			}
			if err := dst.CloseWrite(); err != nil {
				c.abort()
			}
			return
		case err == nil:
			if bulk || n > 0 {
				wait = idle
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			if n > 0 {
				wait = idle
				continue
			}
			quiet := min(sinceLastData(c.client), sinceLastData(c.backend))
			if quiet >= idle {
				c.abort()
				return
			}
			wait = idle - quiet
		default:
			c.abort()
			return
		}
	}
}

// relay copies messages from the socket behind rc to dst through buf until a
// read fills buf (full: the direction carries bulk data), the stream ends, an
// error, or the read deadline. It reads inside RawConn.Read so that after a
// short read, which drained the socket, it waits for the next data at once
// instead of reading again only to get EAGAIN: that saves a system call per
// message each way, a third of the calls of a small request/response exchange.
// Waiting without that read is safe within one RawConn.Read call, because the
// poller keeps readiness that arrives after the read until the wait.
func (c *tcpConn) relay(dst *net.TCPConn, rc syscall.RawConn, buf []byte, account func(int64)) (n int64, full, eof bool, werr, err error) {
	rerr := rc.Read(func(fd uintptr) bool {
		for {
			m, e := unix.Read(int(fd), buf)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				err = os.NewSyscallError("read", e)
				return true
			case m == 0:
				eof = true
				return true
			}
			if _, e := dst.Write(buf[:m]); e != nil {
				werr = e
				return true
			}
			n += int64(m)
			account(int64(m))
			if m == len(buf) {
				full = true
				return true
			}
			return false
		}
	})
	if err == nil {
		err = rerr
	}
	return n, full, eof, werr, err
}

// sinceLastData is how long ago the socket last received data, from TCP_INFO.
// If the kernel cannot tell, the socket counts as idle.
func sinceLastData(conn *net.TCPConn) time.Duration {
	raw, err := conn.SyscallConn()
	if err != nil {
		return math.MaxInt64
	}
	var info *unix.TCPInfo
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil || info == nil {
		return math.MaxInt64
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond
}
