package app

import (
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestPrimaryIPs(t *testing.T) {
	addr := func(typ v1.NodeAddressType, a string) v1.NodeAddress { return v1.NodeAddress{Type: typ, Address: a} }
	in, ex, host := v1.NodeInternalIP, v1.NodeExternalIP, v1.NodeHostName
	tests := []struct {
		name  string
		addrs []v1.NodeAddress
		want  []string
	}{
		{"first internal address of each family", []v1.NodeAddress{addr(host, "node-a"), addr(in, "192.168.1.10"),
			addr(in, "192.168.1.11"), addr(in, "fd00::10"), addr(in, "fd00::11")}, []string{"192.168.1.10", "fd00::10"}},
		{"IPv6 listed first comes first", []v1.NodeAddress{addr(in, "fd00::10"), addr(in, "192.168.1.10")}, []string{"fd00::10", "192.168.1.10"}},
		{"internal before external", []v1.NodeAddress{addr(ex, "203.0.113.5"), addr(in, "192.168.1.10")}, []string{"192.168.1.10"}},
		{"external when there is no internal one of that family", []v1.NodeAddress{addr(in, "192.168.1.10"), addr(ex, "2001:db8::5"), addr(ex, "203.0.113.5")},
			[]string{"192.168.1.10", "2001:db8::5"}},
		{"unparsable addresses are skipped", []v1.NodeAddress{addr(in, "not-an-ip"), addr(in, "::ffff:192.168.1.10")}, []string{"192.168.1.10"}},
		{"none", []v1.NodeAddress{addr(host, "node-a")}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, ip := range primaryIPs(&v1.Node{Status: v1.NodeStatus{Addresses: tc.addrs}}) {
				got = append(got, ip.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("primaryIPs = %v, want %v", got, tc.want)
			}
		})
	}
}
