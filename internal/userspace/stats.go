package userspace

import (
	"cmp"
	"slices"
)

// PortStats describes one service port for the admin endpoint.
type PortStats struct {
	// ServicePort is "namespace/name:port" (or "namespace/name" for an unnamed port).
	ServicePort string `json:"servicePort"`
	Protocol    string `json:"protocol"`
	// Listeners are the bound addresses, as "ip:port/PROTO".
	Listeners []string `json:"listeners"`
	// BindErrors are listeners that could not be opened; they are retried.
	BindErrors []string        `json:"bindErrors,omitempty"`
	Endpoints  []EndpointStats `json:"endpoints"`
}

// EndpointStats are the counters of one endpoint of a service port. For UDP,
// connections are flows.
type EndpointStats struct {
	Endpoint string `json:"endpoint"`
	Active   int64  `json:"activeConnections"`
	Total    uint64 `json:"totalConnections"`
	// BytesIn went from clients to the endpoint, BytesOut from the endpoint to clients.
	BytesIn      uint64 `json:"bytesIn"`
	BytesOut     uint64 `json:"bytesOut"`
	DialFailures uint64 `json:"dialFailures"`
	// BackingOff is true while new connections skip the endpoint after a failed dial.
	BackingOff bool `json:"backingOff"`
}

// Stats returns the per-port, per-endpoint counters, sorted by service port.
func (p *Proxier) Stats() []PortStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	byPort := map[*servicePort]*PortStats{}
	// Sized up front: byPort points into it.
	out := make([]PortStats, 0, len(p.ports))
	for _, sp := range p.ports {
		ps := PortStats{ServicePort: sp.label, Protocol: string(sp.proto), Listeners: []string{}, Endpoints: []EndpointStats{}}
		for _, err := range sp.bindErrs {
			ps.BindErrors = append(ps.BindErrors, err.Error())
		}
		slices.Sort(ps.BindErrors)
		sp.mu.Lock()
		for _, ep := range sp.endpoints {
			ps.Endpoints = append(ps.Endpoints, EndpointStats{
				Endpoint:     ep.addr.String(),
				Active:       ep.active.Load(),
				Total:        ep.total.Load(),
				BytesIn:      ep.bytesIn.Load(),
				BytesOut:     ep.bytesOut.Load(),
				DialFailures: ep.dialFailures.Load(),
				BackingOff:   ep.backingOff(now),
			})
		}
		sp.mu.Unlock()
		slices.SortFunc(ps.Endpoints, func(a, b EndpointStats) int { return cmp.Compare(a.Endpoint, b.Endpoint) })
		out = append(out, ps)
		byPort[sp] = &out[len(out)-1]
	}
	for key, l := range p.listeners {
		if ps := byPort[l.front.Load().sp]; ps != nil {
			ps.Listeners = append(ps.Listeners, key.String())
		}
	}
	for i := range out {
		slices.Sort(out[i].Listeners)
	}
	slices.SortFunc(out, func(a, b PortStats) int {
		return cmp.Compare(a.ServicePort+"/"+a.Protocol, b.ServicePort+"/"+b.Protocol)
	})
	return out
}

// StatsJSON returns Stats for the admin endpoint, which looks for this method
// on any data plane.
func (p *Proxier) StatsJSON() any { return p.Stats() }
