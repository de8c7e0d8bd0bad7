package describe

// These tests hold kproxy's output against kubectl's own code: the describer of
// k8s.io/kubectl reading a fake clientset, and cli-runtime's table printer. They
// import kubectl only here, as a reference; kproxy itself does not link it.

import (
	"bytes"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/kubernetes/fake"
	kdescribe "k8s.io/kubectl/pkg/describe"
)

func TestServiceMatchesKubectl(t *testing.T) {
	for _, tc := range describeCases() {
		t.Run(tc.name, func(t *testing.T) {
			objs := []runtime.Object{tc.svc}
			for _, s := range tc.slices {
				objs = append(objs, s)
			}
			for i := range tc.events {
				objs = append(objs, &tc.events[i])
			}
			client := fake.NewClientset(objs...)
			d := &kdescribe.ServiceDescriber{Interface: client}
			want, err := d.Describe(tc.svc.Namespace, tc.svc.Name, kdescribe.DescriberSettings{ShowEvents: true, ChunkSize: 500})
			if err != nil {
				t.Fatalf("kubectl describer: %v", err)
			}
			// kubectl measures event ages against the wall clock; so does this side.
			var got bytes.Buffer
			if err := service(&got, tc.svc, tc.slices, tc.events, time.Now()); err != nil {
				t.Fatal(err)
			}
			if got.String() != want {
				t.Errorf("output differs from kubectl describe:\n--- kproxy\n%s--- kubectl\n%s", got.String(), want)
			}
		})
	}
}

// serviceTableColumns are kube-apiserver's column definitions for Services
// (pkg/printers/internalversion); the selector column only shows with -o wide.
var serviceTableColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name"},
	{Name: "Type", Type: "string"},
	{Name: "Cluster-IP", Type: "string"},
	{Name: "External-IP", Type: "string"},
	{Name: "Port(s)", Type: "string"},
	{Name: "Age", Type: "string"},
	{Name: "Selector", Type: "string", Priority: 1},
}

// TestServicesTableMatchesKubectl renders the same rows through kubectl's table
// printer, as `kubectl get services [-A]` does with the API server's table.
func TestServicesTableMatchesKubectl(t *testing.T) {
	svcs := tableServices()
	for _, withNamespace := range []bool{false, true} {
		// The API server lists in namespace and name order.
		sorted := sortedServices(svcs)
		table := &metav1.Table{ColumnDefinitions: serviceTableColumns}
		for _, svc := range sorted {
			row := metav1.TableRow{Object: runtime.RawExtension{Object: svc}}
			for _, c := range serviceRow(svc, testNow) {
				row.Cells = append(row.Cells, c)
			}
			row.Cells = append(row.Cells, "selector-only-in-wide")
			table.Rows = append(table.Rows, row)
		}
		var want bytes.Buffer
		p := printers.NewTablePrinter(printers.PrintOptions{WithNamespace: withNamespace})
		if err := p.PrintObj(table, &want); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := ServicesTable(&got, svcs, withNamespace, testNow); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("withNamespace=%v: output differs from kubectl get:\n--- kproxy\n%s--- kubectl\n%s", withNamespace, got.String(), want.String())
		}
	}
}

func sortedServices(in []*v1.Service) []*v1.Service {
	out := append([]*v1.Service(nil), in...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0; j-- {
			a, b := out[j-1], out[j]
			if a.Namespace < b.Namespace || (a.Namespace == b.Namespace && a.Name <= b.Name) {
				break
			}
			out[j-1], out[j] = b, a
		}
	}
	return out
}
