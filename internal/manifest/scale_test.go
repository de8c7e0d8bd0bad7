package manifest

// Scale: 10,000 services and 100,000 pods (10 per service, each with a named
// port and a readiness condition) in 10 namespaces, 100 objects per file, loaded
// from disk into a real model.Tracker until its first snapshot.
//
//	KPROXY_SCALE=1 go test ./internal/manifest -run TestScale -v
//
// The load runs in a child process so that its peak RSS is its own.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/model"
)

func writeScaleManifests(t testing.TB, dir string, services, podsPer int) {
	t.Helper()
	const perFile = 100
	var f *os.File
	var w *bufio.Writer
	n := 0
	next := func(kind string) {
		if n%perFile == 0 {
			if f != nil {
				w.Flush()
				f.Close()
			}
			var err error
			f, err = os.Create(filepath.Join(dir, fmt.Sprintf("%s-%05d.yaml", kind, n/perFile)))
			if err != nil {
				t.Fatal(err)
			}
			w = bufio.NewWriter(f)
		}
		n++
		fmt.Fprintln(w, "---")
	}
	for i := range services {
		next("svc")
		fmt.Fprintf(w, `apiVersion: v1
kind: Service
metadata:
  name: svc-%d
  namespace: ns-%d
spec:
  selector:
    app: svc-%d
  ports:
  - name: http
    port: 80
    targetPort: http
`, i, i%10, i)
	}
	n = 0
	for i := range services {
		for j := range podsPer {
			next("pod")
			k := i*podsPer + j
			fmt.Fprintf(w, `apiVersion: v1
kind: Pod
metadata:
  name: svc-%d-%d
  namespace: ns-%d
  labels:
    app: svc-%d
    pod-template-hash: abc123
spec:
  nodeName: node-%d
  containers:
  - name: app
    image: registry.k8s.io/pause:3.10
    ports:
    - name: http
      containerPort: 8080
status:
  phase: Running
  podIP: 10.%d.%d.%d
  conditions:
  - type: Ready
    status: "True"
`, i, j, i%10, i, k%100, 64+k>>16, (k>>8)&255, k&255)
		}
	}
	w.Flush()
	f.Close()
}

func TestScale(t *testing.T) {
	if os.Getenv("KPROXY_SCALE") == "" {
		t.Skip("set KPROXY_SCALE=1 to run the 10,000-service / 100,000-pod load")
	}
	if dir := os.Getenv("KPROXY_SCALE_CHILD"); dir != "" {
		scaleChild(t, dir)
		return
	}
	services, podsPer := 10000, 10
	if s := os.Getenv("KPROXY_SCALE_SERVICES"); s != "" {
		services, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	start := time.Now()
	writeScaleManifests(t, dir, services, podsPer)
	if keep := os.Getenv("KPROXY_SCALE_KEEP"); keep != "" {
		os.RemoveAll(keep)
		os.Rename(dir, keep)
		t.Logf("manifests kept in %s", keep)
		return
	}
	t.Logf("wrote %d services and %d pods in %s", services, services*podsPer, time.Since(start).Round(time.Millisecond))

	cmd := exec.Command(os.Args[0], "-test.run=^TestScale$", "-test.v")
	cmd.Env = append(os.Environ(), "KPROXY_SCALE_CHILD="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var res string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "RESULT ") {
			res = l[strings.Index(l, "RESULT ")+7:]
		}
	}
	f := strings.Fields(res)
	if len(f) != 6 {
		t.Fatalf("no result from child:\n%s", out)
	}
	secs, _ := strconv.ParseFloat(f[0], 64)
	hwm, _ := strconv.ParseFloat(f[1], 64)
	// CPU time tells the cost apart from the machine's load: the wall time on a
	// busy shared box includes waiting for a core.
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	changeSecs, _ := strconv.ParseFloat(f[4], 64)
	hwmAfter, _ := strconv.ParseFloat(f[5], 64)
	fmt.Printf("\n| services | pods | ports in model | endpoints | time to synced model | peak RSS at sync | CPU time (whole child) | one pod edit → model | peak RSS after edit | GOMAXPROCS |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Printf("| %d | %d | %s | %s | %.2f s | %.0f MiB | %.2f s | %.0f ms | %.0f MiB | %d |\n\n", services, services*podsPer, f[2], f[3], secs,
		hwm/1024, cpu.Seconds(), changeSecs*1000, hwmAfter/1024, runtime.GOMAXPROCS(0))
	if services == 10000 && (secs > 2 || hwm/1024 > 300) {
		t.Errorf("target missed: %.2f s (want < 2 s), %.0f MiB (want < 300 MiB)", secs, hwm/1024)
	}
}

func scaleChild(t *testing.T, dir string) {
	start := time.Now()
	tr := model.NewTracker("node-1", nil)
	src, err := New(Config{Dir: dir, Ephemeral: true, ResyncPeriod: time.Hour}, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx) }()
	for !tr.Synced() {
		select {
		case err := <-errc:
			t.Fatal(err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	snap := tr.Snapshot()
	took := time.Since(start)
	eps := 0
	for _, pv := range snap.Ports {
		eps += len(pv.Endpoints)
	}
	if p := src.Problems(); len(p) > 0 {
		t.Fatalf("problems: %v", p[0].String())
	}
	loadHWM := vmHWM()
	// One pod restarts with a new IP at this scale: how long until the model has it?
	target := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns-0", Name: "svc-0"}, Port: "http", Protocol: "TCP"}
	podFile := filepath.Join(dir, "pod-00000.yaml")
	data, err := os.ReadFile(podFile)
	if err != nil {
		t.Fatal(err)
	}
	changeStart := time.Now()
	if err := os.WriteFile(podFile, []byte(strings.Replace(string(data), "podIP: 10.64.0.0\n", "podIP: 10.99.0.1\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		// Take a snapshot only when changes are pending, as the sync runner does:
		// each one clones the service maps, which polling must not multiply.
		if svcs, eps := tr.Pending(); svcs+eps > 0 {
			tr.Snapshot()
		}
		pv := tr.Current().Ports[target]
		if pv != nil && len(pv.Endpoints) > 0 && pv.Endpoints[len(pv.Endpoints)-1].IP.String() == "10.99.0.1" {
			break
		}
		if time.Since(changeStart) > 20*time.Second {
			t.Fatal("the pod change did not reach the model")
		}
		time.Sleep(5 * time.Millisecond)
	}
	change := time.Since(changeStart)
	if f := os.Getenv("KPROXY_SCALE_HEAP"); f != "" {
		runtime.GC()
		out, _ := os.Create(f)
		pprof.WriteHeapProfile(out)
		out.Close()
	}
	fmt.Printf("RESULT %.3f %d %d %d %.3f %d\n", took.Seconds(), loadHWM, len(snap.Ports), eps, change.Seconds(), vmHWM())
}

// vmHWM is the process's peak resident set size in KiB.
func vmHWM() int {
	data, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}
