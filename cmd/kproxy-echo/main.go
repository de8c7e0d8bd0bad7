// Command kproxy-echo is a tiny backend for kproxy's demo, tests and benchmark.
// By default it serves HTTP and answers every request with its name and the
// client address it saw; --tcp-echo echoes raw TCP instead, and --udp also
// echoes UDP datagrams on the same addresses.
//
//	kproxy-echo --listen 127.0.1.1:8080 --name backend-1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(run()) }

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run() int {
	var listen listFlag
	fs := flag.NewFlagSet("kproxy-echo", flag.ContinueOnError)
	fs.Var(&listen, "listen", "address to listen on, host:port (repeatable)")
	name := fs.String("name", "", "name to answer with (default: the host name)")
	tcpEcho := fs.Bool("tcp-echo", false, "echo raw TCP instead of serving HTTP")
	udp := fs.Bool("udp", false, "also echo UDP datagrams on the same addresses")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if len(listen) == 0 {
		fmt.Fprintln(os.Stderr, "kproxy-echo: at least one --listen is needed")
		return 2
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	errc := make(chan error, 2*len(listen))
	for _, addr := range listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-echo:", err)
			return 1
		}
		defer ln.Close()
		if *tcpEcho {
			go func() { errc <- serveTCPEcho(ln) }()
		} else {
			srv := &http.Server{Handler: hello(*name), ReadHeaderTimeout: 10 * time.Second}
			go func() { errc <- srv.Serve(ln) }()
		}
		if *udp {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kproxy-echo:", err)
				return 1
			}
			defer pc.Close()
			go func() { errc <- serveUDPEcho(pc) }()
		}
		slog.Info("listening", "name", *name, "addr", ln.Addr().String(), "tcpEcho", *tcpEcho, "udp", *udp)
	}
	select {
	case <-ctx.Done():
		return 0
	case err := <-errc:
		fmt.Fprintln(os.Stderr, "kproxy-echo:", err)
		return 1
	}
}

func hello(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Backend", name)
		fmt.Fprintf(w, "%s (client %s)\n", name, r.RemoteAddr)
	})
}

// serveTCPEcho echoes every connection back and passes the client's half-close on.
func serveTCPEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			defer c.Close()
			tc, ok := c.(*net.TCPConn)
			if !ok {
				return
			}
			if _, err := io.Copy(tc, tc); err == nil {
				_ = tc.CloseWrite()
			}
		}()
	}
}

func serveUDPEcho(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		_, _ = pc.WriteTo(buf[:n], addr)
	}
}
