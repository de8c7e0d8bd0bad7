package validation

// IP plan: cluster IPs from 10.96.0.0/16 and fd00:10:96::/112, pods in
// 10.244.0.0/16 and fd00:10:244::/64, external and load-balancer addresses from
// TEST-NET-3 (203.0.113.0/24) and 2001:db8::/32.

import (
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

// makeTestService builds a valid ClusterIP service "default/web" with one port
// and lets the case change it.
func makeTestService(ns, name string, tweak func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports: []v1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			},
		},
	}
	if tweak != nil {
		tweak(svc)
	}
	return svc
}

func nodePortService(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }

func lbService(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }

// errorStrings renders errors the way kube-apiserver prints them.
func errorStrings(errs field.ErrorList) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func checkErrors(t *testing.T, errs field.ErrorList, want []string) {
	t.Helper()
	got := errorStrings(errs)
	if !slices.Equal(got, want) {
		t.Errorf("errors:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

func TestService(t *testing.T) {
	tests := []struct {
		name  string
		svc   *v1.Service
		opts  Options
		want  []string
		check func(*testing.T, *v1.Service)
	}{
		{
			name: "minimal ClusterIP service is valid before defaulting",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].TargetPort = intstr.IntOrString{}
			}),
		},
		{
			name: "UDP and TCP on the same port number are distinct",
			svc: makeTestService("default", "dns", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
					{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromString("dns-tcp")},
				}
			}),
		},
		{
			name: "allocated dual-stack LoadBalancer with every field set is valid",
			opts: Options{Allocated: true},
			svc: makeTestService("prod", "edge", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ClusterIP = "10.96.0.20"
				s.Spec.ClusterIPs = []string{"10.96.0.20", "fd00:10:96::20"}
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](86400)}}
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", " 2001:db8::/32 "}
				s.Spec.ExternalIPs = []string{"203.0.113.7"}
				s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}, {Hostname: "lb.example.com"}}
			}),
		},
		{
			name: "the argument is left as it was",
			svc:  makeTestService("default", "web", nil),
			check: func(t *testing.T, s *v1.Service) {
				if s.Spec.Type != "" || s.Spec.Ports[0].Protocol != "" || s.Spec.InternalTrafficPolicy != nil {
					t.Errorf("Service modified its argument: %+v", s.Spec)
				}
			},
		},

		// metadata
		{
			name: "name is required",
			svc:  makeTestService("default", "", nil),
			want: []string{"metadata.name: Required value: name or generateName is required"},
		},
		{
			name: "name is a DNS-1035 label",
			svc:  makeTestService("default", "1web", nil),
			want: []string{`metadata.name: Invalid value: "1web": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')`},
		},
		{
			name: "namespace is required",
			svc:  makeTestService("", "web", nil),
			want: []string{"metadata.namespace: Required value"},
		},
		{
			name: "namespace is a DNS-1123 label",
			svc:  makeTestService("Prod", "web", nil),
			want: []string{`metadata.namespace: Invalid value: "Prod": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		},
		{
			name: "selector values are label values",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Selector = map[string]string{"app": "web server"}
			}),
			want: []string{`spec.selector: Invalid value: "web server": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')`},
		},

		// type
		{
			name: "type must be a known one",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = "Ingress"
			}),
			want: []string{`spec.type: Unsupported value: "Ingress": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"`},
		},

		// ports
		{
			name: "a service with a cluster IP needs ports",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports = nil
			}),
			want: []string{"spec.ports: Required value"},
		},
		{
			name: "port 0 is out of range",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].Port = 0
			}),
			want: []string{"spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"},
		},
		{
			name: "port 65536 is out of range",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].Port = 65536
			}),
			want: []string{"spec.ports[0].port: Invalid value: 65536: must be between 1 and 65535, inclusive"},
		},
		{
			name: "protocol is TCP, UDP or SCTP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].Protocol = "HTTP"
			}),
			want: []string{`spec.ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"`},
		},
		{
			name: "port names are required when there are several ports",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Port: 443})
			}),
			want: []string{"spec.ports[1].name: Required value"},
		},
		{
			name: "port names are unique",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "http", Port: 8080})
			}),
			want: []string{`spec.ports[1].name: Duplicate value: "http"`},
		},
		{
			name: "port names are DNS-1123 labels",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].Name = "HTTP"
			}),
			want: []string{`spec.ports[0].name: Invalid value: "HTTP": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		},
		{
			name: "port and protocol are unique",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "alt", Port: 80, Protocol: v1.ProtocolTCP})
			}),
			want: []string{`spec.ports[1]: Duplicate value: "80/TCP"`},
		},
		{
			name: "numeric targetPort is in range",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].TargetPort = intstr.FromInt32(70000)
			}),
			want: []string{"spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"},
		},
		{
			name: "named targetPort is an IANA service name",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].TargetPort = intstr.FromString("http-alternative")
			}),
			want: []string{`spec.ports[0].targetPort: Invalid value: "http-alternative": must be no more than 15 characters`},
		},
		{
			name: "named targetPort has a letter",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].TargetPort = intstr.FromString("80-80")
			}),
			want: []string{`spec.ports[0].targetPort: Invalid value: "80-80": must contain at least one letter (a-z)`},
		},
		{
			name: "nodePort is in range",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.Ports[0].NodePort = 70000
			}),
			want: []string{"spec.ports[0].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive"},
		},
		{
			name: "nodePort is not for ClusterIP services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Ports[0].NodePort = 30080
			}),
			want: []string{"spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"},
		},
		{
			name: "nodePort and protocol are unique",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "alt", Port: 81, NodePort: 30080})
			}),
			want: []string{"spec.ports[1].nodePort: Duplicate value: 30080"},
		},

		// cluster IPs and families
		{
			name: "clusterIP is an IP address",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIP = "10.96.0.300"
			}),
			want: []string{`spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "clusterIP has no leading zeros",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIP = "10.96.0.010"
			}),
			want: []string{`spec.clusterIPs[0]: Invalid value: "10.96.0.010": must not have leading 0s`},
		},
		{
			name: "leading zeros pass with LegacyIPs",
			opts: Options{LegacyIPs: true},
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIP = "10.96.0.010"
			}),
		},
		{
			name: "clusterIPs[0] is clusterIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIP = "10.96.0.10"
				s.Spec.ClusterIPs = []string{"10.96.0.11"}
			}),
			want: []string{`spec.clusterIPs: Invalid value: ["10.96.0.11"]: first value must match ` + "`clusterIP`"},
		},
		{
			name: "at most two clusterIPs",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10", "10.96.0.11"}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
			}),
			want: []string{`spec.clusterIPs: Invalid value: ["10.96.0.10","fd00:10:96::10","10.96.0.11"]: may only hold up to 2 values`},
		},
		{
			name: "two clusterIPs are of different families",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "10.96.0.11"}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyPreferDualStack)
			}),
			want: []string{`spec.clusterIPs: Invalid value: ["10.96.0.10","10.96.0.11"]: may specify no more than one IP for each IP family`},
		},
		{
			name: "None is the only clusterIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"None", "fd00:10:96::10"}
			}),
			want: []string{`spec.clusterIPs: Invalid value: ["None","fd00:10:96::10"]: 'None' must be the first and only value`},
		},
		{
			name: "headless service without ports is valid",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIP = v1.ClusterIPNone
				s.Spec.Ports = nil
			}),
		},
		{
			name: "None is not for NodePort services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.ClusterIP = v1.ClusterIPNone
			}),
			want: []string{`spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services`},
		},
		{
			name: "None is not for LoadBalancer services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.ClusterIP = v1.ClusterIPNone
			}),
			want: []string{`spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for LoadBalancer services`},
		},
		{
			name: "ipFamilies are IPv4 or IPv6",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.IPFamilies = []v1.IPFamily{"IPv5"}
			}),
			want: []string{`spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6"`},
		},
		{
			name: "ipFamilies are unique",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv6Protocol}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
			}),
			want: []string{`spec.ipFamilies[1]: Duplicate value: "IPv6"`},
		},
		{
			name: "ipFamilyPolicy is a known one",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicy("DualStack"))
			}),
			want: []string{`spec.ipFamilyPolicy: Unsupported value: "DualStack": supported values: "PreferDualStack", "RequireDualStack", "SingleStack"`},
		},
		{
			name: "SingleStack takes one family",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
			}),
			want: []string{`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified`},
		},
		{
			name: "SingleStack takes one clusterIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
			}),
			want: []string{`spec.ipFamilyPolicy: Invalid value: "SingleStack": must be RequireDualStack or PreferDualStack when multiple 'clusterIPs' are specified`},
		},
		{
			name: "clusterIPs follow the order of ipFamilies",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
			}),
			want: []string{
				`spec.clusterIPs[0]: Invalid value: "10.96.0.10": expected an IPv6 value as indicated by ` + "`ipFamilies[0]`",
				`spec.clusterIPs[1]: Invalid value: "fd00:10:96::10": expected an IPv4 value as indicated by ` + "`ipFamilies[1]`",
			},
		},

		// ExternalName
		{
			name: "ExternalName needs externalName",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
			}),
			want: []string{"spec.externalName: Required value"},
		},
		{
			name: "externalName only for ExternalName services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ExternalName = "db.example.com"
			}),
			want: []string{"spec.externalName: Forbidden: may only be set when `type` is 'ExternalName'"},
		},
		{
			name: "externalName is a DNS-1123 subdomain",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db_primary.example.com."
			}),
			want: []string{`spec.externalName: Invalid value: "db_primary.example.com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		{
			name: "ExternalName services have no clusterIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
				s.Spec.ClusterIP = v1.ClusterIPNone
			}),
			want: []string{"spec.clusterIPs: Forbidden: may not be set for ExternalName services"},
		},
		{
			name: "ExternalName services have no ipFamilies",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
				s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
			}),
			want: []string{"spec.ipFamilies: Forbidden: may not be set for ExternalName services"},
		},
		{
			name: "ExternalName services have no ipFamilyPolicy",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
				s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
			}),
			want: []string{"spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services"},
		},

		// session affinity
		{
			name: "sessionAffinity is None or ClientIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.SessionAffinity = "Cookie"
			}),
			want: []string{`spec.sessionAffinity: Unsupported value: "Cookie": supported values: "ClientIP", "None"`},
		},
		{
			name: "ClientIP timeout is above 0",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](0)}}
			}),
			want: []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"},
		},
		{
			name: "ClientIP timeout is at most a day",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](86401)}}
			}),
			want: []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400"},
		},
		{
			name: "ClientIP without a config gets the default timeout",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			}),
		},
		{
			name: "sessionAffinityConfig is only for ClientIP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityNone
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			}),
			want: []string{"spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"},
		},

		// external IPs
		{
			name: "externalIPs are IP addresses",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.7", "example.com"}
			}),
			want: []string{`spec.externalIPs[1]: Invalid value: "example.com": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "externalIPs are not loopback",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"127.0.0.1"}
			}),
			want: []string{`spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)`},
		},

		// traffic policies
		{
			name: "externalTrafficPolicy is only for externally reachable services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []string{`spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services`},
		},
		{
			name: "externalTrafficPolicy is allowed on a ClusterIP service with externalIPs",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.7"}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
		},
		{
			name: "externalTrafficPolicy is Cluster or Local",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.ExternalTrafficPolicy = "Global"
			}),
			want: []string{`spec.externalTrafficPolicy: Unsupported value: "Global": supported values: "Cluster", "Local"`},
		},
		{
			name: "internalTrafficPolicy is Cluster or Local",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicy("Node"))
			}),
			want: []string{`spec.internalTrafficPolicy: Unsupported value: "Node": supported values: "Cluster", "Local"`},
		},
		{
			name: "healthCheckNodePort is not for NodePort services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
			}),
			want: []string{"spec.healthCheckNodePort: Invalid value: 32000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"},
		},
		{
			name: "healthCheckNodePort is not for externalTrafficPolicy Cluster",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.HealthCheckNodePort = 32000
			}),
			want: []string{"spec.healthCheckNodePort: Invalid value: 32000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"},
		},
		{
			name: "healthCheckNodePort may wait for the allocator",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
		},
		{
			name: "healthCheckNodePort is required once allocated",
			opts: Options{Allocated: true},
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []string{"spec.healthCheckNodePort: Required value"},
		},
		{
			name: "healthCheckNodePort is in range",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 65536
			}),
			want: []string{"spec.healthCheckNodePort: Invalid value: 65536: must be between 1 and 65535, inclusive"},
		},
		{
			name: "trafficDistribution is a known one",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.TrafficDistribution = ptr.To("PreferSameRack")
			}),
			want: []string{`spec.trafficDistribution: Unsupported value: "PreferSameRack": supported values: "PreferClose", "PreferSameNode", "PreferSameZone"`},
		},

		// load balancers
		{
			name: "loadBalancerSourceRanges are only for LoadBalancer services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
			}),
			want: []string{"spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"},
		},
		{
			name: "loadBalancerSourceRanges are CIDRs",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", "203.0.113.7"}
			}),
			want: []string{`spec.LoadBalancerSourceRanges[1]: Invalid value: "203.0.113.7": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`},
		},
		{
			name: "the source-ranges annotation holds CIDRs",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Annotations = map[string]string{v1.AnnotationLoadBalancerSourceRangesKey: "203.0.113.0/24, 198.51.100.0/33"}
			}),
			want: []string{`metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Invalid value: "198.51.100.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`},
		},
		{
			name: "allocateLoadBalancerNodePorts is only for LoadBalancer services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				nodePortService(s)
				s.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
			}),
			want: []string{"spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"},
		},
		{
			name: "load-balancer ingress IPs are IP addresses",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.256"}}
			}),
			want: []string{`status.loadBalancer.ingress[0].ip: Invalid value: "203.0.113.256": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "load-balancer ingress is only for LoadBalancer services",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}}
			}),
			want: []string{"status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is 'LoadBalancer'"},
		},
		{
			name: "load-balancer ipMode needs an ip",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example.com", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}
			}),
			want: []string{"status.loadBalancer.ingress[0].ipMode: Forbidden: may not be specified when `ip` is not set"},
		},
		{
			name: "load-balancer hostname is not an IP",
			svc: makeTestService("default", "web", func(s *v1.Service) {
				lbService(s)
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "203.0.113.10"}}
			}),
			want: []string{`status.loadBalancer.ingress[0].hostname: Invalid value: "203.0.113.10": must be a DNS name, not an IP address`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := Service(tc.svc, tc.opts)
			checkErrors(t, errs, tc.want)
			if tc.check != nil {
				tc.check(t, tc.svc)
			}
		})
	}
}

func TestServiceNil(t *testing.T) {
	if errs := Service(nil, Options{}); len(errs) != 1 {
		t.Errorf("Service(nil) = %v, want one error", errs)
	}
}
