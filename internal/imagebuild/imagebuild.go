// Package imagebuild writes a container image, made of files from this machine, as an
// image archive (the `docker save` layout) that `ctr images import` and `docker load`
// accept. It needs no Docker engine and no registry: go-containerregistry assembles a
// single-layer linux image from the entries added to a Spec.
//
// The archive is reproducible: entries are sorted, owned by root (or the uid/gid
// given), and every timestamp is the Unix epoch, so the same inputs give the same
// bytes, the same layer digest and the same image ID.
//
// It is a build tool (kproxy's test images, kproxy's own image); kproxy's runtime
// binary never imports it.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultPath is the PATH of an image whose Spec sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec describes an image: its reference, its runtime configuration and its files.
// The zero value plus a Tag is a valid, empty image. Every entry is owned by root.
type Spec struct {
	// Tag is the image reference the archive carries, e.g. "registry.k8s.io/pause:3.10.2".
	Tag        string
	Entrypoint []string
	Cmd        []string
	// Env defaults to DefaultPath when empty.
	Env        []string
	WorkingDir string
	// User is "uid[:gid]" or a name from the image's /etc/passwd; empty means root.
	User   string
	Labels map[string]string
	// ExposedPorts are "port/proto" entries, e.g. "8080/tcp" (documentation only).
	ExposedPorts []string
	// Architecture is the image's GOARCH; empty means this program's.
	Architecture string
	// CreatedBy, when set, is recorded as the layer's history entry (what `docker
	// history` shows), e.g. "COPY kproxy /usr/local/bin/kproxy".
	CreatedBy string
	// MergedUsr lays the image out as Debian does since bookworm: /bin, /sbin, /lib
	// and /lib64 are symlinks into /usr, and an entry added under one of them is
	// stored under /usr. Programs and libraries copied from such a host then keep
	// every path they are known by (/bin/sh, /lib64/ld-linux-x86-64.so.2, ...).
	MergedUsr bool

	entries map[string]*entry
}

type entry struct {
	hdr  tar.Header
	src  string // host file whose contents are copied, or
	data []byte // the contents themselves
}

// clean makes p an absolute, cleaned image path, or fails.
func clean(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("image path %q: must be absolute", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", fmt.Errorf("image path %q: names the root", p)
	}
	return c, nil
}

// mergedUsrDirs are the top-level directories that MergedUsr makes symlinks into /usr.
var mergedUsrDirs = []string{"/bin", "/sbin", "/lib", "/lib64"}

func (s *Spec) put(e *entry) error {
	p, err := clean(e.hdr.Name)
	if err != nil {
		return err
	}
	if s.entries == nil {
		s.entries = map[string]*entry{}
	}
	if s.MergedUsr {
		for _, d := range mergedUsrDirs {
			if p == d {
				return fmt.Errorf("image path %s: a symlink into /usr in a MergedUsr image", p)
			}
			if strings.HasPrefix(p, d+"/") {
				p = "/usr" + p
			}
		}
	}
	if old, ok := s.entries[p]; ok {
		// The same directory twice is harmless; anything else is a conflict.
		if old.hdr.Typeflag == tar.TypeDir && e.hdr.Typeflag == tar.TypeDir {
			return nil
		}
		if old.hdr.Typeflag == tar.TypeReg && e.hdr.Typeflag == tar.TypeReg && sameFile(old.src, e.src) {
			return nil // e.g. a shared library two programs need
		}
		return fmt.Errorf("image path %s: added twice", p)
	}
	e.hdr.Name = p
	e.hdr.ModTime = time.Unix(0, 0)
	e.hdr.Format = tar.FormatPAX
	s.entries[p] = e
	// Parent directories, unless given explicitly.
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, ok := s.entries[d]; ok {
			break
		}
		s.entries[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}}
	}
	return nil
}

// sameFile reports whether host paths a and b name the same file.
func sameFile(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	if a == b {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// AddDir adds an empty directory with the given permission bits (e.g. 0o755, or
// 0o1777 for a sticky /tmp).
func (s *Spec) AddDir(dst string, mode fs.FileMode) error {
	m := int64(mode & 0o7777)
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return s.put(&entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: dst, Mode: m}})
}

// AddData adds a regular file with the given contents and permission bits.
func (s *Spec) AddData(dst string, data []byte, mode fs.FileMode) error {
	return s.put(&entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: int64(mode.Perm()), Size: int64(len(data))}, data: data})
}

// AddSymlink adds a symbolic link dst pointing to target (relative or absolute).
func (s *Spec) AddSymlink(dst, target string) error {
	return s.put(&entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: dst, Linkname: target, Mode: 0o777}})
}

// AddFile adds the host file src at dst, following symlinks, with src's permission bits.
func (s *Spec) AddFile(dst, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("image file %s: %w", dst, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("image file %s: source %s is not a regular file", dst, src)
	}
	return s.put(&entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: int64(fi.Mode().Perm()), Size: fi.Size()}, src: src})
}

// AddProgram adds the host program src at dst together with every shared library
// the dynamic loader resolves for it (as `ldd` lists them, at the same paths), so a
// dynamically linked program from the host's packages runs inside the image. A
// static program is added alone.
func (s *Spec) AddProgram(dst, src string) error {
	if err := s.AddFile(dst, src); err != nil {
		return err
	}
	libs, err := SharedLibraries(src)
	if err != nil {
		return err
	}
	for _, l := range libs {
		if err := s.AddFile(l, l); err != nil {
			return err
		}
	}
	return nil
}

// SharedLibraries lists the absolute paths of the shared libraries, and the
// program interpreter, that the host's dynamic loader uses for the program at prog.
// It is empty for a static program.
func SharedLibraries(prog string) ([]string, error) {
	out, err := exec.Command("ldd", prog).CombinedOutput()
	text := string(out)
	if err != nil {
		if strings.Contains(text, "not a dynamic executable") || strings.Contains(text, "statically linked") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", prog, err, strings.TrimSpace(text))
	}
	var libs []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("ldd %s: %s not found", prog, f[0])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0]) // the interpreter, e.g. /lib64/ld-linux-x86-64.so.2
		}
	}
	return libs, nil
}

// sorted returns the entries in archive order: by path, so parents come first.
func (s *Spec) sorted() []*entry {
	all := map[string]*entry{}
	for n, e := range s.entries {
		all[n] = e
	}
	if s.MergedUsr {
		for _, d := range mergedUsrDirs {
			all[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: d, Linkname: "usr" + d, Mode: 0o777, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}}
		}
		if _, ok := all["/usr"]; !ok {
			all["/usr"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "/usr", Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	es := make([]*entry, len(names))
	for i, n := range names {
		es[i] = all[n]
	}
	return es
}

// layerTar writes the image's single layer as an uncompressed tar.
func (s *Spec) layerTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	for _, e := range s.sorted() {
		h := e.hdr
		h.Name = strings.TrimPrefix(h.Name, "/")
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("image path /%s: %w", h.Name, err)
		}
		switch {
		case e.data != nil:
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		case e.src != "":
			if err := copyFile(tw, e.src, h.Size); err != nil {
				return fmt.Errorf("image path /%s: %w", h.Name, err)
			}
		}
	}
	return tw.Close()
}

func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size+1))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s changed size while being read (%d, then %d bytes)", src, size, n)
	}
	return nil
}

func (s *Spec) arch() string {
	if s.Architecture != "" {
		return s.Architecture
	}
	return runtime.GOARCH
}

// config is the image configuration.
func (s *Spec) config() v1.Config {
	env := s.Env
	if len(env) == 0 {
		env = []string{DefaultPath}
	}
	c := v1.Config{
		Entrypoint: s.Entrypoint,
		Cmd:        s.Cmd,
		Env:        env,
		WorkingDir: s.WorkingDir,
		User:       s.User,
		Labels:     s.Labels,
	}
	if len(s.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range s.ExposedPorts {
			c.ExposedPorts[p] = struct{}{}
		}
	}
	return c
}

// Image assembles the image. The layer is held in memory.
func (s *Spec) Image() (v1.Image, error) {
	var buf bytes.Buffer
	if err := s.layerTar(&buf); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	add := mutate.Addendum{Layer: layer}
	if s.CreatedBy != "" {
		add.History = v1.History{Created: v1.Time{Time: time.Unix(0, 0).UTC()}, CreatedBy: s.CreatedBy}
	}
	img, err := mutate.Append(empty.Image, add)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = s.arch()
	cf.OS = "linux"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = s.config()
	return mutate.ConfigFile(img, cf)
}

// InputDigest is a sha256 over everything the archive is made from: the tag, the
// configuration and every entry with its contents. WriteArchive records it next to
// the archive, so a caller can skip a rebuild when nothing changed (see UpToDate).
func (s *Spec) InputDigest() (string, error) {
	h := sha256.New()
	meta, err := json.Marshal(struct {
		Tag       string
		Config    v1.Config
		Arch      string
		CreatedBy string
	}{s.Tag, s.config(), s.arch(), s.CreatedBy})
	if err != nil {
		return "", err
	}
	h.Write(meta)
	for _, e := range s.sorted() {
		fmt.Fprintf(h, "\n%s %c %o %d %d %s %d\n", e.hdr.Name, e.hdr.Typeflag, e.hdr.Mode, e.hdr.Uid, e.hdr.Gid, e.hdr.Linkname, e.hdr.Size)
		switch {
		case e.data != nil:
			h.Write(e.data)
		case e.src != "":
			f, err := os.Open(e.src)
			if err != nil {
				return "", fmt.Errorf("image path %s: %w", e.hdr.Name, err)
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", fmt.Errorf("image path %s: %w", e.hdr.Name, err)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// inputsFile is where WriteArchive records the InputDigest of the archive at p.
func inputsFile(p string) string { return p + ".inputs" }

// UpToDate reports whether the archive at p exists and was written from these
// exact inputs.
func (s *Spec) UpToDate(p string) (bool, error) {
	want, err := s.InputDigest()
	if err != nil {
		return false, err
	}
	got, err := os.ReadFile(inputsFile(p))
	if err != nil {
		return false, nil
	}
	if _, err := os.Stat(p); err != nil {
		return false, nil
	}
	return strings.TrimSpace(string(got)) == want, nil
}

// WriteArchive writes the image archive to p (atomically: a temporary file renamed
// into place) and records its InputDigest in p + ".inputs".
func (s *Spec) WriteArchive(p string) error {
	ref, err := name.NewTag(s.Tag)
	if err != nil {
		return fmt.Errorf("image tag %q: %w", s.Tag, err)
	}
	digest, err := s.InputDigest()
	if err != nil {
		return err
	}
	img, err := s.Image()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tarball.Write(ref, img, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("writing image %s to %s: %w", s.Tag, p, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	return os.WriteFile(inputsFile(p), []byte(digest+"\n"), 0o644)
}
