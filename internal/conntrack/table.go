package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Flow is one conntrack entry, reduced to what a service proxy decides on:
// where the client sent it (the original tuple) and where replies come from
// (after DNAT: the endpoint). Zone and ID make a deletion exact.
type Flow struct {
	Proto                    uint8
	OrigSrc, OrigDst         netip.Addr
	OrigSrcPort, OrigDstPort uint16
	ReplySrc                 netip.Addr
	ReplySrcPort             uint16
	Zone                     uint16
	ID                       uint32
}

// DNATed reports whether replies come from somewhere else than the original
// destination: the entry was destination-NATed (to a service endpoint).
func (f *Flow) DNATed() bool {
	return f.ReplySrc != f.OrigDst || f.ReplySrcPort != f.OrigDstPort
}

func (f Flow) String() string {
	return fmt.Sprintf("proto=%d %s -> %s reply-src=%s id=%d", f.Proto,
		netip.AddrPortFrom(f.OrigSrc, f.OrigSrcPort), netip.AddrPortFrom(f.OrigDst, f.OrigDstPort),
		netip.AddrPortFrom(f.ReplySrc, f.ReplySrcPort), f.ID)
}

// Table lists and deletes conntrack entries.
type Table interface {
	// List calls fn with every entry of the IP family (unix.AF_INET or
	// AF_INET6) and protocol; the Flow is reused between calls. A table that
	// changed during the dump gives a partial list and no error (the next
	// reconcile sees the rest).
	List(family, proto uint8, fn func(*Flow)) error
	// ListDest is List for the entries whose original destination is dst
	// (any address when dst.Addr is not valid).
	ListDest(family, proto uint8, dst Dest, fn func(*Flow)) error
	// Delete removes exactly these entries (an entry replaced since it was
	// listed has another ID and stays) and returns how many it removed.
	Delete(family uint8, flows []Flow) (int, error)
}

// ctnetlink message types and attributes (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctMsgGet    = unix.NFNL_SUBSYS_CTNETLINK<<8 | 1 // IPCTNL_MSG_CT_GET
	ctMsgDelete = unix.NFNL_SUBSYS_CTNETLINK<<8 | 2 // IPCTNL_MSG_CT_DELETE

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaTimeout    = 7
	ctaID         = 12
	ctaZone       = 18
	ctaFilter     = 25

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3

	ctaFilterOrigFlags = 1
	// filterProtoNum is CTA_FILTER_F_CTA_PROTO_NUM (net/netfilter/nf_conntrack_netlink.c,
	// Linux 5.8+): the dump returns only entries of the tuple's protocol.
	filterProtoNum     = 1 << 3
	filterIPDst        = 1 << 1 // CTA_FILTER_F_CTA_IP_DST
	filterProtoDstPort = 1 << 5 // CTA_FILTER_F_CTA_PROTO_DST_PORT

	nlaNested = 0x8000
)

// Socket is a Table over a ctnetlink socket of its own. It is safe for use by
// one goroutine at a time (kproxy's reconciler).
type Socket struct {
	mu   sync.Mutex
	fd   int
	seq  uint32
	rbuf []byte
	wbuf []byte
	// noKernelFilter is set once the kernel refused a filtered dump: the
	// protocol is then checked here.
	noKernelFilter bool
}

var _ Table = (*Socket)(nil)

// NewSocket opens a ctnetlink socket in the network namespace at nsPath ("" for
// the caller's).
func NewSocket(nsPath string) (*Socket, error) {
	open := func() (int, error) {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return -1, fmt.Errorf("conntrack netlink socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("conntrack netlink bind: %w", err)
		}
		// A dump of 100,000 entries is ~20 MB of messages; the kernel fills
		// the buffer as fast as it can and waits for the reader, so a few MB
		// are plenty. Force it past net.core.rmem_max, as nf_tables' socket.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		// Acknowledgements of refused deletions need not carry the request back.
		_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
		return fd, nil
	}
	var fd int
	var err error
	if nsPath == "" {
		fd, err = open()
	} else {
		errc := make(chan error, 1)
		go func() {
			// The thread enters the namespace and is never unlocked: the
			// runtime retires it when the goroutine ends.
			runtime.LockOSThread()
			ns, err := netns.GetFromPath(nsPath)
			if err != nil {
				errc <- fmt.Errorf("open network namespace %s: %w", nsPath, err)
				return
			}
			defer ns.Close()
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
				return
			}
			fd, err = open()
			errc <- err
		}()
		err = <-errc
	}
	if err != nil {
		return nil, err
	}
	return &Socket{fd: fd, rbuf: make([]byte, 1<<16)}, nil
}

// Close releases the socket.
func (s *Socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// appendMsg starts a netlink message with an nfgenmsg header; finish sets its length.
func appendMsg(b []byte, typ, flags uint16, seq uint32, family uint8) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set by finish
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills it
	b = append(b, family, unix.NFNETLINK_V0, 0, 0)
	return b, start
}

func finish(b []byte, start int) []byte {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendAttr appends a netlink attribute, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nest starts a nested attribute; end sets its length.
func nest(b []byte, typ uint16) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ|nlaNested)
	return b, start
}

func end(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func (s *Socket) send(b []byte) error {
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// List implements Table.
func (s *Socket) List(family, proto uint8, fn func(*Flow)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return errors.New("conntrack: socket closed")
	}
	err := s.list(family, proto, !s.noKernelFilter, Dest{}, fn)
	if err != nil && !s.noKernelFilter && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
		// A kernel before 5.8 has no dump filter.
		s.noKernelFilter = true
		err = s.list(family, proto, false, Dest{}, fn)
	}
	return err
}

// Dest selects entries by original destination: an address (if valid) and a port.
type Dest struct {
	Addr netip.Addr
	Port uint16
}

// ListDest is List restricted, in the kernel, to entries whose original
// destination is dst: the kernel still walks the table, but sends and kproxy
// parses only the matches.
func (s *Socket) ListDest(family, proto uint8, dst Dest, fn func(*Flow)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return errors.New("conntrack: socket closed")
	}
	return s.list(family, proto, true, dst, func(f *Flow) {
		if f.OrigDstPort == dst.Port && (!dst.Addr.IsValid() || f.OrigDst == dst.Addr) {
			fn(f)
		}
	})
}

func (s *Socket) list(family, proto uint8, kernelFilter bool, dst Dest, fn func(*Flow)) error {
	s.seq++
	seq := s.seq
	b, m := appendMsg(s.wbuf[:0], ctMsgGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, family)
	if kernelFilter {
		flags := uint32(filterProtoNum)
		var o, p int
		b, o = nest(b, ctaTupleOrig)
		// On Linux 6.18 a dump filtered by an IPv6 destination address
		// returned no entry although one matched (seen in the kernel
		// tests), so IPv6 addresses are checked here, the port by the kernel.
		if dst.Addr.IsValid() && family == unix.AF_INET {
			var ipn int
			b, ipn = nest(b, ctaTupleIP)
			a := dst.Addr.As4()
			b = appendAttr(b, ctaIPv4Dst, a[:])
			b = end(b, ipn)
			flags |= filterIPDst
		}
		b, p = nest(b, ctaTupleProto)
		b = appendAttr(b, ctaProtoNum, []byte{proto})
		if dst.Port != 0 {
			b = appendAttr(b, ctaProtoDst, be16(dst.Port))
			flags |= filterProtoDstPort
		}
		b = end(b, p)
		b = end(b, o)
		var f int
		b, f = nest(b, ctaFilter)
		b = appendAttr(b, ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, flags))
		b = end(b, f)
	}
	b = finish(b, m)
	s.wbuf = b
	if err := s.send(b); err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	var fl Flow
	for {
		n, _, err := unix.Recvfrom(s.fd, s.rbuf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("conntrack dump: %w", err)
		}
		msgs := s.rbuf[:n]
		for len(msgs) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(msgs))
			typ := binary.NativeEndian.Uint16(msgs[4:])
			mseq := binary.NativeEndian.Uint32(msgs[8:])
			if l < unix.NLMSG_HDRLEN || l > len(msgs) {
				return fmt.Errorf("conntrack dump: truncated message")
			}
			msg := msgs[unix.NLMSG_HDRLEN:l]
			msgs = msgs[min(nlmAlign(l), len(msgs)):]
			if mseq != seq {
				continue // a late answer to an earlier request
			}
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(msg)); e != 0 {
						return fmt.Errorf("conntrack dump: %w", unix.Errno(-e))
					}
				}
				return nil
			case ctMsgGet, unix.NFNL_SUBSYS_CTNETLINK<<8 | 0: // IPCTNL_MSG_CT_NEW is what a dump carries
				if len(msg) < 4 {
					continue
				}
				fl = Flow{}
				if parseFlow(msg[4:], &fl) && fl.Proto == proto {
					fn(&fl)
				}
			}
		}
	}
}

func nlmAlign(l int) int { return (l + 3) &^ 3 }

// attrs walks netlink attributes, calling fn with each type (nested flag
// cleared) and payload; it stops at a malformed one.
func attrs(b []byte, fn func(typ uint16, data []byte)) bool {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (nlaNested | 0x4000)
		if l < 4 || l > len(b) {
			return false
		}
		fn(typ, b[4:l])
		b = b[min(nlmAlign(l), len(b)):]
	}
	return true
}

func parseFlow(b []byte, f *Flow) bool {
	return attrs(b, func(typ uint16, data []byte) {
		switch typ {
		case ctaTupleOrig:
			parseTuple(data, f, true)
		case ctaTupleReply:
			parseTuple(data, f, false)
		case ctaID:
			if len(data) == 4 {
				f.ID = binary.BigEndian.Uint32(data)
			}
		case ctaZone:
			if len(data) == 2 {
				f.Zone = binary.BigEndian.Uint16(data)
			}
		}
	})
}

func parseTuple(b []byte, f *Flow, orig bool) {
	attrs(b, func(typ uint16, data []byte) {
		switch typ {
		case ctaTupleIP:
			attrs(data, func(typ uint16, a []byte) {
				ip, ok := netip.AddrFromSlice(a)
				if !ok {
					return
				}
				switch {
				case orig && (typ == ctaIPv4Src || typ == ctaIPv6Src):
					f.OrigSrc = ip
				case orig && (typ == ctaIPv4Dst || typ == ctaIPv6Dst):
					f.OrigDst = ip
				case !orig && (typ == ctaIPv4Src || typ == ctaIPv6Src):
					f.ReplySrc = ip
				}
			})
		case ctaTupleProto:
			attrs(data, func(typ uint16, a []byte) {
				switch {
				case typ == ctaProtoNum && len(a) == 1 && orig:
					f.Proto = a[0]
				case typ == ctaProtoSrc && len(a) == 2 && orig:
					f.OrigSrcPort = binary.BigEndian.Uint16(a)
				case typ == ctaProtoDst && len(a) == 2 && orig:
					f.OrigDstPort = binary.BigEndian.Uint16(a)
				case typ == ctaProtoSrc && len(a) == 2 && !orig:
					f.ReplySrcPort = binary.BigEndian.Uint16(a)
				}
			})
		}
	})
}

// deleteChunk bounds the bytes of messages sent at once (one skb).
const deleteChunk = 64 << 10

// Delete implements Table. Each entry is one IPCTNL_MSG_CT_DELETE naming its
// original tuple, zone and ID: the kernel finds it by hash (no table walk) and
// refuses it if the ID differs. Many go out in one sendmsg; the kernel handles
// them in the sender's context and queues one acknowledgement each.
func (s *Socket) Delete(family uint8, flows []Flow) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return 0, errors.New("conntrack: socket closed")
	}
	n, err := s.sendEach(family, flows, ctMsgDelete, unix.NLM_F_REQUEST|unix.NLM_F_ACK, func(b []byte, f *Flow) []byte {
		b = appendTuple(b, f, family)
		if f.Zone != 0 {
			b = appendAttr(b, ctaZone, be16(f.Zone))
		}
		return appendAttr(b, ctaID, be32(f.ID))
	})
	if err != nil {
		return n, fmt.Errorf("conntrack delete: %w", err)
	}
	return n, nil
}

// sendEach sends one message per flow (typ, flags, and the attributes
// encode writes), many per sendmsg, and returns how many the kernel
// acknowledged without an error (ENOENT does not count as one). s.mu is held.
func (s *Socket) sendEach(family uint8, flows []Flow, typ, flags uint16, encode func([]byte, *Flow) []byte) (int, error) {
	done := 0
	var errs []error
	for len(flows) > 0 {
		b := s.wbuf[:0]
		first := s.seq + 1
		sent := 0
		for len(flows) > 0 && len(b) < deleteChunk {
			s.seq++
			var m int
			b, m = appendMsg(b, typ, flags, s.seq, family)
			b = finish(encode(b, &flows[0]), m)
			flows = flows[1:]
			sent++
		}
		s.wbuf = b
		if err := s.send(b); err != nil {
			return done, err
		}
		n, err := s.acks(first, sent)
		done += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// acks reads the acknowledgements of sent deletions from sequence first on.
func (s *Socket) acks(first uint32, sent int) (int, error) {
	deleted, seen := 0, 0
	var errs []error
	for seen < sent {
		n, _, err := unix.Recvfrom(s.fd, s.rbuf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return deleted, err
		}
		msgs := s.rbuf[:n]
		for len(msgs) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(msgs))
			typ := binary.NativeEndian.Uint16(msgs[4:])
			seq := binary.NativeEndian.Uint32(msgs[8:])
			if l < unix.NLMSG_HDRLEN || l > len(msgs) {
				return deleted, errors.New("truncated acknowledgement")
			}
			msg := msgs[unix.NLMSG_HDRLEN:l]
			msgs = msgs[min(nlmAlign(l), len(msgs)):]
			if typ != unix.NLMSG_ERROR || seq-first >= uint32(sent) || len(msg) < 4 {
				continue
			}
			seen++
			switch e := unix.Errno(-int32(binary.NativeEndian.Uint32(msg))); e {
			case 0:
				deleted++
			case unix.ENOENT:
				// Gone already (expired, or replaced: another ID).
			default:
				if len(errs) < 3 {
					errs = append(errs, e)
				}
			}
		}
	}
	return deleted, errors.Join(errs...)
}

func appendTuple(b []byte, f *Flow, family uint8) []byte {
	return appendTupleOf(b, ctaTupleOrig, family, f.Proto, f.OrigSrc, f.OrigDst, f.OrigSrcPort, f.OrigDstPort)
}

func appendTupleOf(b []byte, typ uint16, family, proto uint8, src, dst netip.Addr, sport, dport uint16) []byte {
	var t, ipn, pn int
	b, t = nest(b, typ)
	b, ipn = nest(b, ctaTupleIP)
	if family == unix.AF_INET6 {
		s, d := src.As16(), dst.As16()
		b = appendAttr(b, ctaIPv6Src, s[:])
		b = appendAttr(b, ctaIPv6Dst, d[:])
	} else {
		s, d := src.As4(), dst.As4()
		b = appendAttr(b, ctaIPv4Src, s[:])
		b = appendAttr(b, ctaIPv4Dst, d[:])
	}
	b = end(b, ipn)
	b, pn = nest(b, ctaTupleProto)
	b = appendAttr(b, ctaProtoNum, []byte{proto})
	b = appendAttr(b, ctaProtoSrc, be16(sport))
	b = appendAttr(b, ctaProtoDst, be16(dport))
	b = end(b, pn)
	return end(b, t)
}

// Insert creates entries with the given timeout, as if their first packets
// had passed (replies from ReplySrc to OrigSrc, unchanged source): for
// tests and benchmarks, which need tables of a given size without the
// traffic. IDs and zones are the kernel's.
func (s *Socket) Insert(family uint8, flows []Flow, timeout uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.sendEach(family, flows, unix.NFNL_SUBSYS_CTNETLINK<<8|0, // IPCTNL_MSG_CT_NEW
		unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, func(b []byte, f *Flow) []byte {
			b = appendTuple(b, f, family)
			b = appendTupleOf(b, ctaTupleReply, family, f.Proto, f.ReplySrc, f.OrigSrc, f.ReplySrcPort, f.OrigSrcPort)
			return appendAttr(b, ctaTimeout, be32(timeout))
		})
	switch {
	case err != nil:
		return fmt.Errorf("conntrack insert: %w", err)
	case n != len(flows):
		return fmt.Errorf("conntrack insert: %d of %d entries created", n, len(flows))
	}
	return nil
}

// FakeTable is an in-memory Table for unit tests.
type FakeTable struct {
	mu    sync.Mutex
	Flows []Flow
	// Lists counts List calls.
	Lists int
}

// List implements Table.
func (t *FakeTable) List(family, proto uint8, fn func(*Flow)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Lists++
	for i := range t.Flows {
		f := t.Flows[i]
		if f.Proto == proto && f.OrigDst.Is6() == (family == unix.AF_INET6) {
			fn(&f)
		}
	}
	return nil
}

// ListDest implements Table.
func (t *FakeTable) ListDest(family, proto uint8, dst Dest, fn func(*Flow)) error {
	return t.List(family, proto, func(f *Flow) {
		if f.OrigDstPort == dst.Port && (!dst.Addr.IsValid() || f.OrigDst == dst.Addr) {
			fn(f)
		}
	})
}

// Delete implements Table.
func (t *FakeTable) Delete(family uint8, flows []Flow) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, d := range flows {
		for i, f := range t.Flows {
			if f == d {
				t.Flows = append(t.Flows[:i], t.Flows[i+1:]...)
				n++
				break
			}
		}
	}
	return n, nil
}
