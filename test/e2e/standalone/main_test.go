// Package standalone tests `kproxy run --manifests` as a process: a user's
// manifest directory, edited while kproxy runs, with real backends and real
// connections over loopback, observed through the admin endpoint.
package standalone

// IP plan: services are allocated from 127.10.0.0/16 (loopback, so the userspace
// proxy binds them without root and without touching any interface); pods
// (kproxy-echo backends) listen on 127.0.1.0/24.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
)

var binDir string

func TestMain(m *testing.M) {
	lbtest.ClientMain()
	dir, err := os.MkdirTemp("", "kproxy-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./cmd/kproxy", "./cmd/kproxy-echo")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback TCP and UDP port that is free right now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}
