package lbtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

const clientEnv = "KPROXY_LBTEST_CLIENT"

// Result is what a client process reports: the server's line ("<name>
// <client addr:port>", see netnstest.Serve), the peer address its socket
// reports (getpeername for connected sockets, the datagram's source for
// unconnected UDP), or the error class.
type Result struct {
	Name   string `json:"name,omitempty"`
	SeenAs string `json:"seenAs,omitempty"`
	Peer   string `json:"peer,omitempty"`
	Err    string `json:"err,omitempty"` // "refused", "timeout", or the message
	// Counts is, for the repeat mode, how many connections reached each
	// endpoint name, and under "error: ..." how many failed.
	Counts map[string]int `json:"counts,omitempty"`
}

// Refused reports whether the connect (or send) was refused.
func (r Result) Refused() bool { return r.Err == "refused" }

// ClientMain runs the client when the test binary was started as one (see
// Client) and exits; otherwise it returns. Call it first in TestMain.
func ClientMain() {
	spec := os.Getenv(clientEnv)
	if spec == "" {
		return
	}
	mode, dst, _ := strings.Cut(spec, " ")
	var r Result
	if rest, ok := strings.CutPrefix(mode, "repeat-"); ok {
		r = repeat(rest, dst)
	} else {
		r = runClient(mode, dst)
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

func runClient(mode, dst string) Result {
	const timeout = 3 * time.Second
	var c net.Conn
	var err error
	switch mode {
	case "tcp", "udp":
		c, err = net.DialTimeout(mode, dst, timeout)
	case "udp-unconnected":
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", ":0")
		if err != nil {
			return Result{Err: err.Error()}
		}
		defer pc.Close()
		var ua *net.UDPAddr
		if ua, err = net.ResolveUDPAddr("udp", dst); err != nil {
			return Result{Err: err.Error()}
		}
		_ = pc.SetDeadline(time.Now().Add(timeout))
		if _, err = pc.WriteTo([]byte("hello\n"), ua); err != nil {
			return errResult(err)
		}
		buf := make([]byte, 1500)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return errResult(err)
		}
		return parseLine(string(buf[:n]), unmap(from.String()))
	default:
		return Result{Err: "unknown mode " + mode}
	}
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if mode == "udp" {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return errResult(err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return errResult(err)
	}
	return parseLine(line, unmap(c.RemoteAddr().String()))
}

// repeat runs n clients of the mode one after the other: "DST N".
func repeat(mode, spec string) Result {
	dst, count, _ := strings.Cut(spec, " ")
	n := 0
	_, _ = fmt.Sscan(count, &n)
	r := Result{Counts: map[string]int{}}
	for i := 0; i < n; i++ {
		x := runClient(mode, dst)
		if x.Err != "" {
			r.Counts["error: "+x.Err]++
			continue
		}
		r.Counts[x.Name]++
	}
	return r
}

func parseLine(line, peer string) Result {
	name, seen, _ := strings.Cut(strings.TrimSpace(line), " ")
	return Result{Name: name, SeenAs: seen, Peer: peer}
}

func unmap(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

func errResult(err error) Result {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Result{Err: "refused"}
	case errors.As(err, &ne) && ne.Timeout():
		return Result{Err: "timeout"}
	}
	return Result{Err: err.Error()}
}

// Start starts a client process that connects n times in a row (mode tcp,
// udp or udp-unconnected); Wait on the returned function for its counts.
func (s *Sandbox) Start(netns, mode string, dst netip.AddrPort, n int) (wait func() (Result, error), err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := s.Command(netns, exe)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=repeat-%s %s %d", clientEnv, mode, dst, n))
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() (Result, error) {
		if err := cmd.Wait(); err != nil {
			return Result{}, fmt.Errorf("client: %w", err)
		}
		var r Result
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			return Result{}, fmt.Errorf("client output %q: %w", out.String(), err)
		}
		return r, nil
	}, nil
}

// Client runs the test binary as a client process in netns and the test
// cgroup: mode is tcp, udp (connected) or udp-unconnected; dst is ip:port.
func (s *Sandbox) Client(netns, mode string, dst netip.AddrPort) (Result, error) {
	exe, err := os.Executable()
	if err != nil {
		return Result{}, err
	}
	cmd := s.Command(netns, exe)
	cmd.Env = append(os.Environ(), clientEnv+"="+mode+" "+dst.String())
	return decode(cmd)
}

func decode(cmd *exec.Cmd) (Result, error) {
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return Result{}, fmt.Errorf("client: %w: %s", err, ee.Stderr)
		}
		return Result{}, fmt.Errorf("client: %w", err)
	}
	var r Result
	if err := json.Unmarshal(out, &r); err != nil {
		return Result{}, fmt.Errorf("client output %q: %w", out, err)
	}
	return r, nil
}
