package runner

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock whose time moves only when the test steps it, so that
// the runner's intervals are checked exactly, whatever the machine's load.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c  chan time.Time
	at time.Time
	fc *fakeClock
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{c: make(chan time.Time, 1), at: f.now.Add(d), fc: f}
	f.timers = append(f.timers, t)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.fc.mu.Lock()
	defer t.fc.mu.Unlock()
	n := len(t.fc.timers)
	t.fc.timers = slices.DeleteFunc(t.fc.timers, func(x *fakeTimer) bool { return x == t })
	return len(t.fc.timers) < n
}

// Step moves the time on by d and fires the timers that are due.
func (f *fakeClock) Step(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	f.timers = slices.DeleteFunc(f.timers, func(t *fakeTimer) bool {
		if t.at.After(f.now) {
			return false
		}
		t.c <- f.now
		return true
	})
}

// waitTimer waits until the runner waits on a timer due at at: it has done
// everything it can do before then.
func (f *fakeClock) waitTimer(t *testing.T, at time.Time) {
	t.Helper()
	waitFor(t, "a timer due at "+at.Format(time.StampMilli), func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return slices.ContainsFunc(f.timers, func(x *fakeTimer) bool { return x.at.Equal(at) })
	})
}

// runLog records the fake times of fn's runs.
type runLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *runLog) add(now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.times = append(l.times, now)
	return len(l.times)
}

// offsets are the runs' times after start.
func (l *runLog) offsets(start time.Time) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for _, t := range l.times {
		out = append(out, t.Sub(start))
	}
	return out
}

func (l *runLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.times)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// start runs r's loop until the test ends.
func start(t *testing.T, r *Runner) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRunner(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name string
		run  func(t *testing.T, clk *fakeClock, t0 time.Time)
	}{
		{"requests fold into one run and honour the min interval", func(t *testing.T, clk *fakeClock, t0 time.Time) {
			var log runLog
			r := NewWithClock(func() error { log.add(clk.Now()); return nil }, 200*ms, 0, 0, clk)
			start(t, r)
			r.Run()
			waitFor(t, "the first run", func() bool { return log.count() == 1 })
			for range 10 {
				r.Run()
			}
			clk.waitTimer(t, t0.Add(200*ms))
			clk.Step(199 * ms)
			if n := log.count(); n != 1 {
				t.Fatalf("%d runs before the min interval passed, want 1", n)
			}
			clk.Step(1 * ms)
			waitFor(t, "the second run", func() bool { return log.count() == 2 })
			clk.Step(time.Hour)
			time.Sleep(20 * ms) // room for a wrong extra run
			if got, want := log.offsets(t0), []time.Duration{0, 200 * ms}; !slices.Equal(got, want) {
				t.Fatalf("runs at %v, want %v (ten requests fold into one run, at the min interval)", got, want)
			}
		}},
		{"max interval runs without requests", func(t *testing.T, clk *fakeClock, t0 time.Time) {
			var log runLog
			r := NewWithClock(func() error { log.add(clk.Now()); return nil }, 0, 50*ms, 0, clk)
			start(t, r)
			r.Run()
			for i := 1; i <= 3; i++ {
				clk.waitTimer(t, t0.Add(time.Duration(i)*50*ms))
				clk.Step(50 * ms)
			}
			waitFor(t, "four runs", func() bool { return log.count() == 4 })
			if got, want := log.offsets(t0), []time.Duration{0, 50 * ms, 100 * ms, 150 * ms}; !slices.Equal(got, want) {
				t.Fatalf("runs at %v, want %v", got, want)
			}
		}},
		{"a failed run is retried, and a good one is not", func(t *testing.T, clk *fakeClock, t0 time.Time) {
			var log runLog
			r := NewWithClock(func() error {
				if log.add(clk.Now()) < 3 {
					return errors.New("boom")
				}
				return nil
			}, 0, 0, 20*ms, clk)
			start(t, r)
			r.Run()
			clk.waitTimer(t, t0.Add(20*ms))
			clk.Step(20 * ms)
			clk.waitTimer(t, t0.Add(40*ms))
			clk.Step(20 * ms)
			waitFor(t, "the third run", func() bool { return log.count() == 3 })
			clk.Step(time.Hour)
			time.Sleep(20 * ms)
			if got, want := log.offsets(t0), []time.Duration{0, 20 * ms, 40 * ms}; !slices.Equal(got, want) {
				t.Fatalf("runs at %v, want %v", got, want)
			}
		}},
		{"a run that was not ready does not delay the next", func(t *testing.T, clk *fakeClock, t0 time.Time) {
			var log runLog
			var mu sync.Mutex
			ready := false
			r := NewWithClock(func() error {
				log.add(clk.Now())
				mu.Lock()
				defer mu.Unlock()
				if !ready {
					return ErrNotReady
				}
				return nil
			}, time.Hour, 0, 0, clk)
			start(t, r)
			r.Run()
			waitFor(t, "the not-ready run", func() bool { return log.count() == 1 })
			mu.Lock()
			ready = true
			mu.Unlock()
			clk.Step(time.Second)
			r.Run()
			waitFor(t, "the real run right away despite the hour-long min interval", func() bool { return log.count() == 2 })
			if got, want := log.offsets(t0), []time.Duration{0, time.Second}; !slices.Equal(got, want) {
				t.Fatalf("runs at %v, want %v", got, want)
			}
		}},
		{"loop stops with its context", func(t *testing.T, clk *fakeClock, t0 time.Time) {
			r := NewWithClock(func() error { return nil }, 0, time.Hour, 0, clk)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Loop(ctx); close(done) }()
			r.Run()
			clk.waitTimer(t, t0.Add(time.Hour))
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Loop did not return after cancel")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			tc.run(t, clk, clk.Now())
		})
	}
}
