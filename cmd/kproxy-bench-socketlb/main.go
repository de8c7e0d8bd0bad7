// Command kproxy-bench-socketlb measures kproxy's socket LB against nftables
// DNAT and the direct path; see internal/socketlb/README.md.
package main

import (
	"os"

	"github.com/kproxy/kproxy/internal/socketlb/bench"
)

func main() {
	bench.ChildMain()
	os.Exit(bench.Run(os.Args[1:]))
}
