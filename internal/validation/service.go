package validation

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/sets"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// maxClientIPAffinitySeconds is the longest ClientIP affinity timeout the API
// accepts (core.MaxClientIPServiceAffinitySeconds, one day).
const maxClientIPAffinitySeconds = 86400

var (
	supportedServiceTypes = sets.New(v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort,
		v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName)
	supportedPortProtocols        = sets.New(v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP)
	supportedSessionAffinityTypes = sets.New(v1.ServiceAffinityClientIP, v1.ServiceAffinityNone)
	supportedExternalPolicies     = sets.New(v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal)
	supportedInternalPolicies     = sets.New(v1.ServiceInternalTrafficPolicyCluster, v1.ServiceInternalTrafficPolicyLocal)
	supportedIPFamilies           = sets.New(v1.IPv4Protocol, v1.IPv6Protocol)
	supportedIPFamilyPolicies     = sets.New(v1.IPFamilyPolicySingleStack,
		v1.IPFamilyPolicyPreferDualStack, v1.IPFamilyPolicyRequireDualStack)
	supportedLoadBalancerIPModes = sets.New(v1.LoadBalancerIPModeVIP, v1.LoadBalancerIPModeProxy)
	// PreferSameZone and PreferSameNode joined PreferClose in v1.33 and are on by
	// default since; PreferClose is the older spelling of PreferSameZone.
	supportedTrafficDistributions = sets.New(v1.ServiceTrafficDistributionPreferClose,
		v1.ServiceTrafficDistributionPreferSameZone, v1.ServiceTrafficDistributionPreferSameNode)
)

// Service validates a Service as kube-apiserver does on create: metadata, type,
// ports, cluster IPs and IP families, session affinity, external name, external
// IPs, traffic policies, load-balancer source ranges, traffic distribution and the
// load-balancer status. svc is not modified: its defaulted copy is validated (see
// the package comment).
func Service(svc *v1.Service, opts Options) field.ErrorList {
	if svc == nil {
		return field.ErrorList{field.Required(field.NewPath(""), "service is nil")}
	}
	svc = defaultedService(svc)
	spec := &svc.Spec
	specPath := field.NewPath("spec")

	errs := apivalidation.ValidateObjectMeta(&svc.ObjectMeta, true, serviceName, field.NewPath("metadata"))

	headless := isHeadless(svc)
	if len(spec.Ports) == 0 && !headless && spec.Type != v1.ServiceTypeExternalName {
		errs = append(errs, field.Required(specPath.Child("ports"), ""))
	}
	switch spec.Type {
	case v1.ServiceTypeLoadBalancer:
		if headless {
			errs = append(errs, field.Invalid(specPath.Child("clusterIPs").Index(0), spec.ClusterIPs[0],
				"may not be set to 'None' for LoadBalancer services"))
		}
	case v1.ServiceTypeNodePort:
		if headless {
			errs = append(errs, field.Invalid(specPath.Child("clusterIPs").Index(0), spec.ClusterIPs[0],
				"may not be set to 'None' for NodePort services"))
		}
	case v1.ServiceTypeExternalName:
		if len(spec.ClusterIPs) > 0 {
			errs = append(errs, field.Forbidden(specPath.Child("clusterIPs"), "may not be set for ExternalName services"))
		}
		if len(spec.IPFamilies) > 0 {
			errs = append(errs, field.Forbidden(specPath.Child("ipFamilies"), "may not be set for ExternalName services"))
		}
		if spec.IPFamilyPolicy != nil {
			errs = append(errs, field.Forbidden(specPath.Child("ipFamilyPolicy"), "may not be set for ExternalName services"))
		}
		// The name is a CNAME target and may end in a dot to mark it fully qualified.
		cname := strings.TrimSuffix(spec.ExternalName, ".")
		if cname == "" {
			errs = append(errs, field.Required(specPath.Child("externalName"), ""))
		} else {
			for _, msg := range apivalidation.NameIsDNSSubdomain(cname, false) {
				errs = append(errs, field.Invalid(specPath.Child("externalName"), cname, msg))
			}
		}
	}

	// The API server's strategy drops a stray externalName on update; a manifest
	// that sets one on another type most likely meant type ExternalName, so say so.
	if spec.Type != v1.ServiceTypeExternalName && spec.ExternalName != "" {
		errs = append(errs, field.Forbidden(specPath.Child("externalName"), "may only be set when `type` is 'ExternalName'"))
	}

	portsPath := specPath.Child("ports")
	names := sets.New[string]()
	for i := range spec.Ports {
		errs = append(errs, servicePort(&spec.Ports[i], len(spec.Ports) > 1, names, portsPath.Index(i))...)
	}

	if spec.Selector != nil {
		errs = append(errs, metav1validation.ValidateLabels(spec.Selector, specPath.Child("selector"))...)
	}

	errs = append(errs, sessionAffinity(spec, specPath)...)
	errs = append(errs, clusterIPs(svc, opts)...)

	for i, ip := range spec.ExternalIPs {
		path := specPath.Child("externalIPs").Index(i)
		if ipErrs := validIP(path, ip, opts); len(ipErrs) > 0 {
			errs = append(errs, ipErrs...)
		} else {
			errs = append(errs, nonSpecialIP(path, ip)...)
		}
	}

	if !supportedServiceTypes.Has(spec.Type) {
		errs = append(errs, field.NotSupported(specPath.Child("type"), spec.Type, sets.List(supportedServiceTypes)))
	}

	if spec.Type == v1.ServiceTypeClusterIP {
		for i := range spec.Ports {
			if spec.Ports[i].NodePort != 0 {
				errs = append(errs, field.Forbidden(portsPath.Index(i).Child("nodePort"), "may not be used when `type` is 'ClusterIP'"))
			}
		}
	}

	// A node port is unique per protocol, like a port.
	type protoPort struct {
		proto v1.Protocol
		port  int32
	}
	nodePorts := sets.New[protoPort]()
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.NodePort == 0 {
			continue
		}
		key := protoPort{p.Protocol, p.NodePort}
		if nodePorts.Has(key) {
			errs = append(errs, field.Duplicate(portsPath.Index(i).Child("nodePort"), p.NodePort))
		}
		nodePorts.Insert(key)
	}
	ports := sets.New[protoPort]()
	for i := range spec.Ports {
		p := &spec.Ports[i]
		key := protoPort{p.Protocol, p.Port}
		if ports.Has(key) {
			errs = append(errs, field.Duplicate(portsPath.Index(i), fmt.Sprintf("%d/%s", p.Port, p.Protocol)))
		}
		ports.Insert(key)
	}

	errs = append(errs, sourceRanges(svc, opts)...)

	if spec.AllocateLoadBalancerNodePorts != nil && spec.Type != v1.ServiceTypeLoadBalancer {
		errs = append(errs, field.Forbidden(specPath.Child("allocateLoadBalancerNodePorts"), "may only be used when `type` is 'LoadBalancer'"))
	}

	errs = append(errs, trafficPolicies(svc, opts)...)

	if td := spec.TrafficDistribution; td != nil && !supportedTrafficDistributions.Has(*td) {
		errs = append(errs, field.NotSupported(specPath.Child("trafficDistribution"), *td, sets.List(supportedTrafficDistributions)))
	}

	errs = append(errs, loadBalancerStatus(svc, opts)...)
	return errs
}

// isHeadless reports whether the (defaulted) service has clusterIP None.
func isHeadless(svc *v1.Service) bool {
	return len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIPs[0] == v1.ClusterIPNone
}

// externallyAccessible mirrors kube-apiserver's helper: node ports, load
// balancers and cluster IPs with external IPs take traffic from outside, and
// only those may set externalTrafficPolicy.
func externallyAccessible(svc *v1.Service) bool {
	return svc.Spec.Type == v1.ServiceTypeLoadBalancer ||
		svc.Spec.Type == v1.ServiceTypeNodePort ||
		(svc.Spec.Type == v1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
}

// needsHealthCheck reports whether the service needs a healthCheckNodePort.
func needsHealthCheck(svc *v1.Service) bool {
	return svc.Spec.Type == v1.ServiceTypeLoadBalancer &&
		svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
}

func servicePort(sp *v1.ServicePort, requireName bool, names sets.Set[string], path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if requireName && sp.Name == "" {
		errs = append(errs, field.Required(path.Child("name"), ""))
	} else if sp.Name != "" {
		// Service port names are DNS labels, stricter than the IANA_SVC_NAME of
		// container ports (no 15-character limit, but no letter required either).
		errs = append(errs, dns1123Label(path.Child("name"), sp.Name)...)
		if names.Has(sp.Name) {
			errs = append(errs, field.Duplicate(path.Child("name"), sp.Name))
		} else {
			names.Insert(sp.Name)
		}
	}
	errs = append(errs, portNum(path.Child("port"), sp.Port)...)
	if !supportedPortProtocols.Has(sp.Protocol) {
		errs = append(errs, field.NotSupported(path.Child("protocol"), sp.Protocol, sets.List(supportedPortProtocols)))
	}
	errs = append(errs, portNumOrName(path.Child("targetPort"), sp.TargetPort)...)
	if sp.AppProtocol != nil {
		for _, msg := range content.IsLabelKey(*sp.AppProtocol) {
			errs = append(errs, field.Invalid(path.Child("appProtocol"), *sp.AppProtocol, msg))
		}
	}
	if sp.NodePort != 0 {
		errs = append(errs, portNum(path.Child("nodePort"), sp.NodePort)...)
	}
	return errs
}

// portNumOrName checks a targetPort: a port number, or the name of a container port.
func portNumOrName(path *field.Path, port intstr.IntOrString) field.ErrorList {
	switch port.Type {
	case intstr.Int:
		var errs field.ErrorList
		for _, msg := range utilvalidation.IsValidPortNum(port.IntValue()) {
			errs = append(errs, field.Invalid(path, port.IntValue(), msg))
		}
		return errs
	case intstr.String:
		return portName(path, port.StrVal)
	default:
		return field.ErrorList{field.InternalError(path, fmt.Errorf("unknown type: %v", port.Type))}
	}
}

func sessionAffinity(spec *v1.ServiceSpec, specPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if !supportedSessionAffinityTypes.Has(spec.SessionAffinity) {
		errs = append(errs, field.NotSupported(specPath.Child("sessionAffinity"), spec.SessionAffinity, sets.List(supportedSessionAffinityTypes)))
	}
	cfgPath := specPath.Child("sessionAffinityConfig")
	switch spec.SessionAffinity {
	case v1.ServiceAffinityClientIP:
		cfg := spec.SessionAffinityConfig
		switch {
		case cfg == nil:
			errs = append(errs, field.Required(cfgPath, "when session affinity type is ClientIP"))
		case cfg.ClientIP == nil:
			errs = append(errs, field.Required(cfgPath.Child("clientIP"), "when session affinity type is ClientIP"))
		case cfg.ClientIP.TimeoutSeconds == nil:
			errs = append(errs, field.Required(cfgPath.Child("clientIP", "timeoutSeconds"), "when session affinity type is ClientIP"))
		default:
			if t := *cfg.ClientIP.TimeoutSeconds; t <= 0 || t > maxClientIPAffinitySeconds {
				errs = append(errs, field.Invalid(cfgPath.Child("clientIP", "timeoutSeconds"), t,
					fmt.Sprintf("must be greater than 0 and less than %d", maxClientIPAffinitySeconds)))
			}
		}
	case v1.ServiceAffinityNone:
		if spec.SessionAffinityConfig != nil {
			errs = append(errs, field.Forbidden(cfgPath, "must not be set when session affinity is None"))
		}
	}
	return errs
}

// clusterIPs checks clusterIP, clusterIPs, ipFamilies and ipFamilyPolicy together
// (kube-apiserver's ValidateServiceClusterIPsRelatedFields, plus the static checks
// its service registry makes before allocating).
func clusterIPs(svc *v1.Service, opts Options) field.ErrorList {
	spec := &svc.Spec
	// ExternalName services were checked for having none of these.
	if spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	var errs field.ErrorList
	specPath := field.NewPath("spec")
	ipsPath := specPath.Child("clusterIPs")
	familiesPath := specPath.Child("ipFamilies")
	policyPath := specPath.Child("ipFamilyPolicy")

	if spec.ClusterIP != "" {
		if len(spec.ClusterIPs) == 0 {
			errs = append(errs, field.Required(ipsPath, ""))
		} else if spec.ClusterIPs[0] != spec.ClusterIP {
			errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "first value must match `clusterIP`"))
		}
	} else if len(spec.ClusterIPs) != 0 {
		errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "must be empty when `clusterIP` is not specified"))
	}

	seen := sets.New[v1.IPFamily]()
	for i, family := range spec.IPFamilies {
		if !supportedIPFamilies.Has(family) {
			errs = append(errs, field.NotSupported(familiesPath.Index(i), family, sets.List(supportedIPFamilies)))
		}
		// Unique families also means at most one of each, so at most two.
		if seen.Has(family) {
			errs = append(errs, field.Duplicate(familiesPath.Index(i), family))
		}
		seen.Insert(family)
	}

	if p := spec.IPFamilyPolicy; p != nil && !supportedIPFamilyPolicies.Has(*p) {
		errs = append(errs, field.NotSupported(policyPath, *p, sets.List(supportedIPFamilyPolicies)))
	}

	invalidIPs := false
	for i, ip := range spec.ClusterIPs {
		if i == 0 && ip == v1.ClusterIPNone {
			if len(spec.ClusterIPs) > 1 {
				invalidIPs = true
				errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "'None' must be the first and only value"))
			}
			continue
		}
		ipErrs := validIP(ipsPath.Index(i), ip, opts)
		invalidIPs = invalidIPs || len(ipErrs) > 0
		errs = append(errs, ipErrs...)
	}
	if len(spec.ClusterIPs) > 2 {
		errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "may only hold up to 2 values"))
	}
	// Family checks on addresses that are not addresses only add noise.
	if invalidIPs {
		return errs
	}

	if len(spec.ClusterIPs) > 1 {
		v4, v6 := false, false
		for _, ip := range spec.ClusterIPs {
			if isIPv6(ip) {
				v6 = true
			} else {
				v4 = true
			}
		}
		if !v4 || !v6 {
			errs = append(errs, field.Invalid(ipsPath, spec.ClusterIPs, "may specify no more than one IP for each IP family"))
		}
	}

	if !isHeadless(svc) {
		for i, ip := range spec.ClusterIPs {
			if i >= len(spec.IPFamilies) {
				break
			}
			switch {
			case spec.IPFamilies[i] == v1.IPv4Protocol && isIPv6(ip):
				errs = append(errs, field.Invalid(ipsPath.Index(i), ip, fmt.Sprintf("expected an IPv4 value as indicated by `ipFamilies[%v]`", i)))
			case spec.IPFamilies[i] == v1.IPv6Protocol && !isIPv6(ip):
				errs = append(errs, field.Invalid(ipsPath.Index(i), ip, fmt.Sprintf("expected an IPv6 value as indicated by `ipFamilies[%v]`", i)))
			}
		}
	}

	// The service registry refuses a single-stack policy with two of anything
	// before it allocates (alloc.go initIPFamilyFields).
	if p := spec.IPFamilyPolicy; p != nil && *p == v1.IPFamilyPolicySingleStack {
		if len(spec.ClusterIPs) == 2 {
			errs = append(errs, field.Invalid(policyPath, *p, "must be RequireDualStack or PreferDualStack when multiple 'clusterIPs' are specified"))
		}
		if len(spec.IPFamilies) == 2 {
			errs = append(errs, field.Invalid(policyPath, *p, "must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified"))
		}
	}
	return errs
}

// sourceRanges checks spec.loadBalancerSourceRanges, or the older annotation.
func sourceRanges(svc *v1.Service, opts Options) field.ErrorList {
	var errs field.ErrorList
	if len(svc.Spec.LoadBalancerSourceRanges) > 0 {
		// The capital L is kube-apiserver's own (a leftover of the field's
		// annotation days); users searching for the message find it this way.
		path := field.NewPath("spec", "LoadBalancerSourceRanges")
		if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
		}
		for i, value := range svc.Spec.LoadBalancerSourceRanges {
			// Space padding is tolerated for historical reasons.
			errs = append(errs, validCIDR(path.Index(i), strings.TrimSpace(value), opts)...)
		}
		return errs
	}
	val, ok := svc.Annotations[v1.AnnotationLoadBalancerSourceRangesKey]
	if !ok {
		return nil
	}
	path := field.NewPath("metadata", "annotations").Key(v1.AnnotationLoadBalancerSourceRangesKey)
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		errs = append(errs, field.Forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
	}
	if val = strings.TrimSpace(val); val != "" {
		for value := range strings.SplitSeq(val, ",") {
			errs = append(errs, validCIDR(path, strings.TrimSpace(value), opts)...)
		}
	}
	return errs
}

func trafficPolicies(svc *v1.Service, opts Options) field.ErrorList {
	var errs field.ErrorList
	spec := &svc.Spec
	specPath := field.NewPath("spec")
	etpPath := specPath.Child("externalTrafficPolicy")
	if !externallyAccessible(svc) {
		if spec.ExternalTrafficPolicy != "" {
			errs = append(errs, field.Invalid(etpPath, spec.ExternalTrafficPolicy, "may only be set for externally-accessible services"))
		}
	} else if !supportedExternalPolicies.Has(spec.ExternalTrafficPolicy) {
		errs = append(errs, field.NotSupported(etpPath, spec.ExternalTrafficPolicy, sets.List(supportedExternalPolicies)))
	}

	hcPath := specPath.Child("healthCheckNodePort")
	if !needsHealthCheck(svc) {
		if spec.HealthCheckNodePort != 0 {
			errs = append(errs, field.Invalid(hcPath, spec.HealthCheckNodePort,
				"may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
		}
	} else if spec.HealthCheckNodePort == 0 {
		if opts.Allocated {
			errs = append(errs, field.Required(hcPath, ""))
		}
	} else {
		errs = append(errs, portNum(hcPath, spec.HealthCheckNodePort)...)
	}

	if p := spec.InternalTrafficPolicy; p != nil && !supportedInternalPolicies.Has(*p) {
		errs = append(errs, field.NotSupported(specPath.Child("internalTrafficPolicy"), *p, sets.List(supportedInternalPolicies)))
	}
	return errs
}

// loadBalancerStatus checks status.loadBalancer.ingress, which kproxy programs as
// load-balancer IPs.
func loadBalancerStatus(svc *v1.Service, opts Options) field.ErrorList {
	ingress := svc.Status.LoadBalancer.Ingress
	path := field.NewPath("status", "loadBalancer", "ingress")
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer && len(ingress) != 0 {
		return field.ErrorList{field.Forbidden(path, "may only be used when `spec.type` is 'LoadBalancer'")}
	}
	var errs field.ErrorList
	for i := range ingress {
		ing := &ingress[i]
		idx := path.Index(i)
		if ing.IP != "" {
			errs = append(errs, validIP(idx.Child("ip"), ing.IP, opts)...)
		}
		switch {
		case ing.IPMode != nil && ing.IP == "":
			errs = append(errs, field.Forbidden(idx.Child("ipMode"), "may not be specified when `ip` is not set"))
		case ing.IPMode != nil && !supportedLoadBalancerIPModes.Has(*ing.IPMode):
			errs = append(errs, field.NotSupported(idx.Child("ipMode"), *ing.IPMode, sets.List(supportedLoadBalancerIPModes)))
		}
		if ing.Hostname != "" {
			for _, msg := range apivalidation.NameIsDNSSubdomain(ing.Hostname, false) {
				errs = append(errs, field.Invalid(idx.Child("hostname"), ing.Hostname, msg))
			}
			if _, err := netip.ParseAddr(ing.Hostname); err == nil {
				errs = append(errs, field.Invalid(idx.Child("hostname"), ing.Hostname, "must be a DNS name, not an IP address"))
			}
		}
	}
	return errs
}

// defaultedService returns a copy of svc with the API server's defaults applied,
// so that validation sees what the API server would validate.
func defaultedService(in *v1.Service) *v1.Service {
	svc := in.DeepCopy()
	SetServiceDefaults(svc)
	return svc
}

// SetServiceDefaults applies kube-apiserver's defaults (SetDefaults_Service and
// the registry's clusterIP/clusterIPs normalisation) to svc in place, for the
// fields kproxy reads.
func SetServiceDefaults(svc *v1.Service) {
	spec := &svc.Spec
	if spec.Type == "" {
		spec.Type = v1.ServiceTypeClusterIP
	}
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = v1.ServiceAffinityNone
	}
	if spec.SessionAffinity == v1.ServiceAffinityClientIP {
		cfg := spec.SessionAffinityConfig
		if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
			timeout := v1.DefaultClientIPServiceAffinitySeconds
			spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
	}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = v1.ProtocolTCP
		}
		if p.TargetPort == intstr.FromInt32(0) || p.TargetPort == intstr.FromString("") {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if spec.ExternalTrafficPolicy == "" && externallyAccessible(svc) {
		spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	}
	if spec.InternalTrafficPolicy == nil && spec.Type != v1.ServiceTypeExternalName {
		p := v1.ServiceInternalTrafficPolicyCluster
		spec.InternalTrafficPolicy = &p
	}
	if spec.Type == v1.ServiceTypeLoadBalancer && spec.AllocateLoadBalancerNodePorts == nil {
		t := true
		spec.AllocateLoadBalancerNodePorts = &t
	}
	// Users set either field; the registry fills in the other before validating.
	if len(spec.ClusterIPs) == 0 && spec.ClusterIP != "" {
		spec.ClusterIPs = []string{spec.ClusterIP}
	} else if spec.ClusterIP == "" && len(spec.ClusterIPs) > 0 {
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	for i := range svc.Status.LoadBalancer.Ingress {
		ing := &svc.Status.LoadBalancer.Ingress[i]
		if ing.IP != "" && ing.IPMode == nil {
			m := v1.LoadBalancerIPModeVIP
			ing.IPMode = &m
		}
	}
}
