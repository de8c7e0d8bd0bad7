package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one service, as kube-proxy does.
type ServicePortName struct {
	types.NamespacedName
	Port     string // the port's name; empty for a service with one unnamed port
	Protocol v1.Protocol
}

// String gives kube-proxy's form, "ns/name:port" (or "ns/name" for an unnamed port).
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// ServicePort is the slim, immutable view of one service port that data planes program.
type ServicePort struct {
	Name     ServicePortName
	Type     v1.ServiceType
	Port     int32
	Protocol v1.Protocol
	// ClusterIPs holds one address per IP family, the primary family first. Empty for
	// services without a virtual IP.
	ClusterIPs []netip.Addr
	// NodePort is 0 unless the service is of type NodePort or LoadBalancer.
	NodePort int32
	// ExternalIPs are spec.externalIPs.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the status.loadBalancer.ingress IPs (ipMode Proxy excluded,
	// as kube-proxy does: the load balancer then delivers to the node, not to the VIP).
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges restricts traffic to LoadBalancerIPs; empty allows all.
	LoadBalancerSourceRanges []netip.Prefix
	// AffinityTimeout is the ClientIP session-affinity idle timeout; 0 means no affinity.
	AffinityTimeout time.Duration
	// ExternalPolicyLocal is externalTrafficPolicy: Local on an externally reachable service.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort is set for LoadBalancer services with externalTrafficPolicy Local.
	HealthCheckNodePort int32
	// TrafficDistribution is spec.trafficDistribution, if any.
	TrafficDistribution string
}

// SessionAffinity reports whether ClientIP affinity is on.
func (sp *ServicePort) SessionAffinity() bool { return sp.AffinityTimeout > 0 }

// ExternallyAccessible reports whether the port can be reached from outside the
// cluster: through a NodePort, an external IP or a load balancer IP.
func (sp *ServicePort) ExternallyAccessible() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// UsesClusterEndpoints reports whether some traffic to the port uses the
// cluster-wide endpoint set: traffic to the cluster IPs under a Cluster
// policy, and any externally accessible port, since even with an external
// policy Local pods and the node reach its external addresses through the
// cluster-wide set (the short-circuit), as in kube-proxy.
func (sp *ServicePort) UsesClusterEndpoints() bool {
	return !sp.InternalPolicyLocal || sp.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether some traffic to the port uses only this node's endpoints.
func (sp *ServicePort) UsesLocalEndpoints() bool {
	return sp.InternalPolicyLocal || (sp.ExternallyAccessible() && sp.ExternalPolicyLocal)
}

// ClusterIP returns the port's cluster IP of the given family, if it has one.
func (sp *ServicePort) ClusterIP(family v1.IPFamily) (netip.Addr, bool) {
	for _, ip := range sp.ClusterIPs {
		if FamilyOf(ip) == family {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func (sp *ServicePort) equal(o *ServicePort) bool {
	return sp.Name == o.Name && sp.Type == o.Type && sp.Port == o.Port && sp.Protocol == o.Protocol &&
		slices.Equal(sp.ClusterIPs, o.ClusterIPs) && sp.NodePort == o.NodePort &&
		slices.Equal(sp.ExternalIPs, o.ExternalIPs) && slices.Equal(sp.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(sp.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) &&
		sp.AffinityTimeout == o.AffinityTimeout && sp.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		sp.InternalPolicyLocal == o.InternalPolicyLocal && sp.HealthCheckNodePort == o.HealthCheckNodePort &&
		sp.TrafficDistribution == o.TrafficDistribution
}

// Endpoint is one backend of a service port: an address, the target port, and the
// conditions from its EndpointSlice.
type Endpoint struct {
	IP          netip.Addr
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName is the node the endpoint runs on, if known.
	NodeName string
	Zone     string
	Hostname string
	// ZoneHints and NodeHints are the EndpointSlice topology hints.
	ZoneHints []string
	NodeHints []string
	// Local is true when NodeName is this node.
	Local bool
}

// AddrPort returns the endpoint's address and port.
func (e *Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, uint16(e.Port)) }

// String gives "ip:port" ("[ip]:port" for IPv6).
func (e *Endpoint) String() string { return e.AddrPort().String() }

// Family returns the endpoint's IP family.
func (e *Endpoint) Family() v1.IPFamily { return FamilyOf(e.IP) }

func (e *Endpoint) equal(o *Endpoint) bool {
	return e.IP == o.IP && e.Port == o.Port && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.NodeName == o.NodeName && e.Zone == o.Zone &&
		e.Hostname == o.Hostname && slices.Equal(e.ZoneHints, o.ZoneHints) &&
		slices.Equal(e.NodeHints, o.NodeHints) && e.Local == o.Local
}

// PortView is one service port with its endpoints, categorized for this node.
type PortView struct {
	*ServicePort
	// Endpoints are all endpoints of the port (both families, any condition), sorted.
	Endpoints []*Endpoint
	// Cluster are the endpoints for traffic under a Cluster policy: ready ones
	// (topology-filtered), or serving-terminating ones when none is ready. Nil when
	// no traffic uses the cluster-wide set.
	Cluster []*Endpoint
	// Local are this node's endpoints for traffic under a Local policy: ready ones,
	// or serving-terminating ones when none is ready. Nil when no traffic uses them.
	Local []*Endpoint
	// HasAny is true when some usable endpoint exists anywhere in the cluster.
	HasAny bool
	hasAny [2]bool // HasAny per family: IPv4, IPv6
}

// HasAnyOf is HasAny for one IP family: whether traffic to the port's
// addresses of that family has a usable endpoint anywhere. A dual-stack
// service whose endpoints are all IPv4 has none for IPv6, so its IPv6
// addresses reject, as kube-proxy's IPv6 proxier does.
func (pv *PortView) HasAnyOf(family v1.IPFamily) bool {
	if family == v1.IPv6Protocol {
		return pv.hasAny[1]
	}
	return pv.hasAny[0]
}

// InternalEndpoints are the endpoints for traffic to the cluster IPs.
func (pv *PortView) InternalEndpoints() []*Endpoint {
	if pv.InternalPolicyLocal {
		return pv.Local
	}
	return pv.Cluster
}

// ExternalEndpoints are the endpoints for traffic from outside the cluster to a
// NodePort, external IP or load balancer IP.
func (pv *PortView) ExternalEndpoints() []*Endpoint {
	if pv.ExternalPolicyLocal {
		return pv.Local
	}
	return pv.Cluster
}

func (pv *PortView) equal(o *PortView) bool {
	return pv.ServicePort.equal(o.ServicePort) && pv.HasAny == o.HasAny && pv.hasAny == o.hasAny &&
		endpointsEqual(pv.Endpoints, o.Endpoints) && endpointsEqual(pv.Cluster, o.Cluster) &&
		endpointsEqual(pv.Local, o.Local) && (pv.Cluster == nil) == (o.Cluster == nil) &&
		(pv.Local == nil) == (o.Local == nil)
}

func endpointsEqual(a, b []*Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y *Endpoint) bool { return x.equal(y) })
}

// ByFamily returns the endpoints of one IP family, in order.
func ByFamily(eps []*Endpoint, family v1.IPFamily) []*Endpoint {
	out := make([]*Endpoint, 0, len(eps))
	for _, ep := range eps {
		if ep.Family() == family {
			out = append(out, ep)
		}
	}
	return out
}

// FamilyOf returns the IP family of an address (IPv4-mapped IPv6 counts as IPv4).
func FamilyOf(ip netip.Addr) v1.IPFamily {
	if ip.Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// Node is what kproxy knows of the node it runs on.
type Node struct {
	Name      string
	Labels    map[string]string
	Addresses []netip.Addr
	// PodCIDRs are spec.podCIDRs (spec.podCIDR when that is all there is).
	PodCIDRs []netip.Prefix
	// Zone is the topology.kubernetes.io/zone label.
	Zone string
	// Deleting is true when the Node object is being deleted or tainted for removal
	// by the cluster autoscaler; /healthz then reports the node as going away.
	Deleting bool
}

// ParseAddrs parses a list of IP strings, skipping empty ones and "None".
func ParseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		if s == "" || s == v1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid IP %q: %w", s, err)
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// portKey is "port/protocol", used in error messages and logs.
func portKey(port int32, proto v1.Protocol) string {
	return strconv.Itoa(int(port)) + "/" + string(proto)
}
