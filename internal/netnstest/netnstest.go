// Package netnstest builds throwaway network topologies for real-kernel tests:
// a "node" network namespace with a bridge for pods, pods on veth pairs, and an
// external client on an uplink, avoiding the traps that make traffic fail silently
// (forwarding on, hairpin on every bridge port, a route covering the service
// CIDR, DAD off). Everything is removed in t.Cleanup.
//
// IP plan (per node index i, default 0):
//
//	node bridge   10.244.i.1/24   fd00:10:244:i::1/64
//	pods          10.244.i.N/24   fd00:10:244:i::N/64   (N from 2, in AddPod order)
//	uplink        192.168.100.1/24 fd00:100::1/64 on the node, .2 / ::2 on the client
//	the client routes 10.0.0.0/8, 192.168.200.0/22 and fd00::/16 through the node.
package netnstest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// T is what the harness needs from a test; *testing.T and *testing.B satisfy it,
// and so can a benchmark command.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// NS is one named network namespace.
type NS struct {
	Name string
	t    T
}

// Path is the namespace's bind mount, for APIs that take a path.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// newNS creates a namespace with loopback up; t.Cleanup deletes it.
func newNS(t T, name string) *NS {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, t: t}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	ns.MustExec("ip", "link", "set", "lo", "up")
	ns.MustExec("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return ns
}

// Exec runs a command inside the namespace.
func (n *NS) Exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustExec runs a command inside the namespace and fails the test on error.
func (n *NS) MustExec(args ...string) string {
	n.t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// Do runs fn on an OS thread inside the namespace. Sockets created by fn stay
// in the namespace after fn returns. The thread is never returned to the Go
// scheduler's pool (it exits with the goroutine), so no other code runs in it.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", n.Name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Node is a node namespace with a pod bridge and an uplink.
type Node struct {
	*NS
	Index              int
	BridgeV4, BridgeV6 netip.Addr
	UplinkV4, UplinkV6 netip.Addr
	pods               int
	prefix             string
}

// Pod is a pod namespace attached to a node's bridge.
type Pod struct {
	*NS
	PodName string
	V4, V6  netip.Addr
}

// Client is a namespace outside the cluster, on the node's uplink.
type Client struct {
	*NS
	V4, V6 netip.Addr
}

func randomPrefix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "kp" + hex.EncodeToString(b)
}

// NewNode creates a node namespace (index 0). It needs root.
func NewNode(t T) *Node { return NewNodeIndex(t, 0) }

// NewNodeIndex creates node number i (its pod subnet is 10.244.i.0/24).
func NewNodeIndex(t T, i int) *Node {
	t.Helper()
	prefix := randomPrefix()
	n := &Node{NS: newNS(t, prefix+"-node"), Index: i, prefix: prefix}
	n.BridgeV4 = netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", i))
	n.BridgeV6 = netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%x::1", i))
	n.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.MustExec("ip", "link", "add", "br0", "type", "bridge")
	n.MustExec("ip", "addr", "add", n.BridgeV4.String()+"/24", "dev", "br0")
	n.MustExec("ip", "addr", "add", n.BridgeV6.String()+"/64", "dev", "br0", "nodad")
	n.MustExec("ip", "link", "set", "br0", "up")
	// br_netfilter makes bridged pod-to-pod replies visible to conntrack; it is
	// on by default in a new namespace, but make it explicit.
	_, _ = n.Exec("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")
	return n
}

// AddPod creates a pod namespace on the node's bridge.
func (n *Node) AddPod(t T, name string) *Pod {
	t.Helper()
	n.pods++
	host := n.pods + 1
	p := &Pod{NS: newNS(t, fmt.Sprintf("%s-p%d", n.prefix, host)), PodName: name}
	p.V4 = netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", n.Index, host))
	p.V6 = netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%x::%x", n.Index, host))
	veth := fmt.Sprintf("veth%d", host)
	n.MustExec("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.Name)
	n.MustExec("ip", "link", "set", veth, "master", "br0", "up")
	// Without hairpin a pod cannot reach itself through its service.
	n.MustExec("bridge", "link", "set", "dev", veth, "hairpin", "on")
	p.MustExec("ip", "addr", "add", p.V4.String()+"/24", "dev", "eth0")
	p.MustExec("ip", "addr", "add", p.V6.String()+"/64", "dev", "eth0", "nodad")
	p.MustExec("ip", "link", "set", "eth0", "up")
	p.MustExec("ip", "route", "add", "default", "via", n.BridgeV4.String())
	p.MustExec("ip", "-6", "route", "add", "default", "via", n.BridgeV6.String())
	return p
}

// AddClient creates the external client on the node's uplink and routes the
// node's default route to it (which also covers the service CIDRs).
func (n *Node) AddClient(t T) *Client {
	t.Helper()
	c := &Client{NS: newNS(t, n.prefix+"-client")}
	n.UplinkV4, n.UplinkV6 = netip.MustParseAddr("192.168.100.1"), netip.MustParseAddr("fd00:100::1")
	c.V4, c.V6 = netip.MustParseAddr("192.168.100.2"), netip.MustParseAddr("fd00:100::2")
	n.MustExec("ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	n.MustExec("ip", "addr", "add", "192.168.100.1/24", "dev", "up0")
	n.MustExec("ip", "addr", "add", "fd00:100::1/64", "dev", "up0", "nodad")
	n.MustExec("ip", "link", "set", "up0", "up")
	n.MustExec("ip", "route", "add", "default", "via", "192.168.100.2")
	n.MustExec("ip", "-6", "route", "add", "default", "via", "fd00:100::2")
	c.MustExec("ip", "addr", "add", "192.168.100.2/24", "dev", "eth0")
	c.MustExec("ip", "addr", "add", "fd00:100::2/64", "dev", "eth0", "nodad")
	c.MustExec("ip", "link", "set", "eth0", "up")
	for _, dst := range []string{"10.0.0.0/8", "192.168.200.0/22"} {
		c.MustExec("ip", "route", "add", dst, "via", "192.168.100.1")
	}
	c.MustExec("ip", "-6", "route", "add", "fd00::/16", "via", "fd00:100::1")
	return c
}

// Addrs returns the node's addresses (bridge and uplink).
func (n *Node) Addrs() []netip.Addr {
	out := []netip.Addr{n.BridgeV4, n.BridgeV6}
	if n.UplinkV4.IsValid() {
		out = append(out, n.UplinkV4, n.UplinkV6)
	}
	return out
}

// Server answers every TCP connection and UDP datagram with
// "<name> <client address:port>", so a test sees which endpoint it reached and
// which source address the endpoint saw.
type Server struct {
	name  string
	mu    sync.Mutex
	conns []interface{ Close() error }
}

// Close stops the server.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.conns = nil
}

// Serve starts TCP and UDP listeners on port in the namespace, on all
// addresses of both families. t.Cleanup stops them.
func (n *NS) Serve(t T, name string, port uint16) *Server {
	t.Helper()
	s := &Server{name: name}
	err := n.Do(func() error {
		l, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		if err != nil {
			return err
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
		if err != nil {
			l.Close()
			return err
		}
		s.conns = append(s.conns, l, u)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", name, unmapAddr(c.RemoteAddr().String()))
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := u.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = u.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, unmapAddr(from.String()))), from)
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatalf("serve in %s: %v", n.Name, err)
	}
	t.Cleanup(s.Close)
	return s
}

func unmapAddr(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// Reply is what a Server answered.
type Reply struct {
	Name string         // the server's name
	Peer netip.AddrPort // the client address the server saw
}

// Request opens a connection (proto "tcp" or "udp") from the namespace to dst,
// optionally from local port srcPort (0: any), and returns the server's answer.
func (n *NS) Request(proto string, dst netip.AddrPort, srcPort uint16, timeout time.Duration) (Reply, error) {
	var line string
	err := n.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if srcPort != 0 {
			if proto == "udp" {
				d.LocalAddr = &net.UDPAddr{Port: int(srcPort)}
			} else {
				d.LocalAddr = &net.TCPAddr{Port: int(srcPort)}
			}
		}
		c, err := d.Dial(proto, dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if proto == "udp" {
			if _, err := c.Write([]byte("hello\n")); err != nil {
				return err
			}
		}
		l, err := bufio.NewReader(c).ReadString('\n')
		line = strings.TrimSpace(l)
		return err
	})
	if err != nil {
		return Reply{}, err
	}
	name, peer, _ := strings.Cut(line, " ")
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return Reply{}, fmt.Errorf("bad reply %q: %w", line, err)
	}
	return Reply{Name: name, Peer: ap}, nil
}

// IsRefused reports whether err is a connection refused (TCP reset or ICMP
// port unreachable), as opposed to a timeout.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// IsTimeout reports whether err is a timeout (the packet was dropped).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Available reports whether the machine can run these tests (root, ip, a
// writable /run/netns) and why not.
func Available() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "needs root"
	}
	for _, c := range []string{"ip", "bridge", "sysctl"} {
		if _, err := exec.LookPath(c); err != nil {
			return false, "needs " + c
		}
	}
	return true, ""
}

// LinkNodes connects two nodes with a veth pair ("n2n", 192.168.10.1 on a,
// 192.168.10.2 on b) and routes each node's pod subnet to the other, as a
// cluster's pod network does; b's default route and the uplink subnet go
// through a, so that b reaches a's external client and the service ranges.
// It returns the two link addresses (the nodes' InternalIPs).
func LinkNodes(t T, a, b *Node) (linkA, linkB netip.Addr) {
	t.Helper()
	linkA, linkB = netip.MustParseAddr("192.168.10.1"), netip.MustParseAddr("192.168.10.2")
	a.MustExec("ip", "link", "add", "n2n", "type", "veth", "peer", "name", "n2n", "netns", b.Name)
	a.MustExec("ip", "addr", "add", linkA.String()+"/24", "dev", "n2n")
	a.MustExec("ip", "link", "set", "n2n", "up")
	b.MustExec("ip", "addr", "add", linkB.String()+"/24", "dev", "n2n")
	b.MustExec("ip", "link", "set", "n2n", "up")
	a.MustExec("ip", "route", "add", fmt.Sprintf("10.244.%d.0/24", b.Index), "via", linkB.String())
	b.MustExec("ip", "route", "add", fmt.Sprintf("10.244.%d.0/24", a.Index), "via", linkA.String())
	b.MustExec("ip", "route", "add", "192.168.100.0/24", "via", linkA.String())
	b.MustExec("ip", "route", "add", "default", "via", linkA.String())
	return linkA, linkB
}

// UDPFlow is a client that sends a datagram from one fixed source port every
// interval, as a resolver or a metrics agent does, and records which server
// answered last. Its socket is not connected, so ICMP errors (a service
// without endpoints) do not stop it.
type UDPFlow struct {
	conn *net.UDPConn
	dst  netip.AddrPort
	stop chan struct{}
	done sync.WaitGroup

	mu      sync.Mutex
	last    string
	answers map[string]int
	changed *sync.Cond
}

// StartUDPFlow starts a flow from the namespace's port srcPort to dst; t.Cleanup stops it.
func (n *NS) StartUDPFlow(t T, srcPort uint16, dst netip.AddrPort, every time.Duration) *UDPFlow {
	t.Helper()
	f := &UDPFlow{dst: dst, stop: make(chan struct{}), answers: map[string]int{}}
	f.changed = sync.NewCond(&f.mu)
	err := n.Do(func() error {
		network := "udp4"
		if dst.Addr().Is6() {
			network = "udp6"
		}
		c, err := net.ListenUDP(network, &net.UDPAddr{Port: int(srcPort)})
		f.conn = c
		return err
	})
	if err != nil {
		t.Fatalf("udp flow from %s: %v", n.Name, err)
	}
	f.done.Add(2)
	go func() {
		defer f.done.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			_, _ = f.conn.WriteToUDPAddrPort([]byte("ping\n"), dst)
			select {
			case <-f.stop:
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		defer f.done.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := f.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // an ICMP error: the flow goes on
			}
			name, _, _ := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
			f.mu.Lock()
			f.last = name
			f.answers[name]++
			f.changed.Broadcast()
			f.mu.Unlock()
		}
	}()
	t.Cleanup(f.Close)
	return f
}

// Close stops the flow.
func (f *UDPFlow) Close() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	f.conn.Close()
	f.done.Wait()
	f.mu.Lock()
	f.changed.Broadcast()
	f.mu.Unlock()
}

// Reset forgets the answers seen so far.
func (f *UDPFlow) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = ""
	clear(f.answers)
}

// Answers returns how many answers each server gave since the last Reset.
func (f *UDPFlow) Answers() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.answers))
	for k, v := range f.answers {
		out[k] = v
	}
	return out
}

// WaitFor waits until server name answers, at most timeout, and returns how
// long that took.
func (f *UDPFlow) WaitFor(name string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	timer := time.AfterFunc(timeout, func() {
		f.mu.Lock()
		f.changed.Broadcast()
		f.mu.Unlock()
	})
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.last != name {
		if time.Since(start) >= timeout {
			return time.Since(start), fmt.Errorf("udp flow to %s: no answer from %s within %v (last answer from %q; answers %v)",
				f.dst, name, timeout, f.last, f.answers)
		}
		f.changed.Wait()
	}
	return time.Since(start), nil
}
