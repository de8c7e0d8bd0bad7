// Package validation checks Services and the other objects kproxy reads the way
// the Kubernetes API server does, so that a manifest accepted by kproxy would be
// accepted by a cluster and a rejected one names the field at fault.
//
// The rules and their messages follow kube-apiserver v1.37
// (pkg/apis/core/validation ValidateService, validatePodIPs, validateContainerPorts,
// pkg/apis/discovery/validation ValidateEndpointSlice, and the static checks of the
// service registry's IP-family initialisation). Errors are field.ErrorList values,
// so each one prints like the API server's: "spec.ports[1].name: Required value".
//
// The API server applies defaults before it validates. Manifests are usually not
// defaulted, so every function here validates its argument as the API server would
// after defaulting (Service works on a defaulted copy; the argument is never
// modified): an omitted protocol, sessionAffinity, type or traffic policy is
// accepted exactly as kube-apiserver would accept it. Allocated values (cluster
// IPs, node ports) are checked when present and never required, as the API server
// allocates before it validates; only the health-check node port is required, and
// only once Options.Allocated says the allocator has run. Port ranges are the
// allocator's business, not validation's.
package validation

import (
	"fmt"
	"net/netip"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Options are the settings some rules depend on.
type Options struct {
	// Allocated says the object has been through allocation, as every object read
	// from a real API server has: a LoadBalancer service with externalTrafficPolicy
	// Local must then carry its healthCheckNodePort. Manifests validated before
	// allocation leave it false.
	Allocated bool
	// LegacyIPs accepts the ambiguous IP and CIDR spellings that kube-apiserver only
	// accepts with its StrictIPCIDRValidation gate off: IPv4 octets with leading
	// zeros ("010.0.0.1", which libc reads as octal) and IPv4-mapped IPv6 addresses.
	// Off by default: kproxy parses addresses with net/netip, which rejects them.
	LegacyIPs bool
}

// validIP checks an IP string of one of the API's long-standing IP fields. Like
// kube-apiserver (IsValidIPForLegacyField) it does not insist on the canonical
// form, so "2001:DB8::1" is accepted.
func validIP(path *field.Path, value string, opts Options) field.ErrorList {
	return utilvalidation.IsValidIPForLegacyField(path, value, !opts.LegacyIPs, nil)
}

// validCIDR checks a CIDR string of one of the API's long-standing CIDR fields.
func validCIDR(path *field.Path, value string, opts Options) field.ErrorList {
	return utilvalidation.IsValidCIDRForLegacyField(path, value, !opts.LegacyIPs, nil)
}

// nonSpecialIP rejects addresses that make no sense as a service or endpoint
// address: unspecified, loopback and link-local ones (kube-apiserver's
// ValidateNonSpecialIP, used for externalIPs and EndpointSlice addresses).
func nonSpecialIP(path *field.Path, value string) field.ErrorList {
	addr, err := netip.ParseAddr(value)
	if err != nil {
		// Only reached with Options.LegacyIPs and leading zeros, which the IP
		// check has already accepted.
		return nil
	}
	addr = addr.Unmap()
	var errs field.ErrorList
	if addr.IsUnspecified() {
		errs = append(errs, field.Invalid(path, value, fmt.Sprintf("may not be unspecified (%v)", value)))
	}
	if addr.IsLoopback() {
		errs = append(errs, field.Invalid(path, value, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
	}
	if addr.IsLinkLocalUnicast() {
		errs = append(errs, field.Invalid(path, value, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"))
	}
	if addr.IsLinkLocalMulticast() {
		errs = append(errs, field.Invalid(path, value, "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"))
	}
	return errs
}

// dns1123Label reports value at path unless it is an RFC 1123 label.
func dns1123Label(path *field.Path, value string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range utilvalidation.IsDNS1123Label(value) {
		errs = append(errs, field.Invalid(path, value, msg))
	}
	return errs
}

// portNum reports value at path unless it is a port number 1-65535.
func portNum(path *field.Path, value int32) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range utilvalidation.IsValidPortNum(int(value)) {
		errs = append(errs, field.Invalid(path, value, msg))
	}
	return errs
}

// portName reports value at path unless it is an IANA_SVC_NAME (RFC 6335), the
// form of container port names and of named target ports.
func portName(path *field.Path, value string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range utilvalidation.IsValidPortName(value) {
		errs = append(errs, field.Invalid(path, value, msg))
	}
	return errs
}

// The name rules of the kinds kproxy reads, as kube-apiserver names them.
var (
	serviceName       = apivalidation.NameIsDNS1035Label
	podName           = apivalidation.NameIsDNSSubdomain
	nodeName          = apivalidation.NameIsDNSSubdomain
	endpointSliceName = apivalidation.NameIsDNSSubdomain
)

// isIPv6 reports whether a (valid) IP string is an IPv6 address. IPv4-mapped IPv6
// addresses count as IPv4, as they do for kube-apiserver (k8s.io/utils/net).
func isIPv6(value string) bool {
	if addr, err := netip.ParseAddr(value); err == nil {
		return addr.Is6() && !addr.Is4In6()
	}
	// Only the legacy IPv4 spelling with leading zeros gets here.
	return false
}
