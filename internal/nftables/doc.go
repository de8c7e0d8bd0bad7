// Package nftables is kproxy's kernel data plane: it programs two nf_tables
// tables ("ip kproxy" and "ip6 kproxy") over netlink so that service frontends
// (cluster IPs, NodePorts, external and load balancer IPs) reach their
// endpoints, one atomic transaction per sync. Services live in named maps
// keyed by frontend, so a sync changes elements, not rules, and the cost of a
// packet does not grow with the number of services. README.md explains the
// hooks, the ruleset's shape and the measurements behind it.
//
// A Tracer computes what the rules do with a packet from the tables read back
// from the kernel (Proxier.States), not from the model, for "kproxy trace".
package nftables
