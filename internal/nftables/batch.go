package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// batch is one nf_tables transaction in netlink wire format: BATCH_BEGIN, the
// messages, BATCH_END, ready for one sendmsg. kproxy encodes it itself rather
// than through github.com/google/nftables because the library builds every set
// element as a tree of []netlink.Attribute and marshals it three times (item,
// element list, message, then the batch copy in SendMessages): at 10,000
// services that was ~90 MB of garbage and ~45% of a cold sync's CPU. Here an
// element is a few appends to one buffer.
//
// The messages are byte for byte the library's (v0.3.0: table.go, chain.go,
// set.go AddSet/makeElemList, rule.go newRule, conn.go batch), which
// TestBatchMatchesLibrary checks; sequence numbers and port IDs are ours.
type batch struct {
	buf   []byte
	pid   uint32
	seq   uint32    // sequence number of the next message
	first uint32    // sequence number of ops[0]
	ops   []batchOp // what each message after BATCH_BEGIN does, for errors
	setID uint32    // the last NFTA_SET_ID handed out
	err   error     // the first encoding error (an attribute too long)
}

// batchOp describes one message for an error: "add elements to frontends".
type batchOp struct {
	what, name string
}

func (o batchOp) String() string { return o.what + " " + o.name }

const (
	nlmsgHdrLen = 16
	nfgenLen    = 4
	msgNftables = unix.NFNL_SUBSYS_NFTABLES << 8

	flagsReq    = unix.NLM_F_REQUEST | unix.NLM_F_ACK
	flagsCreate = flagsReq | unix.NLM_F_CREATE
	// newRule: the library's AddRule (append; the kernel echoes the rule).
	flagsNewRule = flagsCreate | unix.NLM_F_ECHO | unix.NLM_F_APPEND

	// Not in x/sys/unix (the library defines them in set.go).
	nftSetConcat      = 0x80
	nftaSetDescConcat = 2
	nftaSetElemKeyEnd = 10

	// nft's data type numbers (the library's SetDatatype.nftMagic, unexported)
	// and the concatenation shift (SetConcatTypeBits).
	typeIPAddr      = 7
	typeIP6Addr     = 8
	typeInetProto   = 12
	typeInetService = 13
	typeMark        = 19
	concatTypeBits  = 6
	nfDrop          = 0
	nfAccept        = 1
	udataKeyOrder   = 0 // NFTNL_UDATA_SET_KEYBYTEORDER
	keyOrderBigEnd  = 2
)

// newBatch starts a batch in buf (reused when large enough for sizeHint).
func newBatch(buf []byte, pid, seq uint32, sizeHint int) *batch {
	// Room for the messages other than elements (table, chains, sets, rules).
	sizeHint += 64 << 10
	if cap(buf) < sizeHint {
		buf = make([]byte, 0, sizeHint)
	}
	b := &batch{buf: buf[:0], pid: pid, seq: seq}
	b.control(unix.NFNL_MSG_BATCH_BEGIN)
	b.first = b.seq
	return b
}

// control writes BATCH_BEGIN or BATCH_END (no ack requested).
func (b *batch) control(typ uint16) {
	start := b.header(typ, unix.NLM_F_REQUEST, 0, unix.NFNL_SUBSYS_NFTABLES)
	b.endMsg(start)
}

// finish writes BATCH_END and returns the wire bytes.
func (b *batch) finish() ([]byte, error) {
	b.control(unix.NFNL_MSG_BATCH_END)
	return b.buf, b.err
}

// header starts a message: nlmsghdr (length patched by endMsg) and nfgenmsg.
func (b *batch) header(typ, flags uint16, fam byte, resID uint16) int {
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, flags)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, b.seq)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, b.pid)
	b.seq++
	b.buf = append(b.buf, fam, unix.NFNETLINK_V0)
	b.buf = binary.BigEndian.AppendUint16(b.buf, resID)
	return start
}

// msg starts an nf_tables message with an ack requested.
func (b *batch) msg(typ uint16, flags uint16, fam byte, op batchOp) int {
	b.ops = append(b.ops, op)
	return b.header(msgNftables|typ, flags, fam, 0)
}

func (b *batch) endMsg(start int) {
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
}

func (b *batch) pad() {
	for len(b.buf)%4 != 0 {
		b.buf = append(b.buf, 0)
	}
}

func (b *batch) attr(typ uint16, data []byte) {
	b.attrHdr(typ, len(data))
	b.buf = append(b.buf, data...)
	b.pad()
}

func (b *batch) attrHdr(typ uint16, n int) {
	if n+4 > 0xffff && b.err == nil {
		b.err = fmt.Errorf("netlink attribute %d too long (%d bytes)", typ&^unix.NLA_F_NESTED, n)
	}
	b.buf = binary.NativeEndian.AppendUint16(b.buf, uint16(4+n))
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
}

func (b *batch) attrString(typ uint16, s string) {
	b.attrHdr(typ, len(s)+1)
	b.buf = append(b.buf, s...)
	b.buf = append(b.buf, 0)
	b.pad()
}

func (b *batch) attrU32(typ uint16, v uint32) {
	b.attrHdr(typ, 4)
	b.buf = binary.BigEndian.AppendUint32(b.buf, v)
}

// nest opens a nested attribute; endNest patches its length. typ carries
// NLA_F_NESTED where the library sets it (not everywhere: see newSet).
func (b *batch) nest(typ uint16) int {
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	return start
}

func (b *batch) endNest(start int) {
	n := len(b.buf) - start
	if n > 0xffff {
		if b.err == nil {
			b.err = fmt.Errorf("netlink attribute %d too long (%d bytes)", binary.NativeEndian.Uint16(b.buf[start+2:])&^unix.NLA_F_NESTED, n)
		}
		return
	}
	binary.NativeEndian.PutUint16(b.buf[start:], uint16(n))
}

// newTable writes NEWTABLE (create if missing).
func (b *batch) newTable(fam byte, table string) {
	m := b.msg(unix.NFT_MSG_NEWTABLE, flagsCreate, fam, batchOp{"add table", table})
	b.attrString(unix.NFTA_TABLE_NAME, table)
	b.attrU32(unix.NFTA_TABLE_FLAGS, 0)
	b.endMsg(m)
}

// delChain, flushChain (DELRULE naming a chain), delSet and flushSet
// (DELSETELEM without elements) name one object of the table.
func (b *batch) delChain(fam byte, table, name string) {
	b.objectMsg(unix.NFT_MSG_DELCHAIN, fam, "delete chain", table, name, unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME)
}

func (b *batch) flushChain(fam byte, table, name string) {
	b.objectMsg(unix.NFT_MSG_DELRULE, fam, "flush chain", table, name, unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN)
}

func (b *batch) delSet(fam byte, table, name string) {
	b.objectMsg(unix.NFT_MSG_DELSET, fam, "delete set", table, name, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME)
}

func (b *batch) flushSet(fam byte, table, name string) {
	b.objectMsg(unix.NFT_MSG_DELSETELEM, fam, "flush set", table, name, unix.NFTA_SET_TABLE, unix.NFTA_SET_NAME)
}

// objectMsg writes a message whose only attributes are the table and the
// object's name.
func (b *batch) objectMsg(typ uint16, fam byte, what, table, name string, tableAttr, nameAttr uint16) {
	m := b.msg(typ, flagsReq, fam, batchOp{what, name})
	b.attrString(tableAttr, table)
	b.attrString(nameAttr, name)
	b.endMsg(m)
}

// newChain writes NEWCHAIN; base chains get their hook, priority, accept
// policy and type.
func (b *batch) newChain(fam byte, table, name string) {
	m := b.msg(unix.NFT_MSG_NEWCHAIN, flagsCreate, fam, batchOp{"add chain", name})
	b.attrString(unix.NFTA_CHAIN_TABLE, table)
	b.attrString(unix.NFTA_CHAIN_NAME, name)
	for _, bc := range baseChains {
		if bc.name != name {
			continue
		}
		h := b.nest(unix.NLA_F_NESTED | unix.NFTA_CHAIN_HOOK)
		b.attrU32(unix.NFTA_HOOK_HOOKNUM, uint32(*bc.hook))
		b.attrU32(unix.NFTA_HOOK_PRIORITY, uint32(bc.prio))
		b.endNest(h)
		b.attrU32(unix.NFTA_CHAIN_POLICY, nfAccept)
		b.attrString(unix.NFTA_CHAIN_TYPE, string(bc.typ))
	}
	b.endMsg(m)
}

func typeMagic(f family, fl field) uint32 {
	switch fl {
	case fAddr:
		if f.addrSz == 16 {
			return typeIP6Addr
		}
		return typeIPAddr
	case fProto:
		return typeInetProto
	case fPort:
		return typeInetService
	}
	// The slot is a host-order 32-bit number. nft's "integer" has no fixed
	// size, and nft 1.0.6 aborts listing a concatenation containing one; "mark"
	// has the same layout and lists fine.
	return typeMark
}

// typeBytes is the length of nft's data type (the library's SetDatatype.Bytes):
// unlike f.size, not rounded up to a register.
func typeBytes(f family, fl field) uint32 {
	switch fl {
	case fAddr:
		return uint32(f.addrSz)
	case fProto:
		return 1
	case fPort:
		return 2
	}
	return 4
}

// concatMagic is the library's ConcatSetType: type numbers shifted together,
// each field's length rounded up to a 32-bit register.
func concatMagic(f family, fields []field) (magic, size uint32) {
	if len(fields) == 1 {
		return typeMagic(f, fields[0]), typeBytes(f, fields[0])
	}
	for _, fl := range fields {
		magic = magic<<concatTypeBits | typeMagic(f, fl)
		size += (typeBytes(f, fl) + 3) &^ 3
	}
	return magic, size
}

// newSet writes NEWSET with a fresh transaction-local set ID and returns it:
// element messages for the set carry it (NFTA_SET_ELEM_LIST_SET_ID).
func (b *batch) newSet(f family, table string, s setSpec) (uint32, error) {
	if len(s.key) > 32/concatTypeBits || len(s.data) > 32/concatTypeBits {
		return 0, fmt.Errorf("set %s: too many fields to concatenate", s.name)
	}
	b.setID++
	id := b.setID
	var flags uint32
	if s.interval {
		flags |= unix.NFT_SET_INTERVAL
	}
	if s.verdict || s.data != nil {
		flags |= unix.NFT_SET_MAP
	}
	if s.dynamic {
		flags |= unix.NFT_SET_TIMEOUT | unix.NFT_SET_EVAL
	}
	concat := len(s.key) > 1
	if concat {
		flags |= nftSetConcat
	}
	m := b.msg(unix.NFT_MSG_NEWSET, flagsCreate, byte(tableFamily(f)), batchOp{"add set", s.name})
	b.attrString(unix.NFTA_SET_TABLE, table)
	b.attrString(unix.NFTA_SET_NAME, s.name)
	b.attrU32(unix.NFTA_SET_FLAGS, flags)
	km, kl := concatMagic(f, s.key)
	b.attrU32(unix.NFTA_SET_KEY_TYPE, km)
	b.attrU32(unix.NFTA_SET_KEY_LEN, kl)
	b.attrU32(unix.NFTA_SET_ID, id)
	switch {
	case s.verdict:
		b.attrU32(unix.NFTA_SET_DATA_TYPE, unix.NFT_DATA_VERDICT)
		b.attrU32(unix.NFTA_SET_DATA_LEN, 0)
	case s.data != nil:
		dm, dl := concatMagic(f, s.data)
		b.attrU32(unix.NFTA_SET_DATA_TYPE, dm)
		b.attrU32(unix.NFTA_SET_DATA_LEN, dl)
	}
	if s.dynamic || concat {
		d := b.nest(unix.NLA_F_NESTED | unix.NFTA_SET_DESC)
		if s.dynamic {
			b.attrU32(unix.NFTA_SET_DESC_SIZE, affinitySetSize)
		}
		if concat {
			c := b.nest(unix.NLA_F_NESTED | nftaSetDescConcat)
			for _, fl := range s.key {
				// The library nests each field's size without NLA_F_NESTED.
				e := b.nest(unix.NFTA_SET_DESC_SIZE)
				b.attrU32(unix.NFTA_DATA_VALUE, typeBytes(f, fl))
				b.endNest(e)
			}
			b.endNest(c)
		}
		b.endNest(d)
	}
	if s.interval {
		// NFTNL_UDATA_SET_KEYBYTEORDER = big endian, as nft writes it.
		b.attr(unix.NFTA_SET_USERDATA, []byte{udataKeyOrder, 4, keyOrderBigEnd, 0, 0, 0})
	}
	b.endMsg(m)
	return id, nil
}

// elements writes els as NEWSETELEM (add) or DELSETELEM messages of at most
// batchElems elements each. Nothing here allocates but the buffer's growth.
func (b *batch) elements(fam byte, table, set string, id uint32, add bool, els []Element) {
	typ, what := uint16(unix.NFT_MSG_DELSETELEM), "delete elements of"
	if add {
		typ, what = unix.NFT_MSG_NEWSETELEM, "add elements to"
	}
	for len(els) > 0 {
		chunk := els[:min(len(els), batchElems)]
		els = els[len(chunk):]
		// The library sends deletions with NLM_F_CREATE too.
		m := b.msg(typ, flagsCreate, fam, batchOp{what, set})
		b.attrString(unix.NFTA_SET_ELEM_LIST_SET, set)
		b.attrU32(unix.NFTA_SET_ELEM_LIST_SET_ID, id)
		b.attrString(unix.NFTA_SET_ELEM_LIST_TABLE, table)
		l := b.nest(unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		for i, e := range chunk {
			b.element(uint16(i+1), e)
		}
		b.endNest(l)
		b.endMsg(m)
	}
}

func (b *batch) element(idx uint16, e Element) {
	item := b.nest(unix.NLA_F_NESTED | idx)
	k := b.nest(unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY)
	b.attr(unix.NFTA_DATA_VALUE, e.Key)
	b.endNest(k)
	if len(e.KeyEnd) > 0 {
		k := b.nest(unix.NLA_F_NESTED | nftaSetElemKeyEnd)
		b.attr(unix.NFTA_DATA_VALUE, e.KeyEnd)
		b.endNest(k)
	}
	switch {
	case e.Verdict != "":
		d := b.nest(unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_DATA)
		v := b.nest(unix.NLA_F_NESTED | unix.NFTA_DATA_VERDICT)
		if e.Verdict == verdictDrop {
			b.attrU32(unix.NFTA_VERDICT_CODE, nfDrop)
		} else {
			code := int32(unix.NFT_GOTO)
			b.attrU32(unix.NFTA_VERDICT_CODE, uint32(code))
			b.attrString(unix.NFTA_VERDICT_CHAIN, e.Verdict)
		}
		b.endNest(v)
		b.endNest(d)
	case len(e.Val) > 0:
		d := b.nest(unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_DATA)
		b.attr(unix.NFTA_DATA_VALUE, e.Val)
		b.endNest(d)
	}
	b.endNest(item)
}

// elementsSize is the number of bytes elements() writes for els, so that a
// cold sync's batch is one allocation.
func elementsSize(set, table string, els []Element) int {
	al := func(n int) int { return (n + 3) &^ 3 }
	n := 0
	for _, e := range els {
		n += 4 + 8 + al(len(e.Key)) // item, key
		if len(e.KeyEnd) > 0 {
			n += 8 + al(len(e.KeyEnd))
		}
		switch {
		case e.Verdict == verdictDrop:
			n += 4 + 4 + 8
		case e.Verdict != "":
			n += 4 + 4 + 8 + 4 + al(len(e.Verdict)+1)
		case len(e.Val) > 0:
			n += 8 + al(len(e.Val))
		}
	}
	msgs := (len(els) + batchElems - 1) / batchElems
	return n + msgs*(nlmsgHdrLen+nfgenLen+4+al(len(set)+1)+8+4+al(len(table)+1)+4)
}

// newRule writes NEWRULE: the expressions are the library's own encodings.
// kproxy's rules use no xtables compat expressions, so no NFTA_RULE_COMPAT.
func (b *batch) newRule(fam byte, table, chain string, exprs []expr.Any) error {
	m := b.msg(unix.NFT_MSG_NEWRULE, flagsNewRule, fam, batchOp{"add rule to", chain})
	b.attrString(unix.NFTA_RULE_TABLE, table)
	b.attrString(unix.NFTA_RULE_CHAIN, chain)
	l := b.nest(unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS)
	for _, e := range exprs {
		switch e.(type) {
		case *expr.Match, *expr.Target:
			return errors.New("xtables compat expressions are not supported")
		}
		data, err := expr.Marshal(fam, e)
		if err != nil {
			return fmt.Errorf("rule in %s: %w", chain, err)
		}
		b.attr(unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, data)
	}
	b.endNest(l)
	b.endMsg(m)
	return nil
}

// encode writes tx in the order documented on familyTx.
func (b *batch) encode(tx *transaction, table string) error {
	for _, ft := range tx.fams {
		if ft.empty() {
			continue
		}
		f := ft.fam
		fam := byte(tableFamily(f))
		b.newTable(fam, table)
		for _, name := range ft.flushChains {
			b.flushChain(fam, table, name)
		}
		for _, name := range ft.delChainsEarly {
			b.delChain(fam, table, name)
		}
		for _, name := range ft.delSetsEarly {
			b.delSet(fam, table, name)
		}
		for _, name := range ft.flushSets {
			b.flushSet(fam, table, name)
		}
		// IDs of the sets created here; elements of other sets carry 0, as
		// the library sends them (the kernel finds a set by name first).
		ids := map[string]uint32{}
		for _, s := range ft.newSets {
			id, err := b.newSet(f, table, s)
			if err != nil {
				return err
			}
			ids[s.name] = id
		}
		for _, name := range ft.newChains {
			b.newChain(fam, table, name)
		}
		for _, pass := range []struct {
			els map[string][]Element
			add bool
		}{{ft.dels, false}, {ft.adds, true}} {
			for _, name := range sortedKeys(pass.els) {
				if _, ok := ids[name]; !ok {
					if _, ok := specFor(name); !ok {
						return fmt.Errorf("unknown set %q", name)
					}
				}
				b.elements(fam, table, name, ids[name], pass.add, pass.els[name])
			}
		}
		p := newProgram(tx.cfg, f, ft.affinity)
		for _, name := range ft.ruleChains {
			for _, exprs := range p.rules(name) {
				if err := b.newRule(fam, table, name, exprs); err != nil {
					return err
				}
			}
		}
		for _, name := range ft.delChains {
			b.delChain(fam, table, name)
		}
		for _, name := range ft.delSets {
			b.delSet(fam, table, name)
		}
	}
	return b.err
}

// txSize estimates the encoded size of tx's elements, the bulk of a batch.
func txSize(tx *transaction, table string) int {
	n := 0
	for _, ft := range tx.fams {
		for _, m := range []map[string][]Element{ft.dels, ft.adds} {
			for name, els := range m {
				n += elementsSize(name, table, els)
			}
		}
	}
	return n
}
