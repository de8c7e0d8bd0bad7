package nftables

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// The batch encoder against github.com/google/nftables: the same transactions
// encoded by both must give the same messages, byte for byte (headers' type,
// flags and length, and data; sequence numbers and port IDs are each
// connection's). IP plan: see helpers_test.go.

// recordingKernel keeps every transaction the Proxier applies.
type recordingKernel struct {
	kernel
	txs []*transaction
}

func (k *recordingKernel) Apply(ctx context.Context, tx *transaction) error {
	k.txs = append(k.txs, tx)
	return k.kernel.Apply(ctx, tx)
}

func TestBatchMatchesLibrary(t *testing.T) {
	p, _, _ := newFake(t, func(c *Config) {
		c.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	})
	rec := &recordingKernel{kernel: p.k}
	p.k = rec
	w := newWorld(t)
	dual := func(v4, v6 string) func(*v1.Service) {
		return func(s *v1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = v4, []string{v4, v6}
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		}
	}
	w.service(makeService("web", dual("10.96.0.10", "fd00:10:96::10")),
		withName(makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.5"}, ep{ip: "10.244.1.5", node: "node-b"}), "web-4"),
		withName(makeSlice("web", 8080, v1.ProtocolTCP, ep{ip: "fd00:10:244::5"}, ep{ip: "fd00:10:244:1::5", node: "node-b"}), "web-6"))
	w.service(makeService("lb", func(s *v1.Service) {
		dual("10.96.0.11", "fd00:10:96::11")(s)
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.ExternalIPs = []string{"192.168.200.1"}
		s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/24", "fd00:100::/64"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.201.1"}, {IP: "fd00:201::1"}}
	}),
		withName(makeSlice("lb", 8080, v1.ProtocolUDP, ep{ip: "10.244.0.6"}, ep{ip: "10.244.1.6", node: "node-b"}, ep{ip: "10.244.1.7", node: "node-b"}), "lb-4"),
		withName(makeSlice("lb", 8080, v1.ProtocolUDP, ep{ip: "fd00:10:244:1::6", node: "node-b"}), "lb-6"))
	w.service(makeService("sticky", func(s *v1.Service) {
		dual("10.96.0.12", "fd00:10:96::12")(s)
		withAffinity(600)(s)
	}),
		withName(makeSlice("sticky", 8080, v1.ProtocolTCP, ep{ip: "10.244.0.8"}, ep{ip: "10.244.0.9"}), "sticky-4"),
		withName(makeSlice("sticky", 8080, v1.ProtocolTCP, ep{ip: "fd00:10:244::8"}), "sticky-6"))
	w.service(makeService("empty", func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.13", []string{"10.96.0.13"}
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30081
	}))
	local := v1.ServiceInternalTrafficPolicyLocal
	w.service(makeService("itp", func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.14", []string{"10.96.0.14"}
		s.Spec.InternalTrafficPolicy = &local
	}), withName(makeSlice("itp", 8080, v1.ProtocolTCP, ep{ip: "10.244.1.10", node: "node-b"}), "itp-4"))
	ctx := context.Background()
	if err := p.Sync(ctx, w.snap(), true); err != nil {
		t.Fatal(err)
	}
	// Changes: a new endpoint count (new backends map and dnat chain), the
	// affinity service gone (its chains and sets deleted).
	w.tr.OnEndpointSliceUpdate(nil, withName(makeSlice("web", 8080, v1.ProtocolTCP,
		ep{ip: "10.244.0.5"}, ep{ip: "10.244.1.5", node: "node-b"}, ep{ip: "10.244.1.11", node: "node-b"}, ep{ip: "10.244.1.12", node: "node-b"}), "web-4"))
	w.tr.OnServiceDelete(makeService("sticky", func(s *v1.Service) {
		dual("10.96.0.12", "fd00:10:96::12")(s)
		withAffinity(600)(s)
	}))
	if err := p.Sync(ctx, w.snap(), false); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, w.snap(), true); err != nil { // periodic: flushes and re-adds the rules
		t.Fatal(err)
	}
	if len(rec.txs) != 3 {
		t.Fatalf("recorded %d transactions, want 3", len(rec.txs))
	}

	// A synthetic transaction with what the flows above do not make: early
	// deletions, set flushes, and element lists longer than one message.
	cfg := p.Config()
	synth := &transaction{cfg: &cfg}
	for _, f := range []family{ipv4, ipv6} {
		ft := &familyTx{fam: f,
			flushChains:    []string{chainServices, chainNodePorts},
			delChainsEarly: []string{"dnat-3"},
			delSetsEarly:   []string{"backends-3", "affset-600-x"},
			flushSets:      []string{mapFrontends, setClusterIPs, setFirewallAllow},
			newSets:        []setSpec{class{n: 3}.setSpec(), affinitySetSpec("affset-600-x"), staticSets[8], staticSets[5]},
			newChains:      []string{"dnat-3", chainFilterForward},
			ruleChains:     []string{chainServices},
			dels:           map[string][]Element{},
			adds:           map[string][]Element{},
			delChains:      []string{"dnat-7"},
			delSets:        []string{"backends-7"},
		}
		for i := range 1100 {
			fe := Frontend{Addr: addrN(f, i), Proto: 6, Port: 80}
			ft.adds[setClusterIPs] = append(ft.adds[setClusterIPs], Element{Key: enc(nil).addr(fe.Addr)})
			ft.adds[mapFrontends] = append(ft.adds[mapFrontends], Element{Key: enc(nil).frontend(fe), Verdict: "dnat-3"})
			ft.adds["backends-3"] = append(ft.adds["backends-3"], Element{Key: enc(nil).frontend(fe).slot(uint32(i % 3)),
				Val: enc(nil).addrPort(netip.AddrPortFrom(addrN(f, i+7), 8080))})
			ft.dels[mapNoEndpoints] = append(ft.dels[mapNoEndpoints], Element{Key: enc(nil).frontend(fe), Verdict: verdictDrop})
		}
		pre := netip.PrefixFrom(addrN(f, 0), f.addrSz*8-8)
		fe := Frontend{Addr: addrN(f, 1), Proto: 17, Port: 53}
		ft.adds[setFirewallAllow] = []Element{{Key: enc(nil).frontend(fe).addr(pre.Masked().Addr()), KeyEnd: enc(nil).frontend(fe).addr(lastAddr(pre))}}
		ft.adds[setHairpin] = []Element{{Key: enc(nil).addr(addrN(f, 2)).addr(addrN(f, 2))}}
		ft.dels[setMasq] = []Element{{Key: enc(nil).frontend(fe)}}
		synth.fams = append(synth.fams, ft)
	}

	kinds := map[uint16]bool{}
	for i, tx := range append(rec.txs, synth) {
		t.Run(fmt.Sprintf("tx%d", i), func(t *testing.T) {
			want := libraryMessages(t, tx)
			// The library numbers sets from a global counter: start ours there.
			var firstID uint32
			for _, m := range want {
				if m.Header.Type == msgNftables|unix.NFT_MSG_NEWSET {
					firstID = attrU32(t, m.Data[4:], unix.NFTA_SET_ID)
					break
				}
			}
			b := newBatch(nil, 0, 1000, txSize(tx, cfg.TableName))
			b.setID = max(firstID, 1) - 1
			if err := b.encode(tx, cfg.TableName); err != nil {
				t.Fatal(err)
			}
			wire, err := b.finish()
			if err != nil {
				t.Fatal(err)
			}
			var elems int
			for _, m := range splitMessages(t, wire) {
				typ := m.Header.Type &^ msgNftables
				if (typ == unix.NFT_MSG_NEWSETELEM || typ == unix.NFT_MSG_DELSETELEM) && m.Header.Flags&netlink.Create != 0 { // not a flush
					elems += int(m.Header.Length)
				}
			}
			if elems != txSize(tx, cfg.TableName) {
				t.Errorf("element messages: %d bytes, txSize %d", elems, txSize(tx, cfg.TableName))
			}
			got := splitMessages(t, wire)
			if len(got) != len(want) {
				t.Fatalf("%d messages, library %d", len(got), len(want))
			}
			if len(b.ops) != len(got)-2 {
				t.Errorf("%d ops for %d messages", len(b.ops), len(got)-2)
			}
			for j := range got {
				g, w := got[j], want[j]
				kinds[uint16(g.Header.Type)] = true
				if g.Header.Type != w.Header.Type || g.Header.Flags != w.Header.Flags || g.Header.Length != w.Header.Length {
					t.Errorf("message %d: header type %#x flags %#x length %d, library %#x %#x %d", j,
						uint16(g.Header.Type), uint16(g.Header.Flags), g.Header.Length, uint16(w.Header.Type), uint16(w.Header.Flags), w.Header.Length)
				}
				if g.Header.Sequence != 1000+uint32(j) {
					t.Errorf("message %d: sequence %d, want %d", j, g.Header.Sequence, 1000+j)
				}
				if !bytes.Equal(g.Data, w.Data) {
					t.Errorf("message %d (type %#x, %s): data differs\n ours    %x\n library %x", j, uint16(g.Header.Type), opOf(b, j), g.Data, w.Data)
				}
			}
		})
	}
	for _, typ := range []uint16{unix.NFNL_MSG_BATCH_BEGIN, unix.NFNL_MSG_BATCH_END, unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_NEWCHAIN,
		unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_DELRULE, unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET, unix.NFT_MSG_NEWSETELEM,
		unix.NFT_MSG_DELSETELEM, unix.NFT_MSG_NEWRULE} {
		if typ > unix.NFNL_MSG_BATCH_END || typ < unix.NFNL_MSG_BATCH_BEGIN {
			typ |= msgNftables
		}
		if !kinds[typ] {
			t.Errorf("no message of type %#x compared", typ)
		}
	}
}

func opOf(b *batch, j int) string {
	if j == 0 || j > len(b.ops) {
		return "batch"
	}
	return b.ops[j-1].String()
}

func addrN(f family, i int) netip.Addr {
	if f.addrSz == 4 {
		return netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
	}
	return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 0x96, 14: byte(i >> 8), 15: byte(i)})
}

func attrU32(t *testing.T, data []byte, typ uint16) uint32 {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		if ad.Type() == typ {
			return binary.BigEndian.Uint32(ad.Bytes())
		}
	}
	t.Fatalf("no attribute %d", typ)
	return 0
}

func splitMessages(t *testing.T, wire []byte) []netlink.Message {
	t.Helper()
	var out []netlink.Message
	for len(wire) > 0 {
		l := int(binary.NativeEndian.Uint32(wire))
		if l < nlmsgHdrLen || l > len(wire) || l%4 != 0 {
			t.Fatalf("bad message length %d (%d bytes left)", l, len(wire))
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(wire[:l]); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
		wire = wire[l:]
	}
	return out
}

// libraryMessages encodes tx as kproxy did through the library before it
// encoded its own batches, and returns the batch the library would send.
func libraryMessages(t *testing.T, tx *transaction) []netlink.Message {
	t.Helper()
	var sent []netlink.Message
	c, err := gnft.New(gnft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	lk := &netlinkKernel{cfg: tx.cfg}
	if err := lk.libraryApply(c, tx); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return sent
}

func (k *netlinkKernel) libraryApply(c *gnft.Conn, tx *transaction) error {
	var conv elementConverter
	for _, ft := range tx.fams {
		if ft.empty() {
			continue
		}
		f := ft.fam
		t := c.AddTable(k.table(f))
		for _, name := range ft.flushChains {
			c.FlushChain(&gnft.Chain{Name: name, Table: t})
		}
		for _, name := range ft.delChainsEarly {
			c.DelChain(&gnft.Chain{Name: name, Table: t})
		}
		for _, name := range ft.delSetsEarly {
			c.DelSet(&gnft.Set{Name: name, Table: t})
		}
		for _, name := range ft.flushSets {
			c.FlushSet(&gnft.Set{Name: name, Table: t})
		}
		sets := map[string]*gnft.Set{}
		for _, s := range ft.newSets {
			set, err := k.libSet(f, s)
			if err != nil {
				return err
			}
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("add set %s: %w", s.name, err)
			}
			sets[s.name] = set
		}
		for _, name := range ft.newChains {
			c.AddChain(k.libChain(f, name))
		}
		setByName := func(name string) (*gnft.Set, error) {
			if s, ok := sets[name]; ok {
				return s, nil
			}
			spec, ok := specFor(name)
			if !ok {
				return nil, fmt.Errorf("unknown set %q", name)
			}
			s, err := k.libSet(f, spec)
			sets[name] = s
			return s, err
		}
		for _, name := range sortedKeys(ft.dels) {
			s, err := setByName(name)
			if err != nil {
				return err
			}
			for chunk := range slices.Chunk(ft.dels[name], batchElems) {
				if err := c.SetDeleteElements(s, conv.convert(chunk)); err != nil {
					return fmt.Errorf("delete elements of %s: %w", name, err)
				}
			}
		}
		for _, name := range sortedKeys(ft.adds) {
			s, err := setByName(name)
			if err != nil {
				return err
			}
			for chunk := range slices.Chunk(ft.adds[name], batchElems) {
				if err := c.SetAddElements(s, conv.convert(chunk)); err != nil {
					return fmt.Errorf("add elements to %s: %w", name, err)
				}
			}
		}
		p := newProgram(tx.cfg, f, ft.affinity)
		for _, name := range ft.ruleChains {
			ch := &gnft.Chain{Name: name, Table: t}
			for _, exprs := range p.rules(name) {
				c.AddRule(&gnft.Rule{Table: t, Chain: ch, Exprs: exprs})
			}
		}
		for _, name := range ft.delChains {
			c.DelChain(&gnft.Chain{Name: name, Table: t})
		}
		for _, name := range ft.delSets {
			c.DelSet(&gnft.Set{Name: name, Table: t})
		}
	}
	return nil
}

func libDatatype(f family, fl field) gnft.SetDatatype {
	switch fl {
	case fAddr:
		if f.addrSz == 16 {
			return gnft.TypeIP6Addr
		}
		return gnft.TypeIPAddr
	case fProto:
		return gnft.TypeInetProto
	case fPort:
		return gnft.TypeInetService
	}
	return gnft.TypeMark
}

func libConcatType(f family, fields []field) (gnft.SetDatatype, error) {
	if len(fields) == 1 {
		return libDatatype(f, fields[0]), nil
	}
	ts := make([]gnft.SetDatatype, len(fields))
	for i, fl := range fields {
		ts[i] = libDatatype(f, fl)
	}
	return gnft.ConcatSetType(ts...)
}

func (k *netlinkKernel) libSet(f family, s setSpec) (*gnft.Set, error) {
	kt, err := libConcatType(f, s.key)
	if err != nil {
		return nil, fmt.Errorf("set %s key: %w", s.name, err)
	}
	set := &gnft.Set{
		Table: k.table(f), Name: s.name, KeyType: kt,
		Concatenation: len(s.key) > 1, Interval: s.interval,
	}
	switch {
	case s.verdict:
		set.IsMap, set.DataType = true, gnft.TypeVerdict
	case s.data != nil:
		dt, err := libConcatType(f, s.data)
		if err != nil {
			return nil, fmt.Errorf("set %s data: %w", s.name, err)
		}
		set.IsMap, set.DataType = true, dt
	}
	if s.dynamic {
		set.HasTimeout, set.Dynamic, set.Size = true, true, affinitySetSize
	}
	return set, nil
}

// elementConverter turns Elements into the library's SetElements.
type elementConverter struct {
	buf      []gnft.SetElement
	verdicts map[string]*expr.Verdict
}

func (ec *elementConverter) convert(els []Element) []gnft.SetElement {
	ec.buf = slices.Grow(ec.buf[:0], len(els))[:len(els)]
	if ec.verdicts == nil {
		ec.verdicts = map[string]*expr.Verdict{}
	}
	for i, e := range els {
		ec.buf[i] = gnft.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, Val: e.Val}
		if e.Verdict == "" {
			continue
		}
		v := ec.verdicts[e.Verdict]
		if v == nil {
			v = &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.Verdict}
			if e.Verdict == verdictDrop {
				v = &expr.Verdict{Kind: expr.VerdictDrop}
			}
			ec.verdicts[e.Verdict] = v
		}
		ec.buf[i].VerdictData = v
	}
	return ec.buf
}

func (k *netlinkKernel) libChain(f family, name string) *gnft.Chain {
	c := &gnft.Chain{Name: name, Table: k.table(f)}
	for _, b := range baseChains {
		if b.name == name {
			accept := gnft.ChainPolicyAccept
			c.Type, c.Hooknum, c.Priority, c.Policy = b.typ, b.hook, gnft.ChainPriorityRef(gnft.ChainPriority(b.prio)), &accept
		}
	}
	return c
}
