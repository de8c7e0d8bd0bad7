// Command coredns is CoreDNS v1.15.0 with only the plugins cluster DNS needs, built as
// a test tool for kproxy's real-cluster tests: kubernetes (answers for the cluster
// domain from Services and EndpointSlices), cache, errors, log, health (liveness,
// :8080/health) and ready (readiness, :8181/ready). There is deliberately no forward
// plugin: the test cluster answers only for its own zones, and nothing it resolves
// leaves the machine. Flags and Corefile syntax are CoreDNS's own.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
