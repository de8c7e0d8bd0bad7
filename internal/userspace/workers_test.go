package userspace

import (
	"sync"
	"testing"
	"time"
)

// Workers are reused while busy and reaped once they stayed idle for a whole period.
func TestWorkersReapIdle(t *testing.T) {
	done := make(chan struct{})
	w := &workers{ch: make(chan func()), idle: 50 * time.Millisecond, done: done}
	reaped := make(chan struct{})
	go func() { w.reap(); close(reaped) }()
	defer func() { close(done); <-reaped }()

	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 8 {
		wg.Add(1)
		w.run(func() { defer wg.Done(); <-release })
	}
	close(release)
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for w.waiting.Load() != 8 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers waiting, want 8", w.waiting.Load())
		}
		time.Sleep(time.Millisecond)
	}
	// A task now reuses a waiting worker instead of starting one.
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	for w.waiting.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still waiting after idle periods", w.waiting.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
