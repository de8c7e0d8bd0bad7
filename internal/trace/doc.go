// Package trace answers "where does this packet go?" for kproxy's live state:
// which service port a packet matches (ClusterIP, NodePort on a node address,
// load balancer IP or external IP, IPv4 or IPv6), the endpoints it may be sent
// to with their probabilities, whether ClientIP affinity applies, whether it is
// masqueraded, or why it is dropped or rejected.
//
// It has two layers. FromModel computes the answer from a model.Snapshot with
// the same rules the data planes follow (kube-proxy's nftables semantics: no
// endpoints rejects, a Local policy without local endpoints drops, source
// ranges drop before DNAT, unknown ports on cluster IPs are rejected); that is
// the whole answer for the userspace data plane. KernelState is implemented by
// a kernel data plane that reads its own rules back; Trace asks it too and
// reports every disagreement with the model, which is how a data plane that
// drifted from the model is caught.
//
// Handler serves traces on the admin server; Query and WriteText are the
// `kproxy trace` client.
package trace
