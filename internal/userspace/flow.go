package userspace

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// spliceMax is the most one splice call is asked to move; the pipe's capacity
// bounds it further.
const spliceMax = 1 << 20

// flow is one direction of a connection.
//
// Small messages are copied through the loop's read buffer with read and
// write: a read shorter than the buffer drained the socket (a later arrival
// is a new edge), so there is no read that only returns EAGAIN. What the
// destination does not take is kept in a pooled buffer, and the source is not
// read again until the destination reports room (EPOLLOUT).
//
// Once a read fills the buffer the direction carries bulk data and switches
// to splice through a pipe, which moves pages from socket to socket without
// copying them to userspace. Splicing from the first byte costs a pipe per
// direction and two calls per message, slower than read/write for
// request/response traffic.
type flow struct {
	src, dst *sock
	other    *flow

	buf      []byte // unsent data is buf[off:end]; nil when everything was sent
	off, end int
	bulk     bool
	pipe     pipe
	inPipe   int // bytes spliced into the pipe and not out of it yet

	eof  bool // the source's stream ended
	done bool // the end was passed on

	epBytes *atomic.Uint64
	bytes   prometheus.Counter // nil without metrics
}

func (d *flow) account(n int) {
	d.epBytes.Add(uint64(n))
	if d.bytes != nil {
		d.bytes.Add(float64(n))
	}
}

// pump moves what the flow can without blocking.
func (c *tcpConn) pump(d *flow) {
	for c.state == connOpen {
		if !c.flush(d) {
			return
		}
		if d.eof {
			if !d.done {
				c.end(d)
			}
			return
		}
		if !d.src.readable {
			return
		}
		if d.bulk {
			c.spliceIn(d)
		} else {
			c.copyIn(d)
		}
	}
}

// flush sends the data the flow holds; true when nothing is left.
func (c *tcpConn) flush(d *flow) bool {
	if d.buf != nil {
		if !d.dst.writable {
			return false
		}
		n, err := sysWrite(d.dst.fd, d.buf[d.off:d.end])
		if err != 0 && err != unix.EAGAIN && err != unix.EINTR {
			c.close()
			return false
		}
		d.off += max(n, 0)
		if d.off < d.end {
			// A short write means the send buffer is full; its EPOLLOUT
			// edge comes when there is room again.
			d.dst.writable = false
			return false
		}
		c.lp.putBuf(d.buf)
		d.buf = nil
	}
	for d.inPipe > 0 {
		if !d.dst.writable {
			return false
		}
		n, err := sysSplice(d.pipe.r, d.dst.fd, d.inPipe)
		switch {
		case err == unix.EAGAIN:
			d.dst.writable = false
			return false
		case err == unix.EINTR:
			continue
		case err != 0:
			c.close()
			return false
		}
		d.inPipe -= n
	}
	return true
}

// copyIn reads a message and writes it on.
func (c *tcpConn) copyIn(d *flow) {
	lp := c.lp
	buf := lp.scratch
	n, err := sysRead(d.src.fd, buf)
	if !c.received(d, n, err) {
		return
	}
	full := n == len(buf)
	if !full {
		d.src.readable = false
		// After the peer's FIN everything it sent is queued: a short read
		// took the rest of the stream.
		d.eof = d.src.rdhup
	}
	m := 0
	if d.dst.writable {
		var werr unix.Errno
		m, werr = sysWrite(d.dst.fd, buf[:n])
		if werr != 0 && werr != unix.EAGAIN && werr != unix.EINTR {
			c.close()
			return
		}
		m = max(m, 0)
	}
	if m < n {
		d.dst.writable = false
		// Keep the rest: the buffer becomes the flow's, the loop reads into
		// another one.
		d.buf, d.off, d.end = buf, m, n
		lp.scratch = lp.getBuf()
	}
	if full {
		c.toBulk(d)
	}
}

// toBulk switches the flow to splice. The socket buffers are fixed at
// BulkSocketBuffer: relayed through the kernel's autotuned buffers (up to
// tcp_rmem[2]) bulk data moved slower over loopback.
func (c *tcpConn) toBulk(d *flow) {
	pp, err := c.lp.getPipe()
	if err != nil {
		c.lp.p.log.Debug("no pipe for splice, copying", "err", err)
		return
	}
	d.bulk, d.pipe = true, pp
	if size := c.lp.p.cfg.BulkSocketBuffer; size > 0 {
		_ = sysSetsockoptInt(d.src.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		_ = sysSetsockoptInt(d.dst.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, size)
	}
	if !c.bulk {
		c.bulk = true
		c.lp.bulk.Add(1)
		c.balance()
	}
}

// spliceIn moves data from the source socket into the (empty) pipe. With the
// pipe empty, EAGAIN can only mean the socket is drained.
func (c *tcpConn) spliceIn(d *flow) {
	n, err := sysSplice(d.src.fd, d.pipe.w, spliceMax)
	if c.received(d, n, err) {
		d.inPipe += n
	}
}

// received handles what a read or splice from the flow's source returned: it
// reports whether n bytes arrived (and counts them); otherwise it notes a
// drained socket or end of stream, or closes the connection on an error.
func (c *tcpConn) received(d *flow, n int, err unix.Errno) bool {
	switch {
	case err == unix.EAGAIN:
		d.src.readable = false
	case err == unix.EINTR:
	case err != 0:
		c.close()
	case n == 0:
		d.eof = true
	default:
		c.last = c.lp.now
		d.account(n)
		return true
	}
	return false
}

// end passes the end of the stream on as a FIN, unless the other direction
// has ended too: then the connection is over and closing it sends the FIN
// (a shutdown first would cost a call).
func (c *tcpConn) end(d *flow) {
	d.done = true
	d.release(c.lp)
	if d.other.done {
		c.close()
		return
	}
	if sysShutdown(d.dst.fd, unix.SHUT_WR) != 0 {
		c.close()
	}
}

// release returns the flow's buffer and pipe to the loop.
func (d *flow) release(lp *loop) {
	if d.buf != nil {
		lp.putBuf(d.buf)
		d.buf = nil
	}
	if d.bulk {
		lp.putPipe(d.pipe, d.inPipe == 0)
		d.bulk, d.inPipe = false, 0
	}
}
