package describe

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// loadBalancerWidth is where kube-apiserver's table printer cuts the list of
// load-balancer addresses outside -o wide.
const loadBalancerWidth = 16

// serviceColumns are the columns of `kubectl get services` (without -o wide).
var serviceColumns = []string{"NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"}

// ServicesTable writes svcs as `kubectl get services` does: a NAMESPACE column
// first when withNamespace (kubectl get -A), then NAME TYPE CLUSTER-IP
// EXTERNAL-IP PORT(S) AGE, rows in namespace and name order like an API server
// list, ages relative to now. Like kubectl it prints nothing at all for no
// services (kubectl then says "No resources found" on stderr; that is the
// caller's to say).
func ServicesTable(w io.Writer, svcs []*v1.Service, withNamespace bool, now time.Time) error {
	sorted := slices.DeleteFunc(slices.Clone(svcs), func(s *v1.Service) bool { return s == nil })
	if len(sorted) == 0 {
		return nil
	}
	// Namespace and name identify a row; sort on both whether or not the
	// namespace is shown, as an API server list is ordered.
	slices.SortStableFunc(sorted, func(a, b *v1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	// kubectl's table printer: minimum width 6, padding 3 (cli-runtime GetNewTabWriter).
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	header := serviceColumns
	if withNamespace {
		header = append([]string{"NAMESPACE"}, header...)
	}
	lines := []string{strings.Join(header, "\t")}
	for _, svc := range sorted {
		row := serviceRow(svc, now)
		if withNamespace {
			row = append([]string{svc.Namespace}, row...)
		}
		for i, c := range row {
			row[i] = cellValue(c)
		}
		lines = append(lines, strings.Join(row, "\t"))
	}
	if _, err := io.WriteString(tw, strings.Join(lines, "\n")+"\n"); err != nil {
		return fmt.Errorf("print services: %w", err)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print services: %w", err)
	}
	return nil
}

// serviceRow is kube-apiserver's printService: the cells of one row.
func serviceRow(svc *v1.Service, now time.Time) []string {
	clusterIP := "<none>"
	if len(svc.Spec.ClusterIPs) > 0 {
		clusterIP = svc.Spec.ClusterIPs[0]
	}
	ports := portsString(svc.Spec.Ports)
	if ports == "" {
		ports = "<none>"
	}
	return []string{svc.Name, string(svc.Spec.Type), clusterIP, externalIP(svc), ports, since(svc.CreationTimestamp, now)}
}

// externalIP is kube-apiserver's getServiceExternalIP (not wide).
func externalIP(svc *v1.Service) string {
	switch svc.Spec.Type {
	case v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort:
		if len(svc.Spec.ExternalIPs) > 0 {
			return strings.Join(svc.Spec.ExternalIPs, ",")
		}
		return "<none>"
	case v1.ServiceTypeLoadBalancer:
		lb := loadBalancerString(svc.Status.LoadBalancer)
		if len(svc.Spec.ExternalIPs) > 0 {
			var all []string
			if lb != "" {
				all = append(all, strings.Split(lb, ",")...)
			}
			return strings.Join(append(all, svc.Spec.ExternalIPs...), ",")
		}
		if lb != "" {
			return lb
		}
		return "<pending>"
	case v1.ServiceTypeExternalName:
		return svc.Spec.ExternalName
	}
	return "<unknown>"
}

// loadBalancerString lists the ingress IPs (or hostnames) sorted and de-duplicated,
// cut to 16 characters with "..." as the server-side printer does.
func loadBalancerString(s v1.LoadBalancerStatus) string {
	addrs := sets.New[string]()
	for _, ing := range s.Ingress {
		switch {
		case ing.IP != "":
			addrs.Insert(ing.IP)
		case ing.Hostname != "":
			addrs.Insert(ing.Hostname)
		}
	}
	r := strings.Join(sets.List(addrs), ",")
	if len(r) > loadBalancerWidth {
		r = r[:loadBalancerWidth-3] + "..."
	}
	return r
}

// portsString is kube-apiserver's makePortString: port[:nodePort]/protocol, comma
// separated.
func portsString(ports []v1.ServicePort) string {
	pieces := make([]string, len(ports))
	for i := range ports {
		p := &ports[i]
		if p.NodePort > 0 {
			pieces[i] = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
		} else {
			pieces[i] = fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		}
	}
	return strings.Join(pieces, ",")
}

// cellValue is cli-runtime's cell rendering: a line break ends the cell with
// "...", terminal escapes are neutralised.
func cellValue(s string) string {
	if i := strings.IndexAny(s, "\f\n\r"); i >= 0 {
		return terminalEscaper.Replace(s[:i]) + "..."
	}
	return terminalEscaper.Replace(s)
}
