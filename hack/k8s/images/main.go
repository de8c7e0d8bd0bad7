// Command images writes the container images kproxy's real-cluster tests run, as
// archives for `ctr -n k8s.io images import`, from binaries built on this machine and
// programs of its Debian packages. Nothing is pulled from a registry.
//
//	go run ./hack/k8s/images -tools DIR -agnhost-src DIR [-out DIR]
//
// DIR (the tools directory) holds the pause, agnhost and coredns binaries that
// hack/k8s/build.sh built; -agnhost-src is k8s.io/kubernetes's test/images/agnhost
// directory (for porter's test certificate). It writes, into -out (default
// DIR/images):
//
//	pause.tar    registry.k8s.io/pause:3.10.2
//	agnhost.tar  registry.k8s.io/e2e-test-images/agnhost:2.66.1
//	coredns.tar  kproxy.test/coredns:v1.15.0
//
// An archive whose inputs (files, contents, configuration) did not change is kept.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/kproxy/kproxy/internal/imagebuild"
)

// Tags the upstream e2e framework v1.37.2 and kubelet v1.37.2 expect
// (test/utils/image/manifest.go; the kubelet's default sandbox image).
const (
	PauseTag   = "registry.k8s.io/pause:3.10.2"
	AgnhostTag = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	CoreDNSTag = "kproxy.test/coredns:v1.15.0"
)

// agnhostPrograms are the host programs the agnhost image carries, at the path they
// get inside (Debian's merged /usr layout, so /bin/X works as well), with their
// shared libraries. The e2e tests run `/bin/sh -c` with curl, nc, wget, nslookup,
// seq, ss, grep, sleep, dd and more inside agnhost pods. busybox is deliberately
// absent: its sh runs its own nc and wget applets ahead of $PATH.
var agnhostPrograms = []struct{ dst, prog string }{
	{"/usr/bin/dash", "dash"},
	{"/usr/bin/bash", "bash"},
	{"/usr/bin/nc", "nc.openbsd"},
	{"/usr/bin/curl", "curl"},
	{"/usr/bin/wget", "wget"},
	{"/usr/bin/nslookup", "nslookup"},
	{"/usr/bin/dig", "dig"},
	{"/usr/bin/host", "host"},
	{"/usr/bin/socat", "socat"},
	{"/usr/bin/ip", "ip"},
	{"/usr/bin/ss", "ss"},
	{"/usr/bin/hostname", "hostname"},
	{"/usr/bin/grep", "grep"},
	{"/usr/bin/sed", "sed"},
	{"/usr/bin/ps", "ps"},
	{"/usr/bin/kill", "kill"},
}

// coreutils are copied from Debian's coreutils, each to /usr/bin.
var coreutils = []string{
	"cat", "chmod", "cp", "cut", "date", "dd", "df", "echo", "env", "false", "head", "id",
	"ln", "ls", "mkdir", "mktemp", "mv", "nproc", "printf", "pwd", "readlink", "rm",
	"rmdir", "seq", "sleep", "sort", "stat", "tail", "tee", "test", "timeout", "touch",
	"tr", "true", "uname", "uniq", "wc", "whoami", "yes",
}

func main() {
	tools := flag.String("tools", "", "directory holding the pause, agnhost and coredns binaries")
	out := flag.String("out", "", "where to write the archives (default TOOLS/images)")
	agnhostSrc := flag.String("agnhost-src", "", "k8s.io/kubernetes's test/images/agnhost source directory")
	force := flag.Bool("force", false, "rewrite archives even when their inputs did not change")
	flag.Parse()
	if *tools == "" || *agnhostSrc == "" {
		fmt.Fprintln(os.Stderr, "images: -tools and -agnhost-src are required")
		os.Exit(2)
	}
	if *out == "" {
		*out = filepath.Join(*tools, "images")
	}
	specs := []struct {
		file  string
		build func() (*imagebuild.Spec, error)
	}{
		{"pause.tar", func() (*imagebuild.Spec, error) { return pause(*tools) }},
		{"agnhost.tar", func() (*imagebuild.Spec, error) { return agnhost(*tools, *agnhostSrc) }},
		{"coredns.tar", func() (*imagebuild.Spec, error) { return coredns(*tools) }},
	}
	for _, sp := range specs {
		p := filepath.Join(*out, sp.file)
		s, err := sp.build()
		if err != nil {
			fail(p, err)
		}
		if !*force {
			ok, err := s.UpToDate(p)
			if err != nil {
				fail(p, err)
			}
			if ok {
				continue
			}
		}
		start := time.Now()
		if err := s.WriteArchive(p); err != nil {
			fail(p, err)
		}
		fi, _ := os.Stat(p)
		fmt.Fprintf(os.Stderr, "images: wrote %s (%s, %d MB) in %s\n", p, s.Tag, fi.Size()>>20, time.Since(start).Round(time.Millisecond))
	}
}

func fail(p string, err error) {
	fmt.Fprintf(os.Stderr, "images: %s: %v\n", p, err)
	os.Exit(1)
}

// pause is the sandbox image: the static pause program, run as 65535 like upstream's.
func pause(tools string) (*imagebuild.Spec, error) {
	s := &imagebuild.Spec{Tag: PauseTag, Entrypoint: []string{"/pause"}, User: "65535:65535"}
	return s, s.AddFile("/pause", filepath.Join(tools, "pause"))
}

// coredns is the cluster DNS image: the CoreDNS build of hack/k8s/coredns, alone.
// It runs as root (binding port 53); the Corefile comes from the pod's volume.
func coredns(tools string) (*imagebuild.Spec, error) {
	s := &imagebuild.Spec{Tag: CoreDNSTag, Entrypoint: []string{"/coredns"}, ExposedPorts: []string{"53/udp", "53/tcp", "9153/tcp"}}
	return s, s.AddFile("/coredns", filepath.Join(tools, "coredns"))
}

// agnhost mirrors upstream's agnhost image (test/images/agnhost/Dockerfile): the
// agnhost binary as the entrypoint with "pause" as the default argument, the
// agnhost-2 link, /uploads, porter's certificate, the user and group the
// SupplementalGroups tests expect, and the programs the tests run inside.
func agnhost(tools, src string) (*imagebuild.Spec, error) {
	s := &imagebuild.Spec{
		Tag:          AgnhostTag,
		Entrypoint:   []string{"/agnhost"},
		Cmd:          []string{"pause"},
		WorkingDir:   "/",
		MergedUsr:    true,
		ExposedPorts: []string{"80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"},
	}
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	add(s.AddFile("/agnhost", filepath.Join(tools, "agnhost")))
	add(s.AddSymlink("/agnhost-2", "agnhost"))
	add(s.AddFile("/localhost.crt", filepath.Join(src, "porter", "localhost.crt")))
	add(s.AddFile("/localhost.key", filepath.Join(src, "porter", "localhost.key")))
	add(s.AddDir("/uploads", 0o755))
	add(s.AddDir("/tmp", 0o1777))
	add(s.AddDir("/root", 0o700))
	add(s.AddData("/etc/passwd", []byte(
		"root:x:0:0:root:/root:/bin/sh\n"+
			"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644))
	add(s.AddData("/etc/group", []byte(
		"root:x:0:\n"+
			"user-defined-in-image:x:1000:\n"+
			"group-defined-in-image:x:50000:user-defined-in-image\n"+
			"nogroup:x:65534:\n"), 0o644))
	add(s.AddData("/etc/nsswitch.conf", []byte("passwd: files\ngroup: files\nhosts: files dns\n"), 0o644))
	add(s.AddSymlink("/usr/bin/sh", "dash"))
	for _, p := range agnhostPrograms {
		add(addProgram(s, p.dst, p.prog))
	}
	for _, c := range coreutils {
		add(addProgram(s, "/usr/bin/"+c, c))
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// addProgram finds prog on the host's PATH and adds it, with its libraries, at dst.
func addProgram(s *imagebuild.Spec, dst, prog string) error {
	p, err := exec.LookPath(prog)
	if err != nil {
		return fmt.Errorf("program %s for %s (install it: see hack/apt-packages.txt): %w", prog, dst, err)
	}
	return s.AddProgram(dst, p)
}
