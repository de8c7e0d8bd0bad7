package realcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Prober sends HTTP requests one after another, each on a new connection,
// and counts the answers and the failures. It runs in the test process (the
// machine's root namespace): an external client of the nodes.
type Prober struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	stop       chan struct{}
	done       chan struct{}
}

// StartProber requests each of urls in turn every interval until Stop.
func StartProber(urls []string, interval time.Duration) *Prober {
	p := &Prober{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
			DialContext:       (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		},
	}
	go func() {
		defer close(p.done)
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
			u := urls[i%len(urls)]
			resp, err := client.Get(u)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				p.failed.Add(1)
				p.mu.Lock()
				if len(p.failures) < 20 {
					p.failures = append(p.failures, time.Now().Format("15:04:05.000")+" "+u+": "+err.Error())
				}
				p.mu.Unlock()
				continue
			}
			p.ok.Add(1)
		}
	}()
	return p
}

// Counts returns the successful and failed requests so far.
func (p *Prober) Counts() (ok, failed int64) { return p.ok.Load(), p.failed.Load() }

// Failures returns the first failures' descriptions.
func (p *Prober) Failures() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.failures...)
}

// Stop stops the requests and waits for the last one.
func (p *Prober) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// PodClientScript is a shell loop for a client pod (agnhost's image has sh and
// curl): one request to URL every 100 ms, each on a new connection, printing
// "ok" or "fail" with the time. CountPodClient reads its log.
func PodClientScript(url string) string {
	return `while true; do t=$(date +%H:%M:%S); if curl -s -o /dev/null -f -m 3 --noproxy '*' ` + url +
		`; then echo "ok $t"; else echo "fail $t $?"; fi; sleep 0.1; done`
}

// CountPodClient counts the ok and fail lines of a PodClientScript log.
func CountPodClient(log string) (ok, failed int, failures []string) {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ok "):
			ok++
		case strings.HasPrefix(line, "fail "):
			failed++
			if len(failures) < 20 {
				failures = append(failures, line)
			}
		}
	}
	return ok, failed, failures
}

// PodLog returns a pod's container log.
func (h *Harness) PodLog(ctx context.Context, ns, pod string) (string, error) {
	b, err := h.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
	return string(b), err
}
