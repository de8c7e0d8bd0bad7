// Command kproxy-bench-nft measures kproxy's nftables data plane; see
// internal/nftables/README.md.
package main

import (
	"os"

	"github.com/kproxy/kproxy/internal/nftables/bench"
)

func main() { os.Exit(bench.Run(os.Args[1:])) }
