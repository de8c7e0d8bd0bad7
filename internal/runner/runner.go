// Package runner runs a function at a bounded frequency, the way kube-proxy
// drives its syncs: a request runs the function soon but never more often than
// the minimum interval, the function runs at least once per maximum interval,
// and a failed run is retried after a delay.
package runner

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Clock is the time source; tests inject a fake.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the runner uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(d)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// ErrNotReady, returned by fn, says that it did nothing because it is not ready
// yet (sources still loading): the run does not count towards the minimum interval,
// so the first real run happens as soon as it is asked for.
var ErrNotReady = errors.New("not ready")

// Runner calls fn at a bounded frequency.
type Runner struct {
	fn          func() error
	minInterval time.Duration
	maxInterval time.Duration
	retry       time.Duration
	clock       Clock

	mu      sync.Mutex
	pending bool
	kick    chan struct{}
	lastRun time.Time
}

// New returns a Runner. minInterval bounds how often fn runs (0: no bound);
// maxInterval is the longest time between runs (0: only on request); a failed
// run is retried after retry (0: only at the next request or maxInterval).
func New(fn func() error, minInterval, maxInterval, retry time.Duration) *Runner {
	return NewWithClock(fn, minInterval, maxInterval, retry, realClock{})
}

// NewWithClock is New with an injected clock.
func NewWithClock(fn func() error, minInterval, maxInterval, retry time.Duration, clock Clock) *Runner {
	return &Runner{fn: fn, minInterval: minInterval, maxInterval: maxInterval, retry: retry,
		clock: clock, kick: make(chan struct{}, 1)}
}

// Run asks for fn to run soon. It never blocks; requests made while a run is
// pending fold into that run.
func (r *Runner) Run() {
	r.mu.Lock()
	r.pending = true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Loop runs fn until ctx is done.
func (r *Runner) Loop(ctx context.Context) {
	var retryAt time.Time
	for {
		now := r.clock.Now()
		r.mu.Lock()
		pending := r.pending
		last := r.lastRun
		r.mu.Unlock()

		// When may the next run happen, and when must it?
		var next time.Time
		have := false
		switch {
		case pending:
			next, have = last.Add(r.minInterval), true
		case !retryAt.IsZero():
			next, have = retryAt, true
		}
		if r.maxInterval > 0 && !last.IsZero() {
			if must := last.Add(r.maxInterval); !have || must.Before(next) {
				next, have = must, true
			}
		}
		if have && !next.After(now) {
			r.mu.Lock()
			r.pending = false
			prev := r.lastRun
			r.lastRun = now
			r.mu.Unlock()
			retryAt = time.Time{}
			err := r.fn()
			switch {
			case errors.Is(err, ErrNotReady):
				r.mu.Lock()
				r.lastRun = prev
				r.mu.Unlock()
			case err != nil && r.retry > 0:
				retryAt = r.clock.Now().Add(r.retry)
			}
			continue
		}
		var timerC <-chan time.Time
		var timer Timer
		if have {
			timer = r.clock.NewTimer(next.Sub(now))
			timerC = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-r.kick:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}
