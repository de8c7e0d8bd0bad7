// Package allocator assigns Service cluster IPs, node ports and health check node
// ports the way kube-apiserver does, for kproxy's standalone (manifest) mode, and
// keeps them in a state file so that a restart gives every service the same values.
//
// Values written in a manifest are honoured; a value another service already holds
// is an error on the later service. Dynamic values come from the upper band of each
// range first, like kube-apiserver's static-subrange allocation, starting at a hash
// of the service's name so that the choice is reproducible.
package allocator

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Allocator holds every allocation. It is safe for concurrent use.
type Allocator struct {
	mu       sync.Mutex
	cfg      Config
	ranges   []*ipRange // primary family first
	byFamily map[v1.IPFamily]*ipRange
	ports    *portRangeAlloc

	records  map[types.NamespacedName]*Record
	ipOwner  map[netip.Addr]types.NamespacedName
	portUser map[int32]types.NamespacedName
	dirty    bool
	now      func() time.Time
}

// Record is what one service holds.
type Record struct {
	// File is the manifest the service came from (relative to the manifest
	// directory), so that allocations of a file that fails to load are kept.
	File                string           `json:"file,omitempty"`
	Created             time.Time        `json:"created"`
	ClusterIPs          []netip.Addr     `json:"clusterIPs,omitempty"`
	NodePorts           map[string]int32 `json:"nodePorts,omitempty"` // "port/PROTOCOL" → node port
	HealthCheckNodePort int32            `json:"healthCheckNodePort,omitempty"`
}

func (r *Record) clone() *Record {
	c := *r
	c.ClusterIPs = slices.Clone(r.ClusterIPs)
	c.NodePorts = make(map[string]int32, len(r.NodePorts))
	for k, v := range r.NodePorts {
		c.NodePorts[k] = v
	}
	return &c
}

func (r *Record) ports() []int32 {
	var out []int32
	for _, p := range r.NodePorts {
		out = append(out, p)
	}
	if r.HealthCheckNodePort != 0 {
		out = append(out, r.HealthCheckNodePort)
	}
	return out
}

// New returns an allocator with cfg (Defaults applied, then Validate) and, when
// cfg.StateDir holds a state file, the allocations saved in it. A state file that
// cannot be read or parsed is an error: kproxy never silently hands out new values.
func New(cfg Config) (*Allocator, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Allocator{
		cfg:      cfg,
		byFamily: map[v1.IPFamily]*ipRange{},
		ports:    newPortRange(cfg.NodePortRange),
		records:  map[types.NamespacedName]*Record{},
		ipOwner:  map[netip.Addr]types.NamespacedName{},
		portUser: map[int32]types.NamespacedName{},
		now:      time.Now,
	}
	for _, p := range cfg.ServiceCIDRs {
		r := newIPRange(p)
		a.ranges = append(a.ranges, r)
		a.byFamily[familyOfPrefix(p)] = r
	}
	if cfg.StateDir != "" {
		if err := a.load(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Config returns the effective configuration.
func (a *Allocator) Config() Config { return a.cfg }

// PrimaryFamily is the family of the first service CIDR.
func (a *Allocator) PrimaryFamily() v1.IPFamily { return familyOfPrefix(a.ranges[0].prefix) }

// DualStack reports whether a range is configured for each family.
func (a *Allocator) DualStack() bool { return len(a.ranges) == 2 }

// Record returns a copy of what a service holds, if anything.
func (a *Allocator) Record(key types.NamespacedName) (Record, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.records[key]
	if !ok {
		return Record{}, false
	}
	return *r.clone(), true
}

// Keys lists the services holding allocations.
func (a *Allocator) Keys() []types.NamespacedName {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]types.NamespacedName, 0, len(a.records))
	for k := range a.records {
		out = append(out, k)
	}
	slices.SortFunc(out, func(x, y types.NamespacedName) int {
		if x.Namespace != y.Namespace {
			return cmpString(x.Namespace, y.Namespace)
		}
		return cmpString(x.Name, y.Name)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Usage reports, per resource ("clusterip-ipv4", "clusterip-ipv6", "nodeport"),
// how many values are held and how many the range has.
func (a *Allocator) Usage() map[string][2]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][2]uint64{}
	for fam, r := range a.byFamily {
		var used uint64
		for ip := range a.ipOwner {
			if r.contains(ip) {
				used++
			}
		}
		out["clusterip-"+lower(string(fam))] = [2]uint64{used, r.size()}
	}
	var used uint64
	for p := range a.portUser {
		if a.cfg.NodePortRange.Contains(p) {
			used++
		}
	}
	out["nodeport"] = [2]uint64{used, uint64(a.cfg.NodePortRange.Size)}
	return out
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Release frees everything key holds. It reports whether it held anything.
func (a *Allocator) Release(key types.NamespacedName) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.releaseLocked(key)
}

func (a *Allocator) releaseLocked(key types.NamespacedName) bool {
	r, ok := a.records[key]
	if !ok {
		return false
	}
	a.unclaim(key, r)
	delete(a.records, key)
	a.dirty = true
	return true
}

func (a *Allocator) unclaim(key types.NamespacedName, r *Record) {
	for _, ip := range r.ClusterIPs {
		if a.ipOwner[ip] == key {
			delete(a.ipOwner, ip)
		}
	}
	for _, p := range r.ports() {
		if a.portUser[p] == key {
			delete(a.portUser, p)
		}
	}
}

func (a *Allocator) claim(key types.NamespacedName, r *Record) {
	for _, ip := range r.ClusterIPs {
		a.ipOwner[ip] = key
	}
	for _, p := range r.ports() {
		a.portUser[p] = key
	}
}

// Prune releases the allocations of every service for which keep returns false.
// The manifest source calls it after its first full load, with the services it
// found and the files that failed to load, so that services deleted while kproxy
// was down free their values and those of a broken file keep theirs.
func (a *Allocator) Prune(keep func(key types.NamespacedName, file string) bool) []types.NamespacedName {
	a.mu.Lock()
	defer a.mu.Unlock()
	var released []types.NamespacedName
	for key, r := range a.records {
		if !keep(key, r.File) {
			a.releaseLocked(key)
			released = append(released, key)
		}
	}
	return released
}

// PortKey names a service port in Record.NodePorts: "port/PROTOCOL", the key
// kube-apiserver merges service ports by.
func PortKey(port int32, proto v1.Protocol) string {
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	return strconv.Itoa(int(port)) + "/" + string(proto)
}

// Allocate fills in svc's IP families, policy, cluster IPs, node ports and health
// check node port, reusing what the service already holds, and records them under
// its namespace/name; file is remembered for Prune. svc is expected to be defaulted
// and validated; it is not modified: the result is a copy. On error nothing changes
// and the service keeps what it held before.
func (a *Allocator) Allocate(svc *v1.Service, file string) (*v1.Service, field.ErrorList) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	out := svc.DeepCopy()
	prev := a.records[key]
	next := &Record{File: file, NodePorts: map[string]int32{}}
	if prev != nil {
		next.Created = prev.Created
	} else {
		next.Created = a.now().UTC().Truncate(time.Second)
	}

	if out.Spec.Type == v1.ServiceTypeExternalName {
		out.Spec.ClusterIP, out.Spec.ClusterIPs = "", nil
		out.Spec.IPFamilies, out.Spec.IPFamilyPolicy = nil, nil
	} else {
		if errs := a.initIPFamilies(out); len(errs) > 0 {
			return nil, errs
		}
		if errs := a.allocClusterIPs(key, out, prev, next); len(errs) > 0 {
			return nil, errs
		}
	}
	if errs := a.allocNodePorts(key, out, prev, next); len(errs) > 0 {
		return nil, errs
	}
	if out.CreationTimestamp.IsZero() {
		out.CreationTimestamp = metav1.NewTime(next.Created)
	}
	if prev != nil {
		if prev.File == next.File && recordEqual(prev, next) {
			return out, nil
		}
		a.unclaim(key, prev)
	}
	a.records[key] = next
	a.claim(key, next)
	a.dirty = true
	return out, nil
}

func recordEqual(a, b *Record) bool {
	if !slices.Equal(a.ClusterIPs, b.ClusterIPs) || a.HealthCheckNodePort != b.HealthCheckNodePort ||
		len(a.NodePorts) != len(b.NodePorts) || !a.Created.Equal(b.Created) {
		return false
	}
	for k, v := range a.NodePorts {
		if b.NodePorts[k] != v {
			return false
		}
	}
	return true
}

// initIPFamilies follows kube-apiserver's initIPFamilyFields for a create.
func (a *Allocator) initIPFamilies(svc *v1.Service) field.ErrorList {
	spec := &svc.Spec
	if len(spec.ClusterIPs) == 0 && spec.ClusterIP != "" {
		spec.ClusterIPs = []string{spec.ClusterIP}
	}
	if spec.ClusterIP == "" && len(spec.ClusterIPs) > 0 {
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	headless := spec.ClusterIP == v1.ClusterIPNone
	if spec.IPFamilyPolicy == nil {
		p := v1.IPFamilyPolicySingleStack
		if headless && len(spec.Selector) == 0 {
			p = v1.IPFamilyPolicyRequireDualStack
		}
		spec.IPFamilyPolicy = &p
	}
	policy := *spec.IPFamilyPolicy
	var errs field.ErrorList
	if policy == v1.IPFamilyPolicySingleStack {
		if len(spec.ClusterIPs) == 2 {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilyPolicy"), policy,
				"must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"))
		}
		if len(spec.IPFamilies) == 2 {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilyPolicy"), policy,
				"must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"))
		}
	}
	for i, s := range spec.ClusterIPs {
		if s == v1.ClusterIPNone {
			break
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), s, "must be a valid IP address"))
			continue
		}
		fam := familyOf(ip)
		if i < len(spec.IPFamilies) {
			if spec.IPFamilies[i] != fam {
				errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), s,
					fmt.Sprintf("expected an IPv%s value as indicated by `ipFamilies[%d]`", famDigit(spec.IPFamilies[i]), i)))
			}
			continue
		}
		if _, ok := a.byFamily[fam]; !ok {
			errs = append(errs, field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), s,
				fmt.Sprintf("%s is not configured on this cluster", fam)))
			continue
		}
		spec.IPFamilies = append(spec.IPFamilies, fam)
	}
	if len(errs) > 0 {
		return errs
	}
	if headless && len(spec.Selector) == 0 {
		if len(spec.IPFamilies) == 0 {
			spec.IPFamilies = []v1.IPFamily{a.PrimaryFamily()}
		}
		if len(spec.IPFamilies) < 2 && policy != v1.IPFamilyPolicySingleStack {
			spec.IPFamilies = append(spec.IPFamilies, otherFamily(spec.IPFamilies[0]))
		}
		return nil
	}
	if policy == v1.IPFamilyPolicyRequireDualStack && !a.DualStack() {
		errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilyPolicy"), policy,
			"this cluster is not configured for dual-stack services"))
	}
	for i, fam := range spec.IPFamilies {
		if _, ok := a.byFamily[fam]; !ok {
			errs = append(errs, field.Invalid(field.NewPath("spec", "ipFamilies").Index(i), fam, "not configured on this cluster"))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if len(spec.IPFamilies) == 0 {
		spec.IPFamilies = []v1.IPFamily{a.PrimaryFamily()}
	}
	if policy != v1.IPFamilyPolicySingleStack && len(spec.IPFamilies) == 1 && a.DualStack() {
		spec.IPFamilies = append(spec.IPFamilies, otherFamily(spec.IPFamilies[0]))
	}
	return nil
}

func famDigit(f v1.IPFamily) string {
	if f == v1.IPv6Protocol {
		return "6"
	}
	return "4"
}

func otherFamily(f v1.IPFamily) v1.IPFamily {
	if f == v1.IPv4Protocol {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func familyOf(ip netip.Addr) v1.IPFamily {
	if ip.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// allocClusterIPs gives svc one cluster IP per family in spec.ipFamilies: the one
// written in the manifest, else the one it held, else a fresh one.
func (a *Allocator) allocClusterIPs(key types.NamespacedName, svc *v1.Service, prev, next *Record) field.ErrorList {
	spec := &svc.Spec
	if spec.ClusterIP == v1.ClusterIPNone {
		spec.ClusterIPs = []string{v1.ClusterIPNone}
		return nil
	}
	var errs field.ErrorList
	taken := map[netip.Addr]bool{}
	used := func(ip netip.Addr) bool {
		if taken[ip] {
			return true
		}
		owner, ok := a.ipOwner[ip]
		return ok && owner != key
	}
	ips := make([]string, 0, len(spec.IPFamilies))
	for i, fam := range spec.IPFamilies {
		r := a.byFamily[fam]
		path := field.NewPath("spec", "clusterIPs").Index(i)
		if i < len(spec.ClusterIPs) && spec.ClusterIPs[i] != "" {
			ip, err := netip.ParseAddr(spec.ClusterIPs[i])
			if err != nil {
				errs = append(errs, field.Invalid(path, spec.ClusterIPs[i], "must be a valid IP address"))
				continue
			}
			ip = ip.Unmap()
			switch {
			case !r.contains(ip):
				errs = append(errs, field.Invalid(path, spec.ClusterIPs[i],
					fmt.Sprintf("failed to allocate IP %s: provided IP is not in the valid range. The range of valid IPs is %s", ip, r.prefix)))
			case used(ip):
				errs = append(errs, field.Invalid(path, spec.ClusterIPs[i],
					fmt.Sprintf("failed to allocate IP %s: provided IP is already allocated (by service %s)", ip, a.ipOwner[ip])))
			}
			taken[ip] = true
			next.ClusterIPs = append(next.ClusterIPs, ip)
			ips = append(ips, ip.String())
			continue
		}
		var ip netip.Addr
		if prev != nil {
			for _, old := range prev.ClusterIPs {
				if familyOf(old) == fam && r.contains(old) && !used(old) {
					ip = old
				}
			}
		}
		if !ip.IsValid() {
			var ok bool
			if ip, ok = r.pick(key.String()+"/"+string(fam), used); !ok {
				errs = append(errs, field.Invalid(path, "", fmt.Sprintf("failed to allocate a serviceIP: range %s is full", r.prefix)))
				continue
			}
		}
		taken[ip] = true
		next.ClusterIPs = append(next.ClusterIPs, ip)
		ips = append(ips, ip.String())
	}
	if len(errs) > 0 {
		return errs
	}
	spec.ClusterIPs = ips
	spec.ClusterIP = ips[0]
	return nil
}

// allocNodePorts gives NodePort and LoadBalancer services a node port per service
// port (ports with the same number share one, as kube-apiserver does for a port
// served over TCP and UDP) and LoadBalancer services with externalTrafficPolicy
// Local a health check node port.
func (a *Allocator) allocNodePorts(key types.NamespacedName, svc *v1.Service, prev, next *Record) field.ErrorList {
	spec := &svc.Spec
	needPorts := spec.Type == v1.ServiceTypeNodePort ||
		(spec.Type == v1.ServiceTypeLoadBalancer && (spec.AllocateLoadBalancerNodePorts == nil || *spec.AllocateLoadBalancerNodePorts))
	var errs field.ErrorList
	pr := a.cfg.NodePortRange
	taken := map[int32]v1.Protocol{} // node port → protocol(s) of this service using it
	byNumber := map[int32]int32{}    // service port number → node port, for sharing
	used := func(p int32) bool {
		if _, ok := taken[p]; ok {
			return true
		}
		owner, ok := a.portUser[p]
		return ok && owner != key
	}
	explicit := func(path *field.Path, p int32) bool {
		if !pr.Contains(p) {
			errs = append(errs, field.Invalid(path, p,
				fmt.Sprintf("provided port is not in the valid range. The range of valid ports is %s", pr)))
			return false
		}
		if owner, ok := a.portUser[p]; ok && owner != key {
			errs = append(errs, field.Invalid(path, p,
				fmt.Sprintf("provided port is already allocated (by service %s)", owner)))
			return false
		}
		return true
	}
	external := spec.Type == v1.ServiceTypeNodePort || spec.Type == v1.ServiceTypeLoadBalancer
	// Manifest values first, so that a fresh value never takes one written further down.
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if !external || p.NodePort == 0 {
			continue
		}
		path := field.NewPath("spec", "ports").Index(i).Child("nodePort")
		// The same node port on two ports of this service (TCP and UDP) is fine;
		// validation rejects a real duplicate (same node port and protocol).
		if _, mine := taken[p.NodePort]; !mine && !explicit(path, p.NodePort) {
			continue
		}
		taken[p.NodePort] = p.Protocol
		byNumber[p.Port] = p.NodePort
		next.NodePorts[PortKey(p.Port, p.Protocol)] = p.NodePort
	}
	if needPorts {
		for i := range spec.Ports {
			p := &spec.Ports[i]
			if p.NodePort != 0 {
				continue
			}
			k := PortKey(p.Port, p.Protocol)
			np := byNumber[p.Port]
			if np == 0 && prev != nil {
				if old := prev.NodePorts[k]; old != 0 && pr.Contains(old) && !used(old) {
					np = old
				}
			}
			if np == 0 {
				var ok bool
				if np, ok = a.ports.pick(key.String()+"/"+k, used); !ok {
					errs = append(errs, field.Invalid(field.NewPath("spec", "ports").Index(i).Child("nodePort"), 0,
						fmt.Sprintf("failed to allocate a nodePort: range %s is full", pr)))
					continue
				}
			}
			taken[np] = p.Protocol
			byNumber[p.Port] = np
			next.NodePorts[k] = np
		}
	} else if !external {
		for i := range spec.Ports {
			spec.Ports[i].NodePort = 0
		}
	}
	for i := range spec.Ports {
		if np, ok := next.NodePorts[PortKey(spec.Ports[i].Port, spec.Ports[i].Protocol)]; ok && spec.Ports[i].NodePort == 0 {
			spec.Ports[i].NodePort = np
		}
	}

	needHC := spec.Type == v1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	path := field.NewPath("spec", "healthCheckNodePort")
	switch {
	case !needHC:
		spec.HealthCheckNodePort = 0
	case spec.HealthCheckNodePort != 0:
		if _, dup := taken[spec.HealthCheckNodePort]; dup {
			errs = append(errs, field.Invalid(path, spec.HealthCheckNodePort, "provided port is already allocated (by a node port of this service)"))
		} else if explicit(path, spec.HealthCheckNodePort) {
			next.HealthCheckNodePort = spec.HealthCheckNodePort
		}
	default:
		var np int32
		if prev != nil && prev.HealthCheckNodePort != 0 && pr.Contains(prev.HealthCheckNodePort) && !used(prev.HealthCheckNodePort) {
			np = prev.HealthCheckNodePort
		} else {
			var ok bool
			if np, ok = a.ports.pick(key.String()+"/healthcheck", used); !ok {
				errs = append(errs, field.Invalid(path, 0, fmt.Sprintf("failed to allocate a nodePort: range %s is full", pr)))
			}
		}
		next.HealthCheckNodePort = np
		spec.HealthCheckNodePort = np
	}
	return errs
}
