package model

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// DefaultAffinityTimeout is the ClientIP affinity timeout when the spec gives none (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// IsProxied reports whether a service gets data-plane rules: it has a cluster IP
// (not headless) and is not an ExternalName service.
func IsProxied(svc *v1.Service) bool {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return false
	}
	ip := svc.Spec.ClusterIP
	return ip != "" && ip != v1.ClusterIPNone
}

// ServicePorts converts a Service into its ServicePorts. Unparseable addresses are
// skipped (sources validate before handing objects over).
func ServicePorts(svc *v1.Service) []*ServicePort {
	if !IsProxied(svc) {
		return nil
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	cips := parseLenient(clusterIPs)
	eips := parseLenient(svc.Spec.ExternalIPs)
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy) {
				continue
			}
			if ip, err := netip.ParseAddr(ing.IP); err == nil {
				lbIPs = append(lbIPs, ip.Unmap())
			}
		}
	}
	var ranges []netip.Prefix
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		if p, err := netip.ParsePrefix(strings.TrimSpace(r)); err == nil {
			ranges = append(ranges, p.Masked())
		}
	}
	var timeout time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		timeout = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			timeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	externalType := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer
	var td string
	if svc.Spec.TrafficDistribution != nil {
		td = *svc.Spec.TrafficDistribution
	}
	out := make([]*ServicePort, 0, len(svc.Spec.Ports))
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		sp := &ServicePort{
			Name:                     ServicePortName{NamespacedName: name, Port: p.Name, Protocol: proto},
			Type:                     svc.Spec.Type,
			Port:                     p.Port,
			Protocol:                 proto,
			ClusterIPs:               cips,
			ExternalIPs:              eips,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: ranges,
			AffinityTimeout:          timeout,
			InternalPolicyLocal:      svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
			TrafficDistribution:      td,
		}
		if externalType {
			sp.NodePort = p.NodePort
		}
		// externalTrafficPolicy applies to NodePorts, load balancer IPs and external IPs.
		if sp.ExternallyAccessible() && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
			sp.ExternalPolicyLocal = true
			if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
				sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
			}
		}
		out = append(out, sp)
	}
	return out
}

func parseLenient(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if ip, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// ServiceNameOf returns the service an EndpointSlice belongs to (its
// kubernetes.io/service-name label), and false when it has none.
func ServiceNameOf(slice *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := slice.Labels[discovery.LabelServiceName]
	if name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: slice.Namespace, Name: name}, true
}

// endpointsFor collects the endpoints of one service port from the service's slices:
// the slice ports that match the port's name and protocol, deduplicated by address.
func endpointsFor(sp *ServicePort, slices_ []*discovery.EndpointSlice, nodeName string, unassignedLocal bool) []*Endpoint {
	// The endpoints live in one block per call (a 10,000-service start-up
	// converts 100,000 of them); duplicates are dropped after sorting.
	n := 0
	for _, slice := range slices_ {
		n += len(slice.Endpoints)
	}
	block := make([]Endpoint, 0, n)
	var out []*Endpoint
	for _, slice := range slices_ {
		if slice.AddressType != discovery.AddressTypeIPv4 && slice.AddressType != discovery.AddressTypeIPv6 {
			continue // FQDN slices are not proxied
		}
		if _, ok := slice.Labels[v1.IsHeadlessService]; ok {
			// kube-proxy's informers leave out slices labelled headless (the
			// EndpointSlice controller's mark for headless services' slices),
			// whoever set the label: a service's port gets no endpoint from
			// them. kproxy keeps them for its DNS, which answers for headless
			// services from their slices.
			continue
		}
		for _, port := range slice.Ports {
			if port.Port == nil || ptrString(port.Name) != sp.Name.Port {
				continue
			}
			proto := v1.ProtocolTCP
			if port.Protocol != nil {
				proto = *port.Protocol
			}
			if proto != sp.Protocol {
				continue
			}
			for i := range slice.Endpoints {
				e := &slice.Endpoints[i]
				if len(e.Addresses) == 0 {
					continue
				}
				// Like kube-proxy, only the first address counts (the others are
				// reserved by the API for future use).
				ip, err := netip.ParseAddr(e.Addresses[0])
				if err != nil {
					continue
				}
				ip = ip.Unmap()
				ready := e.Conditions.Ready == nil || *e.Conditions.Ready
				serving := ready
				if e.Conditions.Serving != nil {
					serving = *e.Conditions.Serving
				}
				if len(block) == cap(block) {
					// A slice lists its port twice: more endpoints than counted.
					block = make([]Endpoint, 0, n)
				}
				block = append(block, Endpoint{
					IP:          ip,
					Port:        *port.Port,
					Ready:       ready,
					Serving:     serving,
					Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
					NodeName:    ptrString(e.NodeName),
					Zone:        ptrString(e.Zone),
					Hostname:    ptrString(e.Hostname),
				})
				ep := &block[len(block)-1]
				if e.Hints != nil {
					for _, z := range e.Hints.ForZones {
						ep.ZoneHints = append(ep.ZoneHints, z.Name)
					}
					for _, n := range e.Hints.ForNodes {
						ep.NodeHints = append(ep.NodeHints, n.Name)
					}
				}
				ep.Local = (nodeName != "" && ep.NodeName == nodeName) || (unassignedLocal && ep.NodeName == "")
				out = append(out, ep)
			}
		}
	}
	// Stable, so that of two slices listing one address and port the first
	// (slices come sorted by name) wins, as it always has.
	slices.SortStableFunc(out, func(a, b *Endpoint) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return slices.CompactFunc(out, func(a, b *Endpoint) bool { return a.IP == b.IP && a.Port == b.Port })
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
