package trace

// IP plan: as in trace_test.go. The nftables data plane runs over its in-memory
// fake kernel here; the namespace tests run it against the real one.

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/nftables"
	"github.com/kproxy/kproxy/internal/userspace"
)

func TestNFTablesAgreesWithModel(t *testing.T) {
	snap := testSnapshot(t)
	quiet := slog.New(slog.DiscardHandler)
	for _, tt := range modelCases() {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ClusterCIDRs: clusterCIDRs}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			if opts.Userspace {
				t.Skip("userspace semantics")
			}
			cfg := nftables.Config{ClusterCIDRs: opts.ClusterCIDRs, MasqueradeAll: opts.MasqueradeAll,
				NodePortAddresses: opts.NodePortAddresses, LocalhostNodePorts: opts.LocalhostNodePorts, Logger: quiet}
			p, _, err := nftables.NewFake(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Sync(context.Background(), snap, true); err != nil {
				t.Fatal(err)
			}
			opts.Kernel = NFTables(p)
			pkt, err := ParsePacket(tt.from, tt.to, "")
			if err != nil {
				t.Fatal(err)
			}
			r := Trace(context.Background(), snap, opts, pkt)
			if len(r.Disagreements) > 0 {
				t.Errorf("model: %s (%s)\nkernel: %+v\n%s", r.Verdict, r.Reason, r.Kernel, strings.Join(r.Disagreements, "\n"))
			}
		})
	}
}

func TestNFTablesKernelState(t *testing.T) {
	ctx := context.Background()
	snap := testSnapshot(t)
	p, fake, err := nftables.NewFake(nftables.Config{ClusterCIDRs: clusterCIDRs, Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, snap, true); err != nil {
		t.Fatal(err)
	}
	opts := Options{ClusterCIDRs: clusterCIDRs, Kernel: NFTables(p)}

	t.Run("affinity pinned in the kernel", func(t *testing.T) {
		pkt, _ := ParsePacket("10.244.0.99", "10.96.0.11:80/tcp", "")
		pinned := netip.MustParseAddrPort("10.244.1.8:8080")
		fake.SetAffinity(pkt.Src, nftables.Frontend{Addr: pkt.Dst.Addr(), Proto: 6, Port: 80}, pinned)
		r := Trace(ctx, snap, opts, pkt)
		if len(r.Disagreements) > 0 {
			t.Fatalf("disagreements: %v", r.Disagreements)
		}
		if r.Affinity == nil || r.Affinity.Pinned == nil || *r.Affinity.Pinned != pinned {
			t.Fatalf("affinity %+v, want pinned to %s", r.Affinity, pinned)
		}
		if r.Kernel.AffinityTimeoutSeconds != 600 || len(r.Kernel.Endpoints) != 2 {
			t.Fatalf("kernel path %+v", r.Kernel)
		}
	})

	t.Run("a kernel behind the model is caught", func(t *testing.T) {
		// The model moves on (web loses an endpoint, empty gains one) but the
		// data plane is not synced: the trace must say so.
		tr := model.NewTracker("node-a", nil)
		for _, svc := range snap.Services {
			tr.OnServiceAdd(svc)
		}
		for name, slices := range snap.Slices {
			for _, s := range slices {
				if name.Name == "web" && s.Name == "web-1" {
					s = makeTestSlice("web", "web-1", "http", v1.ProtocolTCP, 8080,
						up("10.244.0.5", "node-a"), up("10.244.1.5", "node-b"))
				}
				tr.OnEndpointSliceAdd(s)
			}
		}
		tr.OnEndpointSliceAdd(makeTestSlice("empty", "empty-1", "http", v1.ProtocolTCP, 8080, up("10.244.1.9", "node-b")))
		tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
		newer := tr.Snapshot()

		web, _ := ParsePacket("10.244.0.99", "10.96.0.10:80/tcp", "")
		r := Trace(ctx, newer, opts, web)
		want := []string{
			"endpoint 10.244.0.5:8080: probability kernel 0.333, model 0.500",
			"endpoint 10.244.1.5:8080: probability kernel 0.333, model 0.500",
			"endpoint 10.244.1.6:8080: in the kernel, not in the model",
		}
		if strings.Join(r.Disagreements, "\n") != strings.Join(want, "\n") {
			t.Errorf("web: disagreements\n%s\nwant\n%s", strings.Join(r.Disagreements, "\n"), strings.Join(want, "\n"))
		}
		empty, _ := ParsePacket("10.244.0.99", "10.96.0.12:80/tcp", "")
		r = Trace(ctx, newer, opts, empty)
		if len(r.Disagreements) != 1 || r.Disagreements[0] != "verdict: kernel reject, model dnat" {
			t.Errorf("empty: disagreements %q", r.Disagreements)
		}
	})

	t.Run("family without a table", func(t *testing.T) {
		p4, _, err := nftables.NewFake(nftables.Config{IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, Logger: slog.New(slog.DiscardHandler)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p4.Sync(ctx, snap, true); err != nil {
			t.Fatal(err)
		}
		pkt, _ := ParsePacket("fd00:10:244::99", "[fd00:10:96::18]:80/tcp", "")
		r := Trace(ctx, snap, Options{ClusterCIDRs: clusterCIDRs, Kernel: NFTables(p4)}, pkt)
		if r.Kernel == nil || r.Kernel.Verdict != VerdictNone || len(r.Disagreements) != 1 {
			t.Fatalf("kernel %+v disagreements %q", r.Kernel, r.Disagreements)
		}
	})
}

func TestKernelFor(t *testing.T) {
	p, _, err := nftables.NewFake(nftables.Config{Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ks, ok := KernelFor(p); !ok || ks == nil {
		t.Error("KernelFor(nftables proxier) = false")
	}
	fk := &FakeKernel{}
	if ks, ok := KernelFor(fk); !ok || ks != KernelState(fk) {
		t.Error("KernelFor(KernelState) should return it")
	}
	if _, ok := KernelFor(struct{}{}); ok {
		t.Error("KernelFor(other) = true")
	}

	if o := ForDataplane(p, Options{}); o.Kernel == nil || o.Userspace {
		t.Errorf("ForDataplane(nftables) = %+v", o)
	}
	us, err := userspace.New(userspace.Defaults(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer us.Close()
	if o := ForDataplane(us, Options{Kernel: fk}); o.Kernel != nil || !o.Userspace {
		t.Errorf("ForDataplane(userspace) = %+v", o)
	}
}

func TestWriteTextDisagreement(t *testing.T) {
	snap := testSnapshot(t)
	pkt, _ := ParsePacket("10.244.0.99", "10.96.0.10:80/tcp", "")
	fk := &FakeKernel{Paths: map[Packet]*KernelPath{pkt: {Verdict: VerdictDrop, Rules: []string{"endpoints-check: drop"}}}}
	r := Trace(context.Background(), snap, Options{ClusterCIDRs: clusterCIDRs, Kernel: fk}, pkt)
	var b strings.Builder
	if err := WriteText(&b, &r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"verdict:  DROP (the kernel's rules; they disagree with the model, see below)",
		"model:    DNAT: DNAT to one of 3 endpoint(s)",
		"endpoints the model expects:",
		"kernel:   DROP",
		"  endpoints-check: drop",
		"DISAGREEMENT: verdict: kernel drop, model dnat",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}
