package userspace

import (
	"time"

	"golang.org/x/sys/unix"
)

// Connections stay in the loop that accepted them, and which loop accepts is
// a race: the loop already awake usually wins, so under a high rate of short
// connections one loop takes most of them. That is the cheap outcome (handing
// each over to another loop cost a wakeup, and a third of them moved,
// measured as fewer connections per second), but a few long transfers landing
// on one loop leave the others idle: four bulk connections on one of two
// loops moved a third less. So a connection moves when it turns bulk, if
// its loop then carries at least two bulk connections more than another.

//
// Loops are of two kinds. The first half (rounded up) are home loops; the
// others are helpers. Every loop accepts, so bursts of short connections use
// every core; but request/response traffic on long-lived connections had a
// worse tail spread over two loops than gathered in one (keep-alive p99
// against HAProxy 1.14-1.30 with two loops, 0.76-0.83 with one: the loops
// park in one Go netpoller, see README.md). So a connection that a helper
// accepted and that is still open after settleAfter moves to the home loop
// with the fewest connections, at its next event (settle). A bulk connection
// stays where balance put it: those gain from spreading.

// settleAfter is how long a connection may stay on the helper loop that
// accepted it: longer than a short exchange (about a millisecond over
// loopback), short enough that a keep-alive connection settles before most of
// its requests.
const settleAfter = int64(20 * time.Millisecond)

// settle sends c, open for settleAfter on a helper loop, to the home loop with
// the fewest connections. The target's count goes up at once, so that the
// connections settling in one batch spread; the loop's own count replaces it
// when it adopts the connection.
func (c *tcpConn) settle() {
	var target *loop
	for _, h := range c.lp.p.homes {
		if target == nil || h.open.Load() < target.open.Load() {
			target = h
		}
	}
	target.open.Add(1)
	c.moveTo = target
}

// balance picks a loop with fewer bulk connections for c, which just turned
// bulk; the move happens after the current event (move).
func (c *tcpConn) balance() {
	least, target := c.lp.bulk.Load()-1, (*loop)(nil)
	for _, o := range c.lp.p.loops {
		if n := o.bulk.Load(); n < least {
			least, target = n, o
		}
	}
	c.moveTo = target
}

// move hands the connection to another loop: its sockets leave this loop's epoll
// set and join the other's, which reports their readiness afresh (with edge
// triggering an ADD reports the current state, so nothing that arrived in
// between is missed). Its buffer and pipe go with it.
func (c *tcpConn) move(to *loop) {
	from := c.lp
	for _, s := range []*sock{&c.client, &c.backend} {
		from.forget(s.fd)
		_ = sysEpollCtl(from.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	}
	from.removeConn(c)
	var bulk int64
	if c.bulk {
		bulk = 1
	}
	from.bulk.Add(-bulk)
	to.bulk.Add(bulk)
	c.lp = to
	c.held = false
	c.owner.Store(to)
	if !to.post(func() { to.adopt(c) }) {
		// The proxier is closing: close it here.
		to.bulk.Add(-bulk)
		from.bulk.Add(bulk)
		c.lp = from
		c.held = true
		c.owner.Store(from)
		from.addConn(c)
		c.close()
	}
}

// adopt takes over a connection moved from another loop.
func (lp *loop) adopt(c *tcpConn) {
	c.held = true
	lp.addConn(c)
	for _, s := range []*sock{&c.client, &c.backend} {
		if err := lp.register(s.fd, s, connEvents); err != nil {
			lp.p.log.Warn("cannot move a connection", "err", err)
			c.close()
			return
		}
	}
}
