package manifest

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the slices kproxy
// computes from pods and from v1 Endpoints.
const ManagedBy = "kproxy.manifest"

// podInfo is the slim view of a Pod that endpoints need; 100,000 of them must
// fit in a few tens of megabytes, which whole v1.Pod objects do not.
type podInfo struct {
	Namespace, Name string
	UID             types.UID
	// Labels are key, value pairs sorted by key: a pod has a handful, and a map
	// costs several times more memory at 100,000 pods.
	Labels    []string
	NodeName  string
	Hostname  string
	Subdomain string
	// Ports are the named container ports: containers first, then sidecars
	// (restartable init containers), as the endpoint controllers search them.
	Ports []namedPort
	IPs   []netip.Addr
	// Ready is the Ready condition; Terminating is a deletion timestamp; Finished
	// is phase Succeeded or Failed.
	Ready, Terminating, Finished bool
}

type namedPort struct {
	Name     string
	Protocol v1.Protocol
	Port     int32
}

// podInfoOf extracts a (defaulted) pod's podInfo.
func podInfoOf(pod *v1.Pod) *podInfo {
	pi := &podInfo{
		Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, Labels: compactLabels(pod.Labels),
		NodeName: pod.Spec.NodeName, Hostname: pod.Spec.Hostname, Subdomain: pod.Spec.Subdomain,
		IPs:         podIPs(pod),
		Terminating: pod.DeletionTimestamp != nil,
		Finished:    pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed,
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			pi.Ready = c.Status == v1.ConditionTrue
			break
		}
	}
	add := func(cs []v1.Container, sidecarsOnly bool) {
		for i := range cs {
			c := &cs[i]
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != v1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				if p.Name == "" {
					continue
				}
				proto := p.Protocol
				if proto == "" {
					proto = v1.ProtocolTCP
				}
				pi.Ports = append(pi.Ports, namedPort{Name: p.Name, Protocol: proto, Port: p.ContainerPort})
			}
		}
	}
	add(pod.Spec.Containers, false)
	add(pod.Spec.InitContainers, true)
	return pi
}

// pod rebuilds a minimal v1.Pod, for Result.
func (pi *podInfo) pod() *v1.Pod {
	pod := &v1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: KindPod},
		ObjectMeta: metav1.ObjectMeta{Namespace: pi.Namespace, Name: pi.Name, UID: pi.UID, Labels: pi.labelMap()},
		Spec:       v1.PodSpec{NodeName: pi.NodeName, Hostname: pi.Hostname, Subdomain: pi.Subdomain},
	}
	if len(pi.Ports) > 0 {
		c := v1.Container{Name: "ports"}
		for _, p := range pi.Ports {
			c.Ports = append(c.Ports, v1.ContainerPort{Name: p.Name, Protocol: p.Protocol, ContainerPort: p.Port})
		}
		pod.Spec.Containers = []v1.Container{c}
	}
	for _, ip := range pi.IPs {
		pod.Status.PodIPs = append(pod.Status.PodIPs, v1.PodIP{IP: ip.String()})
	}
	if len(pi.IPs) > 0 {
		pod.Status.PodIP = pi.IPs[0].String()
	}
	status := v1.ConditionFalse
	if pi.Ready {
		status = v1.ConditionTrue
	}
	pod.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: status}}
	return pod
}

// podIndex finds a namespace's pods by label, so that 10,000 selectors over
// 100,000 pods cost the size of the answers, not their product.
type podIndex struct {
	byLabel map[string]map[*podInfo]struct{} // "key=value" → pods
}

func newPodIndex() *podIndex { return &podIndex{byLabel: map[string]map[*podInfo]struct{}{}} }

func labelKey(k, v string) string { return k + "=" + v }

func compactLabels(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]string, 0, 2*len(m))
	for _, k := range keys {
		out = append(out, k, m[k])
	}
	return out
}

func (pi *podInfo) label(k string) (string, bool) {
	for i := 0; i+1 < len(pi.Labels); i += 2 {
		if pi.Labels[i] == k {
			return pi.Labels[i+1], true
		}
	}
	return "", false
}

func (pi *podInfo) labelMap() map[string]string {
	if len(pi.Labels) == 0 {
		return nil
	}
	m := make(map[string]string, len(pi.Labels)/2)
	for i := 0; i+1 < len(pi.Labels); i += 2 {
		m[pi.Labels[i]] = pi.Labels[i+1]
	}
	return m
}

func (ix *podIndex) add(p *podInfo) {
	for i := 0; i+1 < len(p.Labels); i += 2 {
		lk := labelKey(p.Labels[i], p.Labels[i+1])
		m := ix.byLabel[lk]
		if m == nil {
			m = map[*podInfo]struct{}{}
			ix.byLabel[lk] = m
		}
		m[p] = struct{}{}
	}
}

func (ix *podIndex) remove(p *podInfo) {
	for i := 0; i+1 < len(p.Labels); i += 2 {
		lk := labelKey(p.Labels[i], p.Labels[i+1])
		if m := ix.byLabel[lk]; m != nil {
			delete(m, p)
			if len(m) == 0 {
				delete(ix.byLabel, lk)
			}
		}
	}
}

// match returns the pods whose labels include every selector pair, sorted by name.
func (ix *podIndex) match(sel map[string]string) []*podInfo {
	if len(sel) == 0 {
		return nil
	}
	var smallest map[*podInfo]struct{}
	for k, v := range sel {
		m := ix.byLabel[labelKey(k, v)]
		if len(m) == 0 {
			return nil
		}
		if smallest == nil || len(m) < len(smallest) {
			smallest = m
		}
	}
	var out []*podInfo
	for p := range smallest {
		ok := true
		for k, v := range sel {
			if pv, has := p.label(k); !has || pv != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *podInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// podIPs returns a pod's IPs; status.podIP is authoritative, as in the API server's
// conversion.
func podIPs(pod *v1.Pod) []netip.Addr {
	var ss []string
	if pod.Status.PodIP != "" && (len(pod.Status.PodIPs) == 0 || pod.Status.PodIPs[0].IP != pod.Status.PodIP) {
		ss = []string{pod.Status.PodIP}
	} else {
		for _, ip := range pod.Status.PodIPs {
			ss = append(ss, ip.IP)
		}
	}
	var out []netip.Addr
	for _, s := range ss {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// findPort resolves a service port's targetPort on a pod, as the endpoint
// controllers' FindPort does: a number is used as is; a name is looked up in the
// pod's named container ports with the service port's protocol.
func findPort(pod *podInfo, sp *v1.ServicePort) (int32, bool) {
	tp := sp.TargetPort
	if tp.Type == intstr.Int {
		if tp.IntVal == 0 {
			return sp.Port, true
		}
		return tp.IntVal, true
	}
	if tp.StrVal == "" {
		return sp.Port, true
	}
	proto := sp.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	for _, p := range pod.Ports {
		if p.Name == tp.StrVal && p.Protocol == proto {
			return p.Port, true
		}
	}
	return 0, false
}

// selectorSlices computes a service's EndpointSlices from the pods its selector
// matches, like the EndpointSlice controller: one slice per IP family of the
// service and per set of resolved ports (a named targetPort may resolve to
// different numbers on different pods; a pod without the name is left out of
// that port).
func selectorSlices(svc *v1.Service, pods []*podInfo, zoneOf func(node string) string) []*discovery.EndpointSlice {
	type group struct {
		family discovery.AddressType
		ports  []discovery.EndpointPort
		eps    []discovery.Endpoint
	}
	groups := map[string]*group{}
	var order []string
	for _, pod := range pods {
		// The controllers' ShouldPodBeInEndpoints, terminating pods included.
		if pod.Finished || len(pod.IPs) == 0 {
			continue
		}
		var ports []discovery.EndpointPort
		for i := range svc.Spec.Ports {
			sp := &svc.Spec.Ports[i]
			n, ok := findPort(pod, sp)
			if !ok {
				continue
			}
			name, proto := sp.Name, sp.Protocol
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			ports = append(ports, discovery.EndpointPort{Name: &name, Protocol: &proto, Port: &n, AppProtocol: sp.AppProtocol})
		}
		// The condition pointers are shared by every endpoint: 100,000 endpoints
		// would otherwise cost 300,000 tiny allocations. Nobody writes through them.
		serving := boolPtr(pod.Ready)
		terminating := boolPtr(pod.Terminating)
		ready := boolPtr(svc.Spec.PublishNotReadyAddresses || (pod.Ready && !pod.Terminating))
		for _, ip := range pod.IPs {
			fam := discovery.AddressTypeIPv4
			if ip.Is6() {
				fam = discovery.AddressTypeIPv6
			}
			if !serviceHasFamily(svc, v1.IPFamily(fam)) {
				continue
			}
			gk := string(fam) + "/" + portsKey(ports)
			g := groups[gk]
			if g == nil {
				g = &group{family: fam, ports: ports}
				groups[gk] = g
				order = append(order, gk)
			}
			ep := discovery.Endpoint{
				Addresses:  []string{ip.String()},
				Conditions: discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
				// No targetRef: nothing in kproxy reads it, and at 100,000 endpoints
				// it would be the largest part of the slices.
			}
			if pod.NodeName != "" {
				nn := pod.NodeName
				ep.NodeName = &nn
				if z := zoneOf(nn); z != "" {
					ep.Zone = &z
				}
			}
			if pod.Hostname != "" && pod.Subdomain == svc.Name {
				h := pod.Hostname
				ep.Hostname = &h
			}
			g.eps = append(g.eps, ep)
		}
	}
	slices.Sort(order)
	perFamily := map[discovery.AddressType]int{}
	for _, gk := range order {
		perFamily[groups[gk].family]++
	}
	var out []*discovery.EndpointSlice
	for _, gk := range order {
		g := groups[gk]
		name := svc.Name + "-" + strings.ToLower(string(g.family))
		if perFamily[g.family] > 1 {
			sum := sha256.Sum256([]byte(gk))
			name += "-" + hex.EncodeToString(sum[:])[:6]
		}
		out = append(out, newSlice(svc.Namespace, name, svc.Name, g.family, g.ports, g.eps))
	}
	return out
}

var trueVal, falseVal = true, false

func boolPtr(b bool) *bool {
	if b {
		return &trueVal
	}
	return &falseVal
}

func serviceHasFamily(svc *v1.Service, fam v1.IPFamily) bool {
	if len(svc.Spec.IPFamilies) == 0 {
		return true
	}
	return slices.Contains(svc.Spec.IPFamilies, fam)
}

func portsKey(ports []discovery.EndpointPort) string {
	var b strings.Builder
	for _, p := range ports {
		b.WriteString(*p.Name)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(int(*p.Port)))
		b.WriteByte('/')
		b.WriteString(string(*p.Protocol))
		b.WriteByte(',')
	}
	return b.String()
}

func newSlice(ns, name, svcName string, fam discovery.AddressType, ports []discovery.EndpointPort, eps []discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: KindEndpointSlice},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discovery.LabelServiceName: svcName,
			discovery.LabelManagedBy:   ManagedBy,
		}},
		AddressType: fam,
		Endpoints:   eps,
		Ports:       ports,
	}
}

// endpointsSlices converts v1 Endpoints into EndpointSlices, like the
// EndpointSlice mirroring controller: one slice per subset and IP family;
// notReadyAddresses are not ready.
func endpointsSlices(e *v1.Endpoints) []*discovery.EndpointSlice {
	var out []*discovery.EndpointSlice
	for si, ss := range e.Subsets {
		var ports []discovery.EndpointPort
		for _, p := range ss.Ports {
			name, proto, port := p.Name, p.Protocol, p.Port
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			ports = append(ports, discovery.EndpointPort{Name: &name, Protocol: &proto, Port: &port, AppProtocol: p.AppProtocol})
		}
		byFam := map[discovery.AddressType][]discovery.Endpoint{}
		add := func(addrs []v1.EndpointAddress, ready bool) {
			for _, a := range addrs {
				ip, err := netip.ParseAddr(a.IP)
				if err != nil {
					continue
				}
				fam := discovery.AddressTypeIPv4
				if ip.Unmap().Is6() {
					fam = discovery.AddressTypeIPv6
				}
				r := ready
				ep := discovery.Endpoint{Addresses: []string{ip.Unmap().String()},
					Conditions: discovery.EndpointConditions{Ready: &r}, TargetRef: a.TargetRef}
				if a.NodeName != nil {
					nn := *a.NodeName
					ep.NodeName = &nn
				}
				if a.Hostname != "" {
					h := a.Hostname
					ep.Hostname = &h
				}
				byFam[fam] = append(byFam[fam], ep)
			}
		}
		add(ss.Addresses, true)
		add(ss.NotReadyAddresses, false)
		for _, fam := range []discovery.AddressType{discovery.AddressTypeIPv4, discovery.AddressTypeIPv6} {
			if eps := byFam[fam]; len(eps) > 0 {
				name := e.Name + "-mirror-" + strings.ToLower(string(fam)) + "-" + strconv.Itoa(si)
				out = append(out, newSlice(e.Namespace, name, e.Name, fam, ports, eps))
			}
		}
	}
	return out
}
