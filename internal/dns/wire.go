package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// DNS constants used by the packed hot path. They mirror RFC 1035 / RFC 6891
// numbers; the hot path does not go through miekg/dns so that answering a query
// costs no allocation.
const (
	typeA     = 1
	typeCNAME = 5
	typeSOA   = 6
	typePTR   = 12
	typeTXT   = 16
	typeAAAA  = 28
	typeSRV   = 33
	typeOPT   = 41
	typeIXFR  = 251
	typeAXFR  = 252
	typeANY   = 255

	classIN  = 1
	classANY = 255

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5
	rcodeBadVers  = 16 // extended: the upper 8 bits go in the OPT record

	flagQR = 0x8000
	flagAA = 0x0400
	flagTC = 0x0200
	flagRD = 0x0100
	flagRA = 0x0080
	flagCD = 0x0010

	headerLen = 12
	optLen    = 11 // root owner, type, class, ttl, rdlength 0

	// minUDPSize is what every client can receive (RFC 1035 4.2.1).
	minUDPSize = 512
	// maxUDPSize caps UDP answers even when a client advertises more: 1232 bytes
	// avoids IP fragmentation on any path (the DNS Flag Day 2020 value); larger
	// answers get TC and the client retries over TCP.
	maxUDPSize = 1232
	// maxTCPSize is the largest DNS message (2-byte length prefix).
	maxTCPSize = 65535
)

// ownerPtr is a compression pointer to the question name, which always starts
// right after the header. Using it as the owner of every answer record keeps the
// client's spelling of the name (0x20 case randomization) without copying it.
var ownerPtr = []byte{0xC0, headerLen}

// errBadName reports a name that cannot be encoded on the wire.
var errBadName = errors.New("invalid domain name")

// wireName encodes a dotted name (with or without the trailing dot) in lowercase
// uncompressed wire form.
func wireName(name string) ([]byte, error) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if name == "" {
		return []byte{0}, nil
	}
	out := make([]byte, 0, len(name)+2)
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return nil, fmt.Errorf("%w: %q has an empty or over-long label", errBadName, name)
		}
		out = append(out, byte(len(label)))
		out = append(out, label...)
	}
	out = append(out, 0)
	if len(out) > 255 {
		return nil, fmt.Errorf("%w: %q is longer than 255 bytes", errBadName, name)
	}
	return out, nil
}

// appendRR appends one resource record of class IN.
func appendRR(b, owner []byte, typ uint16, ttl uint32, rdata []byte) []byte {
	b = append(b, owner...)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, classIN)
	b = binary.BigEndian.AppendUint32(b, ttl)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rdata)))
	return append(b, rdata...)
}

// srvRdata is the RDATA of an SRV record (RFC 2782); the target is never compressed.
func srvRdata(priority, weight, port uint16, target []byte) []byte {
	b := make([]byte, 0, 6+len(target))
	b = binary.BigEndian.AppendUint16(b, priority)
	b = binary.BigEndian.AppendUint16(b, weight)
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, target...)
}

// txtRdata is the RDATA of a TXT record holding one character-string.
func txtRdata(s string) []byte {
	if len(s) > 255 {
		s = s[:255]
	}
	return append([]byte{byte(len(s))}, s...)
}

// soaRdata is the RDATA of the zone's SOA record.
func soaRdata(mname, rname []byte, serial, refresh, retry, expire, minimum uint32) []byte {
	b := make([]byte, 0, len(mname)+len(rname)+20)
	b = append(b, mname...)
	b = append(b, rname...)
	for _, v := range []uint32{serial, refresh, retry, expire, minimum} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// question is what the hot path reads from a query.
type question struct {
	id     uint16
	flags  uint16
	qtype  uint16
	qclass uint16
	// qend is the offset just past the question in the request.
	qend int
	// name is the lowercased wire name; labels holds the offset of each label in it.
	name    [256]byte
	nameLen int
	labels  [128]uint8
	nLabels int
	// EDNS0 (RFC 6891).
	edns        bool
	ednsSize    uint16
	ednsVersion uint8
	ednsDO      bool
}

// lname is the lowercased wire name, terminating zero included.
func (q *question) lname() []byte { return q.name[:q.nameLen] }

// parseResult tells the caller what to do with a message.
type parseResult int

const (
	parseOK      parseResult = iota
	parseDrop                // not a query we answer at all (too short, a response)
	parseFormErr             // answer FORMERR
	parseNotImp              // answer NOTIMP (opcode other than QUERY)
)

// parseQuery reads the header, the single question and an EDNS0 OPT record, if
// any. Compressed or otherwise odd question names yield FORMERR: no resolver
// compresses the question of a query.
func parseQuery(msg []byte, q *question) parseResult {
	if len(msg) < headerLen {
		return parseDrop
	}
	q.id = binary.BigEndian.Uint16(msg[0:])
	q.flags = binary.BigEndian.Uint16(msg[2:])
	if q.flags&flagQR != 0 {
		return parseDrop
	}
	if (q.flags>>11)&0xF != 0 {
		return parseNotImp
	}
	qd := binary.BigEndian.Uint16(msg[4:])
	an := binary.BigEndian.Uint16(msg[6:])
	ns := binary.BigEndian.Uint16(msg[8:])
	ar := binary.BigEndian.Uint16(msg[10:])
	if qd != 1 || an != 0 || ns != 0 {
		return parseFormErr
	}
	off := headerLen
	q.nameLen, q.nLabels = 0, 0
	for {
		if off >= len(msg) {
			return parseFormErr
		}
		l := int(msg[off])
		if l == 0 {
			q.name[q.nameLen] = 0
			q.nameLen++
			off++
			break
		}
		if l > 63 || off+1+l > len(msg) || q.nameLen+1+l+1 > 255 {
			return parseFormErr
		}
		q.labels[q.nLabels] = uint8(q.nameLen)
		q.nLabels++
		q.name[q.nameLen] = byte(l)
		q.nameLen++
		for _, c := range msg[off+1 : off+1+l] {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			q.name[q.nameLen] = c
			q.nameLen++
		}
		off += 1 + l
	}
	if off+4 > len(msg) {
		return parseFormErr
	}
	q.qtype = binary.BigEndian.Uint16(msg[off:])
	q.qclass = binary.BigEndian.Uint16(msg[off+2:])
	off += 4
	q.qend = off
	q.edns = false
	// Only the first additional record is looked at: that is where every client
	// puts OPT. A TSIG record would follow it and is ignored.
	if ar > 0 && off+optLen <= len(msg) && msg[off] == 0 &&
		binary.BigEndian.Uint16(msg[off+1:]) == typeOPT {
		q.edns = true
		q.ednsSize = binary.BigEndian.Uint16(msg[off+3:])
		q.ednsVersion = msg[off+6]
		q.ednsDO = msg[off+7]&0x80 != 0
	}
	return parseOK
}

// hasLabelSuffix reports whether the query name ends with the wire name suffix
// at a label boundary, and returns the index of the first label of the suffix.
func (q *question) hasLabelSuffix(suffix []byte) (int, bool) {
	n := q.nameLen - len(suffix)
	if n < 0 || string(q.name[n:q.nameLen]) != string(suffix) {
		return 0, false
	}
	if n == 0 {
		return 0, true
	}
	for i := 0; i < q.nLabels; i++ {
		if int(q.labels[i]) == n {
			return i, true
		}
	}
	return 0, false
}

// label returns the i-th label's bytes (without the length byte).
func (q *question) label(i int) []byte {
	off := int(q.labels[i])
	return q.name[off+1 : off+1+int(q.name[off])]
}
