package imagebuild

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// layerEntries reads back the archive at p (as `docker load` would: by its tag) and
// returns its single layer's entries by path.
func layerEntries(t *testing.T, p, tag string) (map[string]*tar.Header, map[string]string) {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(p, &ref)
	if err != nil {
		t.Fatalf("reading %s back: %v", p, err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n := "/" + strings.TrimSuffix(h.Name, "/")
		hdrs[n] = h
		b, _ := io.ReadAll(tr)
		data[n] = string(b)
	}
	return hdrs, data
}

func TestWriteArchive(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "prog")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := func() *Spec {
		s := &Spec{Tag: "example.test/img:1", Entrypoint: []string{"/bin/prog"}, Cmd: []string{"run"}, MergedUsr: true}
		for _, err := range []error{
			s.AddFile("/bin/prog", src),
			s.AddData("/etc/passwd", []byte("root:x:0:0::/:/bin/sh\n"), 0o644),
			s.AddSymlink("/bin/alias", "prog"),
			s.AddDir("/tmp", 0o1777),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	p := filepath.Join(dir, "out", "img.tar")
	s := spec()
	if ok, err := s.UpToDate(p); ok || err != nil {
		t.Fatalf("UpToDate before writing = %v, %v; want false", ok, err)
	}
	if err := s.WriteArchive(p); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}

	hdrs, data := layerEntries(t, p, s.Tag)
	for path, want := range map[string]byte{
		"/bin": tar.TypeSymlink, "/lib64": tar.TypeSymlink, "/usr": tar.TypeDir, "/usr/bin": tar.TypeDir,
		"/usr/bin/prog": tar.TypeReg, "/usr/bin/alias": tar.TypeSymlink, "/etc": tar.TypeDir,
		"/etc/passwd": tar.TypeReg, "/tmp": tar.TypeDir,
	} {
		h, ok := hdrs[path]
		if !ok {
			t.Errorf("layer lacks %s (has %v)", path, keys(hdrs))
			continue
		}
		if h.Typeflag != want {
			t.Errorf("%s: type %c, want %c", path, h.Typeflag, want)
		}
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d; want the epoch and root", path, h.ModTime, h.Uid, h.Gid)
		}
	}
	if _, ok := hdrs["/bin/prog"]; ok {
		t.Errorf("/bin/prog stored under /bin, not /usr/bin, in a MergedUsr image")
	}
	if h := hdrs["/bin"]; h != nil && h.Linkname != "usr/bin" {
		t.Errorf("/bin -> %q, want usr/bin", h.Linkname)
	}
	if h := hdrs["/usr/bin/prog"]; h != nil && (h.Mode != 0o755 || data["/usr/bin/prog"] != "#!/bin/sh\necho hi\n") {
		t.Errorf("/usr/bin/prog: mode %o, contents %q", h.Mode, data["/usr/bin/prog"])
	}
	if h := hdrs["/tmp"]; h != nil && h.Mode != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", h.Mode)
	}

	ref, _ := name.NewTag(s.Tag)
	img, err := tarball.ImageFromPath(p, &ref)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || strings.Join(cf.Config.Entrypoint, " ") != "/bin/prog" || strings.Join(cf.Config.Cmd, " ") != "run" ||
		len(cf.Config.Env) != 1 || cf.Config.Env[0] != DefaultPath || cf.Created.Unix() != 0 {
		t.Errorf("config: os %q entrypoint %q cmd %q env %q created %v", cf.OS, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env, cf.Created)
	}

	// Same inputs: up to date, and rewriting gives the same bytes.
	if ok, err := spec().UpToDate(p); !ok || err != nil {
		t.Fatalf("UpToDate after writing = %v, %v; want true", ok, err)
	}
	if err := spec().WriteArchive(p); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(p)
	if !bytes.Equal(first, second) {
		t.Errorf("two archives of the same inputs differ (%d and %d bytes)", len(first), len(second))
	}
	// A changed input file: no longer up to date.
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho changed\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if ok, _ := spec().UpToDate(p); ok {
		t.Errorf("UpToDate after the source changed = true")
	}
}

func TestSpecErrors(t *testing.T) {
	s := &Spec{Tag: "example.test/img:1", MergedUsr: true}
	if err := s.AddData("relative", nil, 0o644); err == nil || !strings.Contains(err.Error(), `"relative"`) {
		t.Errorf("relative path: %v", err)
	}
	if err := s.AddSymlink("/lib", "usr/lib"); err == nil || !strings.Contains(err.Error(), "/lib") {
		t.Errorf("replacing a merged-/usr link: %v", err)
	}
	if err := s.AddData("/etc/x", []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.AddData("/etc/x", []byte("b"), 0o644); err == nil || !strings.Contains(err.Error(), "/etc/x") {
		t.Errorf("the same path twice: %v", err)
	}
	if err := s.AddFile("/etc/y", "/nonexistent/file"); err == nil || !strings.Contains(err.Error(), "/etc/y") {
		t.Errorf("missing source: %v", err)
	}
	bad := &Spec{Tag: "Not A Tag"}
	if err := bad.WriteArchive(filepath.Join(t.TempDir(), "x.tar")); err == nil || !strings.Contains(err.Error(), "Not A Tag") {
		t.Errorf("bad tag: %v", err)
	}
}

// TestAddProgram copies a dynamically linked host program with its libraries.
func TestAddProgram(t *testing.T) {
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	prog, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls")
	}
	libs, err := SharedLibraries(prog)
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) == 0 {
		t.Skipf("%s is static", prog)
	}
	var hasLibc bool
	for _, l := range libs {
		hasLibc = hasLibc || strings.Contains(filepath.Base(l), "libc.so")
	}
	if !hasLibc {
		t.Errorf("libraries of %s lack libc: %v", prog, libs)
	}
	s := &Spec{Tag: "example.test/ls:1"}
	if err := s.AddProgram("/bin/ls", prog); err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		if _, ok := s.entries[filepath.Clean(l)]; !ok {
			t.Errorf("image lacks %s", l)
		}
	}
	// A second program sharing libc adds no conflict.
	if err := s.AddProgram("/bin/ls2", prog); err != nil {
		t.Errorf("a second program with the same libraries: %v", err)
	}
}

func keys(m map[string]*tar.Header) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
