// Package image builds kproxy's container image from the static kproxy binary,
// without a container engine: one layer holding the binary, on no base image
// (FROM scratch), written as an image archive that `docker load` and
// `ctr images import` accept.
//
// kproxy needs nothing else in its image: it programs nftables and conntrack
// over netlink (no nft or conntrack binaries), execs nothing, and reads the API
// server's CA from the file its kubeconfig names (no CA bundle). The build is
// reproducible: every time stamp is fixed, so one binary always gives one digest.
//
// It uses github.com/google/go-containerregistry rather than ko: ko builds the
// Go binary itself, puts it at /ko-app/<name> and wants a base image from a
// registry (or a Docker daemon), whereas kproxy's image must have the layout
// deploy/Dockerfile gives it, from the binary `make image` builds, with nothing
// pulled. go-containerregistry is the library ko is built on, used here (through
// internal/imagebuild, which also writes the real-cluster tests' images) only for
// what is fiddly to get right by hand: digests, diff IDs and the archive format.
package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kproxy/kproxy/internal/imagebuild"
)

const (
	// BinaryPath is where the image holds kproxy (deploy/Dockerfile's COPY
	// destination).
	BinaryPath = "/usr/local/bin/kproxy"
	// DefaultRef is the name deploy/kproxy.yaml runs.
	DefaultRef = "ghcr.io/kproxy/kproxy:latest"
)

// Entrypoint is the image's entrypoint (deploy/Dockerfile's ENTRYPOINT).
func Entrypoint() []string { return []string{BinaryPath} }

// Env is the environment a Dockerfile build gives an image FROM scratch.
func Env() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
}

// Epoch is the time stamp of the image and of every file in it.
var Epoch = time.Unix(0, 0).UTC()

// Build returns the image of a static kproxy binary: the binary at BinaryPath,
// owned by root, mode 0755, and nothing else (internal/imagebuild assembles it).
func Build(binary []byte) (v1.Image, error) {
	arch, err := CheckStatic(binary)
	if err != nil {
		return nil, err
	}
	spec := &imagebuild.Spec{
		Entrypoint:   Entrypoint(),
		Env:          Env(),
		Architecture: arch,
		CreatedBy:    "COPY kproxy " + BinaryPath,
	}
	if err := spec.AddData(BinaryPath, binary, 0o755); err != nil {
		return nil, err
	}
	return spec.Image()
}

// CheckStatic returns the binary's architecture (GOARCH spelling), or an error
// when it is not a statically linked Linux ELF executable: the image has no
// C library or dynamic loader for it.
func CheckStatic(binary []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return "", fmt.Errorf("kproxy binary: not an ELF executable: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("kproxy binary is dynamically linked (it names an ELF interpreter): build it with CGO_ENABLED=0")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return "", fmt.Errorf("kproxy binary needs shared libraries %v: build it with CGO_ENABLED=0", libs)
	}
	arch, ok := map[elf.Machine]string{
		elf.EM_X86_64:  "amd64",
		elf.EM_AARCH64: "arm64",
		elf.EM_386:     "386",
		elf.EM_ARM:     "arm",
		elf.EM_PPC64:   "ppc64le",
		elf.EM_S390:    "s390x",
		elf.EM_RISCV:   "riscv64",
	}[f.Machine]
	if !ok {
		return "", fmt.Errorf("kproxy binary: unknown ELF machine %v", f.Machine)
	}
	return arch, nil
}

// WriteArchive writes img, named ref, as an image archive (the docker-archive
// format: manifest.json, the config and gzipped layers), which `docker load` and
// `ctr -n k8s.io images import` take.
func WriteArchive(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image name %q: %w (want REGISTRY/REPOSITORY:TAG)", ref, err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
