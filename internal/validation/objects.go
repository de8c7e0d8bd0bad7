package validation

import (
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/sets"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The API server's size limits for an EndpointSlice.
const (
	maxEndpoints       = 1000
	maxAddresses       = 100
	maxPorts           = 20000
	maxTopologyLabels  = 16
	maxZoneOrNodeHints = 8
)

var supportedAddressTypes = sets.New(discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN)

// Pod validates the parts of a Pod that kproxy reads to build endpoints: its
// metadata (name, namespace, labels), its containers' names and ports (a named
// targetPort resolves through them) and its IPs. The rest of the pod spec (images,
// volumes, ...) is the kubelet's business and is not checked.
func Pod(pod *v1.Pod, opts Options) field.ErrorList {
	if pod == nil {
		return field.ErrorList{field.Required(field.NewPath(""), "pod is nil")}
	}
	errs := apivalidation.ValidateObjectMeta(&pod.ObjectMeta, true, podName, field.NewPath("metadata"))
	specPath := field.NewPath("spec")
	errs = append(errs, containers(pod.Spec.InitContainers, specPath.Child("initContainers"))...)
	errs = append(errs, containers(pod.Spec.Containers, specPath.Child("containers"))...)
	if pod.Spec.NodeName != "" {
		for _, msg := range nodeName(pod.Spec.NodeName, false) {
			errs = append(errs, field.Invalid(specPath.Child("nodeName"), pod.Spec.NodeName, msg))
		}
	}
	errs = append(errs, podIPs(pod, opts)...)
	return errs
}

func containers(cs []v1.Container, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := sets.New[string]()
	for i := range cs {
		c := &cs[i]
		idx := path.Index(i)
		if c.Name == "" {
			errs = append(errs, field.Required(idx.Child("name"), ""))
		} else {
			errs = append(errs, dns1123Label(idx.Child("name"), c.Name)...)
			if names.Has(c.Name) {
				errs = append(errs, field.Duplicate(idx.Child("name"), c.Name))
			}
			names.Insert(c.Name)
		}
		errs = append(errs, containerPorts(c.Ports, idx.Child("ports"))...)
	}
	return errs
}

// containerPorts follows kube-apiserver's validateContainerPorts. Port names are
// unique within a container (kube-apiserver only warns about the same name in two
// containers; kproxy resolves a named targetPort to the first match).
func containerPorts(ports []v1.ContainerPort, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := sets.New[string]()
	for i := range ports {
		p := &ports[i]
		idx := path.Index(i)
		if p.Name != "" {
			if nameErrs := portName(idx.Child("name"), p.Name); len(nameErrs) > 0 {
				errs = append(errs, nameErrs...)
			} else if names.Has(p.Name) {
				errs = append(errs, field.Duplicate(idx.Child("name"), p.Name))
			} else {
				names.Insert(p.Name)
			}
		}
		if p.ContainerPort == 0 {
			errs = append(errs, field.Required(idx.Child("containerPort"), ""))
		} else {
			errs = append(errs, portNum(idx.Child("containerPort"), p.ContainerPort)...)
		}
		if p.HostPort != 0 {
			errs = append(errs, portNum(idx.Child("hostPort"), p.HostPort)...)
		}
		// An omitted protocol defaults to TCP.
		if p.Protocol != "" && !supportedPortProtocols.Has(p.Protocol) {
			errs = append(errs, field.NotSupported(idx.Child("protocol"), p.Protocol, sets.List(supportedPortProtocols)))
		}
	}
	return errs
}

// podIPs follows kube-apiserver's validatePodIPs. As in the v1 → internal
// conversion, status.podIP is authoritative: it becomes podIPs[0] when podIPs is
// empty or starts with another address, and errors are reported on podIPs.
func podIPs(pod *v1.Pod, opts Options) field.ErrorList {
	ips := pod.Status.PodIPs
	if pod.Status.PodIP != "" && (len(ips) == 0 || ips[0].IP != pod.Status.PodIP) {
		ips = []v1.PodIP{{IP: pod.Status.PodIP}}
	}
	path := field.NewPath("status", "podIPs")
	var errs field.ErrorList
	for i, ip := range ips {
		errs = append(errs, validIP(path.Index(i), ip.IP, opts)...)
	}
	if len(errs) > 0 || len(ips) < 2 {
		return errs
	}
	v4, v6 := false, false
	for _, ip := range ips {
		if isIPv6(ip.IP) {
			v6 = true
		} else {
			v4 = true
		}
	}
	if !v4 || !v6 || len(ips) > 2 {
		values := make([]string, len(ips))
		for i, ip := range ips {
			values[i] = ip.IP
		}
		errs = append(errs, field.Invalid(path, values, "may specify no more than one IP for each IP family"))
	}
	seen := sets.New[string]()
	for i, ip := range ips {
		if seen.Has(ip.IP) {
			errs = append(errs, field.Duplicate(path.Index(i), ip.IP))
		}
		seen.Insert(ip.IP)
	}
	return errs
}

// EndpointSlice validates an EndpointSlice as kube-apiserver does
// (ValidateEndpointSlice): metadata, addressType, the addresses of every endpoint
// against it, node names, hostnames, hints, and the ports.
func EndpointSlice(slice *discovery.EndpointSlice, opts Options) field.ErrorList {
	if slice == nil {
		return field.ErrorList{field.Required(field.NewPath(""), "endpointslice is nil")}
	}
	errs := apivalidation.ValidateObjectMeta(&slice.ObjectMeta, true, endpointSliceName, field.NewPath("metadata"))
	typePath := field.NewPath("addressType")
	switch {
	case slice.AddressType == "":
		errs = append(errs, field.Required(typePath, ""))
	case !supportedAddressTypes.Has(slice.AddressType):
		errs = append(errs, field.NotSupported(typePath, slice.AddressType, sets.List(supportedAddressTypes)))
	}
	errs = append(errs, endpoints(slice.Endpoints, slice.AddressType, field.NewPath("endpoints"), opts)...)
	errs = append(errs, endpointPorts(slice.Ports, field.NewPath("ports"))...)
	return errs
}

func endpoints(eps []discovery.Endpoint, addrType discovery.AddressType, path *field.Path, opts Options) field.ErrorList {
	if len(eps) > maxEndpoints {
		return field.ErrorList{field.TooMany(path, len(eps), maxEndpoints)}
	}
	var errs field.ErrorList
	for i := range eps {
		ep := &eps[i]
		idx := path.Index(i)
		addrPath := idx.Child("addresses")
		switch {
		case len(ep.Addresses) == 0:
			errs = append(errs, field.Required(addrPath, "must contain at least 1 address"))
		case len(ep.Addresses) > maxAddresses:
			errs = append(errs, field.TooMany(addrPath, len(ep.Addresses), maxAddresses))
		}
		for j, addr := range ep.Addresses {
			errs = append(errs, endpointAddress(addrPath.Index(j), addr, addrType, opts)...)
		}
		if ep.NodeName != nil {
			for _, msg := range nodeName(*ep.NodeName, false) {
				errs = append(errs, field.Invalid(idx.Child("nodeName"), *ep.NodeName, msg))
			}
		}
		topoPath := idx.Child("deprecatedTopology")
		if len(ep.DeprecatedTopology) > maxTopologyLabels {
			errs = append(errs, field.TooMany(topoPath, len(ep.DeprecatedTopology), maxTopologyLabels))
		}
		errs = append(errs, metav1validation.ValidateLabels(ep.DeprecatedTopology, topoPath)...)
		if ep.Zone != nil {
			for _, msg := range utilvalidation.IsValidLabelValue(*ep.Zone) {
				errs = append(errs, field.Invalid(idx.Child("zone"), *ep.Zone, msg))
			}
		}
		if ep.Hostname != nil {
			errs = append(errs, dns1123Label(idx.Child("hostname"), *ep.Hostname)...)
		}
		if ep.Hints != nil {
			errs = append(errs, hints(ep.Hints, idx.Child("hints"))...)
		}
	}
	return errs
}

func endpointAddress(path *field.Path, addr string, addrType discovery.AddressType, opts Options) field.ErrorList {
	switch addrType {
	case discovery.AddressTypeIPv4, discovery.AddressTypeIPv6:
		if errs := validIP(path, addr, opts); len(errs) > 0 {
			return errs
		}
		var errs field.ErrorList
		if addrType == discovery.AddressTypeIPv4 && isIPv6(addr) {
			errs = append(errs, field.Invalid(path, addr, "must be an IPv4 address"))
		}
		if addrType == discovery.AddressTypeIPv6 && !isIPv6(addr) {
			errs = append(errs, field.Invalid(path, addr, "must be an IPv6 address"))
		}
		return append(errs, nonSpecialIP(path, addr)...)
	case discovery.AddressTypeFQDN:
		return utilvalidation.IsFullyQualifiedDomainName(path, addr)
	}
	// An unknown address type was reported once, on addressType.
	return nil
}

func hints(h *discovery.EndpointHints, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	zonesPath := path.Child("forZones")
	if len(h.ForZones) > maxZoneOrNodeHints {
		errs = append(errs, field.TooMany(zonesPath, len(h.ForZones), maxZoneOrNodeHints))
	} else {
		seen := sets.New[string]()
		for i, z := range h.ForZones {
			p := zonesPath.Index(i).Child("name")
			if seen.Has(z.Name) {
				errs = append(errs, field.Duplicate(p, z.Name))
			}
			seen.Insert(z.Name)
			for _, msg := range utilvalidation.IsValidLabelValue(z.Name) {
				errs = append(errs, field.Invalid(p, z.Name, msg))
			}
		}
	}
	nodesPath := path.Child("forNodes")
	if len(h.ForNodes) > maxZoneOrNodeHints {
		errs = append(errs, field.TooMany(nodesPath, len(h.ForNodes), maxZoneOrNodeHints))
	} else {
		seen := sets.New[string]()
		for i, n := range h.ForNodes {
			p := nodesPath.Index(i).Child("name")
			if seen.Has(n.Name) {
				errs = append(errs, field.Duplicate(p, n.Name))
			}
			seen.Insert(n.Name)
			for _, msg := range nodeName(n.Name, false) {
				errs = append(errs, field.Invalid(p, n.Name, msg))
			}
		}
	}
	return errs
}

func endpointPorts(ports []discovery.EndpointPort, path *field.Path) field.ErrorList {
	if len(ports) > maxPorts {
		return field.ErrorList{field.TooMany(path, len(ports), maxPorts)}
	}
	var errs field.ErrorList
	names := sets.New[string]()
	for i := range ports {
		p := &ports[i]
		idx := path.Index(i)
		// An omitted name is the empty name, which at most one port may have.
		var name string
		if p.Name != nil {
			name = *p.Name
		}
		if name != "" {
			errs = append(errs, dns1123Label(idx.Child("name"), name)...)
		}
		if names.Has(name) {
			errs = append(errs, field.Duplicate(idx.Child("name"), name))
		}
		names.Insert(name)
		// An omitted protocol defaults to TCP.
		if p.Protocol != nil && !supportedPortProtocols.Has(*p.Protocol) {
			errs = append(errs, field.NotSupported(idx.Child("protocol"), *p.Protocol, sets.List(supportedPortProtocols)))
		}
		// kube-apiserver leaves the number unchecked, but kproxy programs it: a
		// port outside 1-65535 could never be reached.
		if p.Port != nil {
			errs = append(errs, portNum(idx.Child("port"), *p.Port)...)
		}
		if p.AppProtocol != nil {
			for _, msg := range content.IsLabelKey(*p.AppProtocol) {
				errs = append(errs, field.Invalid(idx.Child("appProtocol"), *p.AppProtocol, msg))
			}
		}
	}
	return errs
}

// Node validates the parts of a Node that kproxy reads: its name and labels (the
// topology zone), its addresses (NodePorts listen on them) and its pod CIDRs.
func Node(node *v1.Node, opts Options) field.ErrorList {
	if node == nil {
		return field.ErrorList{field.Required(field.NewPath(""), "node is nil")}
	}
	errs := apivalidation.ValidateObjectMeta(&node.ObjectMeta, false, nodeName, field.NewPath("metadata"))

	cidrsPath := field.NewPath("spec", "podCIDRs")
	cidrErrs := field.ErrorList{}
	for i, c := range node.Spec.PodCIDRs {
		cidrErrs = append(cidrErrs, validCIDR(cidrsPath.Index(i), c, opts)...)
	}
	if len(node.Spec.PodCIDRs) == 0 && node.Spec.PodCIDR != "" {
		// The API server takes a lone podCIDR as podCIDRs[0] and validates it
		// as such; with podCIDRs set, podCIDR is overwritten by podCIDRs[0].
		cidrErrs = append(cidrErrs, validCIDR(field.NewPath("spec", "podCIDR"), node.Spec.PodCIDR, opts)...)
	}
	errs = append(errs, cidrErrs...)
	if len(cidrErrs) == 0 && len(node.Spec.PodCIDRs) > 1 {
		v4, v6 := false, false
		for _, c := range node.Spec.PodCIDRs {
			if isIPv6CIDR(c) {
				v6 = true
			} else {
				v4 = true
			}
		}
		if !v4 || !v6 || len(node.Spec.PodCIDRs) > 2 {
			errs = append(errs, field.Invalid(cidrsPath, node.Spec.PodCIDRs, "may specify no more than one CIDR for each IP family"))
		}
	}

	addrsPath := field.NewPath("status", "addresses")
	seen := sets.New[v1.NodeAddress]()
	for i, a := range node.Status.Addresses {
		idx := addrsPath.Index(i)
		if seen.Has(a) {
			errs = append(errs, field.Duplicate(idx, a))
		}
		seen.Insert(a)
		// kube-apiserver does not look inside node addresses; kproxy listens on the
		// IP ones, so an unparseable IP is an error here.
		if a.Type == v1.NodeInternalIP || a.Type == v1.NodeExternalIP {
			errs = append(errs, validIP(idx.Child("address"), a.Address, opts)...)
		}
	}
	return errs
}

// isIPv6CIDR reports whether a (valid) CIDR string is an IPv6 one.
func isIPv6CIDR(value string) bool {
	ip, _, ok := strings.Cut(value, "/")
	return ok && isIPv6(ip)
}
