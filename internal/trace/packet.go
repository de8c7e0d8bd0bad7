package trace

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Packet is the first packet of a new connection: what a trace follows.
type Packet struct {
	Src   netip.Addr     `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
	Proto v1.Protocol    `json:"proto"`
}

// String gives "SRC -> DST:PORT/PROTO".
func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s/%s", p.Src, p.Dst, p.Proto)
}

// Family is the packet's IP family (the destination's).
func (p Packet) Family() v1.IPFamily {
	if p.Dst.Addr().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// ParsePacket reads the CLI's and the HTTP endpoint's forms: from is an IP; to
// is "IP:PORT", "[IPv6]:PORT", optionally followed by "/PROTO"; proto, if not
// empty, gives the protocol (and must agree with a "/PROTO" suffix). The
// protocol defaults to TCP and is case-insensitive.
func ParsePacket(from, to, proto string) (Packet, error) {
	src, err := netip.ParseAddr(strings.TrimSpace(from))
	if err != nil {
		return Packet{}, fmt.Errorf("parse source %q: %w", from, err)
	}
	to = strings.TrimSpace(to)
	dstPart, suffix, hasSuffix := strings.Cut(to, "/")
	dst, err := netip.ParseAddrPort(dstPart)
	if err != nil {
		return Packet{}, fmt.Errorf("parse destination %q (want IP:PORT[/PROTO]): %w", to, err)
	}
	if dst.Port() == 0 {
		return Packet{}, fmt.Errorf("parse destination %q: port 0", to)
	}
	p := v1.ProtocolTCP
	if hasSuffix {
		if p, err = parseProto(suffix); err != nil {
			return Packet{}, err
		}
	}
	if proto = strings.TrimSpace(proto); proto != "" {
		q, err := parseProto(proto)
		if err != nil {
			return Packet{}, err
		}
		if hasSuffix && q != p {
			return Packet{}, fmt.Errorf("protocol %s contradicts destination %q", q, to)
		}
		p = q
	}
	pkt := Packet{Src: src.Unmap(), Dst: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), Proto: p}
	if pkt.Src.Is4() != pkt.Dst.Addr().Is4() {
		return Packet{}, fmt.Errorf("source %s and destination %s are of different IP families", pkt.Src, pkt.Dst.Addr())
	}
	return pkt, nil
}

func parseProto(s string) (v1.Protocol, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "TCP":
		return v1.ProtocolTCP, nil
	case "UDP":
		return v1.ProtocolUDP, nil
	case "SCTP":
		return v1.ProtocolSCTP, nil
	}
	return "", fmt.Errorf("unknown protocol %q: want tcp, udp or sctp", s)
}
