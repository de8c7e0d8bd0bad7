package app

import (
	"strings"
	"testing"

	"github.com/kproxy/kproxy/internal/config"
)

func TestSocketLBDefaults(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
		err  string
	}{
		{"cluster mode: auto", []string{"--kubeconfig=/k"}, config.SocketLBAuto, ""},
		{"standalone: off", []string{"--manifests=" + dir, "--state-dir=" + dir}, config.SocketLBOff, ""},
		{"standalone, asked for", []string{"--manifests=" + dir, "--state-dir=" + dir, "--socket-lb=on"}, config.SocketLBOn, ""},
		{"cluster mode, off", []string{"--kubeconfig=/k", "--socket-lb=off"}, config.SocketLBOff, ""},
		{"bad value", []string{"--kubeconfig=/k", "--socket-lb=yes"}, "", `--socket-lb "yes": want auto, on or off`},
		{"on needs nftables", []string{"--kubeconfig=/k", "--socket-lb=on", "--proxy-mode=userspace"}, "", "not with --proxy-mode userspace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := runOptions(t, tc.args...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.SocketLB != tc.want {
				t.Errorf("socket LB %q, want %q", c.SocketLB, tc.want)
			}
			if c.SocketLBPinDir != config.DefaultSocketLBPinDir {
				t.Errorf("pin dir %q, want the default", c.SocketLBPinDir)
			}
		})
	}
}
