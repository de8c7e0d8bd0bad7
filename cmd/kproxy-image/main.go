// Command kproxy-image writes kproxy's container image archive from a static
// kproxy binary, with no container engine (`make image` runs it):
//
//	kproxy-image --binary bin/image/kproxy --image ghcr.io/kproxy/kproxy:latest --output bin/kproxy-image.tar
//	ctr -n k8s.io images import bin/kproxy-image.tar    # or: docker load -i bin/kproxy-image.tar
//
// The image holds the binary at /usr/local/bin/kproxy and nothing else, as
// deploy/Dockerfile's does (internal/image).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/kproxy/kproxy/internal/image"
)

func main() { os.Exit(run()) }

func run() int {
	binary := flag.String("binary", "", "The static kproxy binary (CGO_ENABLED=0)")
	ref := flag.String("image", image.DefaultRef, "The image's name, REGISTRY/REPOSITORY:TAG")
	output := flag.String("output", "kproxy-image.tar", "Where to write the image archive")
	flag.Parse()
	if *binary == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: kproxy-image --binary FILE [--image NAME] [--output FILE]")
		return 2
	}
	data, err := os.ReadFile(*binary)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-image:", err)
		return 1
	}
	img, err := image.Build(data)
	if err == nil {
		err = image.WriteArchive(*output, *ref, img)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kproxy-image: %s: %v\n", *binary, err)
		return 1
	}
	digest, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-image:", err)
		return 1
	}
	id, err := img.ConfigName()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-image:", err)
		return 1
	}
	st, err := os.Stat(*output)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kproxy-image:", err)
		return 1
	}
	// The image ID (the config's digest) is what `crictl images` and `docker
	// images` show after an import; `ctr images import` writes a manifest of
	// its own, so the digest ctr lists differs from this manifest's.
	fmt.Printf("%s: %s, image ID %s, manifest %s, archive %d bytes, binary %d bytes\n", *output, *ref, id, digest, st.Size(), len(data))
	return 0
}
