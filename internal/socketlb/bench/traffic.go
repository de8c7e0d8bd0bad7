package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

const childEnv = "KPROXY_BENCH_SOCKETLB_CHILD"

// PathResult is one path's measurements in one run of a client process.
type PathResult struct {
	MBps        float64 `json:"mbps"`
	ConnectP50  float64 `json:"connectP50us"` // connect + first byte, µs
	RRP50       float64 `json:"rrP50us"`      // one-byte request/response on an open connection, µs
	ConnsPerSec float64 `json:"connsPerSec"`  // sequential connect, read, close
}

// ChildMain runs the measuring client when the binary was started as one
// (in a pod's network namespace, and for the socket LB path in the test
// cgroup), prints its result as JSON and exits; otherwise it returns.
func ChildMain() {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return
	}
	r, err := measure(strings.Fields(spec))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// measure: args are the bulk, line and echo destinations (host:port), MiB to
// send, and the number of connections and round trips to time.
func measure(args []string) (PathResult, error) {
	if len(args) != 5 {
		return PathResult{}, fmt.Errorf("want bulk line echo mib n, got %v", args)
	}
	bulk, line, echo := args[0], args[1], args[2]
	mib, _ := strconv.Atoi(args[3])
	n, _ := strconv.Atoi(args[4])
	var r PathResult
	var err error
	if r.MBps, err = send(bulk, mib); err != nil {
		return r, fmt.Errorf("bulk: %w", err)
	}
	var lat []float64
	buf := make([]byte, 128)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		t := time.Now()
		c, err := net.DialTimeout("tcp", line, 5*time.Second)
		if err != nil {
			return r, fmt.Errorf("connect: %w", err)
		}
		if _, err := c.Read(buf); err != nil {
			c.Close()
			return r, fmt.Errorf("connect: read: %w", err)
		}
		lat = append(lat, float64(time.Since(t).Nanoseconds())/1000)
		c.Close()
	}
	r.ConnsPerSec = float64(n) / time.Since(t0).Seconds()
	r.ConnectP50 = p50(lat)
	c, err := net.DialTimeout("tcp", echo, 2*time.Second)
	if err != nil {
		return r, fmt.Errorf("echo: %w", err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	lat = lat[:0]
	one := []byte{1}
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := c.Write(one); err != nil {
			return r, err
		}
		if _, err := io.ReadFull(c, one); err != nil {
			return r, err
		}
		lat = append(lat, float64(time.Since(t).Nanoseconds())/1000)
	}
	r.RRP50 = p50(lat)
	return r, nil
}

func send(dst string, mib int) (float64, error) {
	c, err := net.DialTimeout("tcp", dst, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	total := mib << 20
	t0 := time.Now()
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	// The sink answers one byte when it has read everything.
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return 0, err
	}
	return float64(mib) / time.Since(t0).Seconds(), nil
}

func p50(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func median(v []float64) float64 { return p50(v) }
