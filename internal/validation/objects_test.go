package validation

// IP plan: pods in 10.244.0.0/16 and fd00:10:244::/64, nodes in 192.168.100.0/24
// and fd00:100::/64.

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// makeTestPod builds a valid running pod "default/web-1" with a named port.
func makeTestPod(tweak func(*v1.Pod)) *v1.Pod {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: v1.PodSpec{
			NodeName: "node-a",
			Containers: []v1.Container{{
				Name:  "web",
				Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: v1.ProtocolUDP}},
			}},
		},
		Status: v1.PodStatus{
			PodIP:  "10.244.0.5",
			PodIPs: []v1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00:10:244::5"}},
		},
	}
	if tweak != nil {
		tweak(pod)
	}
	return pod
}

func TestPod(t *testing.T) {
	tests := []struct {
		name string
		pod  *v1.Pod
		opts Options
		want []string
	}{
		{name: "running dual-stack pod is valid", pod: makeTestPod(nil)},
		{
			name: "podIP alone is enough",
			pod:  makeTestPod(func(p *v1.Pod) { p.Status.PodIPs = nil }),
		},
		{
			name: "name is required",
			pod:  makeTestPod(func(p *v1.Pod) { p.Name = "" }),
			want: []string{"metadata.name: Required value: name or generateName is required"},
		},
		{
			name: "name is a DNS-1123 subdomain",
			pod:  makeTestPod(func(p *v1.Pod) { p.Name = "web_1" }),
			want: []string{`metadata.name: Invalid value: "web_1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		{
			name: "namespace is required",
			pod:  makeTestPod(func(p *v1.Pod) { p.Namespace = "" }),
			want: []string{"metadata.namespace: Required value"},
		},
		{
			name: "labels are valid label values",
			pod:  makeTestPod(func(p *v1.Pod) { p.Labels["app"] = "-web" }),
			want: []string{`metadata.labels: Invalid value: "-web": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')`},
		},
		{
			name: "pod IPs are IP addresses",
			pod: makeTestPod(func(p *v1.Pod) {
				p.Status.PodIP = "10.244.0.300"
				p.Status.PodIPs = []v1.PodIP{{IP: "10.244.0.300"}}
			}),
			want: []string{`status.podIPs[0]: Invalid value: "10.244.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "podIP wins over a different podIPs[0]",
			pod: makeTestPod(func(p *v1.Pod) {
				p.Status.PodIP = "10.244.0.x"
			}),
			want: []string{`status.podIPs[0]: Invalid value: "10.244.0.x": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "pod IPs are one per family",
			pod: makeTestPod(func(p *v1.Pod) {
				p.Status.PodIPs = []v1.PodIP{{IP: "10.244.0.5"}, {IP: "10.244.0.6"}}
			}),
			want: []string{`status.podIPs: Invalid value: ["10.244.0.5","10.244.0.6"]: may specify no more than one IP for each IP family`},
		},
		{
			name: "pod IPs are unique",
			pod: makeTestPod(func(p *v1.Pod) {
				p.Status.PodIPs = []v1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00:10:244::5"}, {IP: "10.244.0.5"}}
			}),
			want: []string{
				`status.podIPs: Invalid value: ["10.244.0.5","fd00:10:244::5","10.244.0.5"]: may specify no more than one IP for each IP family`,
				`status.podIPs[2]: Duplicate value: "10.244.0.5"`,
			},
		},
		{
			name: "container name is required",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Name = "" }),
			want: []string{"spec.containers[0].name: Required value"},
		},
		{
			name: "container port names are IANA service names",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[0].Name = "HTTP" }),
			want: []string{
				`spec.containers[0].ports[0].name: Invalid value: "HTTP": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)`,
				`spec.containers[0].ports[0].name: Invalid value: "HTTP": must contain at least one letter (a-z)`,
			},
		},
		{
			name: "container port names are at most 15 characters",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[0].Name = "http-alternative" }),
			want: []string{`spec.containers[0].ports[0].name: Invalid value: "http-alternative": must be no more than 15 characters`},
		},
		{
			name: "container port names are unique",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[1].Name = "http" }),
			want: []string{`spec.containers[0].ports[1].name: Duplicate value: "http"`},
		},
		{
			name: "containerPort is required",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 0 }),
			want: []string{"spec.containers[0].ports[0].containerPort: Required value"},
		},
		{
			name: "containerPort is in range",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 65536 }),
			want: []string{"spec.containers[0].ports[0].containerPort: Invalid value: 65536: must be between 1 and 65535, inclusive"},
		},
		{
			name: "container port protocol is TCP, UDP or SCTP",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.Containers[0].Ports[1].Protocol = "QUIC" }),
			want: []string{`spec.containers[0].ports[1].protocol: Unsupported value: "QUIC": supported values: "SCTP", "TCP", "UDP"`},
		},
		{
			name: "nodeName is a DNS-1123 subdomain",
			pod:  makeTestPod(func(p *v1.Pod) { p.Spec.NodeName = "Node A" }),
			want: []string{`spec.nodeName: Invalid value: "Node A": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErrors(t, Pod(tc.pod, tc.opts), tc.want)
		})
	}
}

// makeTestSlice builds a valid IPv4 EndpointSlice of service default/web.
func makeTestSlice(tweak func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "web-abcde",
			Labels: map[string]string{discovery.LabelServiceName: "web"},
		},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{
			Addresses:  []string{"10.244.0.5"},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-a"),
			Zone:       ptr.To("zone-a"),
			Hints:      &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}},
		}},
		Ports: []discovery.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)},
			{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(v1.ProtocolUDP)},
		},
	}
	if tweak != nil {
		tweak(s)
	}
	return s
}

func TestEndpointSlice(t *testing.T) {
	tests := []struct {
		name  string
		slice *discovery.EndpointSlice
		opts  Options
		want  []string
	}{
		{name: "IPv4 slice is valid", slice: makeTestSlice(nil)},
		{
			name: "IPv6 slice with an unnamed port is valid",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) {
				s.AddressType = discovery.AddressTypeIPv6
				s.Endpoints[0].Addresses = []string{"fd00:10:244::5"}
				s.Ports = []discovery.EndpointPort{{Port: ptr.To[int32](8080)}}
			}),
		},
		{
			name:  "name is a DNS-1123 subdomain",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Name = "web/abcde" }),
			want:  []string{`metadata.name: Invalid value: "web/abcde": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		{
			name:  "addressType is required",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.AddressType = "" }),
			want:  []string{"addressType: Required value"},
		},
		{
			name:  "addressType is IPv4, IPv6 or FQDN",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.AddressType = "IP" }),
			want:  []string{`addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"`},
		},
		{
			name:  "an endpoint has an address",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = nil }),
			want:  []string{"endpoints[0].addresses: Required value: must contain at least 1 address"},
		},
		{
			name:  "addresses are IP addresses",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = []string{"web-1"} }),
			want:  []string{`endpoints[0].addresses[0]: Invalid value: "web-1": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name:  "addresses of an IPv4 slice are IPv4",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = []string{"fd00:10:244::5"} }),
			want:  []string{`endpoints[0].addresses[0]: Invalid value: "fd00:10:244::5": must be an IPv4 address`},
		},
		{
			name: "addresses of an IPv6 slice are IPv6",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) {
				s.AddressType = discovery.AddressTypeIPv6
			}),
			want: []string{`endpoints[0].addresses[0]: Invalid value: "10.244.0.5": must be an IPv6 address`},
		},
		{
			name:  "addresses are not link-local",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = []string{"169.254.169.254"} }),
			want:  []string{`endpoints[0].addresses[0]: Invalid value: "169.254.169.254": may not be in the link-local range (169.254.0.0/16, fe80::/10)`},
		},
		{
			name: "addresses of an FQDN slice are domain names",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) {
				s.AddressType = discovery.AddressTypeFQDN
				s.Endpoints[0].Addresses = []string{"localhost"}
			}),
			want: []string{`endpoints[0].addresses[0]: Invalid value: "localhost": should be a domain with at least two segments separated by dots`},
		},
		{
			name:  "nodeName is a DNS-1123 subdomain",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].NodeName = ptr.To("node_a") }),
			want:  []string{`endpoints[0].nodeName: Invalid value: "node_a": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		{
			name:  "hostname is a DNS-1123 label",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Endpoints[0].Hostname = ptr.To("web.1") }),
			want:  []string{`endpoints[0].hostname: Invalid value: "web.1": must not contain dots`},
		},
		{
			name: "zone hints are unique",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) {
				s.Endpoints[0].Hints.ForZones = append(s.Endpoints[0].Hints.ForZones, discovery.ForZone{Name: "zone-a"})
			}),
			want: []string{`endpoints[0].hints.forZones[1].name: Duplicate value: "zone-a"`},
		},
		{
			name:  "port names are unique",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Ports[1].Name = ptr.To("http") }),
			want:  []string{`ports[1].name: Duplicate value: "http"`},
		},
		{
			name:  "one port at most is unnamed",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Ports[0].Name = nil; s.Ports[1].Name = ptr.To("") }),
			want:  []string{`ports[1].name: Duplicate value: ""`},
		},
		{
			name:  "port names are DNS-1123 labels",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Ports[0].Name = ptr.To("Http") }),
			want:  []string{`ports[0].name: Invalid value: "Http": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		},
		{
			name:  "port protocol is TCP, UDP or SCTP",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Ports[0].Protocol = ptr.To(v1.Protocol("tcp")) }),
			want:  []string{`ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"`},
		},
		{
			name:  "port numbers are in range",
			slice: makeTestSlice(func(s *discovery.EndpointSlice) { s.Ports[0].Port = ptr.To[int32](0) }),
			want:  []string{"ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErrors(t, EndpointSlice(tc.slice, tc.opts), tc.want)
		})
	}
}

// makeTestNode builds a valid dual-stack node "node-a".
func makeTestNode(tweak func(*v1.Node)) *v1.Node {
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24", "fd00:10:244::/64"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.100.10"},
			{Type: v1.NodeInternalIP, Address: "fd00:100::10"},
			{Type: v1.NodeHostName, Address: "node-a"},
		}},
	}
	if tweak != nil {
		tweak(n)
	}
	return n
}

func TestNode(t *testing.T) {
	tests := []struct {
		name string
		node *v1.Node
		opts Options
		want []string
	}{
		{name: "dual-stack node is valid", node: makeTestNode(nil)},
		{
			name: "name is a DNS-1123 subdomain",
			node: makeTestNode(func(n *v1.Node) { n.Name = "Node-A" }),
			want: []string{`metadata.name: Invalid value: "Node-A": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		{
			name: "nodes have no namespace",
			node: makeTestNode(func(n *v1.Node) { n.Namespace = "default" }),
			want: []string{"metadata.namespace: Forbidden: not allowed on this type"},
		},
		{
			name: "IP addresses are IP addresses",
			node: makeTestNode(func(n *v1.Node) { n.Status.Addresses[0].Address = "node-a.example.com" }),
			want: []string{`status.addresses[0].address: Invalid value: "node-a.example.com": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`},
		},
		{
			name: "addresses are unique",
			node: makeTestNode(func(n *v1.Node) {
				n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: "node-a"})
			}),
			want: []string{`status.addresses[3]: Duplicate value: {"type":"Hostname","address":"node-a"}`},
		},
		{
			name: "pod CIDRs are CIDRs",
			node: makeTestNode(func(n *v1.Node) { n.Spec.PodCIDRs = []string{"10.244.0.0/33"} }),
			want: []string{`spec.podCIDRs[0]: Invalid value: "10.244.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`},
		},
		{
			name: "a lone pod CIDR is a CIDR",
			node: makeTestNode(func(n *v1.Node) { n.Spec.PodCIDRs, n.Spec.PodCIDR = nil, "10.0.0.0/33" }),
			want: []string{`spec.podCIDR: Invalid value: "10.0.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`},
		},
		{
			name: "a lone valid pod CIDR",
			node: makeTestNode(func(n *v1.Node) { n.Spec.PodCIDRs, n.Spec.PodCIDR = nil, "10.0.0.0/16" }),
		},
		{
			name: "podCIDR beside podCIDRs is podCIDRs[0]'s copy and not looked at",
			node: makeTestNode(func(n *v1.Node) { n.Spec.PodCIDR = "junk" }),
		},
		{
			name: "pod CIDRs are one per family",
			node: makeTestNode(func(n *v1.Node) { n.Spec.PodCIDRs = []string{"10.244.0.0/24", "10.245.0.0/24"} }),
			want: []string{`spec.podCIDRs: Invalid value: ["10.244.0.0/24","10.245.0.0/24"]: may specify no more than one CIDR for each IP family`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErrors(t, Node(tc.node, tc.opts), tc.want)
		})
	}
}
