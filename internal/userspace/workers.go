package userspace

import (
	"sync/atomic"
	"time"
)

// workers runs connection handlers on reused goroutines. A new connection
// needs two goroutines; starting fresh ones costs their creation and, worse,
// growing their stacks on the first deep call (dial, splice), which showed up
// as ~10% of the proxy's CPU at high connection rates.
//
// Idle workers wait on the task channel alone, without a timer of their own:
// a per-worker idle timer costs a timer insertion and removal each time a
// worker blocks, twice per connection. Instead reap, every idle period, ends
// as many workers as were waiting all through the period (the fewest seen
// waiting at once): those were not needed.
type workers struct {
	ch   chan func() // unbuffered: a send succeeds only if a worker waits
	idle time.Duration
	done <-chan struct{} // closed by Close: idle workers exit at once

	waiting    atomic.Int64 // workers blocked on ch
	minWaiting atomic.Int64 // the fewest waiting since the last reap
}

func (w *workers) run(f func()) {
	select {
	case w.ch <- f:
	default:
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	for {
		f()
		w.waiting.Add(1)
		select {
		case f = <-w.ch:
		case <-w.done:
			w.waiting.Add(-1)
			return
		}
		n := w.waiting.Add(-1)
		for {
			m := w.minWaiting.Load()
			if n >= m || w.minWaiting.CompareAndSwap(m, n) {
				break
			}
		}
		if f == nil { // sent by reap
			return
		}
	}
}

// reap ends the workers that stayed idle for a whole idle period; it returns
// when done is closed.
func (w *workers) reap() {
	t := time.NewTicker(w.idle)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		surplus := w.minWaiting.Swap(w.waiting.Load())
		for range surplus {
			select {
			case w.ch <- nil:
				continue
			default:
			}
			break
		}
	}
}
