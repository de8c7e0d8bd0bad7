package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

const (
	// tcpIdleTimeout closes idle TCP connections (RFC 7766 6.2.3 suggests seconds).
	tcpIdleTimeout = 10 * time.Second
	// maxTCPConns bounds concurrent TCP clients; more are closed at once.
	maxTCPConns = 512
	// maxSlow bounds queries in the slow path (forwarding); more UDP queries are
	// dropped, as an overloaded resolver does, and the client retries.
	maxSlow = 256
)

const (
	protoUDP = iota
	protoTCP
)

var protoNames = [2]string{"udp", "tcp"}

// Server answers DNS queries for the cluster domain from the latest snapshot.
type Server struct {
	cfg Config
	log *slog.Logger
	ttl uint32
	b   builder
	m   *metrics.Metrics
	// counters caches the DNSRequestsTotal children per protocol and rcode, so the
	// hot path does not hash label values.
	counters [2][24]atomic.Pointer[prometheus.Counter]

	index    atomic.Pointer[index]
	updateMu sync.Mutex
	serial   uint32

	mu      sync.Mutex
	started bool
	closed  bool
	udp     []*net.UDPConn
	tcp     net.Listener
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	slow    chan struct{}
}

// New validates the config (after filling in defaults) and returns a server that
// answers SERVFAIL for the cluster domain until the first Update. m may be nil.
func New(cfg Config, m *metrics.Metrics) (*Server, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dns config: %w", err)
	}
	zone, err := wireName(cfg.ClusterDomain)
	if err != nil {
		return nil, fmt.Errorf("dns config: %w", err)
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "dns"),
		ttl:   uint32(cfg.TTL / time.Second),
		m:     m,
		conns: map[net.Conn]struct{}{},
		slow:  make(chan struct{}, maxSlow),
	}
	s.b = builder{zone: zone, ttl: s.ttl}
	s.index.Store(&index{zone: zone})
	return s, nil
}

// Update builds the answers for a snapshot and makes them live atomically.
// Queries in flight finish with the previous answers. Services whose Service
// object and EndpointSlices are unchanged (same pointers) reuse their records.
func (s *Server) Update(snap *model.Snapshot) {
	if snap == nil {
		return
	}
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	start := time.Now()
	// The SOA serial only has to grow; seconds since the epoch, bumped when two
	// updates share a second.
	s.serial = max(uint32(start.Unix()), s.serial+1)
	prev := s.index.Load()
	idx, errs := s.b.build(snap, prev, s.serial)
	s.index.Store(idx)
	for _, err := range errs {
		s.log.Warn("service has no DNS records", "err", err)
	}
	s.log.Debug("dns index updated", "generation", snap.Generation, "services", len(idx.services),
		"reverse", len(idx.reverse), "took", time.Since(start))
}

// Addr is the address the server listens on (UDP; TCP uses the same host and
// port). It is nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.udp) == 0 {
		return nil
	}
	return s.udp[0].LocalAddr()
}

// Run starts the server and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

// Start binds the UDP sockets and the TCP listener and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("dns server already started")
	}
	host, port, err := net.SplitHostPort(s.cfg.BindAddress)
	if err != nil {
		return fmt.Errorf("dns bind address: %w", err)
	}
	// With port 0 the kernel picks the TCP port; UDP may find it taken, so retry.
	for attempt := 0; ; attempt++ {
		err = s.listen(host, port)
		if err == nil || port != "0" || attempt == 19 {
			break
		}
	}
	if err != nil {
		return err
	}
	s.started = true
	for _, c := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(c)
	}
	s.wg.Add(1)
	go s.serveTCP(s.tcp)
	s.log.Info("dns server listening", "address", s.udp[0].LocalAddr().String(), "udpSockets", len(s.udp),
		"clusterDomain", s.cfg.ClusterDomain, "ttl", s.cfg.TTL, "upstream", s.cfg.Upstream,
		"upstreamTimeout", s.cfg.UpstreamTimeout)
	return nil
}

// listen opens a TCP listener and cfg.UDPSockets UDP sockets sharing its port
// with SO_REUSEPORT (the kernel spreads clients over them, so each core reads its
// own socket). TCP is bound first: on a busy machine most TCP ports can be held
// by TIME_WAIT connections, which a UDP-chosen port would collide with. On
// failure everything opened is closed.
func (s *Server) listen(host, port string) error {
	l, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return fmt.Errorf("dns listen tcp %s: %w", net.JoinHostPort(host, port), err)
	}
	if tcpAddr, ok := l.Addr().(*net.TCPAddr); ok {
		port = strconv.Itoa(tcpAddr.Port)
	}
	lc := net.ListenConfig{Control: reusePort}
	var udp []*net.UDPConn
	fail := func(err error) error {
		for _, c := range udp {
			_ = c.Close()
		}
		_ = l.Close()
		return err
	}
	for i := 0; i < s.cfg.UDPSockets; i++ {
		pc, err := lc.ListenPacket(context.Background(), "udp", net.JoinHostPort(host, port))
		if err != nil {
			return fail(fmt.Errorf("dns listen udp %s: %w", net.JoinHostPort(host, port), err))
		}
		c, ok := pc.(*net.UDPConn)
		if !ok {
			_ = pc.Close()
			return fail(fmt.Errorf("dns listen udp: unexpected %T", pc))
		}
		udp = append(udp, c)
	}
	s.udp, s.tcp = udp, l
	return nil
}

// Close stops serving and waits for the serving goroutines. Forwarded queries in
// flight finish on their own (bounded by the upstream timeout).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed || !s.started {
		s.closed = true
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var errs []error
	for _, c := range s.udp {
		errs = append(errs, c.Close())
	}
	errs = append(errs, s.tcp.Close())
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dns close: %w", err)
	}
	return nil
}

func (s *Server) count(proto, rcode int) {
	if s.m == nil || s.m.DNSRequestsTotal == nil {
		return
	}
	if rcode < 0 || rcode >= len(s.counters[proto]) {
		s.m.DNSRequestsTotal.WithLabelValues(protoNames[proto], strconv.Itoa(rcode)).Inc()
		return
	}
	p := s.counters[proto][rcode].Load()
	if p == nil {
		name, ok := mdns.RcodeToString[rcode]
		if rcode == rcodeBadVers {
			name, ok = "BADVERS", true
		}
		if !ok {
			name = strconv.Itoa(rcode)
		}
		c := s.m.DNSRequestsTotal.WithLabelValues(protoNames[proto], name)
		s.counters[proto][rcode].Store(&c)
		p = &c
	}
	(*p).Inc()
}

// serveUDP is one socket's loop. The request and response buffers are reused,
// so a query answered from the index costs two system calls and no allocation.
func (s *Server) serveUDP(c *net.UDPConn) {
	defer s.wg.Done()
	req := make([]byte, maxTCPSize)
	out := make([]byte, 0, maxTCPSize)
	var q question
	for {
		n, addr, err := c.ReadFromUDPAddrPort(req)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("dns udp read", "err", err)
			continue
		}
		resp, rcode, act := s.answer(out[:0], req[:n], &q, true)
		switch act {
		case actReply:
			if _, err := c.WriteToUDPAddrPort(resp, addr); err != nil {
				s.log.Debug("dns udp write", "client", addr.String(), "err", err)
			}
			s.count(protoUDP, rcode)
		case actForward, actChase:
			select {
			case s.slow <- struct{}{}:
			default:
				continue // overloaded: drop, the client retries
			}
			msg := append([]byte(nil), req[:n]...)
			go func() {
				defer func() { <-s.slow }()
				resp, rcode := s.slowAnswer(msg, act, true)
				if resp == nil {
					return
				}
				if _, err := c.WriteToUDPAddrPort(resp, addr); err != nil {
					s.log.Debug("dns udp write", "client", addr.String(), "err", err)
				}
				s.count(protoUDP, rcode)
			}()
		}
	}
}

func (s *Server) serveTCP(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("dns tcp accept", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		s.mu.Lock()
		if s.closed || len(s.conns) >= maxTCPConns {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn answers the queries of one TCP connection in order (RFC 7766 allows
// pipelining; answering in order is valid).
func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	req := make([]byte, maxTCPSize)
	out := make([]byte, 2, maxTCPSize+2)
	var q question
	for {
		if err := c.SetReadDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, req[:2]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(req))
		if _, err := io.ReadFull(c, req[:n]); err != nil {
			return
		}
		resp, rcode, act := s.answer(out[:2], req[:n], &q, false)
		switch act {
		case actDrop:
			return
		case actForward, actChase:
			b, rc := s.slowAnswer(req[:n], act, false)
			if b == nil {
				return
			}
			resp, rcode = append(out[:2], b...), rc
		}
		binary.BigEndian.PutUint16(resp, uint16(len(resp)-2))
		if err := c.SetWriteDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
			return
		}
		if _, err := c.Write(resp); err != nil {
			return
		}
		s.count(protoTCP, rcode)
	}
}
