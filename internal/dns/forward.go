package dns

import (
	mdns "github.com/miekg/dns"
)

// slowAnswer handles what the index cannot answer alone: names outside the zone
// (forwarded to the upstream) and ExternalName CNAMEs whose target is resolved
// through the upstream. It uses miekg/dns messages; speed matters less here
// because the upstream round trip dominates.
func (s *Server) slowAnswer(req []byte, act action, udp bool) ([]byte, int) {
	m := new(mdns.Msg)
	if err := m.Unpack(req); err != nil || len(m.Question) != 1 {
		return headerOnly(nil, req, rcodeFormErr), rcodeFormErr
	}
	var r *mdns.Msg
	switch act {
	case actChase:
		r = s.chaseUpstream(m, req, udp)
	default:
		r = s.forward(m, udp)
	}
	r.Id = m.Id
	limit := maxTCPSize
	if udp {
		limit = minUDPSize
		if opt := m.IsEdns0(); opt != nil {
			limit = min(max(int(opt.UDPSize()), minUDPSize), maxUDPSize)
		}
		// Truncate keeps whole records and sets TC when some had to go.
		r.Truncate(limit)
	}
	b, err := r.Pack()
	if err != nil {
		s.log.Debug("dns pack forwarded answer", "name", m.Question[0].Name, "err", err)
		return headerOnly(nil, req, rcodeServFail), rcodeServFail
	}
	return b, r.Rcode
}

// exchange asks the upstream, over UDP first and over TCP when the client came
// over TCP and the UDP answer was truncated (a UDP client gets the TC answer and
// retries over TCP itself).
func (s *Server) exchange(m *mdns.Msg, udp bool) (*mdns.Msg, error) {
	c := &mdns.Client{Net: "udp", Timeout: s.cfg.UpstreamTimeout}
	r, _, err := c.Exchange(m, s.cfg.Upstream)
	if err == nil && r.Truncated && !udp {
		c.Net = "tcp"
		r, _, err = c.Exchange(m, s.cfg.Upstream)
	}
	return r, err
}

func (s *Server) servFail(m *mdns.Msg) *mdns.Msg {
	r := new(mdns.Msg)
	r.SetRcode(m, mdns.RcodeServerFailure)
	r.RecursionAvailable = true
	if opt := m.IsEdns0(); opt != nil {
		r.SetEdns0(maxUDPSize, opt.Do())
	}
	return r
}

func (s *Server) forward(m *mdns.Msg, udp bool) *mdns.Msg {
	r, err := s.exchange(m, udp)
	if err != nil {
		s.log.Debug("dns forward", "name", m.Question[0].Name, "upstream", s.cfg.Upstream, "err", err)
		return s.servFail(m)
	}
	return r
}

// chaseUpstream answers an A/AAAA query for an ExternalName service: the CNAME
// chain from the index, then the target's records from the upstream, with the
// upstream's rcode (RFC 6604: the rcode is about the last name of the chain).
func (s *Server) chaseUpstream(m *mdns.Msg, req []byte, udp bool) *mdns.Msg {
	var q question
	own, _, act := s.answer(nil, req, &q, false)
	if act != actChase {
		// The index changed under us; answer from the new one.
		r := new(mdns.Msg)
		if err := r.Unpack(own); err != nil {
			return s.servFail(m)
		}
		return r
	}
	idx := s.index.Load()
	n, _ := idx.find(&q)
	if n == nil {
		return s.servFail(m)
	}
	set := n.sets[slotOf(q.qtype)]
	base := s.respond(nil, req, &q, flagAA, rcodeSuccess, set, nil, maxTCPSize)
	r := new(mdns.Msg)
	if err := r.Unpack(base); err != nil {
		return s.servFail(m)
	}
	sub := new(mdns.Msg)
	sub.SetQuestion(set.chase, q.qtype)
	sub.RecursionDesired = true
	sub.SetEdns0(maxUDPSize, false)
	ur, err := s.exchange(sub, false)
	if err != nil {
		s.log.Debug("dns resolve externalName target", "target", set.chase, "err", err)
		r.Rcode = mdns.RcodeServerFailure
		return r
	}
	r.Answer = append(r.Answer, ur.Answer...)
	r.Rcode = ur.Rcode
	if len(ur.Answer) == 0 {
		r.Ns = ur.Ns
	}
	r.RecursionAvailable = true
	r.Compress = true
	return r
}
