package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// spawner starts child processes from one OS thread that stays alive (locked)
// for the cluster's lifetime. Children get PDEATHSIG=SIGKILL, which fires when
// the thread that forked them exits: so when the test binary dies (a timeout
// panic, a kill), no etcd or API server is left behind on a shared machine. The
// dedicated thread matters because tests lock and then discard threads to enter
// network namespaces; a child forked from such a thread would be killed early.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine, and with it any
		// child still running.
		close(started)
		for {
			select {
			case r := <-s.reqs:
				r.err <- r.cmd.Start()
			case <-s.done:
				return
			}
		}
	}()
	<-started
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	select {
	case s.reqs <- spawnReq{cmd: cmd, err: errc}:
	case <-s.done:
		return errors.New("cluster stopped")
	}
	return <-errc
}

func (s *spawner) close() { close(s.done) }

// Process is one running component with its log file.
type Process struct {
	name    string
	path    string
	args    []string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

func (p *Process) start(sp *spawner) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.name, err)
	}
	fmt.Fprintf(logf, "\n==== %s start %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := sp.start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd = cmd
	p.exited = make(chan struct{})
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return nil
}

func (p *Process) Running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *Process) Stop(grace time.Duration) {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Kill stops the process at once, as a crash would.
func (p *Process) Kill() {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// LogTail returns the end of the process's log, for error messages.
func (p *Process) LogTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	const max = 3000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// PID returns the process ID, 0 when it is not running.
func (p *Process) PID() int {
	if !p.Running() {
		return 0
	}
	return p.cmd.Process.Pid
}

// LogPath is the file that receives the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Wait waits for the process to exit and returns its exit error.
func (p *Process) Wait() error {
	if p.cmd == nil {
		return errors.New("not started")
	}
	<-p.exited
	return p.waitErr
}

// StartProcess starts a helper process (kproxy, kube-proxy, a client) the same
// way as the control plane: killed with the test binary, output in
// Dir/NAME.log. It is stopped by Stop if still running.
func (c *Cluster) StartProcess(name, path string, args ...string) (*Process, error) {
	p := &Process{name: name, path: path, args: args, logPath: filepath.Join(c.Dir, name+".log")}
	if err := p.start(c.sp); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.extra = append(c.extra, p)
	c.mu.Unlock()
	return p, nil
}
