// Package dns is kproxy's DNS server for the cluster domain. It answers the
// records of the Kubernetes DNS-Based Service Discovery specification
// (github.com/kubernetes/dns, docs/specification.md, schema 1.1.0) from the
// model's snapshots: A/AAAA for cluster IPs, headless endpoints and their
// hostnames, SRV for named ports, CNAME for ExternalName services, PTR for cluster
// IPs and headless endpoint IPs, the dns-version TXT record and the deprecated
// a-b-c-d.<ns>.pod.<zone> names.
//
// Update turns a snapshot into an immutable index of packed answers and swaps an
// atomic pointer, so queries never wait for a lock. The UDP hot path parses the
// question by hand, copies the precomputed records behind it and patches the
// header: no miekg/dns message is built and nothing is allocated. miekg/dns is
// used where speed does not matter: forwarding names outside the zone to an
// upstream resolver (without one they are REFUSED: kproxy is not an open
// resolver).
package dns
