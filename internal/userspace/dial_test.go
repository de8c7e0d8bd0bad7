package userspace

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A dial that gets no answer (a listener whose accept queue is full drops
// SYNs) fails after DialTimeout.
func TestDialTimeout(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)

	cfg := Defaults()
	cfg.DialTimeout = 200 * time.Millisecond
	p, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 5 {
		s := time.Now()
		c, err := p.dial(addr)
		took := time.Since(s)
		if err == nil {
			defer c.Close()
			continue // queued in the backlog
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || took < cfg.DialTimeout || took > 5*cfg.DialTimeout {
			t.Fatalf("dial failed after %v with %v, want a timeout after %v", took, err, cfg.DialTimeout)
		}
		return
	}
	t.Fatal("every dial succeeded")
}
