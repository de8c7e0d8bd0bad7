// Package conntrack talks to the kernel's connection tracking: it lists and
// deletes entries over ctnetlink (Socket, for the nftables data plane's UDP
// reconcile: UDP has no connection to close, so a client that keeps its
// 5-tuple keeps the endpoint its first packet was given until the entry is
// deleted), and applies kube-proxy's conntrack sysctls (Settings).
package conntrack
