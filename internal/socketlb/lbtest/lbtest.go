// Package lbtest gives socket LB tests and benchmarks a sandbox: a cgroup of
// their own under the cgroup v2 hierarchy (never its root), a private bpf
// filesystem for the pins, and a way to start commands inside both a network
// namespace and that cgroup. Everything is removed in Cleanup, also when the
// test fails.
package lbtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kproxy/kproxy/internal/cgroups"
)

// T is what the sandbox needs from a test or a benchmark command.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Sandbox is a test cgroup and a private bpffs.
type Sandbox struct {
	// Cgroup is the test's cgroup directory; attach programs here.
	Cgroup string
	// PinDir is a directory on the private bpffs.
	PinDir string
	cgfd   *os.File
}

// New creates the sandbox. t.Cleanup detaches what is left, unmounts the
// bpffs and removes the cgroup (after killing any process the test left in it).
func New(t T) *Sandbox {
	t.Helper()
	root, err := cgroups.V2Root()
	if err != nil {
		t.Fatalf("cgroup v2: %v", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	s := &Sandbox{Cgroup: filepath.Join(root, "kproxy-test-"+suffix)}
	if err := os.Mkdir(s.Cgroup, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(s.Cgroup) })
	fd, err := os.Open(s.Cgroup)
	if err != nil {
		t.Fatalf("open test cgroup: %v", err)
	}
	s.cgfd = fd
	t.Cleanup(func() { fd.Close() })

	mnt, err := os.MkdirTemp("", "kproxy-bpffs-")
	if err != nil {
		t.Fatalf("bpffs dir: %v", err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(mnt)
		t.Fatalf("mount a private bpffs: %v", err)
	}
	t.Cleanup(func() {

		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		_ = os.Remove(mnt)
	})
	s.PinDir = filepath.Join(mnt, "kproxy")
	return s
}

// removeCgroup kills what is left in the cgroup and removes it; rmdir fails
// while a process is inside.
func removeCgroup(dir string) {
	for i := 0; i < 50; i++ {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(100 * time.Millisecond)
	}
}

// Command returns a command that runs in the network namespace netns (by
// name; empty for kproxy's own) and is born in the test cgroup (clone3 with
// CLONE_INTO_CGROUP), so the programs attached there see its sockets from its
// first instruction. Nothing else is moved into the cgroup.
func (s *Sandbox) Command(netns string, args ...string) *exec.Cmd {
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(s.cgfd.Fd())}
	return cmd
}

// Procs returns the processes now in the test cgroup.
func (s *Sandbox) Procs() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.Cgroup, "cgroup.procs"))
	return string(b), err
}

// String names the sandbox for logs.
func (s *Sandbox) String() string { return fmt.Sprintf("cgroup %s, pins %s", s.Cgroup, s.PinDir) }
