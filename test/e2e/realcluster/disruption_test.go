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

// disruption runs the three scenarios of a service proxy's life on a running
// cluster whose proxy is kproxy, with requests flowing from a pod to the
// ClusterIP and from the machine to the NodePort of both nodes, and returns
// the counts per scenario. Every request must succeed.
func disruption(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	h := e.h
	const nodePort = 30080
	vals := map[string]string{"agnhost": e.agnhost, "nodePort": fmt.Sprint(nodePort)}
	if err := h.Apply(ctx, render(workload, vals)); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitDeployment(ctx, "disruption", "web"); err != nil {
		t.Fatal(err)
	}
	svc, err := h.Client.CoreV1().Services("disruption").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	script := realcluster.PodClientScript("http://" + svc.Spec.ClusterIP + "/hostname")
	vals["node"] = h.Nodes[0].Name
	vals["script"] = fmt.Sprintf("%q", script)
	if err := h.Apply(ctx, render(clientPod, vals)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Kubectl(ctx, "-n", "disruption", "wait", "--for=condition=Ready", "pod/client", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, n := range h.Nodes {
		urls = append(urls, fmt.Sprintf("http://%s:%d/hostname", n.IP, nodePort))
	}

	type scenario struct {
		name string
		run  func() error
	}
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
	scenarios := []scenario{
		{"kubectl rollout restart ds/kproxy", func() error {
			if _, err := h.Kubectl(ctx, "-n", "kube-system", "rollout", "restart", "ds/kproxy"); err != nil {
				return err
			}
			return h.WaitDaemonSet(ctx, "kube-system", "kproxy")
		}},
		{"rolling update of deploy/web", func() error {
			if _, err := h.Kubectl(ctx, "-n", "disruption", "rollout", "restart", "deploy/web"); err != nil {
				return err
			}
			return h.WaitDeployment(ctx, "disruption", "web")
		}},
		{"kproxy pod on node-1 deleted, grace period 0", func() error {
			pod, err := kproxyPodOn(h.Nodes[0].Name)
			if err != nil {
				return err
			}
			if _, err := h.Kubectl(ctx, "-n", "kube-system", "delete", "pod", pod, "--grace-period=0", "--force"); err != nil {
				return err
			}
			// The DaemonSet controller makes a new one.
			time.Sleep(2 * time.Second)
			return h.WaitDaemonSet(ctx, "kube-system", "kproxy")
		}},
	}
	for _, s := range scenarios {
		logBefore, err := h.PodLog(ctx, "disruption", "client")
		if err != nil {
			t.Fatal(err)
		}
		okBefore, failBefore, _ := realcluster.CountPodClient(logBefore)
		prober := realcluster.StartProber(urls, 50*time.Millisecond)
		// Traffic before, during and after.
		time.Sleep(3 * time.Second)
		start := time.Now()
		err = s.run()
		time.Sleep(5 * time.Second)
		prober.Stop()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		logAfter, err := h.PodLog(ctx, "disruption", "client")
		if err != nil {
			t.Fatal(err)
		}
		okAfter, failAfter, failures := realcluster.CountPodClient(logAfter)
		npOK, npFail := prober.Counts()
		podOK, podFail := okAfter-okBefore, failAfter-failBefore
		t.Logf("%s (%v): pod → ClusterIP %d ok, %d failed; machine → NodePort %d ok, %d failed",
			s.name, time.Since(start).Round(time.Second), podOK, podFail, npOK, npFail)
		if podFail > 0 || npFail > 0 {
			t.Errorf("%s: failed requests: pod %v; NodePort %v", s.name, failures, prober.Failures())
		}
		if podOK == 0 || npOK == 0 {
			t.Errorf("%s: no request succeeded (pod %d, NodePort %d)", s.name, podOK, npOK)
		}
	}
}
