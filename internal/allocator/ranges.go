package allocator

import (
	"encoding/binary"
	"hash/fnv"
	"net/netip"
)

// ipRange hands out the addresses of one service CIDR. Offsets count from the
// network address; offset 0 (the network address) and, for IPv4, the broadcast
// address are never handed out, as in kube-apiserver.
//
// Dynamic allocation starts in the upper band and falls back to the lower one,
// leaving the lower band ([1, static)) to addresses written in manifests, like
// kube-apiserver's ServiceIPStaticSubrange. The starting point is a hash of the
// service's name rather than a random number, so that `kproxy get` without a
// running process predicts exactly what `kproxy run` will pick.
type ipRange struct {
	prefix netip.Prefix
	base   [16]byte
	first  uint64 // first usable offset
	last   uint64 // last usable offset
	static uint64 // offsets below this are the static band
}

func newIPRange(p netip.Prefix) *ipRange {
	hostBits := p.Addr().BitLen() - p.Bits()
	size := uint64(1) << hostBits // hostBits <= 32 (checked by Validate)
	r := &ipRange{prefix: p, base: p.Masked().Addr().As16(), first: 1, last: size - 1}
	if p.Addr().Is4() {
		r.last = size - 2
	}
	r.static = r.first + rangeOffset(size, 16, 256, 16)
	return r
}

// rangeOffset is kube-apiserver's calculateRangeOffset: min(max(min, size/step), max).
func rangeOffset(size, lo, hi, step uint64) uint64 {
	if size <= lo {
		return 0
	}
	off := size / step
	return max(lo, min(off, hi))
}

func (r *ipRange) contains(ip netip.Addr) bool {
	if !r.prefix.Contains(ip) {
		return false
	}
	off := r.offsetOf(ip)
	return off >= r.first && off <= r.last
}

func (r *ipRange) offsetOf(ip netip.Addr) uint64 {
	a := ip.As16()
	return binary.BigEndian.Uint64(a[8:]) - binary.BigEndian.Uint64(r.base[8:])
}

func (r *ipRange) addr(off uint64) netip.Addr {
	a := r.base
	binary.BigEndian.PutUint64(a[8:], binary.BigEndian.Uint64(a[8:])+off)
	ip := netip.AddrFrom16(a)
	if r.prefix.Addr().Is4() {
		return ip.Unmap()
	}
	return ip
}

// pick returns a free address for key, or false when the range is full.
func (r *ipRange) pick(key string, used func(netip.Addr) bool) (netip.Addr, bool) {
	off, ok := probe(hash(key), r.first, r.static, r.last, func(off uint64) bool { return used(r.addr(off)) })
	if !ok {
		return netip.Addr{}, false
	}
	return r.addr(off), true
}

func (r *ipRange) size() uint64 { return r.last - r.first + 1 }

// probe finds a free offset in [first, last]: first in the dynamic band
// [static, last] starting at h, then in the static band [first, static).
func probe(h, first, static, last uint64, used func(uint64) bool) (uint64, bool) {
	scan := func(lo, hi uint64) (uint64, bool) {
		if hi < lo {
			return 0, false
		}
		n := hi - lo + 1
		start := h % n
		for i := uint64(0); i < n; i++ {
			off := lo + (start+i)%n
			if !used(off) {
				return off, true
			}
		}
		return 0, false
	}
	if static < first {
		static = first
	}
	if off, ok := scan(static, last); ok {
		return off, true
	}
	if static > first {
		return scan(first, static-1)
	}
	return 0, false
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// portRangeAlloc hands out node ports, like ipRange (kube-apiserver's
// ServiceNodePortStaticSubrange: the static band is min(max(16, size/32), 128)).
type portRangeAlloc struct {
	r      PortRange
	static uint64
}

func newPortRange(r PortRange) *portRangeAlloc {
	return &portRangeAlloc{r: r, static: rangeOffset(uint64(r.Size), 16, 128, 32)}
}

func (p *portRangeAlloc) pick(key string, used func(int32) bool) (int32, bool) {
	off, ok := probe(hash(key), 0, p.static, uint64(p.r.Size-1), func(off uint64) bool {
		return used(int32(p.r.Base) + int32(off))
	})
	if !ok {
		return 0, false
	}
	return int32(p.r.Base) + int32(off), true
}
