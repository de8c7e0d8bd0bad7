package describe

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestServiceGolden(t *testing.T) {
	for _, tc := range describeCases() {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := service(&buf, tc.svc, tc.slices, tc.events, testNow); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tc.name+".describe", buf.Bytes())
		})
	}
}

func TestServicesTableGolden(t *testing.T) {
	var prod []*v1.Service
	for _, s := range tableServices() {
		if s.Namespace == "prod" {
			prod = append(prod, s)
		}
	}
	tests := []struct {
		name          string
		svcs          []*v1.Service
		withNamespace bool
	}{
		{name: "get-services-n-prod", svcs: prod, withNamespace: false},
		{name: "get-services-all-namespaces", svcs: tableServices(), withNamespace: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := ServicesTable(&buf, tc.svcs, tc.withNamespace, testNow); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tc.name, buf.Bytes())
		})
	}
}

func TestServiceRowCells(t *testing.T) {
	lb := func(ips ...string) *v1.Service {
		s := makeTestService("default", "lb", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ClusterIPs = nil
		})
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
		return s
	}
	tests := []struct {
		name string
		svc  *v1.Service
		want []string
	}{
		{
			name: "no cluster IP and no ports",
			svc:  makeTestService("default", "bare", nil),
			want: []string{"bare", "ClusterIP", "<none>", "<none>", "<none>", "26h"},
		},
		{
			name: "load-balancer addresses are sorted, de-duplicated and cut at 16 characters",
			svc:  lb("203.0.113.20", "203.0.113.10", "203.0.113.20"),
			want: []string{"lb", "LoadBalancer", "<none>", "203.0.113.10,...", "<none>", "26h"},
		},
		{
			name: "load-balancer hostname when there is no IP",
			svc: func() *v1.Service {
				s := lb()
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "a.example.com"}}
				return s
			}(),
			want: []string{"lb", "LoadBalancer", "<none>", "a.example.com", "<none>", "26h"},
		},
		{
			name: "external IPs follow the load-balancer addresses",
			svc: func() *v1.Service {
				s := lb("203.0.113.10")
				s.Spec.ExternalIPs = []string{"203.0.113.7"}
				return s
			}(),
			want: []string{"lb", "LoadBalancer", "<none>", "203.0.113.10,203.0.113.7", "<none>", "26h"},
		},
		{
			name: "node ports and protocols",
			svc: makeTestService("default", "np", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports = []v1.ServicePort{
					{Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080, TargetPort: intstr.FromInt32(80)},
					{Port: 53, Protocol: v1.ProtocolUDP},
				}
			}),
			want: []string{"np", "NodePort", "<none>", "<none>", "80:30080/TCP,53/UDP", "26h"},
		},
		{
			name: "unknown type",
			svc:  makeTestService("default", "odd", func(s *v1.Service) { s.Spec.Type = "Weird" }),
			want: []string{"odd", "Weird", "<none>", "<unknown>", "<none>", "26h"},
		},
		{
			name: "no creation timestamp",
			svc:  makeTestService("default", "new", func(s *v1.Service) { s.CreationTimestamp = metav1.Time{} }),
			want: []string{"new", "ClusterIP", "<none>", "<none>", "<none>", "<unknown>"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := serviceRow(tc.svc, testNow)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("row = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestServicesTableEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := ServicesTable(&buf, nil, true, testNow); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Errorf("empty table printed %q, want nothing", buf.String())
	}
}

func TestCellsAreEscaped(t *testing.T) {
	svc := makeTestService("default", "esc", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeExternalName
		s.Spec.ExternalName = "evil\x1b[31m.example.com\nsecond line"
		s.Annotations = map[string]string{"note": "red\x1b[31m\r"}
	})
	var table, desc bytes.Buffer
	if err := ServicesTable(&table, []*v1.Service{svc}, false, testNow); err != nil {
		t.Fatal(err)
	}
	if err := service(&desc, svc, nil, nil, testNow); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"table": table.String(), "describe": desc.String()} {
		if strings.Contains(out, "\x1b") || strings.Contains(out, "\r") {
			t.Errorf("%s output carries a terminal control character: %q", name, out)
		}
	}
	if !strings.Contains(table.String(), "evil^[[31m.example.com...") {
		t.Errorf("table cell not cut at the line break: %q", table.String())
	}
}

type failingWriter struct{}

var errWrite = errors.New("disk full")

func (failingWriter) Write([]byte) (int, error) { return 0, errWrite }

func TestWriteErrorsAreReturned(t *testing.T) {
	svc := makeTestService("default", "web", nil)
	if err := Service(failingWriter{}, svc, nil, nil); !errors.Is(err, errWrite) {
		t.Errorf("Service error = %v, want %v", err, errWrite)
	}
	if err := ServicesTable(failingWriter{}, []*v1.Service{svc}, false, testNow); !errors.Is(err, errWrite) {
		t.Errorf("ServicesTable error = %v, want %v", err, errWrite)
	}
	if err := Service(&bytes.Buffer{}, nil, nil, nil); err == nil {
		t.Error("Service(nil) succeeded")
	}
}

func TestFormatEndpoints(t *testing.T) {
	ready := ptr.To(true)
	tests := []struct {
		name   string
		slices []*discovery.EndpointSlice
		port   string
		want   string
	}{
		{name: "no slices", want: "<none>"},
		{
			name: "slice without ports lists bare ready addresses",
			slices: []*discovery.EndpointSlice{makeTestSlice("default", "web", "a", discovery.AddressTypeIPv4, nil,
				endpoint("10.244.0.5", ready), endpoint("10.244.0.6", ptr.To(false)))},
			port: "http",
			want: "10.244.0.5",
		},
		{
			name: "only the ports of that name",
			slices: []*discovery.EndpointSlice{makeTestSlice("default", "web", "a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{slicePort("http", 8080, v1.ProtocolTCP), slicePort("admin", 9000, v1.ProtocolTCP)},
				endpoint("10.244.0.5", ready))},
			port: "admin",
			want: "10.244.0.5:9000",
		},
		{
			name: "a port without name or number and an endpoint without addresses do not crash",
			slices: []*discovery.EndpointSlice{makeTestSlice("default", "web", "a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{{}},
				endpoint("10.244.0.5", ready), discovery.Endpoint{})},
			port: "",
			want: "10.244.0.5",
		},
		{
			name: "not-ready endpoints are not counted in the overflow",
			slices: []*discovery.EndpointSlice{makeTestSlice("default", "web", "a", discovery.AddressTypeIPv6,
				[]discovery.EndpointPort{slicePort("", 53, v1.ProtocolUDP)},
				endpoint("fd00::1", ready), endpoint("fd00::2", ready), endpoint("fd00::3", ready),
				endpoint("fd00::4", ptr.To(false)), endpoint("fd00::5", ready))},
			want: "[fd00::1]:53,[fd00::2]:53,[fd00::3]:53 + 1 more...",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatEndpoints(tc.slices, tc.port); got != tc.want {
				t.Errorf("formatEndpoints = %q, want %q", got, tc.want)
			}
		})
	}
}
