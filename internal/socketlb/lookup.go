package socketlb

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	v1 "k8s.io/api/core/v1"
)

// Entry is what the socket LB does with a connect or datagram to one
// destination, read back from the kernel's maps.
type Entry struct {
	// Frontend is the matched frontend: the destination, or for a NodePort
	// "0.0.0.0:PORT" / "[::]:PORT" reached on a node address.
	Frontend string `json:"frontend"`
	// ServicePort is the service port the frontend's port id belongs to
	// ("" when this kproxy does not know the id: left by a previous one).
	ServicePort string `json:"servicePort,omitempty"`
	// Refuse is true when the service has no endpoint: the connect fails
	// with ECONNREFUSED.
	Refuse bool `json:"refuse,omitempty"`
	// Endpoints are the slots' backends, in slot order; each is picked with
	// equal probability.
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// AffinitySeconds is the ClientIP affinity timeout, 0 without.
	AffinitySeconds uint32 `json:"affinitySeconds,omitempty"`
}

// Lookup reads the maps in the kernel for dst, as the connect program does.
// It returns nil when the socket LB leaves dst alone.
func (p *Proxier) Lookup(proto v1.Protocol, dst netip.AddrPort) (*Entry, error) {
	num, ok := protoNum(proto)
	if !ok {
		return nil, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k == nil {
		return nil, errors.New("socket LB is closed")
	}
	m := &p.k.objs.socketlbMaps
	addr := dst.Addr().Unmap()
	key := encodeFrontend(addr, dst.Port(), num)
	var fe socketlbFrontend
	err := m.KpFrontends.Lookup(&key, &fe)
	frontend := netip.AddrPortFrom(addr, dst.Port()).String()
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		var one uint32
		nk := encodeNodeAddr(addr)
		if err := m.KpNodeaddrs.Lookup(&nk, &one); err != nil {
			return nil, ignoreMissing(err)
		}
		zero := netip.IPv4Unspecified()
		if addr.Is6() {
			zero = netip.IPv6Unspecified()
		}
		key = encodeFrontend(zero, dst.Port(), num)
		err = m.KpFrontends.Lookup(&key, &fe)
		frontend = netip.AddrPortFrom(zero, dst.Port()).String()
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read frontend %s: %w", frontend, err)
	}
	e := &Entry{Frontend: frontend, Refuse: fe.Count == 0, AffinitySeconds: fe.Affinity}
	for name, ps := range p.ports {
		if ps.id == fe.PortId {
			e.ServicePort = name.String()
		}
	}
	for i := uint32(0); i < fe.Count; i++ {
		var id uint32
		if err := m.KpSlots.Lookup(&socketlbSlotKey{SetId: fe.SetId, Slot: i}, &id); err != nil {
			return nil, fmt.Errorf("read slot %d of set %d: %w", i, fe.SetId, err)
		}
		var be socketlbBackend
		if err := m.KpBackends.Lookup(&id, &be); err != nil {
			return nil, fmt.Errorf("read backend %d: %w", id, err)
		}
		e.Endpoints = append(e.Endpoints, decodeBackend(&be))
	}
	return e, nil
}
