package trace

// IP plan: as in trace_test.go; the admin server is an httptest server on 127.0.0.1.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/kproxy/kproxy/internal/model"
)

func TestHandler(t *testing.T) {
	snap := testSnapshot(t)
	current := &model.Snapshot{} // the tracker's placeholder until the first sync
	srv := httptest.NewServer(Handler(func() *model.Snapshot { return current }, Options{ClusterCIDRs: clusterCIDRs}))
	defer srv.Close()
	ctx := context.Background()

	if _, err := Query(ctx, srv.Client(), srv.URL, "10.244.0.99", "10.96.0.10:80/tcp", ""); err == nil ||
		!strings.Contains(err.Error(), "not synced") {
		t.Fatalf("before sync: err = %v, want not synced", err)
	}
	current = snap

	r, err := Query(ctx, srv.Client(), srv.URL, "10.244.0.99", "10.96.0.10:80", "tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := FromModel(snap, Options{ClusterCIDRs: clusterCIDRs}, r.Packet)
	gotJSON, _ := json.Marshal(r)
	wantJSON, _ := json.Marshal(&want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Fatalf("over HTTP:\n%s\nwant\n%s", gotJSON, wantJSON)
	}
	if r.Verdict != VerdictDNAT || len(r.Endpoints) != 3 {
		t.Fatalf("got %+v", r)
	}

	if _, err := Query(ctx, srv.Client(), srv.URL, "10.244.0.99", "10.96.0.10", ""); err == nil ||
		!strings.Contains(err.Error(), "destination") {
		t.Fatalf("bad destination: err = %v", err)
	}

	resp, err := srv.Client().Get(srv.URL + Path + "?from=10.244.0.99&to=10.96.0.12:80/tcp&format=text")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "verdict:  REJECT") {
		t.Fatalf("text: %d %s", resp.StatusCode, body)
	}

	resp, err = srv.Client().Post(srv.URL+Path, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

func TestWriteText(t *testing.T) {
	snap := testSnapshot(t)
	pkt, _ := ParsePacket("10.244.0.5", "10.96.0.10:80/tcp", "")
	r := FromModel(snap, Options{ClusterCIDRs: clusterCIDRs}, pkt)
	var b strings.Builder
	if err := WriteText(&b, &r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"packet:   10.244.0.5 -> 10.96.0.10:80/TCP",
		"service:  ns/web:http (ClusterIP, cluster endpoints)",
		"verdict:  DNAT",
		"10.244.0.5:8080   33.3%  node-a (this node)  masqueraded: hairpin",
		"masquerade: no (source 10.244.0.5 is inside the cluster CIDRs)",
		"computed from: model",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimRight(line, " ") != line {
			t.Errorf("trailing space in %q", line)
		}
	}
}

func TestTraceWithKernel(t *testing.T) {
	snap := testSnapshot(t)
	opts := Options{ClusterCIDRs: clusterCIDRs}
	web, _ := ParsePacket("192.168.0.10", "10.96.0.10:80/tcp", "")
	sticky, _ := ParsePacket("10.244.0.99", "10.96.0.11:80/tcp", "")
	modelWeb := FromModel(snap, opts, web)
	modelSticky := FromModel(snap, opts, sticky)
	pinned := netip.MustParseAddrPort("10.244.1.8:8080")

	tests := []struct {
		name      string
		pkt       Packet
		kernel    func() *KernelPath
		err       error
		wantDiffs []string
		wantPin   *netip.AddrPort
	}{
		{
			name:   "agrees",
			pkt:    web,
			kernel: func() *KernelPath { return PathOf(&modelWeb) },
		},
		{
			name: "stale endpoint in the kernel",
			pkt:  web,
			kernel: func() *KernelPath {
				kp := PathOf(&modelWeb)
				kp.Endpoints[2].Address = netip.MustParseAddrPort("10.244.1.99:8080")
				return kp
			},
			wantDiffs: []string{
				"endpoint 10.244.1.6:8080: in the model, not in the kernel",
				"endpoint 10.244.1.99:8080: in the kernel, not in the model",
			},
		},
		{
			name: "kernel rejects",
			pkt:  web,
			kernel: func() *KernelPath {
				return &KernelPath{Verdict: VerdictReject}
			},
			wantDiffs: []string{"verdict: kernel reject, model dnat"},
		},
		{
			name: "kernel forgot to masquerade, and weighs endpoints unevenly",
			pkt:  web,
			kernel: func() *KernelPath {
				kp := PathOf(&modelWeb)
				kp.Masquerade = false
				kp.Endpoints[0].Probability, kp.Endpoints[1].Probability = 0.5, 1.0/6
				return kp
			},
			wantDiffs: []string{
				"endpoint 10.244.0.5:8080: probability kernel 0.500, model 0.333",
				"endpoint 10.244.1.5:8080: probability kernel 0.167, model 0.333",
				"masquerade: kernel false, model true",
			},
		},
		{
			name: "affinity pinned in the kernel",
			pkt:  sticky,
			kernel: func() *KernelPath {
				kp := PathOf(&modelSticky)
				kp.Pinned = &pinned
				return kp
			},
			wantPin: &pinned,
		},
		{
			name: "kernel lost affinity",
			pkt:  sticky,
			kernel: func() *KernelPath {
				kp := PathOf(&modelSticky)
				kp.AffinityTimeoutSeconds = 0
				return kp
			},
			wantDiffs: []string{"affinity timeout: kernel 0s, model 600s"},
		},
		{
			name:      "kernel tracer fails",
			pkt:       web,
			err:       errors.New("netlink: permission denied"),
			wantDiffs: []string{"reading the kernel's rules failed: netlink: permission denied"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fk := &FakeKernel{Err: tt.err, Paths: map[Packet]*KernelPath{}}
			if tt.kernel != nil {
				fk.Paths[tt.pkt] = tt.kernel()
			}
			o := opts
			o.Kernel = fk
			r := Trace(context.Background(), snap, o, tt.pkt)
			if strings.Join(r.Disagreements, "\n") != strings.Join(tt.wantDiffs, "\n") {
				t.Errorf("disagreements:\n%s\nwant:\n%s", strings.Join(r.Disagreements, "\n"), strings.Join(tt.wantDiffs, "\n"))
			}
			if len(fk.Queries) != 1 || fk.Queries[0].Packet != tt.pkt {
				t.Fatalf("kernel queries %+v", fk.Queries)
			}
			if wantLocal := tt.pkt.Src == netip.MustParseAddr("192.168.0.10"); fk.Queries[0].SourceLocal != wantLocal {
				t.Errorf("SourceLocal = %v, want %v", fk.Queries[0].SourceLocal, wantLocal)
			}
			if tt.wantPin != nil && (r.Affinity == nil || r.Affinity.Pinned == nil || *r.Affinity.Pinned != *tt.wantPin) {
				t.Errorf("affinity %+v, want pinned %s", r.Affinity, tt.wantPin)
			}
			var b strings.Builder
			if err := WriteText(&b, &r); err != nil {
				t.Fatal(err)
			}
			if len(tt.wantDiffs) == 0 && !strings.Contains(b.String(), "agree with the model") {
				t.Errorf("text does not say they agree:\n%s", b.String())
			}
			if len(tt.wantDiffs) > 0 && !strings.Contains(b.String(), "DISAGREEMENT: ") {
				t.Errorf("text does not show the disagreement:\n%s", b.String())
			}
		})
	}
}
