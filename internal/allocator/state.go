package allocator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
)

// stateFile is the on-disk format. It is versioned so that a later kproxy can
// migrate it instead of guessing.
type stateFile struct {
	Kind          string             `json:"kind"`
	Version       int                `json:"version"`
	ServiceCIDRs  []string           `json:"serviceCIDRs"`
	NodePortRange string             `json:"nodePortRange"`
	Services      map[string]*Record `json:"services"`
}

const (
	stateKind    = "KproxyAllocations"
	stateVersion = 1
)

// CorruptStateError reports a state file that cannot be used. kproxy stops rather
// than hand out fresh values, which would silently move every service.
type CorruptStateError struct {
	Path string
	Err  error
}

func (e *CorruptStateError) Error() string {
	return fmt.Sprintf("allocation state %s is corrupt: %v (fix it, or remove it to let kproxy allocate every service anew)", e.Path, e.Err)
}

func (e *CorruptStateError) Unwrap() error { return e.Err }

// IsCorruptState reports whether err is (or wraps) a CorruptStateError.
func IsCorruptState(err error) bool {
	var c *CorruptStateError
	return errors.As(err, &c)
}

// StatePath is the state file's path, or "" when allocations are not saved.
func (a *Allocator) StatePath() string {
	if a.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(a.cfg.StateDir, StateFileName)
}

func (a *Allocator) load() error {
	path := a.StatePath()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read allocation state: %w", err)
	}
	corrupt := func(format string, args ...any) error {
		return &CorruptStateError{Path: path, Err: fmt.Errorf(format, args...)}
	}
	var st stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return corrupt("%w", err)
	}
	if dec.More() {
		return corrupt("trailing data after the JSON object")
	}
	if st.Kind != stateKind || st.Version != stateVersion {
		return corrupt("kind %q version %d, want %q version %d", st.Kind, st.Version, stateKind, stateVersion)
	}
	for name, r := range st.Services {
		ns, n, ok := strings.Cut(name, "/")
		if !ok || ns == "" || n == "" || r == nil {
			return corrupt("service key %q: want namespace/name", name)
		}
		key := types.NamespacedName{Namespace: ns, Name: n}
		for _, ip := range r.ClusterIPs {
			if !ip.IsValid() {
				return corrupt("service %s: invalid cluster IP", key)
			}
			if owner, dup := a.ipOwner[ip]; dup {
				return corrupt("cluster IP %s held by both %s and %s", ip, owner, key)
			}
			a.ipOwner[ip] = key
		}
		for _, p := range r.ports() {
			if p < 1 || p > 65535 {
				return corrupt("service %s: node port %d out of 1-65535", key, p)
			}
			if owner, dup := a.portUser[p]; dup && owner != key {
				return corrupt("node port %d held by both %s and %s", p, owner, key)
			}
			a.portUser[p] = key
		}
		if r.NodePorts == nil {
			r.NodePorts = map[string]int32{}
		}
		a.records[key] = r
	}
	return nil
}

// Dirty reports whether allocations changed since the last Save.
func (a *Allocator) Dirty() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dirty
}

// Save writes the allocations to the state file if they changed: to a temporary
// file in the same directory, fsynced, renamed over the old one, and the directory
// fsynced, so that a crash leaves either the old or the new file, never a torn one.
func (a *Allocator) Save() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dirty || a.cfg.StateDir == "" {
		return nil
	}
	st := stateFile{Kind: stateKind, Version: stateVersion, NodePortRange: a.cfg.NodePortRange.String(),
		Services: make(map[string]*Record, len(a.records))}
	for _, p := range a.cfg.ServiceCIDRs {
		st.ServiceCIDRs = append(st.ServiceCIDRs, p.String())
	}
	for k, r := range a.records {
		st.Services[k.String()] = r
	}
	data, err := json.MarshalIndent(&st, "", "  ")
	if err != nil {
		return fmt.Errorf("save allocation state: %w", err)
	}
	if err := writeAtomic(a.StatePath(), append(data, '\n')); err != nil {
		return fmt.Errorf("save allocation state: %w", err)
	}
	a.dirty = false
	return nil
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock takes an exclusive lock on the state directory, so that two running
// kproxy processes never hand out the same values from one state. The lock is
// held until the returned function is called or the process exits.
func (a *Allocator) Lock() (unlock func(), err error) {
	if a.cfg.StateDir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(a.cfg.StateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock state dir %s: another kproxy is using it", a.cfg.StateDir)
		}
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	return func() { f.Close() }, nil
}
