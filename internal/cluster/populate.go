package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Population describes many selector-less ClusterIP services, each with one
// EndpointSlice written directly through the API (no pods, no controller: at
// 10,000 services a pod per endpoint would measure the harness, not the proxy).
type Population struct {
	Namespace string
	// Services and EndpointsPerService give the size.
	Services, EndpointsPerService int
	// EndpointNode is the nodeName of every endpoint (a remote node by default).
	EndpointNode string
	// Workers is the number of concurrent creators (default 16).
	Workers int
}

// ServiceName returns the name of service i.
func (p Population) ServiceName(i int) string { return "svc-" + strconv.Itoa(i) }

// EndpointIP returns the address of endpoint j of service i, from 10.128.0.0/9.
func (p Population) EndpointIP(i, j int) netip.Addr {
	n := uint32(10)<<24 | uint32(128)<<16 | uint32(i*p.EndpointsPerService+j)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// Slice builds the EndpointSlice of service i with the endpoints' addresses
// from ip (EndpointIP when nil), stamped with the trigger-time annotation that
// proxies use to measure network programming latency.
func (p Population) Slice(i int, ip func(i, j int) netip.Addr) *discovery.EndpointSlice {
	if ip == nil {
		ip = p.EndpointIP
	}
	name := p.ServiceName(i)
	ready := true
	node := p.EndpointNode
	if node == "" {
		node = "node-b"
	}
	portName, port, proto := "http", int32(8080), corev1.ProtocolTCP
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Namespace, Name: name + "-bench",
			Labels:      map[string]string{discovery.LabelServiceName: name, discovery.LabelManagedBy: "kproxy-bench"},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
	for j := range p.EndpointsPerService {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{ip(i, j).String()},
			Conditions: discovery.EndpointConditions{Ready: &ready},
			NodeName:   &node,
		})
	}
	return s
}

// Populate creates the namespace, the services and their slices, in parallel.
func (c *Cluster) Populate(ctx context.Context, p Population) error {
	if p.Workers == 0 {
		p.Workers = 16
	}
	if err := c.CreateNamespace(ctx, p.Namespace); err != nil {
		return err
	}
	policy := corev1.IPFamilyPolicySingleStack
	work := make(chan int)
	errc := make(chan error, p.Workers)
	var wg sync.WaitGroup
	for range p.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.ServiceName(i)},
					Spec: corev1.ServiceSpec{
						IPFamilyPolicy: &policy,
						IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol},
						Ports:          []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
					},
				}
				if _, err := c.Client.CoreV1().Services(p.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
					errc <- fmt.Errorf("create service %d: %w", i, err)
					return
				}
				if _, err := c.Client.DiscoveryV1().EndpointSlices(p.Namespace).Create(ctx, p.Slice(i, nil), metav1.CreateOptions{}); err != nil {
					errc <- fmt.Errorf("create slice %d: %w", i, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range p.Services {
		select {
		case work <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}
