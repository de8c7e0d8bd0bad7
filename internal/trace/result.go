package trace

import (
	"github.com/kproxy/kproxy/internal/socketlb"

	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
)

// Verdict is what happens to the packet.
type Verdict string

// Verdicts.
const (
	// VerdictDNAT: the destination is rewritten to one of the endpoints.
	VerdictDNAT Verdict = "dnat"
	// VerdictProxy: the userspace proxy accepts the connection and opens its
	// own to one of the endpoints.
	VerdictProxy Verdict = "proxy"
	// VerdictDrop: the packet is silently discarded.
	VerdictDrop Verdict = "drop"
	// VerdictReject: the sender gets an ICMP unreachable (a TCP reset for TCP).
	VerdictReject Verdict = "reject"
	// VerdictNone: the packet is not addressed to a service; kproxy leaves it
	// alone and the node routes or delivers it as usual.
	VerdictNone Verdict = "not-a-service"
)

// How the packet reached the service.
const (
	ViaClusterIP    = "ClusterIP"
	ViaNodePort     = "NodePort"
	ViaLoadBalancer = "LoadBalancer"
	ViaExternalIP   = "ExternalIP"
)

// Traffic policies: which endpoint set a packet uses.
const (
	PolicyCluster = "Cluster"
	PolicyLocal   = "Local"
)

// Match is the service port a packet is addressed to.
type Match struct {
	// Service is the service port, "namespace/name:port" ("namespace/name" for an
	// unnamed port).
	Service   string `json:"service"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Port      string `json:"port,omitempty"`
	// Via is how the destination matched: ClusterIP, NodePort, LoadBalancer or ExternalIP.
	Via string `json:"via"`
	// ServicePort is the service's port number (the destination port unless Via is NodePort).
	ServicePort int32 `json:"servicePort"`
	// Policy is the endpoint set the packet uses: Cluster (all usable endpoints)
	// or Local (this node's only).
	Policy string `json:"policy,omitempty"`
}

// Endpoint is one place the packet may go.
type Endpoint struct {
	Address netip.AddrPort `json:"address"`
	// Probability that a new connection picks this endpoint (affinity aside).
	Probability float64 `json:"probability"`
	Node        string  `json:"node,omitempty"`
	Local       bool    `json:"local"`
	Terminating bool    `json:"terminating,omitempty"`
	// Masquerade is true when the packet's source is rewritten to a node address
	// on the way to this endpoint.
	Masquerade bool `json:"masquerade"`
	// MasqueradeReason says why, when only this endpoint is masqueraded (hairpin).
	MasqueradeReason string `json:"masqueradeReason,omitempty"`
}

// Affinity describes ClientIP session affinity.
type Affinity struct {
	TimeoutSeconds int64 `json:"timeoutSeconds"`
	// Pinned is the endpoint the source is currently stuck to, when the
	// kernel's affinity state says so (model traces cannot know).
	Pinned *netip.AddrPort `json:"pinned,omitempty"`
}

// Result explains what happens to one packet.
type Result struct {
	Packet  Packet  `json:"packet"`
	Verdict Verdict `json:"verdict"`
	// Reason is one sentence on why.
	Reason string `json:"reason"`
	Match  *Match `json:"match,omitempty"`
	// Endpoints are the possible destinations, for VerdictDNAT and VerdictProxy.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	Affinity  *Affinity  `json:"affinity,omitempty"`
	// Masquerade is true when the packet is masqueraded whichever endpoint it
	// goes to; MasqueradeReason says why (or why not).
	Masquerade       bool   `json:"masquerade"`
	MasqueradeReason string `json:"masqueradeReason,omitempty"`
	// Steps is the decision path, in order, for humans.
	Steps []string `json:"steps"`
	// Source says what the answer was computed from: "model" or "kernel".
	Source string `json:"source"`
	// Kernel is the answer read from the kernel's rules, when a kernel tracer
	// ran; Disagreements lists where it differs from the model.
	Kernel        *KernelPath `json:"kernel,omitempty"`
	Disagreements []string    `json:"disagreements,omitempty"`
	// Datapath is where the connection is load-balanced when kproxy runs the
	// socket LB: DatapathSocketLB or DatapathNFTables ("" without it).
	Datapath string `json:"datapath,omitempty"`
	// SocketLB is the socket LB's entry for the destination, read from its
	// BPF maps in the kernel, when it serves the connection.
	SocketLB *socketlb.Entry `json:"socketLB,omitempty"`
}

func (r *Result) step(format string, args ...any) {
	r.Steps = append(r.Steps, fmt.Sprintf(format, args...))
}

// WriteText prints the result for the CLI.
func WriteText(w io.Writer, r *Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "packet:   %s\n", r.Packet)
	if r.Match != nil {
		m := r.Match
		fmt.Fprintf(&b, "service:  %s (%s", m.Service, m.Via)
		if m.Via == ViaNodePort {
			fmt.Fprintf(&b, ", service port %d", m.ServicePort)
		}
		if m.Policy != "" {
			fmt.Fprintf(&b, ", %s endpoints", strings.ToLower(m.Policy))
		}
		b.WriteString(")\n")
	} else {
		b.WriteString("service:  none\n")
	}
	if r.Kernel != nil && len(r.Disagreements) > 0 {
		// The kernel decides what really happens; the model says what should.
		fmt.Fprintf(&b, "verdict:  %s (the kernel's rules; they disagree with the model, see below)\n",
			strings.ToUpper(string(r.Kernel.Verdict)))
		fmt.Fprintf(&b, "model:    %s: %s\n", strings.ToUpper(string(r.Verdict)), r.Reason)
	} else {
		fmt.Fprintf(&b, "verdict:  %s\n", strings.ToUpper(string(r.Verdict)))
		fmt.Fprintf(&b, "reason:   %s\n", r.Reason)
	}
	if len(r.Endpoints) > 0 {
		if r.Kernel != nil && len(r.Disagreements) > 0 {
			b.WriteString("endpoints the model expects:\n")
		} else {
			b.WriteString("endpoints:\n")
		}
		var table strings.Builder
		tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
		for _, ep := range r.Endpoints {
			where := ep.Node
			if ep.Local {
				where = strings.TrimSpace(where + " (this node)")
			}
			var notes []string
			if ep.Terminating {
				notes = append(notes, "terminating")
			}
			if ep.Masquerade && !r.Masquerade {
				notes = append(notes, "masqueraded: "+ep.MasqueradeReason)
			}
			fmt.Fprintf(tw, "  %s\t%5.1f%%\t%s\t%s\n", ep.Address, 100*ep.Probability, where, strings.Join(notes, ", "))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("format endpoints: %w", err)
		}
		// tabwriter pads the last cell even when it is empty.
		for _, line := range strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n") {
			b.WriteString(strings.TrimRight(line, " ") + "\n")
		}
	}
	if r.Affinity != nil {
		fmt.Fprintf(&b, "affinity: ClientIP, %ds: later connections from %s stick to the endpoint the first one picked",
			r.Affinity.TimeoutSeconds, r.Packet.Src)
		if r.Affinity.Pinned != nil {
			fmt.Fprintf(&b, " (now %s)", *r.Affinity.Pinned)
		}
		b.WriteString("\n")
	}
	if r.Verdict == VerdictDNAT || r.Verdict == VerdictProxy {
		yes := "no"
		if r.Masquerade {
			yes = "yes"
		}
		fmt.Fprintf(&b, "masquerade: %s", yes)
		if r.MasqueradeReason != "" {
			fmt.Fprintf(&b, " (%s)", r.MasqueradeReason)
		}
		b.WriteString("\n")
	}
	if r.Datapath != "" {
		fmt.Fprintf(&b, "datapath: %s\n", r.Datapath)
	}
	if e := r.SocketLB; e != nil {
		fmt.Fprintf(&b, "socket LB (BPF maps): frontend %s", e.Frontend)
		if e.ServicePort != "" {
			fmt.Fprintf(&b, ", %s", e.ServicePort)
		}
		switch {
		case e.Refuse:
			b.WriteString(": connect refused (no endpoints)")
		default:
			addrs := make([]string, len(e.Endpoints))
			for i, ep := range e.Endpoints {
				addrs[i] = ep.String()
			}
			fmt.Fprintf(&b, ": one of %s at connect()", strings.Join(addrs, ", "))
			if e.AffinitySeconds > 0 {
				fmt.Fprintf(&b, ", affinity %ds per network namespace", e.AffinitySeconds)
			}
		}
		b.WriteString("\n")
	}
	if len(r.Steps) > 0 {
		b.WriteString("path:\n")
		for i, s := range r.Steps {
			fmt.Fprintf(&b, "  %d. %s\n", i+1, s)
		}
	}
	fmt.Fprintf(&b, "computed from: %s\n", r.Source)
	if r.Kernel != nil {
		fmt.Fprintf(&b, "kernel:   %s", strings.ToUpper(string(r.Kernel.Verdict)))
		if len(r.Kernel.Endpoints) > 0 {
			addrs := make([]string, len(r.Kernel.Endpoints))
			for i, ep := range r.Kernel.Endpoints {
				addrs[i] = fmt.Sprintf("%s (%.1f%%)", ep.Address, 100*ep.Probability)
			}
			fmt.Fprintf(&b, " to %s", strings.Join(addrs, ", "))
		}
		if r.Kernel.Masquerade {
			b.WriteString(", masqueraded")
		}
		b.WriteString("\n")
		for _, rule := range r.Kernel.Rules {
			fmt.Fprintf(&b, "  %s\n", rule)
		}
		if len(r.Disagreements) == 0 {
			b.WriteString("the kernel's rules agree with the model\n")
		}
	}
	for _, d := range r.Disagreements {
		fmt.Fprintf(&b, "DISAGREEMENT: %s\n", d)
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("write trace: %w", err)
	}
	return nil
}
