package trace

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/kproxy/kproxy/internal/cgroups"
	"github.com/kproxy/kproxy/internal/socketlb"
	"github.com/kproxy/kproxy/internal/socketlb/lbtest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// TestSocketLBAgreesWithModel loads the fixture into the socket LB's maps in
// the kernel (a test cgroup, a private bpffs) and traces every case of the
// model table: a packet from the node or its pods that the socket LB serves
// must get the model's answer from the maps; anything else is left to
// nftables.
func TestSocketLBAgreesWithModel(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := cgroups.V2Root(); err != nil {
		testenv.Unavailable(t, "no cgroup v2: %v", err)
	}
	snap := testSnapshot(t)
	sb := lbtest.New(t)
	p, err := socketlb.New(socketlb.Config{CgroupPath: sb.Cgroup, PinDir: sb.PinDir,
		NodeAddrs: func() ([]netip.Addr, error) { return snap.Node.Addresses, nil }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Sync(context.Background(), snap, true); err != nil {
		t.Fatal(err)
	}
	served := 0
	for _, tt := range modelCases() {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ClusterCIDRs: clusterCIDRs, SocketLB: p}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			if opts.Userspace {
				t.Skip("the socket LB runs beside nftables only")
			}
			pkt, err := ParsePacket(tt.from, tt.to, "")
			if err != nil {
				t.Fatal(err)
			}
			r := Trace(context.Background(), snap, opts, pkt)
			if len(r.Disagreements) > 0 {
				t.Fatalf("socket LB and model disagree: %q", r.Disagreements)
			}
			local := fromThisNode(pkt.Src, snap, &opts)
			switch {
			case r.SocketLB != nil:
				served++
				if !local || r.Datapath != DatapathSocketLB || r.Masquerade {
					t.Errorf("served by the socket LB: datapath %q, source on this node %v, masquerade %v", r.Datapath, local, r.Masquerade)
				}
				if r.SocketLB.ServicePort != r.Match.Service {
					t.Errorf("socket LB service port %q, model %q", r.SocketLB.ServicePort, r.Match.Service)
				}
			case r.Verdict == VerdictDNAT && local && !tt.leftToNFTables():
				t.Errorf("a DNAT from this node the socket LB does not serve (%s)", r.Verdict)
			default:
				if r.Datapath != DatapathNFTables {
					t.Errorf("datapath %q, want nftables", r.Datapath)
				}
			}
			var b strings.Builder
			if err := WriteText(&b, &r); err != nil {
				t.Fatal(err)
			}
			if r.SocketLB != nil && !strings.Contains(b.String(), "socket LB (BPF maps): frontend") {
				t.Errorf("text output lacks the socket LB's entry:\n%s", b.String())
			}
		})
	}
	if served < 5 {
		t.Errorf("the socket LB served %d cases of the table, want most pod and node cases", served)
	}
}

// leftToNFTables: load balancer IPs with source ranges (the client's address
// is not known at connect time) and NodePorts on loopback (a pod's loopback
// is its own) stay with nftables.
func (tt modelCase) leftToNFTables() bool {
	return strings.Contains(tt.to, "198.51.100.2") || strings.HasPrefix(tt.to, "127.")
}
