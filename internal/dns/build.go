// Building the index from the model's snapshot: one cached fragment per service,
// rebuilt only when the Service or its EndpointSlices change.

package dns

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	mdns "github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
)

// fragment is the part of the index one service contributes. Fragments are
// cached across updates and rebuilt only when the Service or its EndpointSlices
// change (the model never mutates an object in place; a change is a new pointer).
type fragment struct {
	svc    *v1.Service
	slices []*discovery.EndpointSlice
	key    string // wire "service.namespace"
	ns     string // wire "namespace"
	entry  *svcEntry
	ptrs   []ptrRecord
	// cnameInZone is set for an ExternalName service whose target is in the zone.
	cnameInZone bool
	// headless fragments depend on the EndpointSlices, the others do not.
	headless bool
}

// ptrSource is one service's contribution to a reverse name.
type ptrSource struct {
	owner  types.NamespacedName
	target []byte
}

type ptrRecord struct {
	reverse string // wire reverse name
	target  []byte // wire target name
}

// builder holds what does not change between updates.
type builder struct {
	zone []byte
	ttl  uint32
}

func label(s string) []byte {
	s = strings.ToLower(s)
	return append([]byte{byte(len(s))}, s...)
}

func validLabel(s string) bool { return len(s) > 0 && len(s) <= 63 }

// addrSet packs A or AAAA records for the addresses of one family.
func (b *builder) addrSet(owner []byte, typ uint16, addrs []netip.Addr) *rrset {
	if len(addrs) == 0 {
		return nil
	}
	r := &rrset{}
	for _, ip := range addrs {
		r.add(owner, typ, b.ttl, ip.AsSlice())
	}
	return r
}

// addrRecords packs A and AAAA records for a named owner, for additional sections
// and CNAME chains.
func (b *builder) addrRecords(dst []byte, owner []byte, v4, v6 []netip.Addr, want int) ([]byte, int) {
	n := 0
	if want == slotA || want == slotANY {
		for _, ip := range v4 {
			dst = appendRR(dst, owner, typeA, b.ttl, ip.AsSlice())
			n++
		}
	}
	if want == slotAAAA || want == slotANY {
		for _, ip := range v6 {
			dst = appendRR(dst, owner, typeAAAA, b.ttl, ip.AsSlice())
			n++
		}
	}
	return dst, n
}

func (b *builder) nodeWithAddrs(v4, v6 []netip.Addr) *node {
	n := &node{v4: v4, v6: v6}
	n.sets[slotA] = b.addrSet(ownerPtr, typeA, v4)
	n.sets[slotAAAA] = b.addrSet(ownerPtr, typeAAAA, v6)
	return n
}

func splitFamilies(ips []netip.Addr) (v4, v6 []netip.Addr) {
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			v4 = append(v4, ip.Unmap())
		} else {
			v6 = append(v6, ip)
		}
	}
	return v4, v6
}

func reverseName(ip netip.Addr) (string, error) {
	rev, err := mdns.ReverseAddr(ip.String())
	if err != nil {
		return "", fmt.Errorf("reverse name of %s: %w", ip, err)
	}
	w, err := wireName(rev)
	if err != nil {
		return "", err
	}
	return string(w), nil
}

// buildFragment computes one service's names. A nil entry means the service has
// no names at all (a headless service without ready endpoints is NXDOMAIN, as the
// specification says).
func (b *builder) buildFragment(svc *v1.Service, epSlices []*discovery.EndpointSlice) (*fragment, error) {
	f := &fragment{svc: svc, slices: epSlices}
	if !validLabel(svc.Name) || !validLabel(svc.Namespace) {
		return f, fmt.Errorf("service %s/%s: name or namespace is not a DNS label", svc.Namespace, svc.Name)
	}
	key := append(label(svc.Name), label(svc.Namespace)...)
	f.key = string(key)
	f.ns = string(label(svc.Namespace))
	fqdn := concat(key, label("svc"), b.zone)
	if len(fqdn) > 255 {
		return f, fmt.Errorf("service %s/%s: name too long for the cluster domain", svc.Namespace, svc.Name)
	}
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return f, b.externalName(f, svc)
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		f.headless = true
		return f, b.headless(f, svc, epSlices, fqdn)
	default:
		return f, b.clusterIP(f, svc, fqdn)
	}
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func (b *builder) externalName(f *fragment, svc *v1.Service) error {
	target := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(svc.Spec.ExternalName)), ".")
	if target == "" {
		return fmt.Errorf("service %s/%s: ExternalName service without externalName", svc.Namespace, svc.Name)
	}
	tw, err := wireName(target)
	if err != nil {
		return fmt.Errorf("service %s/%s: externalName: %w", svc.Namespace, svc.Name, err)
	}
	set := &rrset{cnameTarget: target + "."}
	set.add(ownerPtr, typeCNAME, b.ttl, tw)
	// An externalName that looks like an IPv4 address is still a name made of
	// digits (Kubernetes documents ExternalName so, and the specification only
	// knows CNAMEs): it is answered as a CNAME and never resolved further.
	if _, err := netip.ParseAddr(target); err != nil {
		if isSubdomain(tw, b.zone) {
			f.cnameInZone = true
		} else {
			set.chase = target + "."
		}
	}
	n := &node{cname: tw}
	for i := range n.sets {
		n.sets[i] = set
	}
	f.entry = &svcEntry{self: n}
	return nil
}

func isSubdomain(name, zone []byte) bool {
	if len(name) < len(zone) || string(name[len(name)-len(zone):]) != string(zone) {
		return false
	}
	// Walk the labels to make sure the suffix starts at a label boundary.
	for off := 0; off < len(name); off += int(name[off]) + 1 {
		if off == len(name)-len(zone) {
			return true
		}
	}
	return false
}

func (b *builder) clusterIP(f *fragment, svc *v1.Service, fqdn []byte) error {
	ips, err := model.ParseAddrs(svc.Spec.ClusterIPs)
	if err != nil {
		return fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	if len(ips) == 0 {
		ips, err = model.ParseAddrs([]string{svc.Spec.ClusterIP})
		if err != nil {
			return fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
		}
	}
	if len(ips) == 0 {
		return nil // no virtual IP allocated yet: no names
	}
	v4, v6 := splitFamilies(ips)
	self := b.nodeWithAddrs(v4, v6)
	self.finish()
	e := &svcEntry{self: self, sub: map[string]*node{}}
	extra, nExtra := b.addrRecords(nil, fqdn, v4, v6, slotANY)
	for _, p := range svc.Spec.Ports {
		if p.Name == "" || !validLabel("_"+p.Name) {
			continue
		}
		proto := protoLabel(p.Protocol)
		set := &rrset{extra: extra, nExtra: nExtra}
		set.add(ownerPtr, typeSRV, b.ttl, srvRdata(0, 100, uint16(p.Port), fqdn))
		n := &node{}
		n.sets[slotSRV] = set
		n.finish()
		e.sub[string(append(label("_"+p.Name), proto...))] = n
		if _, ok := e.sub[string(proto)]; !ok {
			e.sub[string(proto)] = entNode
		}
	}
	f.entry = e
	for _, ip := range ips {
		rev, err := reverseName(ip)
		if err != nil {
			return err
		}
		f.ptrs = append(f.ptrs, ptrRecord{reverse: rev, target: fqdn})
	}
	return nil
}

func protoLabel(p v1.Protocol) []byte {
	if p == "" {
		p = v1.ProtocolTCP
	}
	return label("_" + strings.ToLower(string(p)))
}

// endpointHostname is the spec's hostname of an endpoint: its hostname field, or
// a name made from its IP (CoreDNS's form: dots or colons become dashes).
func endpointHostname(ep *discovery.Endpoint, ip netip.Addr) string {
	if ep.Hostname != nil && validLabel(*ep.Hostname) {
		return strings.ToLower(*ep.Hostname)
	}
	s := ip.String()
	if ip.Is4() {
		return strings.ReplaceAll(s, ".", "-")
	}
	return strings.ReplaceAll(s, ":", "-")
}

type srvTarget struct {
	port uint16
	host string
}

func (b *builder) headless(f *fragment, svc *v1.Service, epSlices []*discovery.EndpointSlice, fqdn []byte) error {
	allReady := svc.Spec.PublishNotReadyAddresses || svc.Annotations[tolerateUnreadyAnnotation] == "true"
	hosts := map[string][]netip.Addr{} // hostname → addresses
	seen := map[netip.Addr]map[string]bool{}
	srv := map[string]map[srvTarget]bool{} // _port._proto wire → targets
	for _, sl := range epSlices {
		if sl == nil || (sl.AddressType != discovery.AddressTypeIPv4 && sl.AddressType != discovery.AddressTypeIPv6) {
			continue
		}
		for i := range sl.Endpoints {
			ep := &sl.Endpoints[i]
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			if !ready && !allReady {
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ip = ip.Unmap()
				h := endpointHostname(ep, ip)
				if seen[ip] == nil {
					seen[ip] = map[string]bool{}
				}
				if !seen[ip][h] {
					seen[ip][h] = true
					hosts[h] = append(hosts[h], ip)
				}
				for _, p := range sl.Ports {
					if p.Name == nil || *p.Name == "" || p.Port == nil || !validLabel("_"+*p.Name) {
						continue
					}
					proto := v1.ProtocolTCP
					if p.Protocol != nil {
						proto = *p.Protocol
					}
					k := string(append(label("_"+*p.Name), protoLabel(proto)...))
					if srv[k] == nil {
						srv[k] = map[srvTarget]bool{}
					}
					srv[k][srvTarget{port: uint16(*p.Port), host: h}] = true
				}
			}
		}
	}
	if len(seen) == 0 {
		return nil
	}
	all := make([]netip.Addr, 0, len(seen))
	for ip := range seen {
		all = append(all, ip)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	v4, v6 := splitFamilies(all)
	self := b.nodeWithAddrs(v4, v6)
	self.finish()
	e := &svcEntry{self: self, sub: map[string]*node{}}
	hostFQDN := func(h string) []byte { return append(label(h), fqdn...) }
	for h, ips := range hosts {
		slices.SortFunc(ips, netip.Addr.Compare)
		hv4, hv6 := splitFamilies(ips)
		n := b.nodeWithAddrs(hv4, hv6)
		n.finish()
		e.sub[string(label(h))] = n
		for _, ip := range ips {
			rev, err := reverseName(ip)
			if err != nil {
				return err
			}
			f.ptrs = append(f.ptrs, ptrRecord{reverse: rev, target: hostFQDN(h)})
		}
	}
	for k, targets := range srv {
		ts := make([]srvTarget, 0, len(targets))
		for t := range targets {
			ts = append(ts, t)
		}
		slices.SortFunc(ts, func(a, c srvTarget) int {
			return cmp.Or(cmp.Compare(a.host, c.host), cmp.Compare(a.port, c.port))
		})
		// Equal priority, weights summing to about 100 (RFC 2782 picks by weight).
		weight := uint16(max(1, 100/len(ts)))
		set := &rrset{}
		added := map[string]bool{}
		for _, t := range ts {
			target := hostFQDN(t.host)
			set.add(ownerPtr, typeSRV, b.ttl, srvRdata(0, weight, t.port, target))
			if !added[t.host] {
				added[t.host] = true
				hv4, hv6 := splitFamilies(hosts[t.host])
				var n int
				set.extra, n = b.addrRecords(set.extra, target, hv4, hv6, slotANY)
				set.nExtra += n
			}
		}
		n := &node{}
		n.sets[slotSRV] = set
		n.finish()
		e.sub[k] = n
		proto := k[1+k[0]:]
		if _, ok := e.sub[proto]; !ok {
			e.sub[proto] = entNode
		}
	}
	f.entry = e
	return nil
}

// build makes a new index from a snapshot. It starts from copies of prev's maps
// and only redoes the services whose Service or EndpointSlices changed, and the
// reverse names those touch, so that one changed service among thousands costs
// little more than copying the maps.
func (b *builder) build(snap *model.Snapshot, prev *index, serial uint32) (*index, []error) {
	idx := &index{
		ready:    true,
		zone:     b.zone,
		services: map[string]*svcEntry{},
		spaces:   map[string]int{},
		reverse:  map[string]*node{},
		ptrSrc:   map[string][]ptrSource{},
		frags:    make(map[types.NamespacedName]*fragment, len(snap.Services)),
	}
	prevFrags := map[types.NamespacedName]*fragment{}
	if prev != nil && prev.ready {
		prevFrags = prev.frags
	}
	type change struct {
		name     types.NamespacedName
		old, new *fragment
	}
	var changes []change
	var errs []error
	for name, svc := range snap.Services {
		if svc == nil {
			continue
		}
		sl := snap.Slices[name]
		old, had := prevFrags[name]
		// Only headless services read their EndpointSlices: endpoint churn behind
		// a ClusterIP costs nothing here.
		if had && old.svc == svc && (!old.headless || slices.Equal(old.slices, sl)) {
			idx.frags[name] = old
			continue
		}
		f, err := b.buildFragment(svc, sl)
		if err != nil {
			errs = append(errs, err)
		}
		idx.frags[name] = f
		changes = append(changes, change{name: name, old: old, new: f})
	}
	for name, old := range prevFrags {
		if _, ok := idx.frags[name]; !ok {
			changes = append(changes, change{name: name, old: old})
		}
	}
	if prev != nil && prev.ready {
		if len(changes) == 0 {
			// Nothing to redo: share prev's maps (no one writes them once published).
			idx.services, idx.spaces, idx.reverse, idx.ptrSrc = prev.services, prev.spaces, prev.reverse, prev.ptrSrc
		} else {
			idx.services = maps.Clone(prev.services)
			idx.spaces = maps.Clone(prev.spaces)
			idx.reverse = maps.Clone(prev.reverse)
			idx.ptrSrc = maps.Clone(prev.ptrSrc)
		}
	}
	touched := map[string]bool{} // reverse names to recompute
	remove := func(name types.NamespacedName, f *fragment) {
		if f.entry != nil {
			delete(idx.services, f.key)
			if idx.spaces[f.ns]--; idx.spaces[f.ns] <= 0 {
				delete(idx.spaces, f.ns)
			}
		}
		for _, p := range f.ptrs {
			// Copy on write: prev's slices are still read by queries.
			idx.ptrSrc[p.reverse] = slices.DeleteFunc(slices.Clone(idx.ptrSrc[p.reverse]),
				func(ps ptrSource) bool { return ps.owner == name })
			touched[p.reverse] = true
		}
	}
	insert := func(name types.NamespacedName, f *fragment) {
		if f.entry != nil {
			idx.services[f.key] = f.entry
			idx.spaces[f.ns]++
		}
		for _, p := range f.ptrs {
			idx.ptrSrc[p.reverse] = append(slices.Clip(idx.ptrSrc[p.reverse]), ptrSource{owner: name, target: p.target})
			touched[p.reverse] = true
		}
	}
	// Removals first, so that a name moving between services ends up inserted.
	for _, c := range changes {
		if c.old != nil {
			remove(c.name, c.old)
		}
	}
	for _, c := range changes {
		if c.new != nil {
			insert(c.name, c.new)
		}
	}
	// PTR records: one reverse name may point at several names (an IP in two
	// headless services).
	for rev := range touched {
		srcs := idx.ptrSrc[rev]
		if len(srcs) == 0 {
			delete(idx.ptrSrc, rev)
			delete(idx.reverse, rev)
			continue
		}
		var ts [][]byte
		for _, ps := range srcs {
			if !slices.ContainsFunc(ts, func(t []byte) bool { return string(t) == string(ps.target) }) {
				ts = append(ts, ps.target)
			}
		}
		slices.SortFunc(ts, func(a, c []byte) int { return strings.Compare(string(a), string(c)) })
		set := &rrset{}
		for _, t := range ts {
			set.add(ownerPtr, typePTR, b.ttl, t)
		}
		n := &node{}
		n.sets[slotPTR] = set
		n.finish()
		idx.reverse[rev] = n
	}
	// ExternalName services pointing into the zone: follow the CNAME here, so that
	// stub resolvers that do not chase CNAMEs get addresses. Their targets may have
	// changed with any service, and they are few, so redo them all.
	for _, f := range idx.frags {
		if len(changes) > 0 && f.cnameInZone && f.entry != nil {
			idx.services[f.key] = &svcEntry{self: b.chase(idx, f.entry.self)}
		}
	}
	mname := concat(label("ns"), label("dns"), b.zone)
	rname := concat(label("hostmaster"), b.zone)
	soa := soaRdata(mname, rname, serial, 7200, 1800, 86400, b.ttl)
	idx.soa = appendRR(nil, b.zone, typeSOA, b.ttl, soa)
	idx.apex = &node{}
	idx.apex.sets[slotSOA] = &rrset{}
	idx.apex.sets[slotSOA].add(ownerPtr, typeSOA, b.ttl, soa)
	idx.apex.finish()
	idx.version = &node{}
	idx.version.sets[slotTXT] = &rrset{}
	idx.version.sets[slotTXT].add(ownerPtr, typeTXT, b.ttl, txtRdata(schemaVersion))
	idx.version.finish()
	return idx, errs
}

// chase returns a copy of a CNAME node whose A and AAAA answers also hold the
// records of the in-zone target (following up to 8 CNAMEs, with loop protection).
func (b *builder) chase(idx *index, n *node) *node {
	out := &node{cname: n.cname}
	out.sets = n.sets
	cnameSet := n.sets[slotCNAME]
	for _, slot := range []int{slotA, slotAAAA} {
		set := &rrset{cnameTarget: cnameSet.cnameTarget}
		set.addSet(cnameSet)
		target := n.cname
		visited := map[string]bool{}
		for range 8 {
			if visited[string(target)] {
				break
			}
			visited[string(target)] = true
			t := idx.lookupWire(target)
			if t == nil {
				break
			}
			if t.cname != nil {
				set.add(target, typeCNAME, b.ttl, t.cname)
				if !isSubdomain(t.cname, b.zone) {
					set.chase = t.sets[slotCNAME].cnameTarget
					break
				}
				target = t.cname
				continue
			}
			before := len(set.data)
			set.data, _ = b.addrRecords(set.data, target, t.v4, t.v6, slot)
			// Record boundaries for truncation: address records have a fixed size.
			size := len(target) + 10 + 4
			if slot == slotAAAA {
				size += 12
			}
			for e := before + size; e <= len(set.data); e += size {
				set.ends = append(set.ends, e)
			}
			break
		}
		out.sets[slot] = set
	}
	return out
}
