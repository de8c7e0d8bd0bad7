package dns

import (
	"encoding/binary"
)

// action tells the transport what to do after the hot path ran.
type action int

const (
	actReply   action = iota // send the response
	actDrop                  // send nothing
	actForward               // hand the query to the upstream (slow path)
	actChase                 // answer a CNAME and resolve its target upstream (slow path)
)

// answer handles one query on the hot path: parse, look up the precomputed
// answer, and append the response to dst. udp selects the UDP size limits (TCP
// answers go up to 64 KiB). It returns the rcode for the metrics. It allocates
// nothing.
func (s *Server) answer(dst, req []byte, q *question, udp bool) ([]byte, int, action) {
	switch parseQuery(req, q) {
	case parseDrop:
		return dst, 0, actDrop
	case parseFormErr:
		return headerOnly(dst, req, rcodeFormErr), rcodeFormErr, actReply
	case parseNotImp:
		return headerOnly(dst, req, rcodeNotImp), rcodeNotImp, actReply
	}
	limit := maxTCPSize
	if udp {
		limit = minUDPSize
		if q.edns {
			limit = min(max(int(q.ednsSize), minUDPSize), maxUDPSize)
		}
	}
	if q.edns && q.ednsVersion != 0 {
		// RFC 6891 6.1.3: answer BADVERS with our version (0).
		return s.respond(dst, req, q, 0, rcodeBadVers, nil, nil, limit), rcodeBadVers, actReply
	}
	idx := s.index.Load()
	// Zone transfers are not offered (the zone is derived, not a file to copy),
	// and other classes (CHAOS "version.bind") are not served.
	if q.qclass != classIN && q.qclass != classANY || q.qtype == typeAXFR || q.qtype == typeIXFR {
		return s.respond(dst, req, q, 0, rcodeRefused, nil, nil, limit), rcodeRefused, actReply
	}
	n, kind := idx.find(q)
	switch kind {
	case findOutside:
		if s.cfg.Upstream != "" {
			return dst, 0, actForward
		}
		return s.respond(dst, req, q, 0, rcodeRefused, nil, nil, limit), rcodeRefused, actReply
	case findNotReady:
		return s.respond(dst, req, q, 0, rcodeServFail, nil, nil, limit), rcodeServFail, actReply
	case findNX:
		return s.respond(dst, req, q, flagAA, rcodeNXDomain, nil, idx.soa, limit), rcodeNXDomain, actReply
	case findPod:
		return s.pod(dst, req, q, idx, limit)
	}
	set := n.sets[slotOf(q.qtype)]
	if set == nil {
		return s.respond(dst, req, q, flagAA, rcodeSuccess, nil, idx.soa, limit), rcodeSuccess, actReply
	}
	if set.chase != "" && s.cfg.Upstream != "" && (q.qtype == typeA || q.qtype == typeAAAA) {
		return dst, 0, actChase
	}
	return s.respond(dst, req, q, flagAA, rcodeSuccess, set, nil, limit), rcodeSuccess, actReply
}

// pod answers the deprecated a-b-c-d.<ns>.pod.<zone> names that the specification
// still requires: the address is in the name.
func (s *Server) pod(dst, req []byte, q *question, idx *index, limit int) ([]byte, int, action) {
	ip, ok := podAddr(q.label(0))
	if !ok {
		return s.respond(dst, req, q, flagAA, rcodeNXDomain, nil, idx.soa, limit), rcodeNXDomain, actReply
	}
	var typ uint16 = typeA
	if ip.Is6() {
		typ = typeAAAA
	}
	if q.qtype != typ && q.qtype != typeANY {
		return s.respond(dst, req, q, flagAA, rcodeSuccess, nil, idx.soa, limit), rcodeSuccess, actReply
	}
	var buf [64]byte
	rdata := ip.AsSlice()
	set := rrset{data: appendRR(buf[:0], ownerPtr, typ, s.ttl, rdata)}
	var ends [1]int
	ends[0] = len(set.data)
	set.ends = ends[:]
	return s.respond(dst, req, q, flagAA, rcodeSuccess, &set, nil, limit), rcodeSuccess, actReply
}

// headerOnly answers a message we cannot parse: its header, no sections.
func headerOnly(dst, req []byte, rcode int) []byte {
	var id, flags uint16
	if len(req) >= 4 {
		id = binary.BigEndian.Uint16(req)
		flags = binary.BigEndian.Uint16(req[2:])
	}
	dst = binary.BigEndian.AppendUint16(dst, id)
	// Keep the opcode and RD, as RFC 1035 servers do.
	dst = binary.BigEndian.AppendUint16(dst, flagQR|flags&(0x7800|flagRD)|uint16(rcode&0xF))
	return append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
}

// respond appends a response to dst: the header, the question as the client sent
// it (so its spelling is kept), the answer records, the authority records, the
// additional records and an OPT record when the query had one. When the UDP limit
// is exceeded, additional records go first (they are optional), then the answer
// is cut at a record boundary and TC is set (RFC 2181 9) so the client retries
// over TCP.
func (s *Server) respond(dst, req []byte, q *question, flags uint16, rcode int, ans *rrset, auth []byte, limit int) []byte {
	qsec := req[headerLen:q.qend]
	opt := 0
	if q.edns {
		opt = optLen
	}
	var data, extra []byte
	var nAns, nExtra int
	if ans != nil {
		data, nAns, extra, nExtra = ans.data, len(ans.ends), ans.extra, ans.nExtra
	}
	nAuth := 0
	if auth != nil {
		nAuth = 1
	}
	fixed := headerLen + len(qsec) + opt
	if fixed+len(data)+len(auth)+len(extra) > limit {
		extra, nExtra = nil, 0
		if fixed+len(data)+len(auth) > limit {
			// Cut the answer at the last record that fits.
			k := 0
			for k < nAns && fixed+ans.ends[k] <= limit {
				k++
			}
			if k > 0 {
				data = data[:ans.ends[k-1]]
			} else {
				data = nil
			}
			nAns = k
			auth, nAuth = nil, 0
			flags |= flagTC
		}
	}
	fl := flagQR | q.flags&(flagRD|flagCD) | flags | uint16(rcode&0xF)
	if s.cfg.Upstream != "" {
		fl |= flagRA
	}
	dst = binary.BigEndian.AppendUint16(dst, q.id)
	dst = binary.BigEndian.AppendUint16(dst, fl)
	dst = binary.BigEndian.AppendUint16(dst, 1)
	dst = binary.BigEndian.AppendUint16(dst, uint16(nAns))
	dst = binary.BigEndian.AppendUint16(dst, uint16(nAuth))
	nAdd := nExtra
	if q.edns {
		nAdd++
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(nAdd))
	dst = append(dst, qsec...)
	dst = append(dst, data...)
	dst = append(dst, auth...)
	dst = append(dst, extra...)
	if q.edns {
		dst = append(dst, 0)
		dst = binary.BigEndian.AppendUint16(dst, typeOPT)
		dst = binary.BigEndian.AppendUint16(dst, maxUDPSize)
		dst = append(dst, byte(rcode>>4), 0) // extended rcode, version 0
		var doFlag byte
		if q.ednsDO {
			doFlag = 0x80
		}
		dst = append(dst, doFlag, 0, 0, 0) // flags, rdlength 0
	}
	return dst
}
