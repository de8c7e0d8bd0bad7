package socketlb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// hooks are the cgroup attach points, each with its program. A link pinned
// under the pin directory as link-<program> keeps the program attached after
// kproxy exits; the next kproxy swaps its own program into the same link.
var hooks = []struct {
	prog   string
	attach ebpf.AttachType
}{
	{socketlbProgKpConnect4, ebpf.AttachCGroupInet4Connect},
	{socketlbProgKpConnect6, ebpf.AttachCGroupInet6Connect},
	{socketlbProgKpSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
	{socketlbProgKpSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
	{socketlbProgKpRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
	{socketlbProgKpRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
	{socketlbProgKpGetpeername4, ebpf.AttachCgroupInet4GetPeername},
	{socketlbProgKpGetpeername6, ebpf.AttachCgroupInet6GetPeername},
}

func linkPin(dir, prog string) string { return filepath.Join(dir, "link-"+prog) }

// kernel holds the loaded programs and maps and the links attaching them.
type kernel struct {
	objs  socketlbObjects
	links []link.Link
}

// ErrIncompatiblePins is returned when the maps pinned in the pin directory
// were made by a kproxy with other map layouts.
var ErrIncompatiblePins = errors.New("pinned socket LB maps do not match this kproxy's programs (run kproxy cleanup to remove them)")

// openKernel loads the programs, reusing the maps pinned in dir (or pinning
// new ones), and attaches every program to the cgroup, taking over links a
// previous kproxy pinned there, so that no connect goes untranslated between
// the two.
func openKernel(cgroup, dir string) (*kernel, error) {
	if err := checkBPFFS(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket LB pin directory: %w", err)
	}
	_ = rlimit.RemoveMemlock()
	spec, err := loadSocketlb()
	if err != nil {
		return nil, err
	}
	k := &kernel{}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	if err := spec.LoadAndAssign(&k.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%s: %w: %v", dir, ErrIncompatiblePins, err)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load socket LB programs: %+v", ve)
		}
		return nil, fmt.Errorf("load socket LB programs: %w", err)
	}
	progs := k.programs()
	var created []link.Link
	for _, h := range hooks {
		l, isNew, err := attach(cgroup, dir, h.prog, h.attach, progs[h.prog])
		if err != nil {
			// Links this call made are undone: a half-attached socket LB
			// must not outlive the failure.
			for _, c := range created {
				_ = c.Unpin()
			}
			k.close()
			return nil, err
		}
		k.links = append(k.links, l)
		if isNew {
			created = append(created, l)
		}
	}
	return k, nil
}

func attach(cgroup, dir, name string, at ebpf.AttachType, prog *ebpf.Program) (l link.Link, isNew bool, err error) {
	pin := linkPin(dir, name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if !attachedTo(l, cgroup) {
			// Pinned by a kproxy told another cgroup: move to this one.
			_ = l.Unpin()
			l.Close()
			return attach(cgroup, dir, name, at, prog)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, false, fmt.Errorf("replace the program of pinned link %s: %w", pin, err)
		}
		return l, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: at, Program: prog})
	if err != nil {
		return nil, false, fmt.Errorf("attach %s to cgroup %s: %w", name, cgroup, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return l, true, nil
}

// attachedTo reports whether a cgroup link is attached to the cgroup
// directory (a cgroup's id is its directory's inode number).
func attachedTo(l link.Link, cgroup string) bool {
	info, err := l.Info()
	if err != nil || info.Cgroup() == nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(cgroup, &st); err != nil {
		return false
	}
	return info.Cgroup().CgroupId == st.Ino
}

func (k *kernel) programs() map[string]*ebpf.Program {
	o := &k.objs.socketlbPrograms
	return map[string]*ebpf.Program{
		socketlbProgKpConnect4: o.KpConnect4, socketlbProgKpConnect6: o.KpConnect6,
		socketlbProgKpSendmsg4: o.KpSendmsg4, socketlbProgKpSendmsg6: o.KpSendmsg6,
		socketlbProgKpRecvmsg4: o.KpRecvmsg4, socketlbProgKpRecvmsg6: o.KpRecvmsg6,
		socketlbProgKpGetpeername4: o.KpGetpeername4, socketlbProgKpGetpeername6: o.KpGetpeername6,
	}
}

// close releases kproxy's handles; the pinned links and maps stay, so the
// programs keep translating connects after kproxy exits.
func (k *kernel) close() {
	for _, l := range k.links {
		_ = l.Close()
	}
	k.links = nil
	_ = k.objs.Close()
}

// Cleanup detaches kproxy's programs and removes its pins from dir: the links
// (which detaches the programs once no one holds them) and the maps. A missing
// directory is not an error.
func Cleanup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, h := range hooks {
		pin := linkPin(dir, h.prog)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned link %s: %w", pin, err))
			continue
		}
		// Unpinning and closing drops the last reference: the kernel detaches
		// the program.
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
		}
		_ = l.Close()
	}
	for _, name := range mapNames {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pinned map: %w", err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

var mapNames = []string{
	socketlbMapKpFrontends, socketlbMapKpSlots, socketlbMapKpBackends, socketlbMapKpNodeaddrs,
	socketlbMapKpAffinity, socketlbMapKpRevnat, socketlbMapKpCounters,
}

// checkBPFFS makes sure dir is (or would be created) on a bpf filesystem:
// pins elsewhere fail with a confusing EPERM.
func checkBPFFS(dir string) error {
	d := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("socket LB pin directory %s is not on a bpf filesystem (mount -t bpf bpf %s)", dir, filepath.Dir(dir))
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("socket LB pin directory %s: %w", dir, err)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return fmt.Errorf("socket LB pin directory %s: no bpf filesystem", dir)
		}
		d = parent
	}
}

// memlock returns the kernel memory a map takes, from its fdinfo.
func memlock(m *ebpf.Map) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			var n uint64
			_, err := fmt.Sscan(strings.TrimSpace(v), &n)
			return n, err
		}
	}
	return 0, errors.New("no memlock in fdinfo")
}

// Usable says why the socket LB cannot run with this cgroup and pin
// directory, or nil: the cgroup must be a cgroup v2 directory and the pin
// directory on a bpf filesystem. Whether the kernel takes the programs is
// known only by loading them (New).
func Usable(cgroup, pinDir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroup, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", cgroup, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 directory", cgroup)
	}
	return checkBPFFS(pinDir)
}

// MapMemory returns the kernel memory each map takes (memlock, from fdinfo).
func (p *Proxier) MapMemory() (map[string]uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.k == nil {
		return nil, errors.New("socket LB is closed")
	}
	m := &p.k.objs.socketlbMaps
	out := map[string]uint64{}
	for name, mp := range map[string]*ebpf.Map{
		socketlbMapKpFrontends: m.KpFrontends, socketlbMapKpSlots: m.KpSlots, socketlbMapKpBackends: m.KpBackends,
		socketlbMapKpNodeaddrs: m.KpNodeaddrs, socketlbMapKpAffinity: m.KpAffinity, socketlbMapKpRevnat: m.KpRevnat,
		socketlbMapKpCounters: m.KpCounters,
	} {
		n, err := memlock(mp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = n
	}
	return out, nil
}
