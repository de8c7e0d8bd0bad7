package realcluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// State is what a harness made on the machine, written to Dir/state.json as it
// goes, so that Teardown (or a later harness, or `clusterup -cleanup`) can
// remove all of it even when the process that made it died.
type State struct {
	ID string `json:"id"`
	// OwnerPID and OwnerStart (the start time in /proc/PID/stat) identify the
	// process that runs the harness; a harness whose owner is gone is stale.
	OwnerPID   int    `json:"ownerPID"`
	OwnerStart string `json:"ownerStart"`
	Dir        string `json:"dir"`
	Bridge     string `json:"bridge"`
	// Table is the harness's nftables table (family inet) in the root namespace.
	Table       string   `json:"table"`
	Netns       []string `json:"netns"`
	CgroupRoots []string `json:"cgroupRoots"`
	// CNINetworks are the names of the nodes' CNI networks: libcni caches
	// results under /var/lib/cni/results/NAME-*.
	CNINetworks []string `json:"cniNetworks"`
}

// StateDirPrefix is the start of every harness directory: /tmp/kpx-ID.
const StateDirPrefix = "/tmp/kpx-"

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write harness state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(s.Dir, "state.json"))
}

// LoadState reads the state of the harness in dir.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s/state.json: %w", dir, err)
	}
	if s.ID == "" || s.Dir != dir {
		return nil, fmt.Errorf("%s/state.json: id %q dir %q do not match", dir, s.ID, s.Dir)
	}
	return &s, nil
}

// processStart returns field 22 of /proc/PID/stat (start time in clock ticks),
// which tells a process from a later one with the same PID.
func processStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// Stale reports whether the harness's owner process is gone.
func (s *State) Stale() bool {
	return s.OwnerPID == 0 || processStart(s.OwnerPID) != s.OwnerStart
}

// Leftovers lists the directories of harnesses whose owner is gone.
func Leftovers() []string {
	dirs, _ := filepath.Glob(StateDirPrefix + "*")
	var out []string
	for _, d := range dirs {
		s, err := LoadState(d)
		if err == nil && s.Stale() {
			out = append(out, d)
		}
	}
	return out
}

// Teardown removes everything the harness recorded in s: its processes
// (kubelets, containerd, their shims and every container, found by the
// harness directory in their command lines and as their descendants), mounts
// under the directory (deepest first), network namespaces, bridge, nftables
// table, cgroups, CNI cache entries, kubelet log links and the directory. It
// goes on after errors and returns them all.
func Teardown(s *State, logf func(string, ...any)) error {
	var errs []error
	start := time.Now()
	// Kubelets first (they would restart containers), then containerd (it would
	// restart nothing, but holds the shims' sockets), then the rest.
	procs := harnessProcesses(s.Dir)
	var shimSockets []string
	for _, p := range procs {
		if strings.Contains(p.cmdline, "containerd-shim") {
			shimSockets = append(shimSockets, unixListenPaths(p.pid, "/run/containerd/s/")...)
		}
	}
	for _, rank := range []func(proc) bool{
		func(p proc) bool { return strings.Contains(p.cmdline, "kubelet") },
		func(p proc) bool { return p.comm == "containerd" },
		func(proc) bool { return true },
	} {
		var batch []int
		for _, p := range procs {
			if rank(p) {
				batch = append(batch, p.pid)
			}
		}
		killAndWait(batch)
	}
	if left := harnessProcesses(s.Dir); len(left) > 0 {
		// Something forked meanwhile (a shim starting a container).
		var pids []int
		for _, p := range left {
			pids = append(pids, p.pid)
		}
		killAndWait(pids)
	}
	for _, sock := range shimSockets {
		_ = os.Remove(sock)
	}
	if err := unmountUnder(s.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range s.Netns {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip netns delete %s: %v: %s", ns, err, out))
			}
		}
	}
	if s.Bridge != "" {
		if _, err := os.Stat("/sys/class/net/" + s.Bridge); err == nil {
			if out, err := exec.Command("ip", "link", "delete", s.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link delete %s: %v: %s", s.Bridge, err, out))
			}
		}
	}
	if s.Table != "" {
		if exec.Command("nft", "list", "table", "inet", s.Table).Run() == nil {
			if out, err := exec.Command("nft", "delete", "table", "inet", s.Table).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("nft delete table inet %s: %v: %s", s.Table, err, out))
			}
		}
	}
	for _, root := range s.CgroupRoots {
		if err := removeCgroups(root); err != nil {
			errs = append(errs, err)
		}
	}
	// libcni caches each attachment in /var/lib/cni/results as
	// NETWORK-CONTAINERID-IFNAME: the nodes' networks, and containerd's
	// loopback network ("cni-loopback") of each of the harness's sandboxes.
	patterns := []string{}
	for _, n := range s.CNINetworks {
		patterns = append(patterns, "/var/lib/cni/results/"+n+"-*")
	}
	sandboxes, _ := filepath.Glob(filepath.Join(s.Dir, "*", "containerd", "root", "io.containerd.grpc.v1.cri", "sandboxes", "*"))
	for _, sb := range sandboxes {
		patterns = append(patterns, "/var/lib/cni/results/*-"+filepath.Base(sb)+"-*")
	}
	for _, p := range patterns {
		files, _ := filepath.Glob(p)
		for _, f := range files {
			_ = os.Remove(f)
		}
	}
	removeLogLinks(s.Dir)
	if err := os.RemoveAll(s.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", s.Dir, err))
	}
	if logf != nil {
		logf("realcluster %s: torn down in %v (%d processes)", s.ID, time.Since(start).Round(time.Millisecond), len(procs))
	}
	return errors.Join(errs...)
}

type proc struct {
	pid, ppid int
	comm      string
	cmdline   string
}

func allProcesses() []proc {
	ents, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		out = append(out, proc{pid: pid, ppid: ppid, comm: s[open+1 : close], cmdline: strings.ReplaceAll(string(cmd), "\x00", " ")})
	}
	return out
}

// harnessProcesses returns the processes whose command line names dir (the
// kubelets, containerd, the shims: `-address DIR/...`) and all their
// descendants (the containers), never the caller.
func harnessProcesses(dir string) []proc {
	all := allProcesses()
	children := map[int][]proc{}
	for _, p := range all {
		children[p.ppid] = append(children[p.ppid], p)
	}
	seen := map[int]bool{os.Getpid(): true}
	var out []proc
	var add func(p proc)
	add = func(p proc) {
		if seen[p.pid] {
			return
		}
		seen[p.pid] = true
		out = append(out, p)
		for _, c := range children[p.pid] {
			add(c)
		}
	}
	for _, p := range all {
		if strings.Contains(p.cmdline, dir+"/") {
			add(p)
		}
	}
	return out
}

func killAndWait(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			if !alive(pid) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// unixListenPaths returns the file paths under prefix of the unix sockets the
// process holds open (the shim's socket in /run/containerd/s).
func unixListenPaths(pid int, prefix string) []string {
	inodes := map[string]bool{}
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, _ := os.ReadDir(fdDir)
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/net/unix")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 8 && inodes[fields[6]] && strings.HasPrefix(fields[7], prefix) {
			out = append(out, fields[7])
		}
	}
	return out
}

// mountPoints returns the mount points of this mount namespace under dir.
func mountPoints(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount under dir, deepest first, until none is
// left (mounts can be stacked on one point).
func unmountUnder(dir string) error {
	for range 10 {
		mps := mountPoints(dir)
		if len(mps) == 0 {
			return nil
		}
		sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
		for _, mp := range mps {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if mps := mountPoints(dir); len(mps) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mps)
	}
	return nil
}

// cgroupMounts returns the mount points of the cgroup v1 hierarchies and of
// cgroup v2.
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		fields := strings.Fields(pre)
		if len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") && len(fields) >= 5 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out
}

// removeCgroups removes the cgroup root (a path like /kpx-ID-n1) and all its
// children from every hierarchy, deepest first; a cgroup whose last process
// just died can stay busy for a moment, hence the retries.
func removeCgroups(root string) error {
	if root == "" || root == "/" {
		return nil
	}
	var last error
	for _, m := range cgroupMounts() {
		top := filepath.Join(m, root)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			var dirs []string
			_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
			last = nil
			for _, d := range dirs {
				if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
					last = fmt.Errorf("rmdir %s: %w", d, err)
				}
			}
			if last == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if last != nil {
			return last
		}
	}
	return nil
}

// removeLogLinks removes the kubelet's links in /var/log/containers (a fixed
// path) that point into dir.
func removeLogLinks(dir string) {
	ents, _ := os.ReadDir("/var/log/containers")
	for _, e := range ents {
		p := filepath.Join("/var/log/containers", e.Name())
		if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, dir+"/") {
			_ = os.Remove(p)
		}
	}
}
