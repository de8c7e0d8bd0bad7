package main

import (
	"net"
	"testing"
)

// TestClientDialerSource checks that each new-connection worker connects from
// its own loopback address, so that the client's ports do not cap the rate.
func TestClientDialerSource(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		worker int
		want   string
	}{{0, "127.0.50.1"}, {15, "127.0.50.16"}, {300, "127.0.51.45"}} {
		c, err := clientDialer(tc.worker).Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("worker %d: %v", tc.worker, err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got := s.RemoteAddr().(*net.TCPAddr).IP.String()
		s.Close()
		c.Close()
		if got != tc.want {
			t.Errorf("worker %d connected from %s, want %s", tc.worker, got, tc.want)
		}
	}
}
