// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// kproxy's socket-level load balancer: cgroup socket-address hooks that pick a
// service endpoint when a socket connects (TCP, connected UDP) or sends a
// datagram (unconnected UDP), so the connection is an ordinary one to the
// endpoint and no packet is translated. recvmsg and getpeername put the
// service address back where the application sees the peer.
//
// Anything these programs do not recognize, or find inconsistent, is left
// alone (return 1 with the address unchanged): the nftables data plane still
// serves every frontend, so it is the fallback, never a blackhole.
//
// Maps (userspace writes them all; the programs only read, except the
// affinity, reverse-NAT and counter maps):
//   frontends: (addr, port, proto, family) -> (port id, slot set, count, affinity)
//   slots:     (slot set, slot) -> backend id
//   backends:  backend id -> (addr, port)
//   nodeaddrs: node address -> 1, for NodePorts (frontend address 0)
//   affinity:  (netns cookie, slot set without its buffer bit) -> (backend, last use)
//   revnat:    (socket cookie, backend addr, port) -> service addr, port
//   counters:  port id -> translations (per CPU)
// A slot set is double-buffered (bit 0 of its id): userspace fills the unused
// buffer, then flips the frontend to it in one map update, so a program never
// sees a count that does not match the slots.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FAMILY_V4 4
#define FAMILY_V6 6

#define PROCEED 1
#define REJECT 0

// The most slots one affinity check scans for its pinned backend.
#define AFFINITY_SCAN 256

struct frontend_key {
	__u32 addr[4]; // IPv4 in addr[0]; network byte order
	__u16 port;    // network byte order
	__u8 proto;
	__u8 family;
};

struct frontend {
	__u32 port_id;
	__u32 set_id;
	__u32 count;    // 0: the service has no endpoints: refuse
	__u32 affinity; // ClientIP affinity timeout in seconds; 0: none
};

struct slot_key {
	__u32 set_id;
	__u32 slot;
};

struct backend {
	__u32 addr[4];
	__u16 port; // network byte order
	__u8 family;
	__u8 pad;
};

struct nodeaddr_key {
	__u32 addr[4];
	__u32 family;
};

struct affinity_key {
	__u64 netns_cookie;
	__u32 set_base;
	__u32 pad;
};

struct affinity_val {
	__u32 backend_id;
	__u32 pad;
	__u64 last_ns;
};

struct revnat_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct revnat_val {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct frontend_key);
	__type(value, struct frontend);
} kp_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct slot_key);
	__type(value, __u32);
} kp_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct backend);
} kp_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct nodeaddr_key);
	__type(value, __u32);
} kp_nodeaddrs SEC(".maps");

// LRU maps are preallocated: their sizes are their kernel memory.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
} kp_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct revnat_key);
	__type(value, struct revnat_val);
} kp_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} kp_counters SEC(".maps");

// An address as the hooks give it, turned into a map key's form.
struct sockaddr_in_kp {
	__u32 addr[4];
	__u8 family;
	__u8 mapped; // an IPv4-mapped IPv6 address on an IPv6 socket
};

static __always_inline void load_addr4(struct bpf_sock_addr *ctx, struct sockaddr_in_kp *a)
{
	a->addr[0] = ctx->user_ip4;
	a->addr[1] = 0;
	a->addr[2] = 0;
	a->addr[3] = 0;
	a->family = FAMILY_V4;
	a->mapped = 0;
}

static __always_inline void load_addr6(struct bpf_sock_addr *ctx, struct sockaddr_in_kp *a)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		a->addr[0] = w3;
		a->addr[1] = 0;
		a->addr[2] = 0;
		a->addr[3] = 0;
		a->family = FAMILY_V4;
		a->mapped = 1;
		return;
	}
	a->addr[0] = w0;
	a->addr[1] = w1;
	a->addr[2] = w2;
	a->addr[3] = w3;
	a->family = FAMILY_V6;
	a->mapped = 0;
}

static __always_inline void store_addr(struct bpf_sock_addr *ctx, const __u32 addr[4], __u8 family, __u8 mapped, int v6sock)
{
	if (!v6sock) {
		ctx->user_ip4 = addr[0];
		return;
	}
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = addr[0];
		return;
	}
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
}

static __always_inline struct frontend *lookup_frontend(struct sockaddr_in_kp *a, __u16 port, __u8 proto)
{
	struct frontend_key key = {};
	struct nodeaddr_key nk = {};
	struct frontend *fe;

	key.addr[0] = a->addr[0];
	key.addr[1] = a->addr[1];
	key.addr[2] = a->addr[2];
	key.addr[3] = a->addr[3];
	key.port = port;
	key.proto = proto;
	key.family = a->family;
	fe = bpf_map_lookup_elem(&kp_frontends, &key);
	if (fe)
		return fe;
	// A NodePort: the frontend has the unspecified address and answers on
	// the node's addresses allowed for NodePorts.
	nk.addr[0] = a->addr[0];
	nk.addr[1] = a->addr[1];
	nk.addr[2] = a->addr[2];
	nk.addr[3] = a->addr[3];
	nk.family = a->family;
	if (!bpf_map_lookup_elem(&kp_nodeaddrs, &nk))
		return 0;
	key.addr[0] = 0;
	key.addr[1] = 0;
	key.addr[2] = 0;
	key.addr[3] = 0;
	return bpf_map_lookup_elem(&kp_frontends, &key);
}

struct scan_ctx {
	__u32 set_id;
	__u32 want;
	int found;
};

static long scan_slot(__u32 i, void *data)
{
	struct scan_ctx *sc = data;
	struct slot_key sk = { .set_id = sc->set_id, .slot = i };
	__u32 *id = bpf_map_lookup_elem(&kp_slots, &sk);

	if (id && *id == sc->want) {
		sc->found = 1;
		return 1;
	}
	return 0;
}

// pick_backend returns the backend for a new flow to fe, or 0 when the
// maps disagree (the caller then leaves the socket alone).
static __always_inline struct backend *pick_backend(void *ctx, struct frontend *fe, __u32 *backend_id)
{
	__u32 set_id = fe->set_id, count = fe->count, affinity = fe->affinity;
	struct affinity_key ak = {};
	struct affinity_val av = {};
	struct slot_key sk = {};
	__u64 now = 0;
	__u32 *id;

	if (affinity) {
		struct affinity_val *pin;

		now = bpf_ktime_get_ns();
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		ak.set_base = set_id & ~1U;
		pin = bpf_map_lookup_elem(&kp_affinity, &ak);
		if (pin && now - pin->last_ns <= (__u64)affinity * 1000000000ULL) {
			// The pinned backend must still be one of the service's.
			struct scan_ctx sc = { .set_id = set_id, .want = pin->backend_id };
			__u32 n = count < AFFINITY_SCAN ? count : AFFINITY_SCAN;

			bpf_loop(n, scan_slot, &sc, 0);
			if (sc.found) {
				struct backend *be = bpf_map_lookup_elem(&kp_backends, &sc.want);

				if (be) {
					av.backend_id = sc.want;
					av.last_ns = now;
					bpf_map_update_elem(&kp_affinity, &ak, &av, BPF_ANY);
					*backend_id = sc.want;
					return be;
				}
			}
		}
	}
	sk.set_id = set_id;
	sk.slot = bpf_get_prandom_u32() % count;
	id = bpf_map_lookup_elem(&kp_slots, &sk);
	if (!id)
		return 0;
	*backend_id = *id;
	if (affinity) {
		av.backend_id = *id;
		av.last_ns = now;
		bpf_map_update_elem(&kp_affinity, &ak, &av, BPF_ANY);
	}
	return bpf_map_lookup_elem(&kp_backends, id);
}

static __always_inline void count_translation(__u32 port_id)
{
	__u64 *n = bpf_map_lookup_elem(&kp_counters, &port_id);
	__u64 one = 1;

	if (n) {
		*n += 1;
		return;
	}
	// The first on this port: a new per-CPU entry (the other CPUs' are zero).
	bpf_map_update_elem(&kp_counters, &port_id, &one, BPF_NOEXIST);
}

static __always_inline void remember(void *ctx, struct backend *be, struct sockaddr_in_kp *svc, __u16 svc_port)
{
	struct revnat_key rk = {};
	struct revnat_val rv = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr[0] = be->addr[0];
	rk.addr[1] = be->addr[1];
	rk.addr[2] = be->addr[2];
	rk.addr[3] = be->addr[3];
	rk.port = be->port;
	rv.addr[0] = svc->addr[0];
	rv.addr[1] = svc->addr[1];
	rv.addr[2] = svc->addr[2];
	rv.addr[3] = svc->addr[3];
	rv.port = svc_port;
	bpf_map_update_elem(&kp_revnat, &rk, &rv, BPF_ANY);
}

// translate is the forward path of connect and sendmsg.
static __always_inline int translate(struct bpf_sock_addr *ctx, int v6sock)
{
	struct sockaddr_in_kp a;
	struct frontend *fe;
	struct backend *be;
	__u32 backend_id = 0;
	__u8 proto = ctx->protocol;
	__u16 port = (__u16)ctx->user_port;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PROCEED;
	if (v6sock)
		load_addr6(ctx, &a);
	else
		load_addr4(ctx, &a);
	fe = lookup_frontend(&a, port, proto);
	if (!fe)
		return PROCEED;
	if (fe->count == 0) {
		// No endpoint anywhere: refuse, as the nftables reject does.
		bpf_set_retval(-ECONNREFUSED);
		return REJECT;
	}
	be = pick_backend(ctx, fe, &backend_id);
	if (!be || be->family != a.family)
		return PROCEED;
	remember(ctx, be, &a, port);
	store_addr(ctx, be->addr, a.family, a.mapped, v6sock);
	ctx->user_port = be->port;
	count_translation(fe->port_id);
	return PROCEED;
}

// reverse puts the service address back in place of the backend's.
static __always_inline int reverse(struct bpf_sock_addr *ctx, int v6sock)
{
	struct sockaddr_in_kp a;
	struct revnat_key rk = {};
	struct revnat_val *rv;

	if (v6sock)
		load_addr6(ctx, &a);
	else
		load_addr4(ctx, &a);
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr[0] = a.addr[0];
	rk.addr[1] = a.addr[1];
	rk.addr[2] = a.addr[2];
	rk.addr[3] = a.addr[3];
	rk.port = (__u16)ctx->user_port;
	rv = bpf_map_lookup_elem(&kp_revnat, &rk);
	if (!rv)
		return PROCEED;
	store_addr(ctx, rv->addr, a.family, a.mapped, v6sock);
	ctx->user_port = rv->port;
	return PROCEED;
}

SEC("cgroup/connect4")
int kp_connect4(struct bpf_sock_addr *ctx) { return translate(ctx, 0); }

SEC("cgroup/connect6")
int kp_connect6(struct bpf_sock_addr *ctx) { return translate(ctx, 1); }

SEC("cgroup/sendmsg4")
int kp_sendmsg4(struct bpf_sock_addr *ctx) { return translate(ctx, 0); }

SEC("cgroup/sendmsg6")
int kp_sendmsg6(struct bpf_sock_addr *ctx) { return translate(ctx, 1); }

SEC("cgroup/recvmsg4")
int kp_recvmsg4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/recvmsg6")
int kp_recvmsg6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

SEC("cgroup/getpeername4")
int kp_getpeername4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/getpeername6")
int kp_getpeername6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

char _license[] SEC("license") = "Dual BSD/GPL";
