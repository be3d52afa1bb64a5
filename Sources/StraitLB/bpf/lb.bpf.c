// SPDX-License-Identifier: GPL-2.0
// Connect-time load balancing for the sockets of one cgroup (Cilium's "socket LB"): a connect()
// or an unconnected UDP sendmsg() to a service address is rewritten, before the kernel routes it,
// to one of the service's backends; the socket then talks to the backend directly, with no NAT per
// packet. Replies (recvmsg) and getpeername() are rewritten back, so the application only ever sees
// the address it asked for.
//
// Swift (StraitLB) owns the choice: it builds each service's lookup table (Maglev or weighted) and
// writes it to the standby one of the service's two tables, then switches the service to it with
// one write of its `lb_services` value. A connect reads that value once, so it sees one whole
// table, never a half-written one.
//
// A service whose table has no live backend refuses at once: the program sets the syscall's return
// value to -ECONNREFUSED (bpf_set_retval) and rejects, so connect() and sendmsg() fail with
// ECONNREFUSED instead of the EPERM a plain rejection gives.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/hash.bpf.h>
#include <strait/lb.h>

#define ECONNREFUSED 111

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LB_MAX_SERVICES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_lb_service_key);
    __type(value, struct strait_lb_service);
} lb_services SEC(".maps");

// Two tables per service: key slot * 2 + table. Not preallocated: an update replaces the element
// whole (RCU), so even a reader still on the previous table never sees a torn one.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 2 * STRAIT_LB_MAX_SERVICES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, struct strait_lb_table);
} lb_tables SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LB_MAX_BACKEND_ENTRIES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, struct strait_lb_backend);
} lb_backends SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, STRAIT_LB_MAX_SOCKETS);
    __type(key, struct strait_lb_reverse_key);
    __type(value, struct strait_lb_service_key);
} lb_reverse SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, STRAIT_LB_MAX_BACKEND_ENTRIES);
    __type(key, __u32);
    __type(value, struct strait_lb_backend_stats);
} lb_backend_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STRAIT_LB_COUNTERS);
    __type(key, __u32);
    __type(value, __u64);
} lb_counters SEC(".maps");

// Context fields are read one 32-bit word at a time.
#define CTX_READ(field) (*(volatile __u32 *)&(field))

static __always_inline void count(__u32 which) {
    __u64 *value = bpf_map_lookup_elem(&lb_counters, &which);
    if (value) *value += 1;
}

static __always_inline void count_backend(__u32 id, int connected) {
    struct strait_lb_backend_stats *stats = bpf_map_lookup_elem(&lb_backend_stats, &id);
    if (!stats) {
        struct strait_lb_backend_stats zero = {};
        bpf_map_update_elem(&lb_backend_stats, &id, &zero, BPF_NOEXIST);
        stats = bpf_map_lookup_elem(&lb_backend_stats, &id);
        if (!stats) return;
    }
    if (connected) stats->connects += 1;
    else stats->datagrams += 1;
}

/// The table entry of a socket: its cookie through murmur3's finaliser (Maglev), or a random one.
static __always_inline __u32 entry_for(__u64 cookie, __u32 policy) {
    if (policy == STRAIT_LB_RANDOM) return bpf_get_prandom_u32() % STRAIT_LB_TABLE_SIZE;
    __u32 hash = strait_mix32((__u32)cookie ^ STRAIT_LB_HASH_SEED);
    return strait_mix32(hash ^ (__u32)(cookie >> 32)) % STRAIT_LB_TABLE_SIZE;
}

enum choice { NOT_A_SERVICE, CHOSEN, REFUSE };

/// Looks the destination up and, for a service, picks the backend this socket goes to and
/// remembers the service under (cookie, backend) for the reverse rewrites.
static __always_inline enum choice choose(void *ctx, struct strait_lb_service_key *key, const struct strait_lb_backend **chosen, __u32 *chosen_id) {
    struct strait_lb_service *found = bpf_map_lookup_elem(&lb_services, key);
    if (!found) return NOT_A_SERVICE;
    // One copy of the value: slot, table and live count all come from the same write.
    struct strait_lb_service service = *found;
    if (service.live == 0) return REFUSE;
    __u32 table_key = service.slot * 2 + service.table;
    struct strait_lb_table *table = bpf_map_lookup_elem(&lb_tables, &table_key);
    if (!table) return REFUSE;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    __u32 entry = entry_for(cookie, service.policy);
    // clang knows the modulo bounds the entry and would drop the check the verifier needs.
    asm volatile("" : "+r"(entry));
    if (entry >= STRAIT_LB_TABLE_SIZE) return REFUSE;
    __u32 id = table->backends[entry];
    const struct strait_lb_backend *backend = bpf_map_lookup_elem(&lb_backends, &id);
    if (!backend) return REFUSE;
    struct strait_lb_reverse_key reverse = {.cookie = cookie, .port = backend->port};
    __builtin_memcpy(reverse.addr, backend->addr, 16);
    bpf_map_update_elem(&lb_reverse, &reverse, key, BPF_ANY);
    *chosen = backend;
    *chosen_id = id;
    return CHOSEN;
}

/// The address a sock_addr program is asked about, as 16 bytes: an IPv4 one in its mapped form
/// (::ffff:a.b.c.d), as the maps hold every address. `ipv6` is a constant at each call, so the
/// compiler keeps one branch and the verifier only sees the context fields of the program's family.
static __always_inline void read_address(struct bpf_sock_addr *ctx, __u8 addr[16], int ipv6) {
    if (ipv6) {
        __u32 words[4] = {CTX_READ(ctx->user_ip6[0]), CTX_READ(ctx->user_ip6[1]), CTX_READ(ctx->user_ip6[2]), CTX_READ(ctx->user_ip6[3])};
        __builtin_memcpy(addr, words, 16);
    } else {
        __u32 address = CTX_READ(ctx->user_ip4);
        __builtin_memset(addr, 0, 10);
        addr[10] = 0xff;
        addr[11] = 0xff;
        __builtin_memcpy(addr + 12, &address, 4);
    }
}

/// Rewrites the address (from its 16-byte form) and the port the socket call goes on with.
static __always_inline void rewrite(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port, int ipv6) {
    if (ipv6) {
        __u32 words[4];
        __builtin_memcpy(words, addr, 16);
        ctx->user_ip6[0] = words[0];
        ctx->user_ip6[1] = words[1];
        ctx->user_ip6[2] = words[2];
        ctx->user_ip6[3] = words[3];
    } else {
        __u32 address;
        __builtin_memcpy(&address, addr + 12, 4);
        ctx->user_ip4 = address;
    }
    ctx->user_port = port;
}

/// Rejects with ECONNREFUSED (connect and sendmsg only: they have a return value to set).
static __always_inline int refuse(void) {
    count(STRAIT_LB_REFUSED);
    bpf_set_retval(-ECONNREFUSED);
    return 0;
}

/// connect() and unconnected sendmsg(): a service's destination becomes one of its backends.
static __always_inline int forward(struct bpf_sock_addr *ctx, int ipv6, int connected) {
    struct strait_lb_service_key key;
    __builtin_memset(&key, 0, sizeof(key));
    read_address(ctx, key.addr, ipv6);
    key.port = (__u16)CTX_READ(ctx->user_port);
    key.protocol = (__u8)CTX_READ(ctx->protocol);
    const struct strait_lb_backend *backend = 0;
    __u32 id = 0;
    switch (choose(ctx, &key, &backend, &id)) {
    case NOT_A_SERVICE: return 1;
    case REFUSE: return refuse();
    case CHOSEN: break;
    }
    if (!backend) return 1;
    rewrite(ctx, backend->addr, backend->port, ipv6);
    count(STRAIT_LB_BALANCED);
    count_backend(id, connected);
    return 1;
}

/// recvmsg() and getpeername(): a backend this socket was sent to shows as the service it asked for.
static __always_inline int reverse(struct bpf_sock_addr *ctx, int ipv6) {
    struct strait_lb_reverse_key key = {.cookie = bpf_get_socket_cookie(ctx), .port = (__u16)CTX_READ(ctx->user_port)};
    read_address(ctx, key.addr, ipv6);
    struct strait_lb_service_key *service = bpf_map_lookup_elem(&lb_reverse, &key);
    if (!service) return 1;
    rewrite(ctx, service->addr, service->port, ipv6);
    count(STRAIT_LB_REVERSED);
    return 1;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx) { return forward(ctx, 0, 1); }

SEC("cgroup/connect6")
int lb_connect6(struct bpf_sock_addr *ctx) { return forward(ctx, 1, 1); }

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx) { return forward(ctx, 0, 0); }

SEC("cgroup/sendmsg6")
int lb_sendmsg6(struct bpf_sock_addr *ctx) { return forward(ctx, 1, 0); }

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/recvmsg6")
int lb_recvmsg6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/getpeername6")
int lb_getpeername6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

// A closing socket's reverse entry goes with it, so the LRU map holds live sockets and a connect
// never pays for an eviction. Only the entry of the connected peer is known here; those of an
// unconnected UDP socket age out of the LRU map.
SEC("cgroup/sock_release")
int lb_release(struct bpf_sock *sk) {
    __u32 family = sk->family;
    struct strait_lb_reverse_key reverse = {.cookie = bpf_get_socket_cookie(sk), .port = (__u16)sk->dst_port};
    if (family == 2) {
        __u32 address = sk->dst_ip4;
        reverse.addr[10] = 0xff;
        reverse.addr[11] = 0xff;
        __builtin_memcpy(reverse.addr + 12, &address, 4);
    } else if (family == 10) {
        __u32 words[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]};
        __builtin_memcpy(reverse.addr, words, 16);
    } else {
        return 1;
    }
    bpf_map_delete_elem(&lb_reverse, &reverse);
    return 1;
}

char LICENSE[] SEC("license") = "GPL";
