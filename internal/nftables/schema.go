package nftables

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"golang.org/x/sys/unix"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// family is one of kproxy's two tables.
type family struct {
	v1     v1.IPFamily
	addrSz int // bytes of an address (and of its padded register span)
}

var (
	ipv4 = family{v1: v1.IPv4Protocol, addrSz: 4}
	ipv6 = family{v1: v1.IPv6Protocol, addrSz: 16}
)

func familyOf(f v1.IPFamily) family {
	if f == v1.IPv6Protocol {
		return ipv6
	}
	return ipv4
}

func (f family) String() string {
	if f.addrSz == 16 {
		return "ip6"
	}
	return "ip"
}

// zero is the address that stands for "any node address" in NodePort keys.
func (f family) zero() netip.Addr {
	if f.addrSz == 16 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// ctFamily is the family's number for ctnetlink.
func (f family) ctFamily() uint8 {
	if f.addrSz == 4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func (f family) contains(a netip.Addr) bool { return a.Is4() == (f.addrSz == 4) }

// Field kinds of set keys and map values. Every field is padded to whole 32-bit
// registers, because that is how the kernel lays out a concatenation.
type field uint8

const (
	fAddr  field = iota // an IPv4 or IPv6 address, network order
	fProto              // an IP protocol number, one byte then padding
	fPort               // a port, network order, then padding
	fSlot               // a numgen result, host order (that is how numgen writes its register)
)

func (f family) size(k field) int {
	if k == fAddr {
		return f.addrSz
	}
	return 4
}

// Set names. They never contain ':' (nft 1.0.6 cannot parse it in names).
const (
	setClusterIPs        = "cluster-ips"         // every cluster IP: traffic still addressed to one after DNAT is rejected
	setMasq              = "masquerade"          // frontends whose traffic is always masqueraded
	mapFrontends         = "frontends"           // frontend → goto the DNAT chain of its class
	mapAffinityPick      = "affinity-pick"       // frontend . slot → goto the affinity endpoint chain
	mapAffinityPickShort = "affinity-pick-short" // the same for saff- chains: their cluster-wide endpoints
	mapFrontendsShort    = "frontends-short"     // ETP Local frontend → goto sdnat-N, for pods and the node
	shortBackendsPrefix  = "sbackends-"          // sbackends-N: their cluster-wide endpoints
	affChainPrefix       = "aff-"                // aff-<frontend>: pinned clients, else pick an endpoint
	affShortChainPrefix  = "saff-"               // saff-<frontend>: the same for an ETP Local frontend's short-circuit
	affEPChainPrefix     = "affep-"              // affep-<owner>-<endpoint>: remember the client, DNAT
	affSetPrefix         = "affset-"             // affset-<timeout>-<owner>-<endpoint>: dynamic set of pinned clients
	setHairpin           = "hairpin"             // local endpoint . itself: a pod reaching itself, masqueraded
	mapNoEndpoints       = "no-endpoints"        // frontend → goto reject | drop
	setFirewall          = "firewall"            // load balancer frontends with source ranges
	setFirewallAllow     = "firewall-allow"      // LB frontend . allowed source range
	backendsPrefix       = "backends-"           // backends-N: frontend . slot → endpoint, for N endpoints
	verdictDrop          = "drop"
	chainReject          = "reject-chain" // "reject" alone is an nft keyword: "nft list chain ip kproxy reject" fails
	affinitySetSize      = 1 << 16
)

// setSpec describes one named set or map.
type setSpec struct {
	name     string
	key      []field
	data     []field // nil: a set, or a verdict map when verdict is true
	verdict  bool
	interval bool // the last key field is a range (concatenated intervals: pipapo)
	dynamic  bool // updated from the packet path, with timeouts
}

// affinitySetSpec is the dynamic set of clients pinned to one endpoint.
func affinitySetSpec(name string) setSpec {
	return setSpec{name: name, key: []field{fAddr}, dynamic: true}
}

func (s setSpec) keyLen(f family) int {
	n := 0
	for _, k := range s.key {
		n += f.size(k)
	}
	return n
}

func (s setSpec) dataLen(f family) int {
	n := 0
	for _, k := range s.data {
		n += f.size(k)
	}
	return n
}

var frontendKey = []field{fAddr, fProto, fPort}

// staticSets are the sets every table has.
var staticSets = []setSpec{
	{name: setClusterIPs, key: []field{fAddr}},
	{name: setMasq, key: frontendKey},
	{name: mapFrontends, key: frontendKey, verdict: true},
	{name: mapFrontendsShort, key: frontendKey, verdict: true},
	{name: mapAffinityPick, key: []field{fAddr, fProto, fPort, fSlot}, verdict: true},
	{name: mapAffinityPickShort, key: []field{fAddr, fProto, fPort, fSlot}, verdict: true},
	{name: setHairpin, key: []field{fAddr, fAddr}},
	{name: mapNoEndpoints, key: frontendKey, verdict: true},
	{name: setFirewall, key: frontendKey},
	{name: setFirewallAllow, key: []field{fAddr, fProto, fPort, fAddr}, interval: true},
}

// setSpec is the map of a class's endpoints.
func (c class) setSpec() setSpec {
	p := backendsPrefix
	if c.short {
		p = shortBackendsPrefix
	}
	return setSpec{name: p + strconv.Itoa(c.n), key: []field{fAddr, fProto, fPort, fSlot}, data: []field{fAddr, fPort}}
}

// specFor returns the spec of a set kproxy owns, by name.
func specFor(name string) (setSpec, bool) {
	for _, s := range staticSets {
		if s.name == name {
			return s, true
		}
	}
	if strings.HasPrefix(name, affSetPrefix) {
		return affinitySetSpec(name), true
	}
	for _, short := range []bool{false, true} {
		c := class{short: short}
		prefix := backendsPrefix
		if short {
			prefix = shortBackendsPrefix
		}
		if n, ok := strings.CutPrefix(name, prefix); ok {
			if v, err := strconv.Atoi(n); err == nil && v > 0 && strconv.Itoa(v) == n {
				c.n = v
				return c.setSpec(), true
			}
		}
	}
	return setSpec{}, false
}

// Frontend is a service address as packets carry it: destination address,
// protocol and port. NodePorts use the unspecified address ("any local address").
type Frontend struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

func (fe Frontend) String() string {
	return fmt.Sprintf("%s %s/%d", fe.Addr, protoName(fe.Proto), fe.Port)
}

// IsNodePort reports whether the frontend is a NodePort (any node address).
func (fe Frontend) IsNodePort() bool { return fe.Addr.IsUnspecified() }

const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

func protoNum(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolUDP:
		return protoUDP
	case v1.ProtocolSCTP:
		return protoSCTP
	}
	return protoTCP
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// class is the DNAT behaviour a frontend without session affinity dispatches
// to: how many endpoints. One chain exists per class in use.
type class struct {
	n        int
	nodePort bool
	// short is the short-circuit of an externalTrafficPolicy Local frontend:
	// traffic from pods and the node itself goes to the cluster-wide endpoints.
	short bool
}

func (c class) chain() string {
	p := ""
	if c.nodePort {
		p = "np-"
	}
	if c.short {
		p += "s"
	}
	return fmt.Sprintf("%sdnat-%d", p, c.n)
}

// affinity describes a frontend with ClientIP session affinity. Such frontends
// get chains and sets of their own, shaped like kube-proxy's: a dynamic set of
// clients per endpoint, checked first, then a random pick among the endpoints
// whose chain adds the client to its set. Affinity is rare, and this shape is
// the one nft can list: a shared map from client to endpoint would need the
// result of one lookup as the data of a set update, which the kernel accepts
// but nft 1.0.6 cannot print (it aborts on the whole ruleset).
//
// Each frontend has its own chain, but the endpoint chains and client sets
// belong to the service port, named after its owner, the port's cluster IP
// frontend: as with kube-proxy, a client pinned through the cluster IP stays
// pinned through the NodePort, external IPs and load-balancer IPs, and the
// endpoint subset of an externalTrafficPolicy Local frontend checks the same
// sets. Pods and the node reaching an externalTrafficPolicy Local frontend
// take its short-circuit (short): a chain of its own over the port's
// cluster-wide endpoints, with the same sets.
type affinity struct {
	fe        Frontend
	owner     Frontend // names the endpoint chains and sets; fe when the port has no cluster IP
	short     bool
	endpoints []netip.AddrPort
	timeout   time.Duration
}

func (a *affinity) chain() string {
	if a.short {
		return affShortChainPrefix + hex.EncodeToString(enc(nil).frontend(a.fe))
	}
	return affChainPrefix + hex.EncodeToString(enc(nil).frontend(a.fe))
}

// pickMap is the map of the frontend's endpoints by slot.
func (a *affinity) pickMap() string {
	if a.short {
		return mapAffinityPickShort
	}
	return mapAffinityPick
}

func (a *affinity) suffix(ep netip.AddrPort) string {
	return hex.EncodeToString(enc(nil).frontend(a.owner)) + "-" + hex.EncodeToString(enc(nil).addrPort(ep))
}

func (a *affinity) epChain(ep netip.AddrPort) string { return affEPChainPrefix + a.suffix(ep) }

// epSet names the endpoint's client set. The timeout is part of the name: a
// new timeout makes new sets (the kernel cannot change a set's definition).
func (a *affinity) epSet(ep netip.AddrPort) string {
	return affSetPrefix + strconv.FormatInt(int64(a.timeout/time.Second), 10) + "-" + a.suffix(ep)
}

// parseAffinitySet decodes an affinity set's name: its owner, endpoint and
// timeout.
func parseAffinitySet(f family, name string) (Frontend, netip.AddrPort, time.Duration, bool) {
	ts, rest, ok := strings.Cut(strings.TrimPrefix(name, affSetPrefix), "-")
	t, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || t <= 0 {
		return Frontend{}, netip.AddrPort{}, 0, false
	}
	fe, ep, ok := parseAffinityName(f, rest)
	return fe, ep, time.Duration(t) * time.Second, ok
}

func (a *affinity) equal(b *affinity) bool {
	return a.fe == b.fe && a.owner == b.owner && a.short == b.short && a.timeout == b.timeout && slices.Equal(a.endpoints, b.endpoints)
}

// parseAffinityName decodes "<owner>-<endpoint>" from an affinity endpoint
// chain or set name, or "<frontend>" from an affinity chain's.
func parseAffinityName(f family, rest string) (Frontend, netip.AddrPort, bool) {
	feHex, epHex, hasEP := strings.Cut(rest, "-")
	b, err := hex.DecodeString(feHex)
	if err != nil {
		return Frontend{}, netip.AddrPort{}, false
	}
	d := &dec{f: f, b: b}
	fe := d.frontend()
	if d.err != nil || len(d.b) != 0 {
		return Frontend{}, netip.AddrPort{}, false
	}
	if !hasEP {
		return fe, netip.AddrPort{}, true
	}
	b, err = hex.DecodeString(epHex)
	if err != nil {
		return Frontend{}, netip.AddrPort{}, false
	}
	d = &dec{f: f, b: b}
	ep := d.addrPort()
	if d.err != nil || len(d.b) != 0 {
		return Frontend{}, netip.AddrPort{}, false
	}
	return fe, ep, true
}

// parseClassChain is the inverse of class.chain.
func parseClassChain(name string) (class, bool) {
	var c class
	if rest, ok := strings.CutPrefix(name, "np-"); ok {
		c.nodePort = true
		name = rest
	}
	if rest, ok := strings.CutPrefix(name, "s"); ok {
		c.short = true
		name = rest
	}
	if rest, ok := strings.CutPrefix(name, "dnat-"); ok {
		n, err := strconv.Atoi(rest)
		if err != nil || n <= 0 {
			return class{}, false
		}
		c.n = n
		return c, true
	}
	return class{}, false
}

// Encoding of keys and values, exactly as the kernel compares them.

type enc []byte

func (e enc) addr(a netip.Addr) enc {
	if a.Is4() {
		b := a.As4()
		return append(e, b[:]...)
	}
	b := a.As16()
	return append(e, b[:]...)
}

func (e enc) proto(p uint8) enc { return append(e, p, 0, 0, 0) }

func (e enc) port(p uint16) enc { return append(e, byte(p>>8), byte(p), 0, 0) }

func (e enc) slot(i uint32) enc { return binary.NativeEndian.AppendUint32(e, i) }

func (e enc) frontend(fe Frontend) enc { return e.addr(fe.Addr).proto(fe.Proto).port(fe.Port) }

func (e enc) addrPort(ap netip.AddrPort) enc { return e.addr(ap.Addr()).port(ap.Port()) }

// dec reads fields back.
type dec struct {
	f   family
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return make([]byte, n)
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("short element: want %d more bytes, have %d", n, len(d.b))
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) addr() netip.Addr {
	a, _ := netip.AddrFromSlice(d.take(d.f.addrSz))
	return a
}

func (d *dec) proto() uint8 { return d.take(4)[0] }

func (d *dec) port() uint16 { b := d.take(4); return uint16(b[0])<<8 | uint16(b[1]) }

func (d *dec) slot() uint32 { return binary.NativeEndian.Uint32(d.take(4)) }

func (d *dec) frontend() Frontend { return Frontend{Addr: d.addr(), Proto: d.proto(), Port: d.port()} }

func (d *dec) addrPort() netip.AddrPort { a := d.addr(); return netip.AddrPortFrom(a, d.port()) }
