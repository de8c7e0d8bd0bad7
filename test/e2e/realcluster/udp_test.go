package realcluster_test

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// udpBackend is an agnhost netexec pod answering UDP "hostname" with its name.
const udpBackend = `apiVersion: v1
kind: Pod
metadata:
  name: {{name}}
  namespace: udp
  labels: {app: udp}
spec:
  nodeName: {{node}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: netexec
    image: {{agnhost}}
    imagePullPolicy: Never
    args: ["netexec", "--http-port=8080", "--udp-port=8081"]
    readinessProbe:
      httpGet: {path: /hostname, port: 8080}
      periodSeconds: 1
`

const udpService = `apiVersion: v1
kind: Namespace
metadata:
  name: udp
---
apiVersion: v1
kind: Service
metadata:
  name: udp
  namespace: udp
spec:
  selector: {app: udp}
  ports:
  - {port: 8081, protocol: UDP}
`

// udpClient sends "hostname" from source port 40000 every second (one
// conntrack entry, refreshed for as long as the client runs) and logs the
// answer with the time.
const udpClient = `apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: udp
spec:
  nodeName: {{node}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {{agnhost}}
    imagePullPolicy: Never
    command: ["sh", "-c", "while true; do r=$(echo hostname | nc -u -p 40000 -w 1 {{vip}} 8081); echo \"$(date +%s) ${r:-none}\"; sleep 1; done"]
`

// udpEndpointChange: a UDP client on node 1 talks, from a fixed source port,
// to a ClusterIP whose only backend is on node 2; a second backend is added
// and the first deleted. The client must reach the second within a minute:
// the proxy must not leave the flow's conntrack entry pointing at the gone
// backend.
func udpEndpointChange(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	h := e.h
	vals := map[string]string{"agnhost": e.agnhost, "node": h.Nodes[1].Name, "name": "udp-a"}
	if err := h.Apply(ctx, udpService+"---\n"+render(udpBackend, vals)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Kubectl(ctx, "-n", "udp", "wait", "--for=condition=Ready", "pod/udp-a", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
	svc, err := h.Client.CoreV1().Services("udp").Get(ctx, "udp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vals["vip"], vals["node"] = svc.Spec.ClusterIP, h.Nodes[0].Name
	if err := h.Apply(ctx, render(udpClient, vals)); err != nil {
		t.Fatal(err)
	}
	waitAnswer := func(want string, within time.Duration) (time.Duration, error) {
		start := time.Now()
		for time.Since(start) < within {
			log, err := h.PodLog(ctx, "udp", "client")
			if err == nil {
				if last := lastLine(log); strings.HasSuffix(last, " "+want) {
					return time.Since(start), nil
				}
			}
			time.Sleep(time.Second)
		}
		log, _ := h.PodLog(ctx, "udp", "client")
		return 0, fmt.Errorf("no answer from %s within %v; client log ends:\n%s", want, within, tail(log, 10))
	}
	if _, err := waitAnswer("udp-a", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	vals["name"] = "udp-b"
	vals["node"] = h.Nodes[1].Name
	if err := h.Apply(ctx, render(udpBackend, vals)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Kubectl(ctx, "-n", "udp", "wait", "--for=condition=Ready", "pod/udp-b", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Kubectl(ctx, "-n", "udp", "delete", "pod", "udp-a", "--wait=false"); err != nil {
		t.Fatal(err)
	}
	d, err := waitAnswer("udp-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("UDP client moved to the second backend %v after the first was deleted", d.Round(time.Second))
	if _, err := h.Kubectl(ctx, "delete", "namespace", "udp", "--wait=false"); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
