package conntrack

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kproxy/kproxy/internal/netnstest"
	"github.com/kproxy/kproxy/internal/testenv"
)

// IP plan: a throwaway namespace; clients 10.244.0.x, a service 10.96.0.10:53
// DNATed to 10.244.1.x:5353, an un-NATed entry to 10.96.0.11:53, a TCP entry,
// and fd00:10:96::10 for IPv6. No packet is sent: the entries are created
// through ctnetlink.

func newTableNS(t *testing.T) *Socket {
	t.Helper()
	testenv.RequireRoot(t)
	if ok, why := netnstest.Available(); !ok {
		testenv.Unavailable(t, "%s", why)
	}
	ns := netnstest.NewNode(t)
	s, err := NewSocket(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func flow(proto uint8, src string, sport uint16, dst string, dport uint16, reply string, rport uint16) Flow {
	return Flow{Proto: proto, OrigSrc: netip.MustParseAddr(src), OrigSrcPort: sport, OrigDst: netip.MustParseAddr(dst),
		OrigDstPort: dport, ReplySrc: netip.MustParseAddr(reply), ReplySrcPort: rport}
}

func listAll(t *testing.T, s *Socket, fam, proto uint8) []Flow {
	t.Helper()
	var out []Flow
	if err := s.List(fam, proto, func(f *Flow) { out = append(out, *f) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSocketListAndDelete(t *testing.T) {
	s := newTableNS(t)
	v4 := []Flow{
		flow(unix.IPPROTO_UDP, "10.244.0.2", 4000, "10.96.0.10", 53, "10.244.1.2", 5353),
		flow(unix.IPPROTO_UDP, "10.244.0.3", 4000, "10.96.0.11", 53, "10.96.0.11", 53),
		flow(unix.IPPROTO_TCP, "10.244.0.2", 4000, "10.96.0.10", 53, "10.244.1.2", 5353),
	}
	if err := s.Insert(unix.AF_INET, v4, 600); err != nil {
		t.Fatal(err)
	}
	v6 := []Flow{flow(unix.IPPROTO_UDP, "fd00:10:244::2", 4000, "fd00:10:96::10", 53, "fd00:10:244:1::2", 5353)}
	if err := s.Insert(unix.AF_INET6, v6, 600); err != nil {
		t.Fatal(err)
	}
	got := listAll(t, s, unix.AF_INET, unix.IPPROTO_UDP)
	if len(got) != 2 {
		t.Fatalf("UDP IPv4 entries: %v, want the two UDP ones", got)
	}
	if s.noKernelFilter {
		t.Errorf("the kernel refused the protocol filter of the dump")
	}
	byDst := map[netip.Addr]Flow{}
	for _, f := range got {
		if f.ID == 0 {
			t.Errorf("%v: no ID", f)
		}
		byDst[f.OrigDst] = f
	}
	d := byDst[netip.MustParseAddr("10.96.0.10")]
	want := v4[0]
	want.ID = d.ID
	if d != want || !d.DNATed() {
		t.Errorf("DNATed entry read back as %v, want %v", d, want)
	}
	if u := byDst[netip.MustParseAddr("10.96.0.11")]; u.DNATed() {
		t.Errorf("%v: DNATed, want not", u)
	}
	if g := listAll(t, s, unix.AF_INET, unix.IPPROTO_TCP); len(g) != 1 {
		t.Errorf("TCP entries: %v, want 1", g)
	}
	g6 := listAll(t, s, unix.AF_INET6, unix.IPPROTO_UDP)
	if len(g6) != 1 || g6[0].ReplySrc != v6[0].ReplySrc || g6[0].ReplySrcPort != 5353 {
		t.Fatalf("UDP IPv6 entries: %v, want %v", g6, v6)
	}

	// The kernel filters by destination: the raw dump (without kproxy's own
	// check) returns only the matches.
	var raw []Flow
	if err := s.list(unix.AF_INET, unix.IPPROTO_UDP, true, Dest{Addr: netip.MustParseAddr("10.96.0.10"), Port: 53},
		func(f *Flow) { raw = append(raw, *f) }); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 1 || raw[0].OrigDst != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("dump filtered on 10.96.0.10:53: %v", raw)
	}
	raw = nil
	if err := s.list(unix.AF_INET6, unix.IPPROTO_UDP, true, Dest{Port: 53}, func(f *Flow) { raw = append(raw, *f) }); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 1 {
		t.Errorf("IPv6 dump filtered on port 53: %v", raw)
	}
	raw = nil
	if err := s.list(unix.AF_INET, unix.IPPROTO_UDP, true, Dest{Port: 54}, func(f *Flow) { raw = append(raw, *f) }); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 0 {
		t.Errorf("dump filtered on port 54: %v, want none", raw)
	}

	var byDest []Flow
	if err := s.ListDest(unix.AF_INET6, unix.IPPROTO_UDP, Dest{Addr: netip.MustParseAddr("fd00:10:96::10"), Port: 53},
		func(f *Flow) { byDest = append(byDest, *f) }); err != nil || len(byDest) != 1 {
		t.Errorf("IPv6 entries to [fd00:10:96::10]:53: %v, %v; want 1", byDest, err)
	}
	byDest = nil
	if err := s.ListDest(unix.AF_INET6, unix.IPPROTO_UDP, Dest{Addr: netip.MustParseAddr("fd00:10:96::11"), Port: 53},
		func(f *Flow) { byDest = append(byDest, *f) }); err != nil || len(byDest) != 0 {
		t.Errorf("IPv6 entries to [fd00:10:96::11]:53: %v, %v; want none", byDest, err)
	}

	// A stale ID (the entry was replaced since the dump) deletes nothing.
	wrong := d
	wrong.ID++
	if n, err := s.Delete(unix.AF_INET, []Flow{wrong}); n != 0 || err != nil {
		t.Errorf("delete with another ID: %d, %v; want 0, nil", n, err)
	}
	if n, err := s.Delete(unix.AF_INET, []Flow{d}); n != 1 || err != nil {
		t.Errorf("delete: %d, %v; want 1, nil", n, err)
	}
	if n, err := s.Delete(unix.AF_INET, []Flow{d}); n != 0 || err != nil {
		t.Errorf("delete again: %d, %v; want 0, nil", n, err)
	}
	if n, err := s.Delete(unix.AF_INET6, g6); n != 1 || err != nil {
		t.Errorf("delete IPv6: %d, %v; want 1, nil", n, err)
	}
	if g := listAll(t, s, unix.AF_INET, unix.IPPROTO_UDP); len(g) != 1 || g[0].OrigDst != netip.MustParseAddr("10.96.0.11") {
		t.Errorf("left: %v, want the entry to 10.96.0.11", g)
	}
}
