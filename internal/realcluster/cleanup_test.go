package realcluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kproxy/kproxy/internal/testenv"
)

// TestTeardownRemovesEverything makes one of each thing a harness leaves on
// the machine (a network namespace, a bridge, an nftables table, cgroups in
// every hierarchy, stacked mounts, a process tree naming the directory, a CNI
// cache entry, a kubelet log link), as a harness whose process died would
// leave them, and checks that Teardown removes them all.
func TestTeardownRemovesEverything(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "nft", "sh", "sleep")
	id := randomID()
	dir := StateDirPrefix + id
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &State{
		ID: id, Dir: dir, Bridge: "kpx-h" + id, Table: "kpx-h" + id,
		Netns: []string{"kpx-" + id + "-n1"}, CgroupRoots: []string{"/kpx-" + id + "-n1"},
		CNINetworks: []string{"kpx-" + id + "-n1"},
	}
	// Owned by a process that is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	s.OwnerPID, s.OwnerStart = cmd.Process.Pid, "1"
	if err := s.save(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Teardown(s, nil) })
	for _, c := range [][]string{
		{"ip", "netns", "add", s.Netns[0]},
		{"ip", "link", "add", s.Bridge, "type", "bridge"},
		{"nft", "add", "table", "inet", s.Table},
	} {
		if err := run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	var cgroups []string
	for _, m := range cgroupMounts() {
		p := filepath.Join(m, s.CgroupRoots[0], "kubepods", "pod1")
		if err := os.MkdirAll(p, 0o755); err == nil {
			cgroups = append(cgroups, filepath.Join(m, s.CgroupRoots[0]))
		}
	}
	if len(cgroups) == 0 {
		t.Fatal("no cgroup hierarchy takes a child")
	}
	mnt := filepath.Join(dir, "n1", "kubelet", "pods", "x", "volumes")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for range 2 { // stacked
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	inner := filepath.Join(mnt, "inner")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", inner, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	// A "daemon" naming the directory, with a child that does not.
	daemon := exec.Command("sh", "-c", "sleep 600 & wait", "sh", dir+"/n1/containerd.sock")
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = daemon.Wait() }()
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); {
		for _, p := range allProcesses() {
			if p.ppid == daemon.Process.Pid {
				child = p.pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the daemon's child did not start")
	}
	if err := os.MkdirAll("/var/lib/cni/results", 0o755); err != nil {
		t.Fatal(err)
	}
	cache := "/var/lib/cni/results/" + s.CNINetworks[0] + "-abc-eth0"
	if err := os.WriteFile(cache, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/var/log/containers", 0o755); err != nil {
		t.Fatal(err)
	}
	link := "/var/log/containers/kpx-" + id + ".log"
	if err := os.Symlink(dir+"/n1/pod-logs/x.log", link); err != nil {
		t.Fatal(err)
	}

	found := false
	for _, d := range Leftovers() {
		found = found || d == dir
	}
	if !found {
		t.Fatalf("Leftovers() does not list %s", dir)
	}
	if err := Teardown(s, t.Logf); err != nil {
		t.Fatal(err)
	}

	if _, err := os.Stat("/run/netns/" + s.Netns[0]); err == nil {
		t.Error("netns left")
	}
	if _, err := os.Stat("/sys/class/net/" + s.Bridge); err == nil {
		t.Error("bridge left")
	}
	if exec.Command("nft", "list", "table", "inet", s.Table).Run() == nil {
		t.Error("nftables table left")
	}
	for _, c := range cgroups {
		if _, err := os.Stat(c); err == nil {
			t.Errorf("cgroup %s left", c)
		}
	}
	if mps := mountPoints(dir); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
	for _, pid := range []int{daemon.Process.Pid, child} {
		if alive(pid) {
			t.Errorf("process %d left", pid)
		}
	}
	for _, f := range []string{cache, link, dir} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s left", f)
		}
	}
	out, _ := exec.Command("ip", "link").CombinedOutput()
	if strings.Contains(string(out), id) {
		t.Errorf("a link of %s left:\n%s", id, out)
	}
}
