package manifest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// Entries of the manifest directory that cannot be read are reported, naming
// the path, and the services they held before stay in force.
func TestUnreadableEntriesAreReported(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	src, err := New(Config{Dir: dir, Ephemeral: true}, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sync := func(want string, problems ...string) {
		t.Helper()
		if err := src.syncOnce(nil); err != nil {
			t.Fatal(err)
		}
		if got := servicesInForce(src); got != want {
			t.Fatalf("services in force %q, want %q; problems %v", got, want, src.Problems())
		}
		for _, p := range problems {
			if !hasProblem(src, p) {
				t.Fatalf("no problem %q in %v", p, src.Problems())
			}
		}
		if len(src.Problems()) != len(problems) {
			t.Fatalf("problems %v, want %d", src.Problems(), len(problems))
		}
	}
	writeFile(t, outside, "b.yaml", svcYAML("b", "  ports:\n  - port: 80\n"))
	if err := os.Symlink(filepath.Join(outside, "b.yaml"), filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	sync("b")

	// The symlink's target goes: b stays, and the file is named.
	os.Remove(filepath.Join(outside, "b.yaml"))
	sync("b", "b.yaml: read: dangling symlink", "b.yaml:1: document 1: Service default/b: the last good version stays in force")
	// A new dangling symlink and a symlink loop are errors too.
	if err := os.Symlink(filepath.Join(outside, "missing.yaml"), filepath.Join(dir, "new.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop.yaml", filepath.Join(dir, "loop.yaml")); err != nil {
		t.Fatal(err)
	}
	sync("b", "b.yaml: read: dangling symlink", "b.yaml:1: document 1: Service default/b: the last good version stays in force",
		"new.yaml: read: dangling symlink", "loop.yaml: read: symlink loop")
	// The one-shot load of validate, get and describe reports the same errors.
	r, err := Load(Config{Dir: dir, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors()) == 0 {
		t.Fatalf("Load found no errors: %v", r.Problems)
	}
	// Fixed: the target is back and the bad links are gone.
	writeFile(t, outside, "b.yaml", svcYAML("b", "  ports:\n  - port: 81\n"))
	os.Remove(filepath.Join(dir, "new.yaml"))
	os.Remove(filepath.Join(dir, "loop.yaml"))
	sync("b")
}

// A subdirectory that cannot be read is reported, and the services read from
// it before stay. Root reads any directory, so as root the test runs itself
// again as an unprivileged user.
func TestUnreadableDirectoryIsReported(t *testing.T) {
	if os.Getuid() == 0 {
		if os.Getenv("KPROXY_TEST_UNPRIVILEGED") != "" {
			t.Fatal("still root after dropping privileges")
		}
		// The test binary, where the unprivileged user can run it.
		tmp, err := os.MkdirTemp("", "kproxy-unprivileged-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(tmp) })
		bin := filepath.Join(tmp, "manifest.test")
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-test.run=^TestUnreadableDirectoryIsReported$", "-test.v")
		cmd.Env = append(os.Environ(), "KPROXY_TEST_UNPRIVILEGED=1", "TMPDIR=/tmp")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestUnreadableDirectoryIsReported") {
			t.Fatalf("as uid 65534: %v\n%s", err, out)
		}
		return
	}
	dir := t.TempDir()
	src, err := New(Config{Dir: dir, Ephemeral: true}, nopHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "sub/a.yaml", svcYAML("a", "  ports:\n  - port: 80\n"))
	writeFile(t, dir, "c.yaml", svcYAML("c", "  ports:\n  - port: 80\n"))
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	if got := servicesInForce(src); got != "a,c" {
		t.Fatalf("services %q; problems %v", got, src.Problems())
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Chmod(sub, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(sub, 0o755) })
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	if got := servicesInForce(src); got != "a,c" || !hasProblem(src, "sub/: read directory: permission denied") {
		t.Fatalf("services %q; problems %v", got, src.Problems())
	}
	os.Chmod(sub, 0o755)
	os.Remove(filepath.Join(sub, "a.yaml"))
	if err := src.syncOnce(nil); err != nil {
		t.Fatal(err)
	}
	if got := servicesInForce(src); got != "c" || len(src.Problems()) != 0 {
		t.Fatalf("after the fix: services %q; problems %v", got, src.Problems())
	}
}

func servicesInForce(src *Source) string {
	var names []string
	for k := range src.st.inForce {
		if k.Kind == KindService {
			names = append(names, k.Name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}
