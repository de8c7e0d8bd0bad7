// Command kproxy is a Kubernetes service proxy: it makes Service virtual IPs and
// ports work on a node, from a cluster's API server or from manifest files.
package main

import (
	"os"

	"github.com/kproxy/kproxy/internal/app"
)

func main() { os.Exit(app.Run(os.Args[1:])) }
