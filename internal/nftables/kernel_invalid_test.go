package nftables

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy/kproxy/internal/netnstest"
)

// A long-lived TCP connection through a cluster IP, client on node-a (which
// does the DNAT), server on node-b, and a server that sends a segment far
// outside the TCP window (a spurious retransmission of data the client
// acknowledged long ago, as a congested path or a buggy stack produces).
// Conntrack on node-a marks it INVALID, so it is not un-DNATed: it reaches
// the client from the pod's own address, the client answers with a reset to
// that address, and the reset (INVALID too) kills the server's side. kproxy
// drops INVALID packets in its forward hook; see README.md. Same IP plan as
// kernel_udp_test.go; the server listens on b1:7070.

// sniffer records the last sequence and acknowledgement numbers the server
// pod saw from the client of port.
type sniffer struct {
	fd       int
	port     uint16
	mu       sync.Mutex
	seq, ack uint32 // the client's next sequence number and its last ACK
	seen     bool
}

func newSniffer(ns *netnstest.NS, port uint16) (*sniffer, error) {
	s := &sniffer{port: port}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
		s.fd = fd
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := unix.Recvfrom(s.fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			p := buf[:n]
			if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
				continue
			}
			ihl := int(p[0]&0xf) * 4
			total := int(binary.BigEndian.Uint16(p[2:]))
			if len(p) < ihl+20 || total > len(p) {
				continue
			}
			tcp := p[ihl:total]
			if binary.BigEndian.Uint16(tcp[2:]) != s.port {
				continue
			}
			doff := int(tcp[12]>>4) * 4
			payload := len(tcp) - doff
			seq := binary.BigEndian.Uint32(tcp[4:]) + uint32(payload)
			if tcp[13]&0x03 != 0 { // SYN or FIN count as one
				seq++
			}
			s.mu.Lock()
			s.seq, s.ack, s.seen = seq, binary.BigEndian.Uint32(tcp[8:]), true
			s.mu.Unlock()
		}
	}()
	return s, nil
}

func (s *sniffer) close() { unix.Close(s.fd) }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sendOutOfWindow sends, from the server pod, a data segment of the
// connection src → dst with a sequence number a gigabyte beyond what the
// client acknowledged: far beyond its receive window, which conntrack marks
// INVALID ("SEQ is over upper bound"). On Linux 6.18 a segment a gigabyte
// below (data acknowledged long ago) is not marked INVALID any more: the
// kernel ignores it for window tracking and still un-NATs it.
func sendOutOfWindow(ns *netnstest.NS, src, dst netip.AddrPort, clientSeq, clientAck uint32) error {
	payload := make([]byte, 100)
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], clientAck+(1<<30))
	binary.BigEndian.PutUint32(tcp[8:], clientSeq)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // PSH, ACK
	binary.BigEndian.PutUint16(tcp[14:], 502)
	copy(tcp[20:], payload)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, unix.IPPROTO_TCP, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// Without IP_HDRINCL the kernel writes the IP header.
		return unix.Sendto(fd, tcp, 0, &unix.SockaddrInet4{Addr: d4})
	})
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// echoServer accepts one connection on port in ns and echoes lines.
func echoServer(t *testing.T, ns *netnstest.NS, port uint16) <-chan net.Conn {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		conns <- c
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := c.Write([]byte(line)); err != nil {
				return
			}
		}
	}()
	return conns
}

// outOfWindowSurvives runs the scenario and reports whether the connection
// survived the out-of-window segment.
func outOfWindowSurvives(t *testing.T, b *twoNodeBed) error {
	t.Helper()
	server := b.podsB[0]
	conns := echoServer(t, server.NS, 7070)
	sn, err := newSniffer(server.NS, 7070)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.close()
	var c net.Conn
	if err := b.podsA[0].Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", "10.96.0.70:80", 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to the cluster IP: %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	exchange := func(i int) error {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := fmt.Sprintf("message %d\n", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	for i := range 5 {
		if err := exchange(i); err != nil {
			t.Fatalf("before the out-of-window segment: %v", err)
		}
	}
	var sc net.Conn
	select {
	case sc = <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the server accepted nothing")
	}
	time.Sleep(100 * time.Millisecond) // the last ACK reaches the sniffer
	sn.mu.Lock()
	seq, ack, seen := sn.seq, sn.ack, sn.seen
	sn.mu.Unlock()
	if !seen {
		t.Fatal("the sniffer saw no packet of the connection")
	}
	client := netip.MustParseAddrPort(sc.RemoteAddr().String())
	local := netip.MustParseAddrPort(sc.LocalAddr().String())
	if err := sendOutOfWindow(server.NS, local, client, seq, ack); err != nil {
		t.Fatalf("send the out-of-window segment: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	for i := 5; i < 15; i++ {
		if err := exchange(i); err != nil {
			return fmt.Errorf("after the out-of-window segment, exchange %d: %w", i-5, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func TestKernelOutOfWindowKeepsConnection(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(i int, n *netnstest.Node, c *Config)
		survive bool
	}{
		{"INVALID dropped (kproxy's default)", nil, true},
		{"INVALID forwarded (AcceptInvalid): the connection is reset", func(i int, n *netnstest.Node, c *Config) {
			c.AcceptInvalid = true
		}, false},
		{"nf_conntrack_tcp_be_liberal on node-a, no drop rule", func(i int, n *netnstest.Node, c *Config) {
			if i == 0 {
				// A per-namespace sysctl: the host's stays as it is.
				n.MustExec("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTwoNodeBedWith(t, tc.setup)
			if got := b.proxiers[0].Config().AcceptInvalid; got != (tc.setup != nil) {
				t.Fatalf("node-a AcceptInvalid = %v", got)
			}
			b.addService(makeService("long", clusterIP("10.96.0.70")))
			b.setTCPEndpoints("long", 7070, b.podsB[0])
			err := outOfWindowSurvives(t, b)
			switch {
			case tc.survive && err != nil:
				t.Errorf("the connection did not survive: %v", err)
			case !tc.survive && err == nil:
				t.Errorf("the connection survived without the mitigation: the test no longer shows the problem on this kernel")
			case !tc.survive:
				t.Logf("as expected: %v", err)
			}
		})
	}
}

// setTCPEndpoints gives a TCP service one slice of ready endpoints.
func (b *twoNodeBed) setTCPEndpoints(svc string, port int32, pods ...*netnstest.Pod) {
	b.t.Helper()
	var eps []ep
	for _, p := range pods {
		eps = append(eps, ep{ip: p.V4.String(), node: "node-b"})
	}
	s := makeSlice(svc, port, v1.ProtocolTCP, eps...)
	for _, tr := range b.trackers {
		tr.OnEndpointSliceAdd(s.DeepCopy())
	}
	b.sync()
}
