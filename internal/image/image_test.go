package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	dockerfile = filepath.Join("..", "..", "deploy", "Dockerfile")
	makefile   = filepath.Join("..", "..", "Makefile")
)

// staticBinary builds a tiny static Go program: a stand-in for kproxy that
// builds in seconds.
func staticBinary(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"hello\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GO111MODULE=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct{ op, args string }

func parseDockerfile(t *testing.T, path string) [][]instruction {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]instruction
	var cur string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur += s + " "
			continue
		}
		cur += line
		op, args, _ := strings.Cut(cur, " ")
		cur = ""
		in := instruction{strings.ToUpper(op), strings.TrimSpace(args)}
		if in.op == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("%s: %s before FROM", path, in.op)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	return stages
}

// TestDockerfileAgrees checks that deploy/Dockerfile and the Go builder make
// the same image: no base image, the binary at the same path, the same
// entrypoint, and a binary built with the same flags.
func TestDockerfileAgrees(t *testing.T) {
	stages := parseDockerfile(t, dockerfile)
	if len(stages) < 2 {
		t.Fatalf("%s: want a build stage and the image stage, got %d stages", dockerfile, len(stages))
	}
	final := stages[len(stages)-1]
	var ops []string
	for _, in := range final {
		ops = append(ops, in.op)
		switch in.op {
		case "FROM":
			if in.args != "scratch" {
				t.Errorf("%s: the image stage is FROM %q, want scratch (the Go builder uses no base image)", dockerfile, in.args)
			}
		case "COPY":
			f := strings.Fields(in.args)
			if dst := f[len(f)-1]; dst != BinaryPath {
				t.Errorf("%s: COPY to %s, the Go builder puts kproxy at %s", dockerfile, dst, BinaryPath)
			}
		case "ENTRYPOINT":
			var ep []string
			if err := json.Unmarshal([]byte(in.args), &ep); err != nil {
				t.Errorf("%s: ENTRYPOINT %s: want the JSON form: %v", dockerfile, in.args, err)
			} else if !slices.Equal(ep, Entrypoint()) {
				t.Errorf("%s: ENTRYPOINT %q, the Go builder's is %q", dockerfile, ep, Entrypoint())
			}
		}
	}
	if want := []string{"FROM", "COPY", "ENTRYPOINT"}; !slices.Equal(ops, want) {
		t.Errorf("%s: the image stage has %v, want exactly %v (anything else would make it differ from the Go builder's)", dockerfile, ops, want)
	}

	// The same compiler flags: static, no local paths, no symbol tables.
	var dockerBuild string
	for _, in := range stages[0] {
		if in.op == "RUN" && strings.Contains(in.args, "go build") {
			dockerBuild = in.args
		}
	}
	mk, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatal(err)
	}
	var makeBuild string
	for line := range strings.Lines(string(mk)) {
		if strings.Contains(line, "go build") || strings.Contains(line, "$(GO) build") {
			if strings.Contains(line, "$(BIN)/image/") {
				makeBuild = line
			}
		}
	}
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "./cmd/kproxy"} {
		if !strings.Contains(dockerBuild, flag) {
			t.Errorf("%s: the go build lacks %q: %s", dockerfile, flag, dockerBuild)
		}
		if !strings.Contains(makeBuild, flag) {
			t.Errorf("%s: make image's go build lacks %q: %q", makefile, flag, makeBuild)
		}
	}
}

// TestBuild checks the image the builder writes, read back from the archive:
// its name, config, and a layer holding the binary and nothing else; and that
// the same binary gives the same bytes.
func TestBuild(t *testing.T) {
	bin := staticBinary(t)
	dir := t.TempDir()
	write := func(file string) []byte {
		img, err := Build(bin)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, file)
		if err := WriteArchive(path, DefaultRef, img); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	first := write("a.tar")
	if second := write("b.tar"); !bytes.Equal(first, second) {
		t.Error("two builds of the same binary gave different archives")
	}

	tag, err := name.NewTag(DefaultRef)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(filepath.Join(dir, "a.tar"), &tag)
	if err != nil {
		t.Fatalf("read the archive back as %s: %v", DefaultRef, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, Entrypoint()) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want %q and none", cf.Config.Entrypoint, cf.Config.Cmd, Entrypoint())
	}
	if cf.OS != "linux" || cf.Architecture == "" || !cf.Created.Time.Equal(Epoch) {
		t.Errorf("os %q architecture %q created %v", cf.OS, cf.Architecture, cf.Created)
	}
	if cf.Config.User != "" || len(cf.Config.ExposedPorts) != 0 || len(cf.Config.Volumes) != 0 {
		t.Errorf("config carries more than the entrypoint: %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, err %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(Epoch) || h.Mode != 0o755 {
			t.Errorf("%s: uid %d gid %d mtime %v mode %o", h.Name, h.Uid, h.Gid, h.ModTime, h.Mode)
		}
		if h.Name == strings.TrimPrefix(BinaryPath, "/") {
			got, _ := io.ReadAll(tr)
			if !bytes.Equal(got, bin) {
				t.Errorf("%s differs from the binary given", h.Name)
			}
		}
	}
	if want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/kproxy"}; !slices.Equal(files, want) {
		t.Errorf("layer holds %q, want %q", files, want)
	}
}

func TestBuildRefusesDynamicBinary(t *testing.T) {
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip("no /bin/true:", err)
	}
	if _, err := Build(data); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("Build(/bin/true) = %v, want an error saying to build with CGO_ENABLED=0", err)
	}
	if _, err := Build([]byte("#!/bin/sh\n")); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("Build(a script) = %v, want not an ELF executable", err)
	}
	if err := WriteArchive(filepath.Join(t.TempDir(), "x.tar"), "kproxy", nil); err == nil || !strings.Contains(err.Error(), "REGISTRY/REPOSITORY:TAG") {
		t.Errorf("WriteArchive with a short name = %v, want a naming error", err)
	}
}
