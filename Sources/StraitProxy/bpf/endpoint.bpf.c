// SPDX-License-Identifier: GPL-2.0
// The proxy's skmsg datapath, for endpoints on this host: a client's send goes straight into the
// proxy's upstream socket (and an upstream server's send into the proxy's client socket) inside
// the sender's own sendmsg, so the bytes never cross the endpoint's connection to the proxy, never
// wake the proxy and never sit in a workqueue. The proxy keeps both TCP connections for FIN, RST
// and accounting.
//
// sock_ops (attached to the endpoints' cgroup) puts an established socket into `endpoint_socks`
// when it is a client of a proxy listener or the server side of a proxy upstream
// (`endpoint_filter`), so its sends run `strait_endpoint_msg`.
//
// Order. Bytes an endpoint sends before its route exists take its own connection; the proxy reads
// and writes them into the target socket. The endpoint switches to redirecting at the first send
// that finds `route->forwarded == state->passed`: every byte it passed is then already in the
// target's send queue, so the redirected bytes queue behind them. Until that moment it keeps
// passing, so a switch never reorders, loses or duplicates a byte.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/accel.h>
#include <strait/proxy.h>
#include <strait/sock_key.bpf.h>

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct strait_sock_key);
    __type(value, __u64);
} endpoint_socks SEC(".maps");

// The proxy's own sockets, by socket cookie: redirect targets only, no programs.
struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} endpoint_targets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct strait_endpoint_filter_key);
    __type(value, __u8);
} endpoint_filter SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct strait_sock_key);
    __type(value, struct strait_endpoint_route);
} endpoint_routes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct strait_endpoint_state);
} endpoint_state SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_endpoint_counters);
} endpoint_stats SEC(".maps");

static __always_inline struct strait_endpoint_counters *counters(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&endpoint_stats, &zero);
}

// Is `ip`:`port` marked for `role` (exactly, or as a wildcard address)?
static __always_inline int marked(const __u8 ip[16], __u16 port, __u16 role)
{
    struct strait_endpoint_filter_key key = {.port = port, .role = role};
    if (bpf_map_lookup_elem(&endpoint_filter, &key))
        return 1;
    __builtin_memcpy(key.ip, ip, 16);
    return bpf_map_lookup_elem(&endpoint_filter, &key) != 0;
}

SEC("sockops")
int strait_endpoint_sockops(struct bpf_sock_ops *skops)
{
    struct strait_sock_key key;
    int wanted = 0;
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    if (key_of_sockops(skops, &key) < 0)
        return 1;
    if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        wanted = marked(key.remote_ip, key.remote_port, STRAIT_ENDPOINT_CLIENT);
    else
        wanted = marked(key.local_ip, key.local_port, STRAIT_ENDPOINT_UPSTREAM);
    struct bpf_sock *sk = skops->sk;
    if (!wanted || !sk)
        return 1;
    // Storage first: a socket in the hash always has its counters.
    if (!bpf_sk_storage_get(&endpoint_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE))
        return 1;
    if (bpf_sock_hash_update(skops, &endpoint_socks, &key, BPF_ANY) != 0)
        return 1;
    struct strait_endpoint_counters *c = counters();
    if (c)
        c->endpoints_tracked++;
    return 1;
}

SEC("sk_msg")
int strait_endpoint_msg(struct sk_msg_md *msg)
{
    __u32 size = msg->size;
    struct bpf_sock *sk = msg->sk;
    struct strait_endpoint_counters *c = counters();
    if (!sk || !c)
        return SK_PASS;
    struct strait_endpoint_state *state = bpf_sk_storage_get(&endpoint_state, sk, 0, 0);
    if (!state)
        return SK_PASS;
    if (state->mode == STRAIT_ENDPOINT_PASSING) {
        struct strait_sock_key peer, self;
        if (peer_key_of_msg(msg, &peer) < 0)
            return SK_PASS;
        reverse(&peer, &self);
        struct strait_endpoint_route *route = bpf_map_lookup_elem(&endpoint_routes, &self);
        if (!route || route->forwarded != state->passed) {
            state->passed += size;
            c->passed_bytes += size;
            return SK_PASS;
        }
        state->target_cookie = route->target_cookie;
        state->mode = STRAIT_ENDPOINT_REDIRECTING;
        c->directions_switched++;
    }
    if (state->mode == STRAIT_ENDPOINT_REDIRECTING) {
        __u64 target = state->target_cookie;
        if (bpf_msg_redirect_hash(msg, &endpoint_targets, &target, 0) == SK_PASS) {
            state->redirected += size;
            c->redirected_bytes += size;
            c->redirected_messages++;
            return SK_PASS;
        }
        // The proxy closed its socket: the relay is over, and the endpoint's own connection (now
        // closing too) is where its sends belong.
        state->mode = STRAIT_ENDPOINT_ENDED;
        c->redirect_failures++;
    }
    state->passed += size;
    c->passed_bytes += size;
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
