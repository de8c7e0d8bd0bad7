package userspace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loop is one of the proxier's TCP event loops: a goroutine with its own epoll
// set of raw non-blocking sockets that Go's netpoller does not know about. A
// connection lives in the loop that accepted it from start to end, so its
// state needs no locks, and it costs no goroutine parking: the loop parks
// only when none of its sockets has an event. Other goroutines reach a loop
// through post: commands run by the loop between events, announced on an
// eventfd.
//
// Dial and idle timeouts are checked by a coarse tick (the epoll_wait
// timeout), not per-connection timers.
type loop struct {
	p    *Proxier
	epfd int
	evfd int
	file *os.File // epfd, for waiting in Go's netpoller
	rc   syscall.RawConn

	mu      sync.Mutex
	cmds    []func()
	stopped bool
	woken   atomic.Bool  // an eventfd write is pending: posters need not write again
	bulk    atomic.Int64 // connections with a spliced direction, for balance
	open    atomic.Int64 // len(conns), plus connections on their way here (settle)
	helper  bool         // not a home loop: long-lived connections move on (settle)

	// Owned by the loop goroutine.
	slots     []slot // by file descriptor
	gen       uint32
	now       int64 // p.now() after the last epoll_wait
	nextTick  int64
	tickEvery int64
	armed     int64      // the tick the wait's deadline is set to, 0: none
	conns     []*tcpConn // all connections, for the tick and for stop
	scratch   []byte     // the read buffer of copying directions
	bufs      [][]byte   // free copy buffers
	pipes     []pipe     // free (empty) pipes
	spare     []func()   // the previous command batch, reused
	stopping  bool
}

// pollable receives the events of a registered file descriptor.
type pollable interface{ onEvent(ev uint32) }

// slot maps a file descriptor to its handler. The generation, also carried in
// the epoll event, keeps an event queued for a descriptor that was closed and
// reused in the same batch from reaching the new owner.
type slot struct {
	gen uint32
	h   pollable
}

// pipe is a non-blocking pipe for splice.
type pipe struct{ r, w int }

const (
	// copyBufSize is the read buffer of a direction before it turns to
	// splice; a read that fills it marks the direction as bulk.
	copyBufSize = 16 << 10
	// pipeSize is the capacity asked for splice pipes (as Go's net package
	// does); the kernel caps it at fs.pipe-max-size.
	pipeSize = 1 << 20
	// pooledBufs and pooledPipes bound the free buffers and pipes a loop keeps.
	pooledBufs  = 64
	pooledPipes = 16
	// eventBatch is how many events one epoll_wait returns at most.
	eventBatch = 256
)

func newLoop(p *Proxier, helper bool) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	// Edge-triggered: every write to the eventfd is an edge, so the loop
	// never needs to read the counter back (it cannot come near overflow).
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, so that os.NewFile registers it in Go's netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	file := os.NewFile(uintptr(epfd), "epoll")
	rc, err := file.SyscallConn()
	if err != nil {
		_ = file.Close()
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	tick := min(p.cfg.DialTimeout, p.cfg.TCPIdleTimeout) / 8
	tick = min(max(tick, 5*time.Millisecond), time.Second)
	return &loop{p: p, helper: helper, epfd: epfd, evfd: evfd, file: file, rc: rc, tickEvery: int64(tick), scratch: make([]byte, copyBufSize)}, nil
}

// post queues f to run on the loop; false if the loop has stopped.
func (lp *loop) post(f func()) bool {
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		return false
	}
	lp.cmds = append(lp.cmds, f)
	lp.mu.Unlock()
	lp.wake()
	return true
}

func (lp *loop) wake() {
	if lp.woken.Swap(true) {
		return
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		_, err := unix.Write(lp.evfd, one[:])
		if err != unix.EINTR {
			return
		}
	}
}

// stop makes the loop close its connections and return; later posts fail.
func (lp *loop) stop() {
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		return
	}
	lp.stopped = true
	lp.cmds = append(lp.cmds, func() { lp.stopping = true })
	lp.mu.Unlock()
	lp.wake()
}

func (lp *loop) runCommands() {
	// Cleared before taking the batch: a post after this point writes the
	// eventfd again, so its command cannot be left behind.
	lp.woken.Store(false)
	lp.mu.Lock()
	cmds := lp.cmds
	lp.cmds = lp.spare[:0]
	lp.mu.Unlock()
	for i, f := range cmds {
		f()
		cmds[i] = nil
	}
	lp.spare = cmds
}

func (lp *loop) run() {
	defer lp.p.wg.Done()
	events := make([]unix.EpollEvent, eventBatch)
	lp.now = lp.p.now()
	lp.nextTick = lp.now + lp.tickEvery
	for !lp.stopping {
		lp.armTick()
		n := lp.wait(events)
		lp.now = lp.p.now()
		for i := range n {
			ev := &events[i]
			fd := int(ev.Fd)
			if fd == lp.evfd {
				lp.runCommands()
				continue
			}
			if fd < len(lp.slots) {
				if s := lp.slots[fd]; s.h != nil && s.gen == uint32(ev.Pad) {
					s.h.onEvent(ev.Events)
				}
			}
		}
		if lp.now >= lp.nextTick {
			lp.tick()
		}
	}
	lp.shutdown()
}

// wait returns the next batch of events. It polls the loop's epoll set
// without blocking and, when nothing is ready, parks the goroutine in Go's
// netpoller, where the epoll descriptor itself is registered (it reads as
// ready when its own set has events). A blocking epoll_wait would be a system
// call the runtime must be told about (entersyscall), which wakes sysmon and
// lets it retake the P (see rawsys.go).
//
// Readiness that arrives after RawConn.Read cleared the poller's state, even
// before the poll below, is kept for the wait; what arrived earlier is still
// in the epoll set's ready list, which the poll reads.
func (lp *loop) wait(events []unix.EpollEvent) int {
	n := 0
	err := lp.rc.Read(func(uintptr) bool {
		for {
			r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(lp.epfd),
				uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
			switch e {
			case 0:
				n = int(r)
				return n > 0
			case unix.EINTR:
				continue
			}
			lp.p.log.Error("epoll_wait failed", "err", e)
			return true
		}
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		lp.p.log.Error("waiting for events", "err", err)
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// armTick makes the wait end by the next tick while the loop has
// connections; without any it sleeps until an event.
func (lp *loop) armTick() {
	want := int64(0)
	if len(lp.conns) > 0 {
		want = lp.nextTick
	}
	if want == lp.armed {
		return
	}
	lp.armed = want
	var t time.Time
	if want != 0 {
		t = lp.p.start.Add(time.Duration(want))
	}
	_ = lp.file.SetReadDeadline(t)
}

// tick ends dials that outlived the dial timeout (moving on to the next
// endpoint) and connections idle for the idle timeout.
func (lp *loop) tick() {
	lp.nextTick = lp.now + lp.tickEvery
	idle := int64(lp.p.cfg.TCPIdleTimeout)
	for i := 0; i < len(lp.conns); {
		c := lp.conns[i]
		switch {
		case c.state == connDialing && lp.now >= c.deadline:
			c.redial(fmt.Errorf("dial tcp %s: %w", c.ep.str, os.ErrDeadlineExceeded))
		case c.state == connOpen && lp.now-c.last >= idle:
			lp.p.log.Debug("closing idle connection", "servicePort", c.sp.label, "endpoint", c.ep.str)
			c.close()
		}
		// A closed connection was swapped out for the last one.
		if i < len(lp.conns) && lp.conns[i] == c {
			i++
		}
	}
}

func (lp *loop) shutdown() {
	for len(lp.conns) > 0 {
		lp.conns[len(lp.conns)-1].close()
	}
	for _, pp := range lp.pipes {
		_ = unix.Close(pp.r)
		_ = unix.Close(pp.w)
	}
	lp.pipes = nil
	_ = lp.file.Close() // the epoll descriptor
	_ = unix.Close(lp.evfd)
}

// register adds fd to the loop's epoll set with h as its handler.
func (lp *loop) register(fd int, h pollable, events uint32) error {
	lp.gen++
	if fd >= len(lp.slots) {
		slots := make([]slot, max(fd+1, 2*len(lp.slots), 64))
		copy(slots, lp.slots)
		lp.slots = slots
	}
	lp.slots[fd] = slot{gen: lp.gen, h: h}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(lp.gen)}
	if e := sysEpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); e != 0 {
		lp.slots[fd] = slot{}
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

// forget drops fd's handler; called before the descriptor is closed (which
// removes it from the epoll set).
func (lp *loop) forget(fd int) {
	if fd >= 0 && fd < len(lp.slots) {
		lp.slots[fd] = slot{}
	}
}

func (lp *loop) addConn(c *tcpConn) {
	c.idx = len(lp.conns)
	lp.conns = append(lp.conns, c)
	lp.open.Store(int64(len(lp.conns)))
}

func (lp *loop) removeConn(c *tcpConn) {
	last := lp.conns[len(lp.conns)-1]
	lp.conns[c.idx] = last
	last.idx = c.idx
	lp.conns[len(lp.conns)-1] = nil
	lp.conns = lp.conns[:len(lp.conns)-1]
	lp.open.Store(int64(len(lp.conns)))
}

func (lp *loop) getBuf() []byte {
	if n := len(lp.bufs); n > 0 {
		b := lp.bufs[n-1]
		lp.bufs = lp.bufs[:n-1]
		return b
	}
	return make([]byte, copyBufSize)
}

func (lp *loop) putBuf(b []byte) {
	if len(lp.bufs) < pooledBufs {
		lp.bufs = append(lp.bufs, b[:copyBufSize])
	}
}

func (lp *loop) getPipe() (pipe, error) {
	if n := len(lp.pipes); n > 0 {
		pp := lp.pipes[n-1]
		lp.pipes = lp.pipes[:n-1]
		return pp, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return pipe{}, os.NewSyscallError("pipe2", err)
	}
	// Best effort: without it the pipe holds 64 KiB.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe keeps an empty pipe for reuse; one still holding data is closed.
func (lp *loop) putPipe(pp pipe, empty bool) {
	if empty && len(lp.pipes) < pooledPipes && !lp.stopping {
		lp.pipes = append(lp.pipes, pp)
		return
	}
	_ = unix.Close(pp.r)
	_ = unix.Close(pp.w)
}
