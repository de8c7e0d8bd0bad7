package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"syscall"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/model"
	"github.com/kproxy/kproxy/internal/userspace"
)

// runProxy is the kproxy side of the benchmark: the userspace data plane, fed
// through the model like kproxy run feeds it, serving one service (TCP and UDP
// on the same address and port) with the given backends.
//
//	kproxy-bench proxy SERVICE-ADDR:PORT BACKEND-ADDR:PORT...
func runProxy(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kproxy-bench proxy SERVICE-ADDR:PORT BACKEND-ADDR:PORT...")
		return 2
	}
	svcAddr, err := netip.ParseAddrPort(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
		return 2
	}
	var backends []netip.AddrPort
	for _, a := range args[1:] {
		b, err := netip.ParseAddrPort(a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
			return 2
		}
		backends = append(backends, b)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if path := os.Getenv("KPROXY_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	tracker := model.NewTracker("bench", nil)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "echo"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  svcAddr.Addr().String(),
			ClusterIPs: []string{svcAddr.Addr().String()},
			Ports: []v1.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: int32(svcAddr.Port())},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: int32(svcAddr.Port())},
			},
		},
	}
	tracker.OnServiceAdd(svc)
	for i, b := range backends {
		tracker.OnEndpointSliceAdd(slice(i, b))
	}
	cfg := userspace.Defaults()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if n, err := strconv.Atoi(os.Getenv("KPROXY_BENCH_LOOPS")); err == nil && n > 0 {
		cfg.EventLoops = n
	}
	if n, err := strconv.Atoi(os.Getenv("KPROXY_BENCH_PROXY_PROCS")); err == nil && n > 0 {
		runtime.GOMAXPROCS(n)
	}
	if n, err := strconv.Atoi(os.Getenv("KPROXY_BENCH_PROXY_GOGC")); err == nil {
		debug.SetGCPercent(n)
	}
	p, err := userspace.New(cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
		return 1
	}
	defer p.Close()
	if err := p.Sync(ctx, tracker.Snapshot(), true); err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", err)
		return 1
	}
	for _, ps := range p.Stats() {
		if len(ps.BindErrors) > 0 {
			fmt.Fprintln(os.Stderr, "kproxy-bench proxy:", ps.BindErrors)
			return 1
		}
	}
	<-ctx.Done()
	return 0
}

func slice(i int, b netip.AddrPort) *discovery.EndpointSlice {
	port := int32(b.Port())
	ready := true
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	tcpName, udpName := "tcp", "udp"
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "bench", Name: fmt.Sprintf("echo-%d", i),
			Labels: map[string]string{discovery.LabelServiceName: "echo"},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{
			{Name: &tcpName, Protocol: &tcp, Port: &port},
			{Name: &udpName, Protocol: &udp, Port: &port},
		},
		Endpoints: []discovery.Endpoint{{Addresses: []string{b.Addr().String()}, Conditions: discovery.EndpointConditions{Ready: &ready}}},
	}
}
