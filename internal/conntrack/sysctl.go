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
// conntrack section of a KubeProxyConfiguration). A zero field leaves the
// kernel's value alone. In cluster mode and with a configuration file kproxy
// starts from KubeProxyDefaults, as kube-proxy does; standalone, from nothing.
type Settings struct {
	// MaxPerCore × the number of CPUs, but at least Min and at most 1Mi
	// entries, is the table size (nf_conntrack_max); it is only ever raised.
	// 0 leaves it alone.
	MaxPerCore, Min int
	// Timeouts of established and CLOSE_WAIT TCP entries, UDP entries, and
	// UDP "streams" (entries that saw replies).
	TCPEstablishedTimeout, TCPCloseWaitTimeout, UDPTimeout, UDPStreamTimeout time.Duration
	// TCPBeLiberal accepts out-of-window TCP packets instead of marking them INVALID.
	TCPBeLiberal bool
}

// KubeProxyDefaults are kube-proxy's defaults (kubeproxy.config.k8s.io/v1alpha1,
// v1.37): a table of 32Ki entries per CPU and at least 128Ki, established TCP
// entries kept a day and CLOSE_WAIT ones an hour; the UDP timeouts and
// be_liberal are left alone.
func KubeProxyDefaults() Settings {
	return Settings{MaxPerCore: 32 * 1024, Min: 128 * 1024, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}
}

// Empty reports whether nothing is set.
func (s Settings) Empty() bool { return s == Settings{} }

// sysctlRoot is where the netfilter sysctls are, hashsizePath the size of
// the conntrack hash table; tests point them elsewhere.
const (
	sysctlRoot   = "/proc/sys/net/netfilter"
	hashsizePath = "/sys/module/nf_conntrack/parameters/hashsize"
	cpuOnline    = "/sys/devices/system/cpu/online"
)

// maxLimit caps the table size, as kube-proxy does, so that a machine with
// many cores does not get a huge table.
const maxLimit = 1 << 20

// Value is one setting as Apply left it.
type Value struct {
	Name     string
	Value    int // in force now
	Was      int // before Apply
	Wanted   int // what the settings asked for (for the table size: at least this)
	Changed  bool
	Readonly bool // the kernel refused the write (see Apply)
}

func (v Value) String() string {
	if v.Changed {
		return fmt.Sprintf("%s %d -> %d", v.Name, v.Was, v.Value)
	}
	return fmt.Sprintf("%s %d (wanted %d)", v.Name, v.Value, v.Wanted)
}

// Apply writes the settings to the kernel for the caller's network namespace
// and returns every value it looked at. The timeouts and be_liberal are per
// network namespace; nf_conntrack_max and the hash size are the host's, and
// on Linux 6.x nf_conntrack_max is read-only outside the host's namespace
// (mode 0444): there a table already big enough is fine, and a smaller one
// is an error naming it. Values already in place are not written.
func (s Settings) Apply() ([]Value, error) {
	return s.apply(sysctlRoot, hashsizePath, numCPU())
}

// TableSize is the nf_conntrack_max the settings ask for on a machine with
// cpus CPUs (0: leave it alone), by kube-proxy's rule.
func (s Settings) TableSize(cpus int) int {
	if s.MaxPerCore <= 0 {
		return 0
	}
	scaled := s.MaxPerCore * cpus
	switch {
	case scaled > maxLimit:
		return maxLimit
	case scaled > s.Min:
		return scaled
	default:
		return s.Min
	}
}

func (s Settings) apply(root, hashsize string, cpus int) ([]Value, error) {
	type want struct {
		name  string
		value int
		raise bool // only raise it
	}
	var wants []want
	if max := s.TableSize(cpus); max > 0 {
		wants = append(wants, want{"nf_conntrack_max", max, true})
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
	var out []Value
	var errs []error
	for _, w := range wants {
		path := filepath.Join(root, w.name)
		cur, err := readInt(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v := Value{Name: w.name, Value: cur, Was: cur, Wanted: w.value}
		if cur != w.value && !(w.raise && cur > w.value) {
			if err := os.WriteFile(path, []byte(strconv.Itoa(w.value)), 0); err != nil {
				v.Readonly = errors.Is(err, os.ErrPermission)
				if v.Readonly && w.raise {
					err = fmt.Errorf("%w (read-only here: the table size is the host's, and only the host's network namespace may raise it)", err)
				}
				errs = append(errs, fmt.Errorf("set %s to %d: %w", w.name, w.value, err))
			} else {
				v.Value, v.Changed = w.value, true
			}
		}
		out = append(out, v)
		if w.raise {
			// As kube-proxy does, whether the size changed or not: at least a
			// bucket per four entries, or lookups walk long chains. The hash
			// size is a module parameter, global to the host.
			cur, err := readInt(hashsize)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			h := Value{Name: "hashsize", Value: cur, Was: cur, Wanted: w.value / 4}
			if cur < w.value/4 {
				if err := os.WriteFile(hashsize, []byte(strconv.Itoa(w.value/4)), 0); err != nil {
					errs = append(errs, fmt.Errorf("set conntrack hashsize to %d: %w", w.value/4, err))
				} else {
					h.Value, h.Changed = w.value/4, true
				}
			}
			out = append(out, h)
		}
	}
	return out, errors.Join(errs...)
}

// numCPU counts the machine's online CPUs (the table is the host's, so a
// cpuset limiting kproxy must not shrink it), as kube-proxy does.
func numCPU() int {
	if n, err := onlineCPUs(cpuOnline); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// onlineCPUs parses a CPU list such as "0-3,8,10-11".
func onlineCPUs(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(data)), ",") {
		lo, hi, found := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", path, data, err)
		}
		b := a
		if found {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("%s: bad range %q", path, part)
			}
		}
		n += b - a + 1
	}
	return n, nil
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
