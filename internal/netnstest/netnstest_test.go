package netnstest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kproxy/kproxy/internal/testenv"
)

func TestTopology(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "bridge", "sysctl")
	n := NewNode(t)
	a, b := n.AddPod(t, "a"), n.AddPod(t, "b")
	c := n.AddClient(t)
	a.Serve(t, "a", 8080)
	for _, tc := range []struct {
		from  *NS
		proto string
		dst   netip.AddrPort
		peer  netip.Addr
	}{
		{b.NS, "tcp", netip.AddrPortFrom(a.V4, 8080), b.V4},
		{b.NS, "udp", netip.AddrPortFrom(a.V6, 8080), b.V6},
		{c.NS, "tcp", netip.AddrPortFrom(a.V4, 8080), c.V4}, // routed through the node
		{n.NS, "udp", netip.AddrPortFrom(a.V4, 8080), n.BridgeV4},
	} {
		r, err := tc.from.Request(tc.proto, tc.dst, 0, 2*time.Second)
		if err != nil {
			t.Fatalf("%s %s from %s: %v", tc.proto, tc.dst, tc.from.Name, err)
		}
		if r.Name != "a" || r.Peer.Addr() != tc.peer {
			t.Errorf("%s %s from %s: reply %+v, want a seeing %s", tc.proto, tc.dst, tc.from.Name, r, tc.peer)
		}
	}
	if _, err := b.Request("tcp", netip.AddrPortFrom(a.V4, 9), 0, 2*time.Second); !IsRefused(err) {
		t.Errorf("closed port: %v, want connection refused", err)
	}
}
