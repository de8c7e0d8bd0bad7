package dns

// IP plan of these tests (nothing leaves loopback):
//   server          127.0.0.1:<random>, UDP and TCP
//   upstream        127.0.0.1:<random>, a miekg/dns server playing an outside resolver
//   cluster IPs     10.96.0.0/16, fd00:10:96::/112
//   pod IPs         10.244.0.0/16, fd00:10:244::/64
//   "outside" IPs   192.0.2.0/24 (TEST-NET-1), only inside answers

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/testenv"
)

func makeService(ns, name string, mutate func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP},
	}
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

type ep struct {
	ip       string
	hostname string
	notReady bool
}

type slicePort struct {
	name  string
	proto v1.Protocol
	port  int32
}

func makeSlice(ns, svc string, family discovery.AddressType, ports []slicePort, eps ...ep) *discovery.EndpointSlice {
	sl := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-" + strings.ToLower(string(family))},
		AddressType: family,
	}
	for _, p := range ports {
		sl.Ports = append(sl.Ports, discovery.EndpointPort{Name: new(p.name), Protocol: new(p.proto), Port: new(p.port)})
	}
	for _, e := range eps {
		d := discovery.Endpoint{Addresses: []string{e.ip}, Conditions: discovery.EndpointConditions{Ready: new(!e.notReady)}}
		if e.hostname != "" {
			d.Hostname = new(e.hostname)
		}
		sl.Endpoints = append(sl.Endpoints, d)
	}
	return sl
}

func clusterIP(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
		s.Spec.Ports = []v1.ServicePort{
			{Name: "http", Protocol: v1.ProtocolTCP, Port: 80},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53},
		}
	}
}

func headless(publishNotReady bool) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
		s.Spec.PublishNotReadyAddresses = publishNotReady
		s.Spec.Ports = []v1.ServicePort{{Name: "postgres", Protocol: v1.ProtocolTCP, Port: 5432}}
	}
}

func externalName(name string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type, s.Spec.ExternalName = v1.ServiceTypeExternalName, name
	}
}

const bigEndpoints = 120 // 120 A records are 1,920 bytes: more than a 1,232-byte UDP answer

// fixture is the cluster the tests resolve in.
func fixture(db0 string) *model.Snapshot {
	pg := []slicePort{{"postgres", v1.ProtocolTCP, 5432}}
	snap := &model.Snapshot{
		Generation: 1,
		Services:   map[types.NamespacedName]*v1.Service{},
		Slices:     map[types.NamespacedName][]*discovery.EndpointSlice{},
	}
	add := func(svc *v1.Service, slices ...*discovery.EndpointSlice) {
		k := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		snap.Services[k] = svc
		snap.Slices[k] = slices
	}
	add(makeService("default", "web", clusterIP("10.96.0.10", "fd00:10:96::10")))
	add(makeService("default", "v6only", clusterIP("fd00:10:96::20")))
	add(makeService("kube-system", "kube-dns", clusterIP("10.96.0.53")))
	add(makeService("default", "db", headless(false)),
		makeSlice("default", "db", discovery.AddressTypeIPv4, pg,
			ep{ip: db0, hostname: "db-0"}, ep{ip: "10.244.0.6", hostname: "db-1"},
			ep{ip: "10.244.0.7"}, ep{ip: "10.244.0.8", hostname: "db-3", notReady: true}),
		makeSlice("default", "db", discovery.AddressTypeIPv6, pg, ep{ip: "fd00:10:244::5", hostname: "db-0"}))
	add(makeService("default", "early", headless(true)),
		makeSlice("default", "early", discovery.AddressTypeIPv4, pg, ep{ip: "10.244.0.9", notReady: true}))
	add(makeService("default", "idle", headless(false)),
		makeSlice("default", "idle", discovery.AddressTypeIPv4, pg, ep{ip: "10.244.0.10", notReady: true}))
	var big []ep
	for i := range bigEndpoints {
		big = append(big, ep{ip: fmt.Sprintf("10.244.1.%d", i+1)})
	}
	add(makeService("default", "big", headless(false)), makeSlice("default", "big", discovery.AddressTypeIPv4, pg, big...))
	add(makeService("default", "ext", externalName("www.example.com")))
	add(makeService("default", "extip", externalName("192.0.2.1")))
	add(makeService("default", "alias", externalName("web.default.svc.cluster.local")))
	add(makeService("default", "alias2", externalName("ext.default.svc.cluster.local")))
	return snap
}

func startServer(t *testing.T, upstream string) *Server {
	t.Helper()
	s, err := New(Config{BindAddress: "127.0.0.1:0", Upstream: upstream, UpstreamTimeout: time.Second,
		Logger: slog.New(slog.DiscardHandler)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	s.Update(fixture("10.244.0.5"))
	return s
}

// digResult is dig's output, parsed.
type digResult struct {
	status     string
	flags      []string
	answer     []mdns.RR
	authority  []mdns.RR
	additional []mdns.RR
	retriedTCP bool
	raw        string
}

func (r *digResult) hasFlag(f string) bool { return slices.Contains(r.flags, f) }

// answerValues renders the answer records as "TYPE value" strings.
func (r *digResult) answerValues() []string {
	var out []string
	for _, rr := range r.answer {
		h := rr.Header()
		val := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, mdns.TypeToString[h.Rrtype]+" "+val)
	}
	slices.Sort(out)
	return out
}

func dig(t *testing.T, s *Server, args ...string) *digResult {
	t.Helper()
	testenv.RequireCommand(t, "dig")
	addr, err := netip.ParseAddrPort(s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"@" + addr.Addr().String(), "-p", fmt.Sprint(addr.Port()), "+tries=1", "+time=3"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return parseDig(t, string(out))
}

func parseDig(t *testing.T, out string) *digResult {
	t.Helper()
	r := &digResult{raw: out}
	var section *[]mdns.RR
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "Truncated, retrying in TCP mode"):
			r.retriedTCP = true
		case strings.HasPrefix(line, ";; ->>HEADER<<-"):
			// A retried query prints a second header: the last one wins.
			r.status, r.flags, r.answer, r.authority, r.additional = "", nil, nil, nil, nil
			if _, after, ok := strings.Cut(line, "status: "); ok {
				r.status, _, _ = strings.Cut(after, ",")
			}
		case strings.HasPrefix(line, ";; flags:"):
			f, _, _ := strings.Cut(strings.TrimPrefix(line, ";; flags:"), ";")
			r.flags = strings.Fields(f)
		case line == ";; ANSWER SECTION:":
			section = &r.answer
		case line == ";; AUTHORITY SECTION:":
			section = &r.authority
		case line == ";; ADDITIONAL SECTION:":
			section = &r.additional
		case line == "" || strings.HasPrefix(line, ";"):
			if line == "" {
				section = nil
			}
		case section != nil:
			rr, err := mdns.NewRR(line)
			if err != nil {
				t.Fatalf("parse dig line %q: %v", line, err)
			}
			*section = append(*section, rr)
		}
	}
	if r.status == "" {
		t.Fatalf("no header in dig output:\n%s", out)
	}
	return r
}

// TestRecords asks real dig for every record kind, over UDP and over TCP.
func TestRecords(t *testing.T) {
	s := startServer(t, "")
	tests := []struct {
		name   string
		qname  string
		qtype  string
		status string
		want   []string // sorted "TYPE value" answer records; nil = empty answer
		soa    bool     // SOA expected in the authority section
		// ignoreAnswer leaves the answer to check (for records with a changing serial).
		ignoreAnswer bool
		check        func(t *testing.T, r *digResult)
	}{
		{name: "clusterIP A", qname: "web.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.96.0.10"}},
		{name: "clusterIP AAAA", qname: "web.default.svc.cluster.local.", qtype: "AAAA", status: "NOERROR",
			want: []string{"AAAA fd00:10:96::10"}},
		{name: "case-insensitive, spelling kept", qname: "WeB.DeFault.SVC.cluster.LOCAL.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.96.0.10"}, check: func(t *testing.T, r *digResult) {
				if got := r.answer[0].Header().Name; got != "WeB.DeFault.SVC.cluster.LOCAL." {
					t.Errorf("owner %q, want the question's spelling", got)
				}
			}},
		{name: "single-stack v6: A is NODATA", qname: "v6only.default.svc.cluster.local.", qtype: "A", status: "NOERROR", soa: true},
		{name: "unknown type on a service: NODATA", qname: "web.default.svc.cluster.local.", qtype: "MX", status: "NOERROR", soa: true},
		{name: "clusterIP SRV", qname: "_http._tcp.web.default.svc.cluster.local.", qtype: "SRV", status: "NOERROR",
			want: []string{"SRV 0 100 80 web.default.svc.cluster.local."}, check: func(t *testing.T, r *digResult) {
				if len(r.additional) != 2 {
					t.Errorf("additional %v, want the service's A and AAAA", r.additional)
				}
			}},
		{name: "clusterIP SRV udp port", qname: "_dns._udp.web.default.svc.cluster.local.", qtype: "SRV", status: "NOERROR",
			want: []string{"SRV 0 100 53 web.default.svc.cluster.local."}},
		{name: "SRV wrong protocol", qname: "_http._udp.web.default.svc.cluster.local.", qtype: "SRV", status: "NXDOMAIN", soa: true},
		{name: "SRV parent is an empty non-terminal", qname: "_tcp.web.default.svc.cluster.local.", qtype: "SRV", status: "NOERROR", soa: true},
		{name: "PTR clusterIP v4", qname: "10.0.96.10.in-addr.arpa.", qtype: "PTR", status: "NOERROR",
			want: []string{"PTR web.default.svc.cluster.local."}},
		{name: "PTR clusterIP v6", qname: mustReverse(t, "fd00:10:96::10"), qtype: "PTR", status: "NOERROR",
			want: []string{"PTR web.default.svc.cluster.local."}},
		{name: "headless A: ready endpoints only", qname: "db.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.244.0.5", "A 10.244.0.6", "A 10.244.0.7"}},
		{name: "headless AAAA", qname: "db.default.svc.cluster.local.", qtype: "AAAA", status: "NOERROR",
			want: []string{"AAAA fd00:10:244::5"}},
		{name: "headless hostname A", qname: "db-1.db.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.244.0.6"}},
		{name: "headless hostname dual-stack", qname: "db-0.db.default.svc.cluster.local.", qtype: "AAAA", status: "NOERROR",
			want: []string{"AAAA fd00:10:244::5"}},
		{name: "headless generated hostname", qname: "10-244-0-7.db.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.244.0.7"}},
		{name: "headless not-ready hostname", qname: "db-3.db.default.svc.cluster.local.", qtype: "A", status: "NXDOMAIN", soa: true},
		{name: "headless SRV", qname: "_postgres._tcp.db.default.svc.cluster.local.", qtype: "SRV", status: "NOERROR",
			want: []string{
				"SRV 0 33 5432 10-244-0-7.db.default.svc.cluster.local.",
				"SRV 0 33 5432 db-0.db.default.svc.cluster.local.",
				"SRV 0 33 5432 db-1.db.default.svc.cluster.local.",
			}, check: func(t *testing.T, r *digResult) {
				if len(r.additional) != 4 { // db-0 A+AAAA, db-1 A, 10-244-0-7 A
					t.Errorf("additional %v, want the targets' addresses", r.additional)
				}
			}},
		{name: "headless PTR", qname: "6.0.244.10.in-addr.arpa.", qtype: "PTR", status: "NOERROR",
			want: []string{"PTR db-1.db.default.svc.cluster.local."}},
		{name: "headless PTR v6", qname: mustReverse(t, "fd00:10:244::5"), qtype: "PTR", status: "NOERROR",
			want: []string{"PTR db-0.db.default.svc.cluster.local."}},
		{name: "publishNotReadyAddresses", qname: "early.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.244.0.9"}},
		{name: "headless without ready endpoints is NXDOMAIN", qname: "idle.default.svc.cluster.local.", qtype: "A", status: "NXDOMAIN", soa: true},
		{name: "ExternalName CNAME", qname: "ext.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"CNAME www.example.com."}},
		{name: "ExternalName CNAME query", qname: "ext.default.svc.cluster.local.", qtype: "CNAME", status: "NOERROR",
			want: []string{"CNAME www.example.com."}},
		{name: "ExternalName IP is a name of digits", qname: "extip.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"CNAME 192.0.2.1."}},
		{name: "ExternalName into the zone is followed", qname: "alias.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.96.0.10", "CNAME web.default.svc.cluster.local."}},
		{name: "ExternalName chain leaving the zone", qname: "alias2.default.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"CNAME ext.default.svc.cluster.local.", "CNAME www.example.com."}},
		{name: "schema version", qname: "dns-version.cluster.local.", qtype: "TXT", status: "NOERROR",
			want: []string{`TXT "1.1.0"`}},
		{name: "apex SOA", qname: "cluster.local.", qtype: "SOA", status: "NOERROR", ignoreAnswer: true, check: func(t *testing.T, r *digResult) {
			if len(r.answer) != 1 || r.answer[0].Header().Rrtype != mdns.TypeSOA {
				t.Errorf("answer %v, want the SOA", r.answer)
			}
		}},
		{name: "pod A (deprecated, required)", qname: "10-244-0-42.default.pod.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.244.0.42"}},
		{name: "namespace is an empty non-terminal", qname: "default.svc.cluster.local.", qtype: "A", status: "NOERROR", soa: true},
		{name: "svc is an empty non-terminal", qname: "svc.cluster.local.", qtype: "A", status: "NOERROR", soa: true},
		{name: "unknown namespace", qname: "nope.svc.cluster.local.", qtype: "A", status: "NXDOMAIN", soa: true},
		{name: "unknown service", qname: "nope.default.svc.cluster.local.", qtype: "A", status: "NXDOMAIN", soa: true},
		{name: "search-path miss", qname: "www.example.com.default.svc.cluster.local.", qtype: "A", status: "NXDOMAIN", soa: true},
		{name: "other namespace", qname: "kube-dns.kube-system.svc.cluster.local.", qtype: "A", status: "NOERROR",
			want: []string{"A 10.96.0.53"}},
		{name: "outside the domain: REFUSED", qname: "example.org.", qtype: "A", status: "REFUSED"},
		{name: "unknown reverse name: REFUSED", qname: "1.2.0.192.in-addr.arpa.", qtype: "PTR", status: "REFUSED"},
	}
	for _, transport := range []string{"udp", "tcp"} {
		for _, tc := range tests {
			t.Run(transport+"/"+tc.name, func(t *testing.T) {
				args := []string{tc.qname, tc.qtype}
				if transport == "tcp" {
					args = append(args, "+tcp")
				}
				r := dig(t, s, args...)
				if r.status != tc.status {
					t.Fatalf("status %s, want %s\n%s", r.status, tc.status, r.raw)
				}
				if got := r.answerValues(); !tc.ignoreAnswer && !slices.Equal(got, tc.want) {
					t.Errorf("answer %q, want %q\n%s", got, tc.want, r.raw)
				}
				gotSOA := len(r.authority) == 1 && r.authority[0].Header().Rrtype == mdns.TypeSOA
				if gotSOA != tc.soa {
					t.Errorf("SOA in authority: %v, want %v\n%s", gotSOA, tc.soa, r.raw)
				}
				if tc.status != "REFUSED" && !r.hasFlag("aa") {
					t.Errorf("flags %v, want aa", r.flags)
				}
				for _, rr := range append(slices.Clone(r.answer), r.authority...) {
					if rr.Header().Ttl != 5 {
						t.Errorf("ttl %d, want the default 5: %s", rr.Header().Ttl, rr)
					}
				}
				if tc.check != nil {
					tc.check(t, r)
				}
			})
		}
	}
}

func mustReverse(t *testing.T, ip string) string {
	t.Helper()
	rev, err := mdns.ReverseAddr(ip)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestTruncation: a headless answer bigger than the UDP limit comes back with
// TC, dig retries over TCP on its own and gets every record.
func TestTruncation(t *testing.T) {
	s := startServer(t, "")
	const name = "big.default.svc.cluster.local."
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"edns default bufsize", nil},
		{"no edns (512 bytes)", []string{"+noedns"}},
		{"edns bufsize 4096 is capped at 1232", []string{"+bufsize=4096"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dig(t, s, append([]string{name, "A"}, tc.args...)...)
			if !r.retriedTCP {
				t.Errorf("dig did not retry over TCP\n%s", r.raw)
			}
			if r.status != "NOERROR" || len(r.answer) != bigEndpoints {
				t.Fatalf("status %s, %d records, want NOERROR and %d", r.status, len(r.answer), bigEndpoints)
			}
			var got []string
			for _, rr := range r.answer {
				got = append(got, rr.(*mdns.A).A.String())
			}
			for i := range bigEndpoints {
				if want := fmt.Sprintf("10.244.1.%d", i+1); !slices.Contains(got, want) {
					t.Errorf("missing %s", want)
				}
			}
			// The same query with +ignore shows the truncated UDP answer itself.
			r = dig(t, s, append([]string{name, "A", "+ignore"}, tc.args...)...)
			if !r.hasFlag("tc") || len(r.answer) == 0 || len(r.answer) >= bigEndpoints {
				t.Errorf("UDP answer: flags %v, %d records; want tc and a partial answer", r.flags, len(r.answer))
			}
		})
	}
	t.Run("bufsize large enough for everything", func(t *testing.T) {
		r := dig(t, s, "db.default.svc.cluster.local.", "A", "+bufsize=512", "+ignore")
		if r.hasFlag("tc") || len(r.answer) != 3 {
			t.Errorf("flags %v, %d records; want no tc and 3", r.flags, len(r.answer))
		}
	})
}

// startUpstream runs a miekg/dns server on loopback that plays an outside resolver.
func startUpstream(t *testing.T) string {
	t.Helper()
	// TCP first: on a busy machine TIME_WAIT connections hold many TCP ports.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	records := map[string]string{
		"example.org.":     "example.org. 300 IN A 192.0.2.44",
		"www.example.com.": "www.example.com. 300 IN A 192.0.2.53",
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		q := req.Question[0]
		if line, ok := records[strings.ToLower(q.Name)]; ok {
			if q.Qtype == mdns.TypeA {
				rr, _ := mdns.NewRR(line)
				m.Answer = append(m.Answer, rr)
			}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	udp := &mdns.Server{PacketConn: pc, Handler: h}
	tcp := &mdns.Server{Listener: l, Handler: h}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
	})
	return pc.LocalAddr().String()
}

// TestForwarding: with an upstream, names outside the domain are forwarded and an
// ExternalName target is resolved there; a dead upstream gives SERVFAIL.
func TestForwarding(t *testing.T) {
	s := startServer(t, startUpstream(t))
	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			var extra []string
			if transport == "tcp" {
				extra = []string{"+tcp"}
			}
			r := dig(t, s, append([]string{"example.org.", "A"}, extra...)...)
			if r.status != "NOERROR" || !slices.Equal(r.answerValues(), []string{"A 192.0.2.44"}) || !r.hasFlag("ra") {
				t.Errorf("forwarded: status %s answer %v flags %v\n%s", r.status, r.answerValues(), r.flags, r.raw)
			}
			r = dig(t, s, append([]string{"nothing.example.org.", "A"}, extra...)...)
			if r.status != "NXDOMAIN" {
				t.Errorf("forwarded NXDOMAIN: status %s", r.status)
			}
			r = dig(t, s, append([]string{"ext.default.svc.cluster.local.", "A"}, extra...)...)
			want := []string{"A 192.0.2.53", "CNAME www.example.com."}
			if r.status != "NOERROR" || !slices.Equal(r.answerValues(), want) {
				t.Errorf("ExternalName chased: status %s answer %v, want %v\n%s", r.status, r.answerValues(), want, r.raw)
			}
			r = dig(t, s, append([]string{"alias2.default.svc.cluster.local.", "A"}, extra...)...)
			want = []string{"A 192.0.2.53", "CNAME ext.default.svc.cluster.local.", "CNAME www.example.com."}
			if r.status != "NOERROR" || !slices.Equal(r.answerValues(), want) {
				t.Errorf("CNAME chain chased: status %s answer %v, want %v\n%s", r.status, r.answerValues(), want, r.raw)
			}
			// In-zone names are still answered by kproxy itself.
			r = dig(t, s, append([]string{"web.default.svc.cluster.local.", "A"}, extra...)...)
			if !slices.Equal(r.answerValues(), []string{"A 10.96.0.10"}) || !r.hasFlag("aa") {
				t.Errorf("in-zone with upstream: %v flags %v", r.answerValues(), r.flags)
			}
		})
	}
	t.Run("dead upstream", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		dead, err := New(Config{BindAddress: "127.0.0.1:0", Upstream: pc.LocalAddr().String(), UpstreamTimeout: 300 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := dead.Start(); err != nil {
			t.Fatal(err)
		}
		defer dead.Close()
		r := dig(t, dead, "example.org.", "A")
		if r.status != "SERVFAIL" {
			t.Errorf("status %s, want SERVFAIL", r.status)
		}
	})
}

// TestFollowsModel: a pod that changes IP changes the headless answer at the next Update.
func TestFollowsModel(t *testing.T) {
	s := startServer(t, "")
	r := dig(t, s, "db-0.db.default.svc.cluster.local.", "A")
	if !slices.Equal(r.answerValues(), []string{"A 10.244.0.5"}) {
		t.Fatalf("before: %v", r.answerValues())
	}
	s.Update(fixture("10.244.0.55"))
	for _, q := range [][]string{{"db-0.db.default.svc.cluster.local.", "A"}, {"db.default.svc.cluster.local.", "A", "+tcp"}} {
		r = dig(t, s, q...)
		if !slices.Contains(r.answerValues(), "A 10.244.0.55") || slices.Contains(r.answerValues(), "A 10.244.0.5") {
			t.Errorf("after the IP change, %v: %v", q, r.answerValues())
		}
	}
	r = dig(t, s, "55.0.244.10.in-addr.arpa.", "PTR")
	if !slices.Equal(r.answerValues(), []string{"PTR db-0.db.default.svc.cluster.local."}) {
		t.Errorf("PTR of the new IP: %v", r.answerValues())
	}
	// The service goes away: its name is NXDOMAIN at the next update.
	snap := fixture("10.244.0.55")
	delete(snap.Services, types.NamespacedName{Namespace: "default", Name: "web"})
	s.Update(snap)
	if r = dig(t, s, "web.default.svc.cluster.local.", "A"); r.status != "NXDOMAIN" {
		t.Errorf("deleted service: %s", r.status)
	}
}

// TestTCPPipelining: several queries written back to back on one TCP connection
// are all answered, in order.
func TestTCPPipelining(t *testing.T) {
	s := startServer(t, "")
	c, err := mdns.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	names := []string{"web.default.svc.cluster.local.", "db.default.svc.cluster.local.", "nope.default.svc.cluster.local."}
	for i, n := range names {
		m := new(mdns.Msg)
		m.SetQuestion(n, mdns.TypeA)
		m.Id = uint16(100 + i)
		if err := c.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, n := range names {
		r, err := c.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if r.Id != uint16(100+i) || r.Question[0].Name != n {
			t.Errorf("answer %d: id %d for %s", i, r.Id, r.Question[0].Name)
		}
	}
}
