package realcluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy/kproxy/internal/realcluster"
)

// workload is the Deployment the disruption scenarios send traffic to: four
// agnhost netexec pods spread over the nodes, ready when they answer, and
// serving on for 10 s after SIGTERM (as a well-behaved server does, so that
// the proxies can stop sending it new connections first), behind a NodePort
// Service; and a client pod requesting its ClusterIP every 100 ms.
const workload = `apiVersion: v1
kind: Namespace
metadata:
  name: disruption
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: disruption
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 30
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: web
        image: {{agnhost}}
        imagePullPolicy: Never
        args: ["netexec", "--http-port=8080", "--udp-port=-1", "--delay-shutdown=10"]
        readinessProbe:
          httpGet: {path: /hostname, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: disruption
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080, nodePort: {{nodePort}}}
`

const clientPod = `apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: disruption
spec:
  nodeName: {{node}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {{agnhost}}
    imagePullPolicy: Never
    command: ["sh", "-c", {{script}}]
`

func render(s string, vals map[string]string) string {
	for k, v := range vals {
		s = strings.ReplaceAll(s, "{{"+k+"}}", v)
	}
	return s
}

// workloadEnv is the workload with its traffic: requests from the client pod
// to the ClusterIP (counted from its log) and from the machine to the
// NodePort on every node.
type workloadEnv struct {
	e         *env
	clusterIP string
	urls      []string
}

// startWorkload deploys the workload and its client pod.
func startWorkload(t *testing.T, e *env) *workloadEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := e.h
	const nodePort = 30080
	vals := map[string]string{"agnhost": e.agnhost, "nodePort": fmt.Sprint(nodePort)}
	e.timed(t, "workload ready", func() error {
		if err := h.Apply(ctx, render(workload, vals)); err != nil {
			return err
		}
		return h.WaitDeployment(ctx, "disruption", "web")
	})
	svc, err := h.Client.CoreV1().Services("disruption").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &workloadEnv{e: e, clusterIP: svc.Spec.ClusterIP}
	script := realcluster.PodClientScript("http://" + svc.Spec.ClusterIP + "/hostname")
	vals["node"] = h.Nodes[0].Name
	vals["script"] = fmt.Sprintf("%q", script)
	if err := h.Apply(ctx, render(clientPod, vals)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Kubectl(ctx, "-n", "disruption", "wait", "--for=condition=Ready", "pod/client", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
	for _, n := range h.Nodes {
		w.urls = append(w.urls, fmt.Sprintf("http://%s:%d/hostname", n.IP, nodePort))
	}
	return w
}

// counts are the requests of both clients over a stretch of time.
type counts struct {
	podOK, podFailed, npOK, npFailed int64
	failures                         []string
}

func (c counts) String() string {
	return fmt.Sprintf("pod → ClusterIP %d ok, %d failed; machine → NodePort %d ok, %d failed", c.podOK, c.podFailed, c.npOK, c.npFailed)
}

// during counts the requests from a few seconds before f to a few seconds
// after it.
func (w *workloadEnv) during(ctx context.Context, f func() error) (counts, error) {
	h := w.e.h
	var c counts
	logBefore, err := h.PodLog(ctx, "disruption", "client")
	if err != nil {
		return c, err
	}
	okBefore, failBefore, _ := realcluster.CountPodClient(logBefore)
	prober := realcluster.StartProber(w.urls, 50*time.Millisecond)
	time.Sleep(3 * time.Second)
	err = f()
	time.Sleep(5 * time.Second)
	prober.Stop()
	logAfter, lerr := h.PodLog(ctx, "disruption", "client")
	if err == nil {
		err = lerr
	}
	okAfter, failAfter, failures := realcluster.CountPodClient(logAfter)
	c.podOK, c.podFailed = int64(okAfter-okBefore), int64(failAfter-failBefore)
	c.npOK, c.npFailed = prober.Counts()
	c.failures = append(failures, prober.Failures()...)
	return c, err
}

// disruption runs three scenarios of a service proxy's life with requests
// flowing from a pod to the ClusterIP and from the machine to the NodePort of
// both nodes: every request must succeed.
func disruption(t *testing.T, w *workloadEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	h := w.e.h
	kproxyPodOn := func(node string) (string, error) {
		pods, err := h.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=kproxy", FieldSelector: "spec.nodeName=" + node,
		})
		if err != nil {
			return "", err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				return p.Name, nil
			}
		}
		return "", fmt.Errorf("no kproxy pod on %s", node)
	}
	scenarios := []struct {
		name string
		run  func() error
	}{
		{"kubectl rollout restart ds/kproxy", func() error {
			if _, err := h.Kubectl(ctx, "-n", "kube-system", "rollout", "restart", "ds/kproxy"); err != nil {
				return err
			}
			return h.WaitDaemonSet(ctx, "kube-system", "kproxy")
		}},
		{"rolling update of every pod of deploy/web", func() error {
			if _, err := h.Kubectl(ctx, "-n", "disruption", "rollout", "restart", "deploy/web"); err != nil {
				return err
			}
			return h.WaitDeployment(ctx, "disruption", "web")
		}},
		{"kproxy's pod on node-1 deleted with grace period 0", func() error {
			pod, err := kproxyPodOn(h.Nodes[0].Name)
			if err != nil {
				return err
			}
			if _, err := h.Kubectl(ctx, "-n", "kube-system", "delete", "pod", pod, "--grace-period=0", "--force"); err != nil {
				return err
			}
			// Until the DaemonSet controller has seen the pod go, the
			// DaemonSet looks rolled out.
			time.Sleep(2 * time.Second)
			return h.WaitDaemonSet(ctx, "kube-system", "kproxy")
		}},
	}
	for _, s := range scenarios {
		start := time.Now()
		c, err := w.during(ctx, s.run)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		t.Logf("%s (%v): %v", s.name, time.Since(start).Round(time.Second), c)
		if c.podFailed > 0 || c.npFailed > 0 {
			t.Errorf("%s: failed requests: %v", s.name, c.failures)
		}
		if c.podOK == 0 || c.npOK == 0 {
			t.Errorf("%s: no request succeeded (%v)", s.name, c)
		}
	}
}
