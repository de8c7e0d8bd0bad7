package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

// Relay makes the API server reachable at 127.0.0.1:PORT inside a network
// namespace (a node under test has its own loopback). The listening socket is
// created on a thread inside the namespace and keeps belonging to it; the
// connections to the API server are dialled from the test's own namespace. It
// does what a socat UNIX-LISTEN/TCP-LISTEN pair would, with no extra process.
type Relay struct {
	// Kubeconfig is an admin kubeconfig whose server is the relay's address.
	Kubeconfig string
	// Addr is the relay's address inside the namespace.
	Addr string

	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	paused bool
}

// RelayInto starts a relay inside the namespace at nsPath (for example
// /run/netns/NAME) and writes a kubeconfig for it in the cluster directory.
func (c *Cluster) RelayInto(nsPath string) (*Relay, error) {
	ln, err := listenIn(nsPath, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{ln: ln, Addr: ln.Addr().String(), target: "127.0.0.1:" + strconv.Itoa(c.apiPort), conns: map[net.Conn]struct{}{}}
	r.Kubeconfig = filepath.Join(c.Dir, "relay-"+filepath.Base(nsPath)+"-"+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+".kubeconfig")
	if err := c.WriteKubeconfig(r.Kubeconfig, "https://"+r.Addr); err != nil {
		ln.Close()
		return nil, err
	}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// listenIn opens a TCP listener inside the namespace at nsPath.
func listenIn(nsPath, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is left in the namespace and never unlocked, so the runtime
		// discards it when this goroutine ends instead of reusing it.
		runtime.LockOSThread()
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			ch <- result{err: fmt.Errorf("open netns %s: %w", nsPath, err)}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("listen in %s: %w", nsPath, err)
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.pipe(in)
		}()
	}
}

func (r *Relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		if r.closed || r.paused {
			return false
		}
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *Relay) pipe(in net.Conn) {
	defer in.Close()
	out, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", r.target)
	if err != nil {
		return
	}
	defer out.Close()
	if !r.track(in, true) {
		return
	}
	defer r.track(in, false)
	if !r.track(out, true) {
		return
	}
	defer r.track(out, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}

// Cut closes every relayed connection but keeps listening: from inside the
// namespace it looks like a network cut followed by an immediate recovery.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

// Pause cuts every relayed connection and drops new ones until Resume: from
// inside the namespace the API server is unreachable (a network cut), while
// it keeps running and accepting changes from others.
func (r *Relay) Pause() {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
	r.Cut()
}

// Resume ends a Pause.
func (r *Relay) Resume() {
	r.mu.Lock()
	r.paused = false
	r.mu.Unlock()
}

// Close stops the relay and closes every relayed connection.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	err := r.ln.Close()
	r.Cut()
	r.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// DialIn opens a TCP connection from inside the namespace at nsPath: the
// socket is created there and keeps belonging to it.
func DialIn(ctx context.Context, nsPath, addr string) (net.Conn, error) {
	return DialInFrom(ctx, nsPath, netip.AddrPort{}, addr)
}

// DialInFrom is DialIn from a given local address and port (zero: any).
func DialInFrom(ctx context.Context, nsPath string, local netip.AddrPort, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			ch <- result{err: fmt.Errorf("open netns %s: %w", nsPath, err)}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		d := &net.Dialer{}
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(local)
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// HTTPClientIn returns an HTTP client whose connections start inside the
// namespace at nsPath (to read a proxy's metrics on its loopback).
func HTTPClientIn(nsPath string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return DialIn(ctx, nsPath, addr)
			},
			DisableKeepAlives: true,
		},
	}
}
