package userspace

import "time"

// workers runs connection handlers on reused goroutines. A new connection
// needs two goroutines; starting fresh ones costs their creation and, worse,
// growing their stacks on the first deep call (dial, splice), which showed up
// as ~10% of the proxy's CPU at high connection rates. An idle worker waits
// for the next task for a while, then exits.
type workers struct {
	ch   chan func() // unbuffered: a send succeeds only if a worker waits
	idle time.Duration
	done <-chan struct{} // closed by Close: idle workers exit at once
}

func (w *workers) run(f func()) {
	select {
	case w.ch <- f:
	default:
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		f()
		t.Reset(w.idle)
		select {
		case f = <-w.ch:
		case <-t.C:
			return
		case <-w.done:
			return
		}
	}
}
