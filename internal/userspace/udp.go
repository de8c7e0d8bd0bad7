package userspace

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// udpBufSize holds the largest UDP payload.
const udpBufSize = 64 << 10

// udpListener serves one UDP service address. Each client address gets a flow
// with its own connected socket to the chosen endpoint; replies go back
// through the listening socket, so the client sees them come from the service
// address it sent to.
type udpListener struct {
	p    *Proxier
	l    *listener
	conn *net.UDPConn

	mu     sync.Mutex
	flows  map[netip.AddrPort]*udpFlow
	closed bool
}

type udpFlow struct {
	u       *udpListener
	sp      *servicePort
	client  netip.AddrPort
	backend *net.UDPConn
	ep      *endpoint
	last    atomic.Int64 // p.now() of the last packet either way
	once    sync.Once
}

func (f *udpFlow) endpoint() *endpoint { return f.ep }

func (u *udpListener) readLoop() {
	defer u.p.wg.Done()
	buf := make([]byte, udpBufSize)
	for {
		n, client, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				u.closeAll()
				return
			}
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		u.mu.Lock()
		fl := u.flows[client]
		u.mu.Unlock()
		if fl == nil {
			if fl = u.newFlow(client); fl == nil {
				continue // no usable endpoint, or a source outside the allowed ranges: drop
			}
		}
		fl.last.Store(u.p.now())
		if _, err := fl.backend.Write(buf[:n]); err != nil {
			fl.failed(err)
			continue
		}
		fl.ep.bytesIn.Add(uint64(n))
		if fl.sp.bytesIn != nil {
			fl.sp.bytesIn.Add(float64(n))
		}
	}
}

func (u *udpListener) newFlow(client netip.AddrPort) *udpFlow {
	p := u.p
	f := u.l.front.Load()
	if !f.allowed(client.Addr(), u.l.key.addr.Addr()) {
		return nil
	}
	if limit := p.cfg.MaxConnections; limit > 0 && p.flows.Load() >= int64(limit) {
		return nil
	}
	fam := familyOf(u.l.key.addr.Addr())
	var buf [4]*endpoint
	tried := buf[:0]
	for range p.cfg.MaxDialAttempts {
		ep := f.bal.pick(client.Addr(), fam, tried)
		if ep == nil {
			return nil
		}
		backend, err := p.dialUDP(ep)
		if err != nil {
			ep.dialFailures.Add(1)
			ep.backoffUntil.Store(p.now() + int64(p.cfg.EndpointBackoff))
			f.bal.forget(client.Addr(), ep)
			tried = append(tried, ep)
			continue
		}
		_ = backend.SetReadBuffer(1 << 20)
		fl := &udpFlow{u: u, sp: f.sp, client: client, backend: backend, ep: ep}
		fl.last.Store(p.now())
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			_ = backend.Close()
			return nil
		}
		u.flows[client] = fl
		u.mu.Unlock()
		ep.connOpened() // before track: abort undoes it
		p.flows.Add(1)
		if !f.sp.track(fl) {
			fl.abort()
			return nil
		}
		if f.sp.connsTotal != nil {
			f.sp.connsTotal.Inc()
		}
		p.wg.Add(1)
		go fl.replyLoop(p.cfg.UDPIdleTimeout)
		return fl
	}
	return nil
}

// replyLoop relays the endpoint's packets to the client until the flow is idle.
// The read deadline is set once per idle period, not per packet.
func (f *udpFlow) replyLoop(idle time.Duration) {
	defer f.u.p.wg.Done()
	defer f.abort()
	p := f.u.p
	buf := make([]byte, udpBufSize)
	for {
		remaining := idle - time.Duration(p.now()-f.last.Load())
		if remaining <= 0 {
			return
		}
		if err := f.backend.SetReadDeadline(time.Now().Add(remaining)); err != nil {
			return
		}
		for {
			n, err := f.backend.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				f.failed(err)
				return
			}
			f.last.Store(p.now())
			if _, err := f.u.conn.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			f.ep.bytesOut.Add(uint64(n))
			if f.sp.bytesOut != nil {
				f.sp.bytesOut.Add(float64(n))
			}
		}
	}
}

// failed ends a flow whose endpoint refused a packet (ICMP port unreachable
// comes back as ECONNREFUSED on a connected socket); the endpoint backs off so
// that the client's next packet starts a flow to another one.
func (f *udpFlow) failed(err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		f.ep.dialFailures.Add(1)
		f.ep.backoffUntil.Store(f.u.p.now() + int64(f.u.p.cfg.EndpointBackoff))
		if f.sp.dialFailures != nil {
			f.sp.dialFailures.Inc()
		}
	}
	f.abort()
}

func (f *udpFlow) abort() {
	f.once.Do(func() {
		_ = f.backend.Close()
		u := f.u
		u.mu.Lock()
		if u.flows[f.client] == f {
			delete(u.flows, f.client)
		}
		u.mu.Unlock()
		f.sp.untrack(f)
		f.ep.connClosed()
		u.p.flows.Add(-1)
	})
}

// closeAll ends every flow when the listener closes: replies could not reach
// the clients any more.
func (u *udpListener) closeAll() {
	u.mu.Lock()
	u.closed = true
	flows := make([]*udpFlow, 0, len(u.flows))
	for _, f := range u.flows {
		flows = append(flows, f)
	}
	u.mu.Unlock()
	for _, f := range flows {
		f.abort()
	}
}

// dialUDP connects a flow's socket to the endpoint (see connectTCP on why
// not Dialer.DialUDP).
func (p *Proxier) dialUDP(ep *endpoint) (*net.UDPConn, error) {
	conn, err := p.dialer.DialContext(p.ctx, "udp", ep.str)
	if err != nil {
		return nil, err
	}
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		_ = conn.Close()
		return nil, errors.New("not a UDP socket")
	}
	return uc, nil
}
