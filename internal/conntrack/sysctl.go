package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Settings are kube-proxy's conntrack settings (its --conntrack-* flags and the
// conntrack section of a KubeProxyConfiguration). A zero field is not set:
// kproxy changes only what it was asked to, it does not impose kube-proxy's
// defaults on the node.
type Settings struct {
	// MaxPerCore × the number of CPUs, but at least Min, is the table size
	// (nf_conntrack_max); it is only ever raised. 0 leaves it alone.
	MaxPerCore, Min int
	// Timeouts of established and CLOSE_WAIT TCP entries, UDP entries, and
	// UDP "streams" (entries that saw replies).
	TCPEstablishedTimeout, TCPCloseWaitTimeout, UDPTimeout, UDPStreamTimeout time.Duration
	// TCPBeLiberal accepts out-of-window TCP packets instead of marking them INVALID.
	TCPBeLiberal bool
}

// Empty reports whether nothing is set.
func (s Settings) Empty() bool { return s == Settings{} }

// sysctlRoot is where the netfilter sysctls are, hashsizePath the size of
// the conntrack hash table; tests point them elsewhere.
const (
	sysctlRoot   = "/proc/sys/net/netfilter"
	hashsizePath = "/sys/module/nf_conntrack/parameters/hashsize"
)

// Apply writes the settings to the kernel for the caller's network namespace
// (the table size is global to the host) and returns what it changed, as
// "name old -> new". Values already in place are not written.
func (s Settings) Apply() ([]string, error) {
	return s.apply(sysctlRoot, hashsizePath, runtime.NumCPU())
}

func (s Settings) apply(root, hashsize string, cpus int) ([]string, error) {
	type want struct {
		name  string
		value int
		raise bool // only raise it
	}
	var wants []want
	if s.MaxPerCore > 0 {
		wants = append(wants, want{"nf_conntrack_max", max(s.MaxPerCore*cpus, s.Min), true})
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"nf_conntrack_tcp_timeout_established", s.TCPEstablishedTimeout},
		{"nf_conntrack_tcp_timeout_close_wait", s.TCPCloseWaitTimeout},
		{"nf_conntrack_udp_timeout", s.UDPTimeout},
		{"nf_conntrack_udp_timeout_stream", s.UDPStreamTimeout},
	} {
		if t.d > 0 {
			wants = append(wants, want{name: t.name, value: int(t.d / time.Second)})
		}
	}
	if s.TCPBeLiberal {
		wants = append(wants, want{name: "nf_conntrack_tcp_be_liberal", value: 1})
	}
	var changed []string
	var errs []error
	for _, w := range wants {
		path := filepath.Join(root, w.name)
		cur, err := readInt(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cur == w.value || (w.raise && cur > w.value) {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(w.value)), 0); err != nil {
			errs = append(errs, fmt.Errorf("set %s to %d: %w", w.name, w.value, err))
			continue
		}
		changed = append(changed, fmt.Sprintf("%s %d -> %d", w.name, cur, w.value))
		if w.raise {
			// As kube-proxy does: a bigger table gets at least a bucket per
			// four entries, or lookups walk long chains.
			if cur, err := readInt(hashsize); err != nil {
				errs = append(errs, err)
			} else if cur < w.value/4 {
				if err := os.WriteFile(hashsize, []byte(strconv.Itoa(w.value/4)), 0); err != nil {
					errs = append(errs, fmt.Errorf("set conntrack hashsize to %d: %w", w.value/4, err))
				} else {
					changed = append(changed, fmt.Sprintf("hashsize %d -> %d", cur, w.value/4))
				}
			}
		}
	}
	return changed, errors.Join(errs...)
}

func readInt(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	return v, nil
}
