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
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the slices kproxy
// computes from pods and from v1 Endpoints.
const ManagedBy = "kproxy.manifest"

// podIndex finds a namespace's pods by label, so that 10,000 selectors over
// 100,000 pods cost the size of the answers, not their product.
type podIndex struct {
	byLabel map[string]map[*v1.Pod]struct{} // "key=value" → pods
}

func newPodIndex() *podIndex { return &podIndex{byLabel: map[string]map[*v1.Pod]struct{}{}} }

func labelKey(k, v string) string { return k + "=" + v }

func (ix *podIndex) add(p *v1.Pod) {
	for k, v := range p.Labels {
		lk := labelKey(k, v)
		m := ix.byLabel[lk]
		if m == nil {
			m = map[*v1.Pod]struct{}{}
			ix.byLabel[lk] = m
		}
		m[p] = struct{}{}
	}
}

func (ix *podIndex) remove(p *v1.Pod) {
	for k, v := range p.Labels {
		lk := labelKey(k, v)
		if m := ix.byLabel[lk]; m != nil {
			delete(m, p)
			if len(m) == 0 {
				delete(ix.byLabel, lk)
			}
		}
	}
}

// match returns the pods whose labels include every selector pair, sorted by name.
func (ix *podIndex) match(sel map[string]string) []*v1.Pod {
	if len(sel) == 0 {
		return nil
	}
	var smallest map[*v1.Pod]struct{}
	for k, v := range sel {
		m := ix.byLabel[labelKey(k, v)]
		if len(m) == 0 {
			return nil
		}
		if smallest == nil || len(m) < len(smallest) {
			smallest = m
		}
	}
	var out []*v1.Pod
	for p := range smallest {
		ok := true
		for k, v := range sel {
			if pv, has := p.Labels[k]; !has || pv != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *v1.Pod) int { return cmp.Compare(a.Name, b.Name) })
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

// podInEndpoints is the endpoint controllers' ShouldPodBeInEndpoints with
// terminating pods included: not finished, and with an IP.
func podInEndpoints(pod *v1.Pod) bool {
	if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return false
	}
	return pod.Status.PodIP != "" || len(pod.Status.PodIPs) > 0
}

func podReady(pod *v1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// findPort resolves a service port's targetPort on a pod, as the endpoint
// controllers do: a number is used as is; a name is looked up in the ports of the
// pod's containers and sidecars with the service port's protocol.
func findPort(pod *v1.Pod, sp *v1.ServicePort) (int32, bool) {
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
	find := func(cs []v1.Container, sidecarsOnly bool) (int32, bool) {
		for i := range cs {
			c := &cs[i]
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != v1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				pp := p.Protocol
				if pp == "" {
					pp = v1.ProtocolTCP
				}
				if p.Name == tp.StrVal && pp == proto {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	}
	if n, ok := find(pod.Spec.Containers, false); ok {
		return n, true
	}
	return find(pod.Spec.InitContainers, true)
}

// selectorSlices computes a service's EndpointSlices from the pods its selector
// matches, like the EndpointSlice controller: one slice per IP family of the
// service and per set of resolved ports (a named targetPort may resolve to
// different numbers on different pods; a pod without the name is left out of
// that port).
func selectorSlices(svc *v1.Service, pods []*v1.Pod, zoneOf func(node string) string) []*discovery.EndpointSlice {
	type group struct {
		family discovery.AddressType
		ports  []discovery.EndpointPort
		eps    []discovery.Endpoint
	}
	groups := map[string]*group{}
	var order []string
	for _, pod := range pods {
		if !podInEndpoints(pod) {
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
		serving := podReady(pod)
		terminating := pod.DeletionTimestamp != nil
		ready := svc.Spec.PublishNotReadyAddresses || (serving && !terminating)
		for _, ip := range podIPs(pod) {
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
				Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
				TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
			}
			if pod.Spec.NodeName != "" {
				nn := pod.Spec.NodeName
				ep.NodeName = &nn
				if z := zoneOf(nn); z != "" {
					ep.Zone = &z
				}
			}
			if pod.Spec.Hostname != "" && pod.Spec.Subdomain == svc.Name {
				h := pod.Spec.Hostname
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
