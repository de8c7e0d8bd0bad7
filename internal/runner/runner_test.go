package runner

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunner(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"requests fold into one run and honour the min interval", func(t *testing.T) {
			var runs atomic.Int32
			var times []time.Time
			r := New(func() error { times = append(times, time.Now()); runs.Add(1); return nil }, 200*time.Millisecond, 0, 0)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Loop(ctx)
			r.Run()
			waitFor(t, "first run", func() bool { return runs.Load() == 1 })
			for i := 0; i < 10; i++ {
				r.Run()
			}
			waitFor(t, "second run", func() bool { return runs.Load() == 2 })
			time.Sleep(300 * time.Millisecond)
			if n := runs.Load(); n != 2 {
				t.Fatalf("runs = %d, want 2 (ten requests fold into one)", n)
			}
			if gap := times[1].Sub(times[0]); gap < 190*time.Millisecond {
				t.Fatalf("second run %v after the first, want >= min interval 200ms", gap)
			}
		}},
		{"max interval runs without requests", func(t *testing.T) {
			var runs atomic.Int32
			r := New(func() error { runs.Add(1); return nil }, 0, 50*time.Millisecond, 0)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Loop(ctx)
			r.Run()
			waitFor(t, "periodic runs", func() bool { return runs.Load() >= 4 })
		}},
		{"a failed run is retried", func(t *testing.T) {
			var runs atomic.Int32
			r := New(func() error {
				if runs.Add(1) < 3 {
					return errors.New("boom")
				}
				return nil
			}, 0, 0, 20*time.Millisecond)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Loop(ctx)
			r.Run()
			waitFor(t, "retries until success", func() bool { return runs.Load() == 3 })
			time.Sleep(100 * time.Millisecond)
			if n := runs.Load(); n != 3 {
				t.Fatalf("runs = %d after success, want 3 (no retry after a good run)", n)
			}
		}},
		{"a run that was not ready does not delay the next", func(t *testing.T) {
			var runs atomic.Int32
			var ready atomic.Bool
			r := New(func() error {
				runs.Add(1)
				if !ready.Load() {
					return ErrNotReady
				}
				return nil
			}, time.Hour, 0, 0)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Loop(ctx)
			r.Run()
			waitFor(t, "the not-ready run", func() bool { return runs.Load() == 1 })
			ready.Store(true)
			r.Run()
			waitFor(t, "the real run right away despite the hour-long min interval", func() bool { return runs.Load() == 2 })
		}},
		{"loop stops with its context", func(t *testing.T) {
			r := New(func() error { return nil }, 0, time.Hour, 0)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Loop(ctx); close(done) }()
			cancel()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Fatal("Loop did not return after cancel")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}
