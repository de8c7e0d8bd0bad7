package trace

// Does the trace agree with where real connections go? The userspace data plane
// needs no root, so this runs everywhere: a real userspace.Proxier serves a
// real model.Tracker's snapshot on loopback, and for each packet the trace's
// answer is checked against what TCP connections from that source actually reach.
//
// IP plan (loopback only, apart from the userspace package's own tests):
//   cluster IPs 127.10.8.0/24, this node "node-a" at 127.10.9.1 (NodePorts),
//   load balancer IP 127.10.10.1, backends on 127.0.8.1-127.0.8.9 (kernel-chosen
//   ports), clients 127.0.0.1-127.0.0.3.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/userspace"
)

// nameBackend is a TCP server that greets every connection with its own address.
func nameBackend(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, addr.String()+"\n")
			c.Close()
		}
	}()
	return addr
}

// reach connects from src to dst and returns the backend that answered; an
// error means the connection was refused or reset.
func reach(src, dst string) (string, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting: %w", err)
	}
	return strings.TrimSpace(line), nil
}

type usEP struct {
	addr  netip.AddrPort
	node  string
	ready bool
}

func usSlices(svc string, eps ...usEP) []*discovery.EndpointSlice {
	// Each backend listens on its own port, and a slice has one port list:
	// one slice per endpoint.
	out := make([]*discovery.EndpointSlice, 0, len(eps))
	for i, e := range eps {
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "ns", Name: svc + "-" + string(rune('a'+i)),
				Labels: map[string]string{discovery.LabelServiceName: svc},
			},
			AddressType: discovery.AddressTypeIPv4,
		}
		s.Ports = []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(e.addr.Port())), Protocol: ptr.To(v1.ProtocolTCP)}}
		s.Endpoints = []discovery.Endpoint{{
			Addresses:  []string{e.addr.Addr().String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.ready), Terminating: ptr.To(false)},
			NodeName:   ptr.To(e.node),
		}}
		out = append(out, s)
	}
	return out
}

func TestTraceAgreesWithUserspace(t *testing.T) {
	b := make([]netip.AddrPort, 8)
	for i := range b {
		b[i] = nameBackend(t, "127.0.8."+string(rune('1'+i)))
	}
	tr := model.NewTracker("node-a", nil)
	tr.OnNodeAdd(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.10.9.1"}}},
	})
	port := func(s *v1.Service) { s.Spec.Ports[0].Port = 18080 }
	for _, s := range []*v1.Service{
		makeTestService("web", "127.10.8.1", port),
		makeTestService("sticky", "127.10.8.2", func(s *v1.Service) {
			port(s)
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}),
		makeTestService("empty", "127.10.8.3", port),
		makeTestService("np-local", "127.10.8.4", func(s *v1.Service) {
			port(s)
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 31080
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}),
		makeTestService("itp-local", "127.10.8.5", func(s *v1.Service) {
			port(s)
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		makeTestService("lb", "127.10.8.6", func(s *v1.Service) {
			port(s)
			lb("127.10.10.1", 31081, false, 0)(s)
			s.Spec.LoadBalancerSourceRanges = []string{"127.0.0.2/32"}
		}),
	} {
		tr.OnServiceAdd(s)
	}
	for _, sl := range [][]*discovery.EndpointSlice{
		usSlices("web", usEP{b[0], "node-b", true}, usEP{b[1], "node-b", true}, usEP{b[2], "node-b", false}),
		usSlices("sticky", usEP{b[3], "node-b", true}, usEP{b[4], "node-b", true}),
		usSlices("np-local", usEP{b[5], "node-a", true}, usEP{b[6], "node-b", true}),
		usSlices("itp-local", usEP{b[7], "node-b", true}),
		usSlices("lb", usEP{b[0], "node-b", true}),
	} {
		for _, s := range sl {
			tr.OnEndpointSliceAdd(s)
		}
	}
	tr.OnServicesSynced()
	tr.OnEndpointSlicesSynced()
	tr.OnNodeSynced()
	snap := tr.Snapshot()

	cfg := userspace.Defaults()
	cfg.DialTimeout = time.Second
	cfg.BindRetryInterval = 100 * time.Millisecond
	p, err := userspace.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if err := p.Sync(context.Background(), snap, true); err != nil {
		t.Fatal(err)
	}
	opts := Options{Userspace: true}

	tests := []struct {
		name     string
		from, to string
		want     Verdict // what the trace must say; the real connections must agree
	}{
		{"cluster IP: the ready endpoints", "127.0.0.1", "127.10.8.1:18080", VerdictProxy},
		{"affinity: one endpoint", "127.0.0.1", "127.10.8.2:18080", VerdictProxy},
		{"no endpoints: reset", "127.0.0.1", "127.10.8.3:18080", VerdictReject},
		{"unserved port: refused", "127.0.0.1", "127.10.8.1:18081", VerdictReject},
		{"ETP Local NodePort: the local endpoint only", "127.0.0.1", "127.10.9.1:31080", VerdictProxy},
		{"the same service's cluster IP: every endpoint", "127.0.0.1", "127.10.8.4:18080", VerdictProxy},
		{"ITP Local without a local endpoint: reset", "127.0.0.1", "127.10.8.5:18080", VerdictReject},
		{"LB source range allows", "127.0.0.2", "127.10.10.1:18080", VerdictProxy},
		{"LB source range refuses", "127.0.0.3", "127.10.10.1:18080", VerdictReject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt, err := ParsePacket(tt.from, tt.to, "tcp")
			if err != nil {
				t.Fatal(err)
			}
			r := FromModel(snap, opts, pkt)
			if r.Verdict != tt.want {
				t.Fatalf("trace says %s (%s), test expects %s", r.Verdict, r.Reason, tt.want)
			}
			var traced []string
			for _, ep := range r.Endpoints {
				traced = append(traced, ep.Address.String())
			}
			// Listeners may bind asynchronously: wait for the first answer
			// (or refusal) to match before counting.
			var seen []string
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, err := reach(tt.from, tt.to)
				if (err == nil) == (tt.want == VerdictProxy) || time.Now().After(deadline) {
					if err == nil {
						seen = append(seen, got)
					}
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			for range 3*len(traced) + 2 {
				got, err := reach(tt.from, tt.to)
				switch {
				case err == nil:
					seen = append(seen, got)
				case tt.want == VerdictProxy:
					t.Fatalf("a connection to %s failed (%v), the trace says %s", tt.to, err, r.Reason)
				}
			}
			slices.Sort(seen)
			seen = slices.Compact(seen)
			switch {
			case tt.want != VerdictProxy:
				if len(seen) > 0 {
					t.Fatalf("trace says %s, but connections reached %v", r.Verdict, seen)
				}
			case r.Affinity != nil:
				if len(seen) != 1 || !slices.Contains(traced, seen[0]) {
					t.Fatalf("affinity: connections reached %v, want one of %v", seen, traced)
				}
			default:
				if !slices.Equal(seen, traced) {
					t.Fatalf("connections reached %v, the trace says %v", seen, traced)
				}
			}
		})
	}
}
