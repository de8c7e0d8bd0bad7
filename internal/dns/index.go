// The index: what a query finds (find, lookupWire) and the precomputed answers it
// holds. build.go builds it from the model's snapshot.

package dns

import (
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// schemaVersion is the version of the Kubernetes DNS-Based Service Discovery
// specification implemented (github.com/kubernetes/dns docs/specification.md),
// published as the dns-version TXT record.
const schemaVersion = "1.1.0"

// tolerateUnreadyAnnotation is the deprecated annotation that the specification
// still lists as making not-ready endpoints count as ready.
const tolerateUnreadyAnnotation = "service.alpha.kubernetes.io/tolerate-unready-endpoints"

// Answer slots: the query types the index precomputes answers for.
const (
	slotA = iota
	slotAAAA
	slotSRV
	slotPTR
	slotCNAME
	slotTXT
	slotSOA
	slotANY
	slotOther // every other query type
	numSlots
)

func slotOf(qtype uint16) int {
	switch qtype {
	case typeA:
		return slotA
	case typeAAAA:
		return slotAAAA
	case typeSRV:
		return slotSRV
	case typePTR:
		return slotPTR
	case typeCNAME:
		return slotCNAME
	case typeTXT:
		return slotTXT
	case typeSOA:
		return slotSOA
	case typeANY:
		return slotANY
	}
	return slotOther
}

// rrset is a precomputed answer: packed records ready to be copied behind the
// question. Answer records use a compression pointer to the question as owner.
type rrset struct {
	data []byte
	// ends[i] is the end offset of record i in data, so that a UDP answer that does
	// not fit can be cut at a record boundary.
	ends []int
	// extra is the packed additional section (A/AAAA of SRV targets, RFC 2782).
	extra  []byte
	nExtra int
	// chase is an out-of-zone CNAME target (a dotted FQDN) that the server resolves
	// through the upstream, when there is one, and appends to the answer.
	chase string
	// cnameTarget is the dotted CNAME target, for the forwarding path.
	cnameTarget string
}

func (r *rrset) add(owner []byte, typ uint16, ttl uint32, rdata []byte) {
	r.data = appendRR(r.data, owner, typ, ttl, rdata)
	r.ends = append(r.ends, len(r.data))
}

func (r *rrset) addSet(o *rrset) {
	if o == nil {
		return
	}
	base := len(r.data)
	r.data = append(r.data, o.data...)
	for _, e := range o.ends {
		r.ends = append(r.ends, base+e)
	}
}

// node is one name in the zone. A node whose sets are all nil exists but has no
// records (an empty non-terminal): queries for it get NODATA, not NXDOMAIN.
type node struct {
	sets [numSlots]*rrset
	// v4 and v6 are the name's addresses, and cname its CNAME target (wire form),
	// kept to build additional sections and to follow CNAMEs inside the zone.
	v4, v6 []netip.Addr
	cname  []byte
}

// entNode is the shared empty non-terminal.
var entNode = &node{}

// finish computes the ANY answer (RFC 8482 allows a subset; kproxy returns all
// records of the name, which are few).
func (n *node) finish() {
	if n.cname != nil {
		return
	}
	var all rrset
	for _, s := range []int{slotA, slotAAAA, slotSRV, slotPTR, slotTXT, slotSOA} {
		all.addSet(n.sets[s])
	}
	if len(all.ends) > 0 {
		n.sets[slotANY] = &all
	}
}

// svcEntry holds the names of one service: the service name itself and the names
// below it (endpoint hostnames, _port._proto SRV names and their _proto parents).
type svcEntry struct {
	self *node
	sub  map[string]*node // key: the wire labels in front of "svc.ns"
}

// index is an immutable view of the zone. Queries read it without locks; Update
// builds a new one and swaps a pointer.
type index struct {
	ready bool
	zone  []byte // lowercase wire form
	// soa is the packed SOA record for the authority section of negative answers.
	soa      []byte
	apex     *node
	version  *node
	services map[string]*svcEntry // key: wire "service.namespace" without terminator
	spaces   map[string]int       // namespaces → services with names; key: wire label
	reverse  map[string]*node     // key: lowercase wire in-addr.arpa / ip6.arpa name
	ptrSrc   map[string][]ptrSource
	frags    map[types.NamespacedName]*fragment
}

// lookup kinds.
type findKind int

const (
	findNode     findKind = iota // n holds the records (maybe none: NODATA)
	findNX                       // NXDOMAIN
	findPod                      // a deprecated a-b-c-d.ns.pod.<zone> name
	findOutside                  // not ours: forward or REFUSED
	findNotReady                 // ours, but no snapshot yet: SERVFAIL
)

var (
	labelSvc        = []byte("svc")
	labelPod        = []byte("pod")
	labelDNSVersion = []byte("dns-version")
	reverseV4Suffix = []byte("\x07in-addr\x04arpa\x00")
	reverseV6Suffix = []byte("\x03ip6\x04arpa\x00")
)

// find classifies a query name. It allocates nothing: map lookups index with
// string(bytes) conversions, which the compiler does not copy.
func (idx *index) find(q *question) (*node, findKind) {
	first, ok := q.hasLabelSuffix(idx.zone)
	if !ok {
		if _, ok := q.hasLabelSuffix(reverseV4Suffix); !ok {
			if _, ok := q.hasLabelSuffix(reverseV6Suffix); !ok {
				return nil, findOutside
			}
		}
		if !idx.ready {
			return nil, findOutside
		}
		if n, ok := idx.reverse[string(q.lname())]; ok {
			return n, findNode
		}
		// kproxy only knows the reverse names of its own addresses; the rest of
		// the reverse tree belongs to someone else.
		return nil, findOutside
	}
	if !idx.ready {
		return nil, findNotReady
	}
	// Labels 0..first-1 are in front of the zone.
	switch {
	case first == 0:
		return idx.apex, findNode
	case first == 1 && string(q.label(0)) == string(labelDNSVersion):
		return idx.version, findNode
	}
	top := q.label(first - 1)
	switch string(top) {
	case string(labelSvc):
		switch first {
		case 1:
			return entNode, findNode
		case 2:
			if _, ok := idx.spaces[string(q.name[q.labels[0]:q.labels[1]])]; ok {
				return entNode, findNode
			}
			return nil, findNX
		}
		svcStart := int(q.labels[first-3])
		e, ok := idx.services[string(q.name[svcStart:q.labels[first-1]])]
		if !ok {
			return nil, findNX
		}
		if svcStart == 0 {
			return e.self, findNode
		}
		if n, ok := e.sub[string(q.name[:svcStart])]; ok {
			return n, findNode
		}
		return nil, findNX
	case string(labelPod):
		switch first {
		case 1, 2:
			return entNode, findNode
		case 3:
			return nil, findPod
		}
	}
	return nil, findNX
}

// podAddr parses the first label of a pod name: "10-244-0-5" or "fd00--5".
func podAddr(label []byte) (netip.Addr, bool) {
	s := string(label)
	if ip, err := netip.ParseAddr(strings.ReplaceAll(s, "-", ".")); err == nil && ip.Is4() {
		return ip, true
	}
	if ip, err := netip.ParseAddr(strings.ReplaceAll(s, "-", ":")); err == nil && ip.Is6() && !ip.Is4In6() {
		return ip, true
	}
	return netip.Addr{}, false
}

// lookupWire finds a node by wire name in a (partly built) index.
func (idx *index) lookupWire(name []byte) *node {
	var q question
	if len(name) > len(q.name) {
		return nil
	}
	q.nameLen = copy(q.name[:], name)
	for off := 0; off < len(name) && name[off] != 0; off += int(name[off]) + 1 {
		q.labels[q.nLabels] = uint8(off)
		q.nLabels++
	}
	n, kind := idx.find(&q)
	if kind != findNode {
		return nil
	}
	return n
}
