package kube_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/kproxy/kproxy/internal/kube"
)

// TestRESTConfigCompression checks what the client really sends: gzip is asked
// for only with Compression, and a kubeconfig's disable-compression wins.
func TestRESTConfigCompression(t *testing.T) {
	var mu sync.Mutex
	var got []string
	// TLS and HTTP/2, as with a real API server (client-go uses Go's default
	// transport, which always asks for gzip, for plain HTTP).
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Accept-Encoding"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2"}`))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	kubeconfig := func(disable bool) string {
		extra := ""
		if disable {
			extra = "\n    disable-compression: true"
		}
		path := filepath.Join(t.TempDir(), "kubeconfig")
		data := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: ` + srv.URL + `
    insecure-skip-tls-verify: true` + extra + `
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user: {token: t}
`
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name                 string
		compression, disable bool
		wantGzip             bool
	}{
		{"default", false, false, false},
		{"compression on", true, false, true},
		{"kubeconfig disables it", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := kube.RESTConfig(kube.Config{Kubeconfig: kubeconfig(tc.disable), Compression: tc.compression})
			if err != nil {
				t.Fatal(err)
			}
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			got = nil
			mu.Unlock()
			if _, err := client.Discovery().ServerVersion(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 {
				t.Fatalf("requests: %d, want 1", len(got))
			}
			if gzip := strings.Contains(got[0], "gzip"); gzip != tc.wantGzip {
				t.Errorf("Accept-Encoding %q: gzip asked %v, want %v", got[0], gzip, tc.wantGzip)
			}
		})
	}
}
