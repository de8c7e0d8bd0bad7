package dns

// These tests call the hot path in process (no sockets) for protocol details that
// dig cannot easily produce: malformed queries, opcodes, EDNS versions, classes,
// allocations. The IP plan is the one of dns_test.go.

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

func newTestServer(t testing.TB, cfg Config, m *metrics.Metrics) *Server {
	t.Helper()
	if cfg.BindAddress == "" {
		cfg.BindAddress = "127.0.0.1:0"
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := New(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func query(name string, qtype uint16, mutate func(*mdns.Msg)) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 4242
	if mutate != nil {
		mutate(m)
	}
	b, err := m.Pack()
	if err != nil {
		panic(fmt.Sprintf("test query does not pack: %v", err))
	}
	return b
}

func ask(t *testing.T, s *Server, req []byte, limit int) (*mdns.Msg, action) {
	t.Helper()
	var q question
	out, _, act := s.answer(nil, req, &q, limit < maxTCPSize)
	if act != actReply {
		return nil, act
	}
	r := new(mdns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatalf("response does not unpack: %v", err)
	}
	return r, act
}

func TestProtocol(t *testing.T) {
	s := newTestServer(t, Config{}, nil)
	web := "web.default.svc.cluster.local."

	r, _ := ask(t, s, query(web, mdns.TypeA, nil), minUDPSize)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("before the first update: %s, want SERVFAIL (not a cacheable NXDOMAIN)", mdns.RcodeToString[r.Rcode])
	}
	s.Update(fixture("10.244.0.5"))

	tests := []struct {
		name  string
		req   []byte
		limit int
		check func(t *testing.T, r *mdns.Msg, act action)
	}{
		{"no question: FORMERR", func() []byte {
			b := query(web, mdns.TypeA, nil)
			b[5] = 0 // QDCOUNT 0
			return b[:12]
		}(), minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if r.Rcode != mdns.RcodeFormatError || r.Id != 4242 {
				t.Errorf("rcode %s id %d", mdns.RcodeToString[r.Rcode], r.Id)
			}
		}},
		{"truncated question: FORMERR", query(web, mdns.TypeA, nil)[:20], minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if r.Rcode != mdns.RcodeFormatError {
				t.Errorf("rcode %s", mdns.RcodeToString[r.Rcode])
			}
		}},
		{"UPDATE opcode: NOTIMP", query(web, mdns.TypeA, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeUpdate }), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Rcode != mdns.RcodeNotImplemented {
					t.Errorf("rcode %s", mdns.RcodeToString[r.Rcode])
				}
			}},
		{"a response is dropped", query(web, mdns.TypeA, func(m *mdns.Msg) { m.Response = true }), minUDPSize,
			func(t *testing.T, r *mdns.Msg, act action) {
				if act != actDrop {
					t.Errorf("action %d, want drop", act)
				}
			}},
		{"EDNS version 1: BADVERS", query(web, mdns.TypeA, func(m *mdns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
		}), minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if r.Rcode != mdns.RcodeBadVers || r.IsEdns0() == nil || r.IsEdns0().Version() != 0 {
				t.Errorf("rcode %s, opt %v", mdns.RcodeToString[r.Rcode], r.IsEdns0())
			}
		}},
		{"EDNS echoed with DO, our size", query(web, mdns.TypeA, func(m *mdns.Msg) { m.SetEdns0(4096, true) }), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				opt := r.IsEdns0()
				if opt == nil || !opt.Do() || opt.UDPSize() != maxUDPSize || len(r.Answer) != 1 {
					t.Errorf("opt %v answer %v", opt, r.Answer)
				}
			}},
		{"CHAOS class: REFUSED", query("version.bind.", mdns.TypeTXT, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }),
			minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Rcode != mdns.RcodeRefused {
					t.Errorf("rcode %s", mdns.RcodeToString[r.Rcode])
				}
			}},
		{"AXFR: REFUSED", query("cluster.local.", mdns.TypeAXFR, nil), maxTCPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 {
				t.Errorf("%v", r)
			}
		}},
		{"RD copied, no RA without upstream, AA set", query(web, mdns.TypeA, nil), minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if !r.RecursionDesired || r.RecursionAvailable || !r.Authoritative || !r.Response {
				t.Errorf("flags %v", r.MsgHdr)
			}
		}},
		{"ANY: every record of the name", query(web, mdns.TypeANY, nil), minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
			if len(r.Answer) != 2 {
				t.Errorf("answer %v, want A and AAAA", r.Answer)
			}
		}},
		{"ANY class is answered like IN", query(web, mdns.TypeA, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassANY }),
			minUDPSize, func(t *testing.T, r *mdns.Msg, _ action) {
				if len(r.Answer) != 1 {
					t.Errorf("answer %v", r.Answer)
				}
			}},
		{"512 bytes without EDNS: whole records, TC", query("big.default.svc.cluster.local.", mdns.TypeA, nil), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				// 12 header + 35 question + 16 per A record: 29 records fit in 512.
				if !r.Truncated || len(r.Answer) != 29 {
					t.Errorf("tc %v, %d records, want tc and 29", r.Truncated, len(r.Answer))
				}
			}},
		{"TCP: no limit below 64 KiB", query("big.default.svc.cluster.local.", mdns.TypeA, nil), maxTCPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Truncated || len(r.Answer) != bigEndpoints {
					t.Errorf("tc %v, %d records", r.Truncated, len(r.Answer))
				}
			}},
		{"outside without upstream: REFUSED, not authoritative", query("example.org.", mdns.TypeA, nil), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Rcode != mdns.RcodeRefused || r.Authoritative || len(r.Ns) != 0 {
					t.Errorf("%v", r)
				}
			}},
		{"pod AAAA", query("fd00-10-244--7.default.pod.cluster.local.", mdns.TypeAAAA, nil), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if len(r.Answer) != 1 || r.Answer[0].(*mdns.AAAA).AAAA.String() != "fd00:10:244::7" {
					t.Errorf("answer %v", r.Answer)
				}
			}},
		{"pod name that is no address: NXDOMAIN", query("nothing.default.pod.cluster.local.", mdns.TypeA, nil), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Rcode != mdns.RcodeNameError || len(r.Ns) != 1 {
					t.Errorf("%v", r)
				}
			}},
		{"label lookalike is not the zone", query("x\x07cluster.local.", mdns.TypeA, nil), minUDPSize,
			func(t *testing.T, r *mdns.Msg, _ action) {
				if r.Rcode != mdns.RcodeRefused {
					t.Errorf("rcode %s", mdns.RcodeToString[r.Rcode])
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var q question
			out, _, act := s.answer(nil, tc.req, &q, tc.limit < maxTCPSize)
			var r *mdns.Msg
			if act == actReply {
				r = new(mdns.Msg)
				if err := r.Unpack(out); err != nil {
					t.Fatalf("response does not unpack: %v", err)
				}
				if len(out) > max(tc.limit, minUDPSize) && tc.limit < maxTCPSize {
					t.Errorf("response of %d bytes over the limit %d", len(out), tc.limit)
				}
			}
			tc.check(t, r, act)
		})
	}
}

// TestTruncateAdditionalFirst: additional records go before the answer is cut.
func TestTruncateAdditionalFirst(t *testing.T) {
	s := newTestServer(t, Config{}, nil)
	s.Update(fixture("10.244.0.5"))
	req := query("_postgres._tcp.db.default.svc.cluster.local.", mdns.TypeSRV, nil)
	var q question
	if parseQuery(req, &q) != parseOK {
		t.Fatal("query does not parse")
	}
	n, _ := s.index.Load().find(&q)
	set := n.sets[slotSRV]
	full := headerLen + len(req) - headerLen + len(set.data) + len(set.extra)
	for _, tc := range []struct {
		limit         int
		tc            bool
		answer, extra int
	}{
		{full, false, 3, 4},
		{full - 1, false, 3, 0},
		{full - len(set.extra) - 1, true, 2, 0},
	} {
		r := new(mdns.Msg)
		if err := r.Unpack(s.respond(nil, req, &q, flagAA, 0, set, nil, tc.limit)); err != nil {
			t.Fatal(err)
		}
		if r.Truncated != tc.tc || len(r.Answer) != tc.answer || len(r.Extra) != tc.extra {
			t.Errorf("limit %d: tc %v answer %d extra %d, want %v %d %d", tc.limit, r.Truncated, len(r.Answer), len(r.Extra),
				tc.tc, tc.answer, tc.extra)
		}
	}
}

// TestConfig: the cluster domain and TTL are honoured; other zones are not ours.
func TestConfig(t *testing.T) {
	s := newTestServer(t, Config{ClusterDomain: "kproxy.test.", TTL: 30 * time.Second}, nil)
	s.Update(fixture("10.244.0.5"))
	r, _ := ask(t, s, query("web.default.svc.kproxy.test.", mdns.TypeA, nil), minUDPSize)
	if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 {
		t.Errorf("answer %v, want one record with TTL 30", r.Answer)
	}
	r, _ = ask(t, s, query("nope.default.svc.kproxy.test.", mdns.TypeA, nil), minUDPSize)
	if soa, ok := r.Ns[0].(*mdns.SOA); !ok || soa.Minttl != 30 || soa.Hdr.Name != "kproxy.test." {
		t.Errorf("authority %v, want the kproxy.test SOA with minimum 30", r.Ns)
	}
	r, _ = ask(t, s, query("web.default.svc.cluster.local.", mdns.TypeA, nil), minUDPSize)
	if r.Rcode != mdns.RcodeRefused {
		t.Errorf("cluster.local with another cluster domain: %s", mdns.RcodeToString[r.Rcode])
	}
	for _, bad := range []Config{
		{BindAddress: "nope"},
		{ClusterDomain: "a..b"},
		{TTL: time.Millisecond},
		{Upstream: "1.2.3.4:1:2"},
		{Upstream: "192.0.2.1:99999"},
	} {
		if _, err := New(bad, nil); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
	if got := upstreamAddr("192.0.2.1"); got != "192.0.2.1:53" {
		t.Errorf("upstream default port: %s", got)
	}
}

// TestMetrics: requests are counted per protocol and rcode.
func TestMetrics(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry())
	s := newTestServer(t, Config{}, m)
	s.Update(fixture("10.244.0.5"))
	for range 3 {
		var q question
		_, rcode, _ := s.answer(nil, query("nope.default.svc.cluster.local.", mdns.TypeA, nil), &q, true)
		s.count(protoUDP, rcode)
	}
	var d dto.Metric
	if err := m.DNSRequestsTotal.WithLabelValues("udp", "NXDOMAIN").Write(&d); err != nil {
		t.Fatal(err)
	}
	if got := d.GetCounter().GetValue(); got != 3 {
		t.Errorf("udp NXDOMAIN = %v, want 3", got)
	}
}

// TestAnswerAllocs: the hot path allocates nothing.
func TestAnswerAllocs(t *testing.T) {
	s := newTestServer(t, Config{}, nil)
	s.Update(fixture("10.244.0.5"))
	for _, tc := range []struct {
		name  string
		qtype uint16
	}{
		{"web.default.svc.cluster.local.", mdns.TypeA},
		{"db.default.svc.cluster.local.", mdns.TypeA},
		{"_postgres._tcp.db.default.svc.cluster.local.", mdns.TypeSRV},
		{"www.example.com.default.svc.cluster.local.", mdns.TypeA},
		{"10.0.96.10.in-addr.arpa.", mdns.TypePTR},
		{"big.default.svc.cluster.local.", mdns.TypeA},
	} {
		req := query(tc.name, tc.qtype, func(m *mdns.Msg) { m.SetEdns0(1232, false) })
		out := make([]byte, 0, maxTCPSize)
		var q question
		allocs := testing.AllocsPerRun(200, func() { s.answer(out[:0], req, &q, true) })
		if allocs != 0 {
			t.Errorf("%s: %v allocations per query", tc.name, allocs)
		}
	}
}

// bigSnapshot has n ClusterIP services with two named ports and n/10 headless
// services with 10 endpoints.
func bigSnapshot(n int) *model.Snapshot {
	snap := &model.Snapshot{Services: map[types.NamespacedName]*v1.Service{},
		Slices: map[types.NamespacedName][]*discovery.EndpointSlice{}}
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String()
		svc := makeService(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("svc%d", i), clusterIP(ip))
		snap.Services[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] = svc
	}
	for i := range n / 10 {
		svc := makeService(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("db%d", i), headless(false))
		var eps []ep
		for j := range 10 {
			eps = append(eps, ep{ip: netip.AddrFrom4([4]byte{10, 244, byte(i), byte(j + 1)}).String()})
		}
		k := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		snap.Services[k] = svc
		snap.Slices[k] = []*discovery.EndpointSlice{makeSlice(svc.Namespace, svc.Name, discovery.AddressTypeIPv4,
			[]slicePort{{"postgres", v1.ProtocolTCP, 5432}}, eps...)}
	}
	return snap
}

// BenchmarkAnswer is the in-process cost of one ClusterIP A query.
func BenchmarkAnswer(b *testing.B) {
	s := newTestServer(b, Config{}, nil)
	s.Update(bigSnapshot(10000))
	req := query("svc1234.ns34.svc.cluster.local.", mdns.TypeA, func(m *mdns.Msg) { m.SetEdns0(1232, false) })
	out := make([]byte, 0, maxTCPSize)
	var q question
	b.ReportAllocs()
	for b.Loop() {
		s.answer(out[:0], req, &q, true)
	}
}

// BenchmarkUpdate is one sync at 10,000 ClusterIP + 1,000 headless services
// where one headless service's endpoints changed.
func BenchmarkUpdate(b *testing.B) {
	s := newTestServer(b, Config{}, nil)
	snap := bigSnapshot(10000)
	start := time.Now()
	s.Update(snap)
	first := time.Since(start)
	k := types.NamespacedName{Namespace: "ns7", Name: "db7"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		next := *snap
		next.Slices = map[types.NamespacedName][]*discovery.EndpointSlice{}
		for kk, v := range snap.Slices {
			next.Slices[kk] = v
		}
		next.Slices[k] = []*discovery.EndpointSlice{makeSlice("ns7", "db7", discovery.AddressTypeIPv4, nil,
			ep{ip: netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)}).String()})}
		s.Update(&next)
	}
	b.ReportMetric(float64(first.Milliseconds()), "first-build-ms")
}

// TestConcurrentUpdate: queries run while updates swap the index (run with -race).
func TestConcurrentUpdate(t *testing.T) {
	s := newTestServer(t, Config{}, nil)
	s.Update(fixture("10.244.0.5"))
	done := make(chan struct{})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			out := make([]byte, 0, maxTCPSize)
			var q question
			reqs := [][]byte{
				query("db-0.db.default.svc.cluster.local.", mdns.TypeA, nil),
				query("alias.default.svc.cluster.local.", mdns.TypeA, nil),
				query("5.0.244.10.in-addr.arpa.", mdns.TypePTR, nil),
			}
			for i := 0; ; i++ {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				if _, rcode, _ := s.answer(out[:0], reqs[i%len(reqs)], &q, true); rcode == rcodeServFail {
					errs <- fmt.Errorf("SERVFAIL during updates")
					return
				}
			}
		}()
	}
	for i := range 50 {
		snap := fixture(fmt.Sprintf("10.244.0.%d", 100+i%2))
		if i%3 == 0 {
			delete(snap.Services, types.NamespacedName{Namespace: "default", Name: "web"})
		}
		s.Update(snap)
	}
	close(done)
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
