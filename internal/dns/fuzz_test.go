package dns

import (
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzAnswer feeds arbitrary messages to the hot path: it must not panic, must
// stay within the UDP limit, and whatever it answers must be a valid message
// that echoes the query's ID.
func FuzzAnswer(f *testing.F) {
	s := newTestServer(f, Config{}, nil)
	s.Update(fixture("10.244.0.5"))
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.default.svc.cluster.local.", mdns.TypeA},
		{"_postgres._tcp.db.default.svc.cluster.local.", mdns.TypeSRV},
		{"big.default.svc.cluster.local.", mdns.TypeA},
		{"10-244-0-1.default.pod.cluster.local.", mdns.TypeA},
		{"5.0.244.10.in-addr.arpa.", mdns.TypePTR},
		{"alias.default.svc.cluster.local.", mdns.TypeANY},
	} {
		f.Add(query(q.name, q.qtype, nil))
		f.Add(query(q.name, q.qtype, func(m *mdns.Msg) { m.SetEdns0(600, true) }))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		var q question
		for _, udp := range []bool{true, false} {
			out, _, act := s.answer(nil, req, &q, udp)
			if act != actReply {
				continue
			}
			if udp && len(out) > maxUDPSize {
				t.Fatalf("UDP answer of %d bytes", len(out))
			}
			r := new(mdns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if len(req) >= 2 && r.Id != uint16(req[0])<<8|uint16(req[1]) {
				t.Fatalf("id %d not echoed", r.Id)
			}
		}
	})
}
