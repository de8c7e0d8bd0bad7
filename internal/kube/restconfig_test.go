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

// TestRESTConfigPlaceholder checks the bootstrap kubeconfig of deploy/kproxy.yaml:
// left unchanged, kproxy refuses to start and says what to set; with the
// server set (or --master given) the client authenticates with the service
// account's token file, which client-go re-reads (every minute) as the
// kubelet rotates it, and trusts the service account's CA file.
func TestRESTConfigPlaceholder(t *testing.T) {
	dir := t.TempDir()
	token, ca := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(token, []byte("tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("not read until a connection is made"), 0o600); err != nil {
		t.Fatal(err)
	}
	kubeconfig := func(server string) string {
		path := filepath.Join(dir, "kubeconfig.conf")
		data := `apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: ` + server + `
    certificate-authority: ` + ca + `
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
users:
- name: default
  user:
    tokenFile: ` + token + `
`
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	path := kubeconfig(kube.PlaceholderServer)
	_, err := kube.RESTConfig(kube.Config{Kubeconfig: path})
	if err == nil {
		t.Fatal("the placeholder server was accepted")
	}
	for _, want := range []string{kube.PlaceholderServer, "placeholder", path, "ConfigMap kube-system/kproxy, key kubeconfig.conf", "or give --master", "kubectl config view --minify"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if _, err := kube.RESTConfig(kube.Config{Kubeconfig: path, Master: "https://api.example.invalid."}); err == nil || !strings.Contains(err.Error(), "in --master.") {
		t.Errorf("an .invalid --master: %v, want an error naming --master", err)
	}

	for _, tc := range []struct{ name, server, master string }{
		{"server set", "https://192.0.2.10:6443", ""},
		{"--master wins", kube.PlaceholderServer, "https://192.0.2.10:6443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kube.Config{Kubeconfig: kubeconfig(tc.server), Master: tc.master}
			rc, err := kube.RESTConfig(c)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != "https://192.0.2.10:6443" || rc.BearerTokenFile != token || rc.TLSClientConfig.CAFile != ca {
				t.Errorf("host %q token file %q CA file %q; want the server, %s and %s", rc.Host, rc.BearerTokenFile, rc.TLSClientConfig.CAFile, token, ca)
			}
		})
	}
}
