package manifest

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// validateEndpoints checks the fields of a v1 Endpoints that kproxy converts to
// EndpointSlices: metadata, addresses and ports (kube-apiserver's ValidateEndpoints,
// for those fields).
func validateEndpoints(e *v1.Endpoints) field.ErrorList {
	errs := apivalidation.ValidateObjectMeta(&e.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	for i, ss := range e.Subsets {
		sp := field.NewPath("subsets").Index(i)
		for _, list := range []struct {
			name  string
			addrs []v1.EndpointAddress
		}{{"addresses", ss.Addresses}, {"notReadyAddresses", ss.NotReadyAddresses}} {
			for j, a := range list.addrs {
				p := sp.Child(list.name).Index(j).Child("ip")
				ip, err := netip.ParseAddr(a.IP)
				switch {
				case err != nil:
					errs = append(errs, field.Invalid(p, a.IP, "must be a valid IP address"))
				case ip.IsUnspecified() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
					errs = append(errs, field.Invalid(p, a.IP, "may not be unspecified, loopback or link-local"))
				}
			}
		}
		for j, port := range ss.Ports {
			pp := sp.Child("ports").Index(j)
			if port.Port < 1 || port.Port > 65535 {
				errs = append(errs, field.Invalid(pp.Child("port"), port.Port, "must be between 1 and 65535, inclusive"))
			}
			switch port.Protocol {
			case "", v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
			default:
				errs = append(errs, field.NotSupported(pp.Child("protocol"), port.Protocol, []string{"SCTP", "TCP", "UDP"}))
			}
			if len(ss.Ports) > 1 && port.Name == "" {
				errs = append(errs, field.Required(pp.Child("name"), ""))
			}
		}
	}
	return errs
}
