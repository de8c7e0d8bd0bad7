// Command kproxy-bench-dns measures kproxy's DNS server: queries per second and
// latency percentiles for ClusterIP and headless lookups, next to a naive
// miekg/dns server answering the same names from a map (the simplest server a
// Go programmer would write: the baseline to beat). Load comes from dnsperf when it is installed and
// from a built-in Go client that also measures the p99.
package main

import "os"

func main() { os.Exit(run(os.Args[1:])) }
