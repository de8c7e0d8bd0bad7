// Package describe prints Services the way kubectl does: Service is the layout of
// `kubectl describe service`, ServicesTable the columns of `kubectl get services`.
//
// The output is meant to be byte-for-byte what kubectl v1.37 prints for the same
// objects, so that users and scripts can read kproxy's answers like a cluster's.
// The layouts follow k8s.io/kubectl/pkg/describe (describeService,
// formatEndpointSlices, DescribeEvents) and the server-side table printer of
// kube-apiserver (printService) rendered by k8s.io/cli-runtime's table printer;
// the tests compare against kubectl's own describer.
package describe

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// maxAnnotationLen is where kubectl folds an annotation onto its own lines.
const maxAnnotationLen = 140

// maxEndpointsShown is how many endpoints kubectl lists per port before "+ N more...".
const maxEndpointsShown = 3

// terminalEscaper neutralises terminal escape sequences in object text, as kubectl
// does (CVE-2021-25743): a Service annotation must not be able to drive the
// reader's terminal.
var terminalEscaper = strings.NewReplacer("\x1b", "^[", "\r", "\\r")

// describeWriter is kubectl's prefix writer over a tabwriter, keeping the first
// write error so the layout code stays linear.
type describeWriter struct {
	tw  *tabwriter.Writer
	err error
}

func (w *describeWriter) printf(format string, a ...any) {
	if w.err != nil {
		return
	}
	_, w.err = io.WriteString(w.tw, terminalEscaper.Replace(fmt.Sprintf(format, a...)))
}

// flush aligns what was written so far on its own, as kubectl does before the
// events table.
func (w *describeWriter) flush() {
	if w.err == nil {
		w.err = w.tw.Flush()
	}
}

// Service writes svc in the layout of `kubectl describe service`. slices are the
// EndpointSlices kubectl would list for it: those in the service's namespace
// labelled kubernetes.io/service-name=<name> (others are ignored), taken in name
// order like the API server returns them. events are the service's events; none
// prints "Events: <none>". Ages are relative to the current time.
func Service(w io.Writer, svc *v1.Service, slices []*discovery.EndpointSlice, events []v1.Event) error {
	return service(w, svc, slices, events, time.Now())
}

func service(out io.Writer, svc *v1.Service, endpointSlices []*discovery.EndpointSlice, events []v1.Event, now time.Time) error {
	if svc == nil {
		return fmt.Errorf("describe service: nil service")
	}
	w := &describeWriter{tw: tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)}
	spec := &svc.Spec
	w.printf("Name:\t%s\n", svc.Name)
	w.printf("Namespace:\t%s\n", svc.Namespace)
	printLabels(w, "Labels", svc.Labels)
	printAnnotations(w, "Annotations", svc.Annotations)
	w.printf("Selector:\t%s\n", labels.FormatLabels(spec.Selector))
	w.printf("Type:\t%s\n", spec.Type)
	if spec.IPFamilyPolicy != nil {
		w.printf("IP Family Policy:\t%s\n", *spec.IPFamilyPolicy)
	}
	if len(spec.IPFamilies) > 0 {
		families := make([]string, len(spec.IPFamilies))
		for i, f := range spec.IPFamilies {
			families[i] = string(f)
		}
		w.printf("IP Families:\t%s\n", strings.Join(families, ","))
	} else {
		w.printf("IP Families:\t%s\n", "<none>")
	}
	w.printf("IP:\t%s\n", spec.ClusterIP)
	if len(spec.ClusterIPs) > 0 {
		w.printf("IPs:\t%s\n", strings.Join(spec.ClusterIPs, ","))
	} else {
		w.printf("IPs:\t%s\n", "<none>")
	}
	if len(spec.ExternalIPs) > 0 {
		w.printf("External IPs:\t%v\n", strings.Join(spec.ExternalIPs, ","))
	}
	if spec.LoadBalancerIP != "" {
		w.printf("Desired LoadBalancer IP:\t%s\n", spec.LoadBalancerIP)
	}
	if spec.ExternalName != "" {
		w.printf("External Name:\t%s\n", spec.ExternalName)
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		w.printf("LoadBalancer Ingress:\t%s\n", ingressString(svc.Status.LoadBalancer.Ingress))
	}
	own := serviceSlices(svc, endpointSlices)
	for i := range spec.Ports {
		sp := &spec.Ports[i]
		name := sp.Name
		if name == "" {
			name = "<unset>"
		}
		w.printf("Port:\t%s\t%d/%s\n", name, sp.Port, sp.Protocol)
		if sp.TargetPort.Type == intstr.Int {
			w.printf("TargetPort:\t%d/%s\n", sp.TargetPort.IntVal, sp.Protocol)
		} else {
			w.printf("TargetPort:\t%s/%s\n", sp.TargetPort.StrVal, sp.Protocol)
		}
		if sp.AppProtocol != nil {
			w.printf("AppProtocol:\t%s\n", *sp.AppProtocol)
		}
		if sp.NodePort != 0 {
			w.printf("NodePort:\t%s\t%d/%s\n", name, sp.NodePort, sp.Protocol)
		}
		w.printf("Endpoints:\t%s\n", formatEndpoints(own, sp.Name))
	}
	w.printf("Session Affinity:\t%s\n", spec.SessionAffinity)
	if spec.ExternalTrafficPolicy != "" {
		w.printf("External Traffic Policy:\t%s\n", spec.ExternalTrafficPolicy)
	}
	if spec.InternalTrafficPolicy != nil {
		w.printf("Internal Traffic Policy:\t%s\n", *spec.InternalTrafficPolicy)
	}
	if spec.HealthCheckNodePort != 0 {
		w.printf("HealthCheck NodePort:\t%d\n", spec.HealthCheckNodePort)
	}
	if len(spec.LoadBalancerSourceRanges) > 0 {
		w.printf("LoadBalancer Source Ranges:\t%v\n", strings.Join(spec.LoadBalancerSourceRanges, ","))
	}
	if spec.TrafficDistribution != nil {
		w.printf("Traffic Distribution:\t%s\n", *spec.TrafficDistribution)
	}
	printEvents(w, events, now)
	w.flush()
	if w.err != nil {
		return fmt.Errorf("describe service %s/%s: %w", svc.Namespace, svc.Name, w.err)
	}
	return nil
}

// serviceSlices picks the slices kubectl would list for svc and orders them by
// name, the order of an API server list.
func serviceSlices(svc *v1.Service, all []*discovery.EndpointSlice) []*discovery.EndpointSlice {
	var own []*discovery.EndpointSlice
	for _, s := range all {
		if s == nil || s.Namespace != svc.Namespace || s.Labels[discovery.LabelServiceName] != svc.Name {
			continue
		}
		own = append(own, s)
	}
	slices.SortStableFunc(own, func(a, b *discovery.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	return own
}

// ingressString is kubectl's buildIngressString: IPs (with their mode) or
// hostnames, comma-and-space separated.
func ingressString(ingress []v1.LoadBalancerIngress) string {
	var b strings.Builder
	for i := range ingress {
		if i != 0 {
			b.WriteString(", ")
		}
		if ingress[i].IP != "" {
			b.WriteString(ingress[i].IP)
			if ingress[i].IPMode != nil {
				fmt.Fprintf(&b, " (%s)", *ingress[i].IPMode)
			}
		} else {
			b.WriteString(ingress[i].Hostname)
		}
	}
	return b.String()
}

// formatEndpoints is kubectl's formatEndpointSlices for one service port: the
// ready endpoints of the slice ports with that name, as host:port, the first three
// and then "+ N more...". Slices without ports (headless services without ports)
// list bare addresses. Unlike kubectl it does not crash on a port without a name
// or number, or an endpoint without addresses.
func formatEndpoints(endpointSlices []*discovery.EndpointSlice, portName string) string {
	if len(endpointSlices) == 0 {
		return "<none>"
	}
	var list []string
	more := false
	count := 0
	add := func(ep *discovery.Endpoint, port *int32) {
		if len(list) == maxEndpointsShown {
			more = true
		}
		// A nil ready condition means unknown, which consumers treat as ready.
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			return
		}
		if !more && len(ep.Addresses) > 0 {
			addr := ep.Addresses[0]
			if port != nil {
				addr = net.JoinHostPort(addr, strconv.Itoa(int(*port)))
			}
			list = append(list, addr)
		}
		count++
	}
	for _, s := range endpointSlices {
		if len(s.Ports) == 0 {
			for j := range s.Endpoints {
				add(&s.Endpoints[j], nil)
			}
			continue
		}
		for _, p := range s.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name != portName {
				continue
			}
			for j := range s.Endpoints {
				add(&s.Endpoints[j], p.Port)
			}
		}
	}
	ret := strings.Join(list, ",")
	if more {
		return fmt.Sprintf("%s + %d more...", ret, count-maxEndpointsShown)
	}
	return ret
}

// printLabels is kubectl's printLabelsMultiline: sorted key=value, one per line.
func printLabels(w *describeWriter, title string, m map[string]string) {
	w.printf("%s:\t", title)
	if len(m) == 0 {
		w.printf("<none>\n")
		return
	}
	keys := slices.Sorted(maps.Keys(m))
	for i, k := range keys {
		if i != 0 {
			w.printf("\t")
		}
		w.printf("%s=%s\n", k, m[k])
	}
}

// printAnnotations is kubectl's printAnnotationsMultiline: sorted, without the
// last-applied-configuration blob, long or multi-line values folded and cut.
func printAnnotations(w *describeWriter, title string, m map[string]string) {
	w.printf("%s:\t", title)
	var keys []string
	for k := range m {
		if k == v1.LastAppliedConfigAnnotation {
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		w.printf("<none>\n")
		return
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i != 0 {
			w.printf("\t")
		}
		value := strings.TrimSuffix(m[k], "\n")
		if len(value)+len(k)+2 > maxAnnotationLen || strings.Contains(value, "\n") {
			w.printf("%s:\n", k)
			for _, line := range strings.Split(value, "\n") {
				w.printf("\t  %s\n", shorten(line, maxAnnotationLen-2))
			}
		} else {
			w.printf("%s: %s\n", k, value)
		}
	}
}

func shorten(s string, maxLength int) string {
	if len(s) > maxLength {
		return s[:maxLength] + "..."
	}
	return s
}

// byLastTimestamp is kubectl's event order. It is sorted with sort.Sort, as
// kubectl does, so that events with equal timestamps come out in kubectl's order.
type byLastTimestamp []v1.Event

func (l byLastTimestamp) Len() int      { return len(l) }
func (l byLastTimestamp) Swap(i, j int) { l[i], l[j] = l[j], l[i] }
func (l byLastTimestamp) Less(i, j int) bool {
	return l[i].LastTimestamp.Time.Before(l[j].LastTimestamp.Time)
}

// printEvents is kubectl's DescribeEvents.
func printEvents(w *describeWriter, events []v1.Event, now time.Time) {
	if len(events) == 0 {
		w.printf("Events:\t<none>\n")
		return
	}
	w.flush()
	sorted := slices.Clone(events)
	sort.Sort(byLastTimestamp(sorted))
	w.printf("Events:\n  Type\tReason\tAge\tFrom\tMessage\n")
	w.printf("  ----\t------\t----\t----\t-------\n")
	for i := range sorted {
		e := &sorted[i]
		first := microSince(e.EventTime, now)
		if e.EventTime.IsZero() {
			first = since(e.FirstTimestamp, now)
		}
		var interval string
		switch {
		case e.Series != nil:
			interval = fmt.Sprintf("%s (x%d over %s)", microSince(e.Series.LastObservedTime, now), e.Series.Count, first)
		case e.Count > 1:
			interval = fmt.Sprintf("%s (x%d over %s)", since(e.LastTimestamp, now), e.Count, first)
		default:
			interval = first
		}
		source := e.Source.Component
		if source == "" {
			source = e.ReportingController
		}
		message := strings.TrimSpace(e.Message)
		if e.InvolvedObject.FieldPath != "" {
			message = fmt.Sprintf("%s: %s", e.InvolvedObject.FieldPath, message)
		}
		w.printf("  %v\t%v\t%s\t%v\t%v\n", e.Type, e.Reason, interval, source, message)
	}
}

// since is kubectl's translateTimestampSince, relative to now.
func since(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func microSince(t metav1.MicroTime, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}
