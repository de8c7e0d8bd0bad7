package nftables

import (
	"encoding/binary"
	"net/netip"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Chain names. Base chains sit at the hooks and priorities below (see README.md).
const (
	chainNatPrerouting    = "nat-prerouting"
	chainNatOutput        = "nat-output"
	chainNatPostrouting   = "nat-postrouting"
	chainFilterPrerouting = "filter-prerouting"
	chainFilterOutput     = "filter-output"
	chainFilterOutputPost = "filter-output-post"
	chainFilterInput      = "filter-input"
	chainFilterForward    = "filter-forward"
	chainServices         = "services"
	chainMasqCheck        = "masq-check"
	chainNodePorts        = "nodeports"
	chainFirewall         = "firewall"
	chainEndpointsCheck   = "endpoints-check"
	chainNodePortsCheck   = "nodeports-check"
)

// Priorities. DNAT runs at -100 (dstnat). The firewall (source ranges) must see
// the original destination, so it runs before DNAT at -110. The endpoints check
// must see the destination after DNAT (a packet still addressed to a frontend was
// not DNATed: no endpoints), so in the output hook it runs at -90; in input and
// forward DNAT has already happened at prerouting.
const (
	prioFirewall     = -110
	prioDNAT         = -100
	prioSNAT         = 100
	prioCheck        = -110
	prioCheckOutput  = -90
	ctStateNew       = 1 << 3 // NF_CT_STATE_BIT(IP_CT_NEW)
	ctStateInvalid   = 1 << 0 // NF_CT_STATE_INVALID_BIT
	ctStatusDNAT     = 1 << 5 // IPS_DST_NAT
	rtnLocal         = 2      // RTN_LOCAL, what "fib daddr type local" compares with
	dynsetOpUpdate   = 1      // NFT_DYNSET_OP_UPDATE: add, or refresh the timeout
	dynsetOpDelete   = 2      // NFT_DYNSET_OP_DELETE
	icmpPortUnreach  = 3
	icmp6PortUnreach = 4
)

type baseChain struct {
	name string
	typ  gnft.ChainType
	hook *gnft.ChainHook
	prio int32
}

var baseChains = []baseChain{
	{chainNatPrerouting, gnft.ChainTypeNAT, gnft.ChainHookPrerouting, prioDNAT},
	{chainNatOutput, gnft.ChainTypeNAT, gnft.ChainHookOutput, prioDNAT},
	{chainNatPostrouting, gnft.ChainTypeNAT, gnft.ChainHookPostrouting, prioSNAT},
	{chainFilterPrerouting, gnft.ChainTypeFilter, gnft.ChainHookPrerouting, prioFirewall},
	{chainFilterOutput, gnft.ChainTypeFilter, gnft.ChainHookOutput, prioFirewall},
	{chainFilterOutputPost, gnft.ChainTypeFilter, gnft.ChainHookOutput, prioCheckOutput},
	{chainFilterInput, gnft.ChainTypeFilter, gnft.ChainHookInput, prioCheck},
	{chainFilterForward, gnft.ChainTypeFilter, gnft.ChainHookForward, prioCheck},
}

func hookName(h *gnft.ChainHook) string {
	if h == nil {
		return ""
	}
	switch *h {
	case *gnft.ChainHookPrerouting:
		return "prerouting"
	case *gnft.ChainHookInput:
		return "input"
	case *gnft.ChainHookForward:
		return "forward"
	case *gnft.ChainHookOutput:
		return "output"
	case *gnft.ChainHookPostrouting:
		return "postrouting"
	}
	return "?"
}

// staticChains lists every chain that does not depend on the services.
func staticChains(cfg *Config) []string {
	out := make([]string, 0, 16)
	for _, b := range baseChains {
		out = append(out, b.name)
	}
	out = append(out, chainServices, chainNodePorts, chainFirewall, chainEndpointsCheck, chainNodePortsCheck, chainReject)
	if len(cfg.ClusterCIDRs) > 0 && !cfg.MasqueradeAll {
		out = append(out, chainMasqCheck)
	}
	return out
}

// program builds the expressions of kproxy's rules for one family.
type program struct {
	cfg *Config
	f   family
	a   uint32 // 32-bit registers per address
	aff map[string]*affinity
	// owners holds one affinity frontend per owner: the endpoint chains of
	// the frontends that share an owner are the same.
	owners map[Frontend]*affinity
}

func newProgram(cfg *Config, f family, aff map[string]*affinity) *program {
	p := &program{cfg: cfg, f: f, a: uint32(f.addrSz / 4), aff: aff, owners: map[Frontend]*affinity{}}
	for _, af := range aff {
		p.owners[af.owner] = af
	}
	return p
}

// r returns 32-bit register i (NFT_REG32_00 + i): concatenations live in
// consecutive 32-bit registers.
func r(i uint32) uint32 { return 8 + i }

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func (p *program) addrOff(src bool) uint32 {
	if p.f.addrSz == 4 {
		if src {
			return 12
		}
		return 16
	}
	if src {
		return 8
	}
	return 24
}

func (p *program) loadAddr(src bool, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: p.addrOff(src), Len: uint32(p.f.addrSz)}
}

// loadFrontend loads daddr (or, for NodePorts, the unspecified address) . l4proto . th dport
// into registers from reg on.
func (p *program) loadFrontend(reg uint32, nodePort bool) []expr.Any {
	var first expr.Any
	if nodePort {
		first = &expr.Immediate{Register: reg, Data: p.f.zero().AsSlice()}
	} else {
		first = p.loadAddr(false, reg)
	}
	return []expr.Any{
		first,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg + p.a},
		&expr.Payload{DestRegister: reg + p.a + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func lookup(set string, reg uint32, invert bool) expr.Any {
	return &expr.Lookup{SourceRegister: reg, SetName: set, Invert: invert}
}

func vmap(set string, reg uint32) expr.Any {
	return &expr.Lookup{SourceRegister: reg, SetName: set, DestRegister: 0, IsDestRegSet: true}
}

func verdict(kind expr.VerdictKind, chain string) expr.Any {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

func (p *program) markMasq() []expr.Any {
	bit := p.cfg.masqMark()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^bit), Xor: native32(bit)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func ctStateNewExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(ctStateNew), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

func ctStatusDNATExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(ctStatusDNAT), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

func fibLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(rtnLocal)},
	}
}

// inPrefix matches the source or destination address against a prefix.
func (p *program) inPrefix(src bool, pre netip.Prefix, op expr.CmpOp) []expr.Any {
	pre = pre.Masked()
	mask := make([]byte, p.f.addrSz)
	for i := 0; i < pre.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		p.loadAddr(src, 1),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(p.f.addrSz), Mask: mask, Xor: make([]byte, p.f.addrSz)},
		&expr.Cmp{Op: op, Register: 1, Data: pre.Addr().AsSlice()},
	}
}

func (p *program) loopback() netip.Prefix {
	if p.f.addrSz == 4 {
		return netip.MustParsePrefix("127.0.0.0/8")
	}
	return netip.MustParsePrefix("::1/128")
}

func (p *program) prefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range ps {
		if p.f.contains(x.Addr()) {
			out = append(out, x)
		}
	}
	return out
}

// nodePortFilter returns the rules that send packets to a node address allowed
// for NodePorts on to chain (with goto).
func (p *program) nodePortFilter(chain string) [][]expr.Any {
	if len(p.cfg.NodePortAddresses) > 0 {
		var rules [][]expr.Any
		for _, pre := range p.prefixes(p.cfg.NodePortAddresses) {
			rules = append(rules, cat(fibLocal(), p.inPrefix(false, pre, expr.CmpOpEq), []expr.Any{verdict(expr.VerdictGoto, chain)}))
		}
		return rules
	}
	if p.cfg.LocalhostNodePorts && p.f.addrSz == 4 {
		return [][]expr.Any{cat(fibLocal(), []expr.Any{verdict(expr.VerdictGoto, chain)})}
	}
	return [][]expr.Any{cat(fibLocal(), p.inPrefix(false, p.loopback(), expr.CmpOpNeq), []expr.Any{verdict(expr.VerdictGoto, chain)})}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, x := range parts {
		out = append(out, x...)
	}
	return out
}

func (p *program) masquerade() expr.Any { return &expr.Masq{FullyRandom: true} }

func (p *program) natFamily() uint32 {
	if p.f.addrSz == 4 {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

func (p *program) dnat(reg uint32) expr.Any {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: p.natFamily(), RegAddrMin: reg, RegProtoMin: reg + p.a, Specified: true}
}

// rules returns the rules of a chain.
func (p *program) rules(chain string) [][]expr.Any {
	cfg := p.cfg
	switch chain {
	case chainNatPrerouting, chainNatOutput:
		return [][]expr.Any{{verdict(expr.VerdictJump, chainServices)}}
	case chainNatPostrouting:
		bit := cfg.masqMark()
		return [][]expr.Any{
			cat([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bit), Xor: native32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
			}, ctStatusDNATExprs(), []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^bit), Xor: native32(0)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
				p.masquerade(),
			}),
			cat(ctStatusDNATExprs(), []expr.Any{
				p.loadAddr(true, r(0)), p.loadAddr(false, r(p.a)),
				lookup(setHairpin, r(0), false),
				p.masquerade(),
			}),
		}
	case chainFilterPrerouting, chainFilterOutput:
		return [][]expr.Any{cat(ctStateNewExprs(), []expr.Any{verdict(expr.VerdictJump, chainFirewall)})}
	case chainFilterForward:
		rules := [][]expr.Any{cat(ctStateNewExprs(), []expr.Any{verdict(expr.VerdictJump, chainEndpointsCheck)})}
		if !cfg.AcceptInvalid {
			// A forwarded packet conntrack calls INVALID (a TCP segment
			// far outside the window) is not un-DNATed: it would reach a
			// pod from an endpoint's own address, and the pod's reset
			// would kill the real connection (README.md, "INVALID packets").
			rules = append([][]expr.Any{{
				&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(ctStateInvalid), Xor: native32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}}, rules...)
		}
		return rules
	case chainFilterOutputPost, chainFilterInput:
		return [][]expr.Any{cat(ctStateNewExprs(), []expr.Any{verdict(expr.VerdictJump, chainEndpointsCheck)})}
	case chainServices:
		var rules [][]expr.Any
		switch {
		case cfg.MasqueradeAll:
			rules = append(rules, cat([]expr.Any{p.loadAddr(false, 1), lookup(setClusterIPs, 1, false)}, p.markMasq()))
		case len(cfg.ClusterCIDRs) > 0:
			rules = append(rules, []expr.Any{p.loadAddr(false, 1), lookup(setClusterIPs, 1, false), verdict(expr.VerdictJump, chainMasqCheck)})
		}
		rules = append(rules, cat(p.loadFrontend(r(0), false), []expr.Any{lookup(setMasq, r(0), false)}, p.markMasq()))
		rules = append(rules, p.shortCircuit(false)...)
		rules = append(rules, cat(p.loadFrontend(r(0), false), []expr.Any{vmap(mapFrontends, r(0))}))
		return append(rules, p.nodePortFilter(chainNodePorts)...)
	case chainMasqCheck:
		var rules [][]expr.Any
		for _, pre := range p.prefixes(cfg.ClusterCIDRs) {
			rules = append(rules, cat(p.inPrefix(true, pre, expr.CmpOpEq), []expr.Any{verdict(expr.VerdictReturn, "")}))
		}
		return append(rules, p.markMasq())
	case chainNodePorts:
		var rules [][]expr.Any
		if cfg.LocalhostNodePorts && p.f.addrSz == 4 {
			rules = append(rules, cat(p.inPrefix(true, p.loopback(), expr.CmpOpEq), p.markMasq()))
		}
		rules = append(rules, cat(p.loadFrontend(r(0), true), []expr.Any{lookup(setMasq, r(0), false)}, p.markMasq()))
		rules = append(rules, p.shortCircuit(true)...)
		return append(rules, cat(p.loadFrontend(r(0), true), []expr.Any{vmap(mapFrontends, r(0))}))
	case chainFirewall:
		return [][]expr.Any{cat(
			p.loadFrontend(r(0), false),
			[]expr.Any{lookup(setFirewall, r(0), false), p.loadAddr(true, r(p.a+2)), lookup(setFirewallAllow, r(0), true),
				verdict(expr.VerdictDrop, "")})}
	case chainEndpointsCheck:
		rules := [][]expr.Any{
			cat(p.loadFrontend(r(0), false), []expr.Any{vmap(mapNoEndpoints, r(0))}),
			{p.loadAddr(false, 1), lookup(setClusterIPs, 1, false), verdict(expr.VerdictGoto, chainReject)},
		}
		return append(rules, p.nodePortFilter(chainNodePortsCheck)...)
	case chainNodePortsCheck:
		return [][]expr.Any{cat(p.loadFrontend(r(0), true), []expr.Any{vmap(mapNoEndpoints, r(0))})}
	case chainReject:
		code := uint8(icmpPortUnreach)
		if p.f.addrSz == 16 {
			code = icmp6PortUnreach
		}
		return [][]expr.Any{
			{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoTCP}},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}},
			{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code}},
		}
	}
	if c, ok := parseClassChain(chain); ok {
		return p.classRules(c)
	}
	if af := p.aff[chain]; af != nil {
		return p.affinityRules(af)
	}
	if rest, ok := strings.CutPrefix(chain, affEPChainPrefix); ok {
		owner, ep, ok := parseAffinityName(p.f, rest)
		if af := p.owners[owner]; ok && af != nil {
			return p.affinityEndpointRules(af, ep)
		}
	}
	return nil
}

// classRules are the DNAT rules for frontends with n endpoints and no
// affinity: one rule, "dnat to frontend . numgen random mod n map @backends-n".
func (p *program) classRules(c class) [][]expr.Any {
	a := p.a
	rules := [][]expr.Any{cat(
		p.loadFrontend(r(0), c.nodePort),
		[]expr.Any{
			&expr.Numgen{Register: r(a + 2), Modulus: uint32(c.n), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: r(0), SetName: c.setSpec().name, DestRegister: r(0), IsDestRegSet: true},
			p.dnat(r(0)),
		})}
	if c.short {
		// The node's own connections are masqueraded (the endpoint may be elsewhere).
		rules = append([][]expr.Any{cat(fibLocalSource(), p.markMasq())}, rules...)
	}
	return rules
}

func fibLocalSource() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(rtnLocal)},
	}
}

// shortCircuit sends pods and the node to frontends-short (ETP Local frontends).
func (p *program) shortCircuit(nodePort bool) [][]expr.Any {
	rules := [][]expr.Any{cat(fibLocalSource(), p.loadFrontend(r(0), nodePort), []expr.Any{vmap(mapFrontendsShort, r(0))})}
	for _, pre := range p.prefixes(p.cfg.ClusterCIDRs) {
		rules = append(rules, cat(p.inPrefix(true, pre, expr.CmpOpEq), p.loadFrontend(r(0), nodePort), []expr.Any{vmap(mapFrontendsShort, r(0))}))
	}
	return rules
}

// affinityRules are the rules of an affinity frontend's chain: a client in an
// endpoint's set goes to that endpoint; anyone else gets a random endpoint
// through @affinity-pick (@affinity-pick-short for a short-circuit chain).
func (p *program) affinityRules(af *affinity) [][]expr.Any {
	rules := make([][]expr.Any, 0, len(af.endpoints)+2)
	if af.short {
		// The node's own connections are masqueraded, as in sdnat-N.
		rules = append(rules, cat(fibLocalSource(), p.markMasq()))
	}
	for _, ep := range af.endpoints {
		rules = append(rules, []expr.Any{
			p.loadAddr(true, 1), lookup(af.epSet(ep), 1, false), verdict(expr.VerdictGoto, af.epChain(ep)),
		})
	}
	return append(rules, cat(p.loadFrontend(r(0), af.fe.IsNodePort()), []expr.Any{
		&expr.Numgen{Register: r(p.a + 2), Modulus: uint32(len(af.endpoints)), Type: unix.NFT_NG_RANDOM},
		vmap(af.pickMap(), r(0)),
	}))
}

// affinityEndpointRules remember the client in the endpoint's set (or refresh
// its timeout) and DNAT to the endpoint.
func (p *program) affinityEndpointRules(af *affinity, ep netip.AddrPort) [][]expr.Any {
	port := []byte{byte(ep.Port() >> 8), byte(ep.Port())}
	return [][]expr.Any{{
		p.loadAddr(true, 1),
		&expr.Dynset{SrcRegKey: 1, SetName: af.epSet(ep), Operation: dynsetOpUpdate, Timeout: af.timeout},
		&expr.Immediate{Register: r(0), Data: ep.Addr().AsSlice()},
		&expr.Immediate{Register: r(p.a), Data: port},
		p.dnat(r(0)),
	}}
}
