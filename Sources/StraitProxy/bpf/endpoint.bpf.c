// SPDX-License-Identifier: GPL-2.0
// The proxy's skmsg datapath, for endpoints on this host: a client's send goes straight into the
// proxy's upstream socket (and an upstream server's send into the proxy's client socket) inside
// the sender's own sendmsg, so the bytes never cross the endpoint's connection to the proxy, never
// wake the proxy and never sit in a workqueue; once the other endpoint is tracked too and has read
// everything that reached it over TCP, they go straight into its receive queue, skipping TCP/IP
// altogether. The proxy keeps both TCP connections for FIN, RST and accounting.
//
// sock_ops (attached to the endpoints' cgroup) puts an established socket into `endpoint_socks`
// when it is a client of a proxy listener or the server side of a proxy upstream
// (`endpoint_filter`), so its sends run `strait_endpoint_msg`.
//
// Order. A direction moves PASSING -> EGRESS -> INGRESS, and may end on STACK from any of them;
// INGRESS goes back to EGRESS, for good, when the other endpoint does not read (route->max_in_flight).
//  - Bytes sent before the route exists take the endpoint's own connection; the proxy writes them
//    into the target socket. EGRESS starts at the first send that finds `route->forwarded` equal to
//    what the endpoint's own connection has queued (its write_seq since establishment, which counts
//    every byte, even one whose send began before the socket joined the hash): every byte passed is
//    then already in the target's send queue, so the redirected bytes queue behind them.
//  - The other endpoint reads its ingress queue before its TCP queue (tcp_bpf_recvmsg), so INGRESS
//    starts only when it has read every byte sent to it over TCP: its `tcp_read` (published at its
//    own sends) equals what went into the target socket (`forwarded + egress`). A FIN the proxy
//    carries later sits in the TCP queue, behind the redirected bytes, as it should.
//  - STACK (the relay ended, or the adaptive rule in strait/proxy.h found small streaming writes)
//    is always safe: redirected bytes are in the target's send queue, or in the other endpoint's
//    ingress queue, which it reads first, ahead of anything the proxy copies later.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
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
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct strait_sock_key);
    __type(value, struct strait_endpoint_progress);
} endpoint_progress SEC(".maps");

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
    if (skops->op == BPF_SOCK_OPS_STATE_CB) {
        // A relayed endpoint's progress holds its ingress byte count: the proxy reads it and
        // deletes it when the relay ends. Others go with their socket.
        if (skops->args[1] == BPF_TCP_CLOSE && key_of_sockops(skops, &key) == 0 && !bpf_map_lookup_elem(&endpoint_routes, &key))
            bpf_map_delete_elem(&endpoint_progress, &key);
        return 1;
    }
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
    // Storage and progress first: a socket in the hash always has both.
    struct strait_endpoint_state *state = bpf_sk_storage_get(&endpoint_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!state)
        return 1;
    state->self = key;
    state->base_seq = skops->rcv_nxt;        // nothing is read yet: copied_seq == rcv_nxt
    state->base_write_seq = skops->snd_nxt;  // nothing is queued yet: write_seq == snd_nxt
    struct strait_endpoint_progress fresh = {};
    if (bpf_map_update_elem(&endpoint_progress, &key, &fresh, BPF_ANY) != 0)
        return 1;
    if (bpf_sock_hash_update(skops, &endpoint_socks, &key, BPF_ANY) != 0) {
        bpf_map_delete_elem(&endpoint_progress, &key);
        return 1;
    }
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);  // to drop its progress at close
    struct strait_endpoint_counters *c = counters();
    if (c)
        c->endpoints_tracked++;
    return 1;
}

// CO-RE views for an endpoint's own ingress queue: its psock (sk_user_data, flag bits masked)
// counts the bytes queued there and not yet read in msg_tot_len.
struct sock___strait {
    void *sk_user_data;
} __attribute__((preserve_access_index));

struct sk_psock___strait {
    __u32 msg_tot_len;
} __attribute__((preserve_access_index));

#define SK_USER_DATA_PTRMASK (~7UL)

// Bytes waiting unread in this endpoint's own ingress queue (0 if it cannot be told).
static __always_inline __u32 unread_ingress(struct tcp_sock *tcp)
{
    unsigned long user = 0;
    __u32 queued = 0;
    bpf_probe_read_kernel(&user, sizeof(user), (char *)tcp + bpf_core_field_offset(struct sock___strait, sk_user_data));
    user &= SK_USER_DATA_PTRMASK;
    if (user)
        bpf_probe_read_kernel(&queued, sizeof(queued), (char *)user + bpf_core_field_offset(struct sk_psock___strait, msg_tot_len));
    return queued;
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
    if (!state || state->mode == STRAIT_ENDPOINT_STACK)
        goto pass;
    struct strait_endpoint_progress *own = bpf_map_lookup_elem(&endpoint_progress, &state->self);
    struct tcp_sock *tcp = bpf_skc_to_tcp_sock(sk);
    if (!tcp)
        goto pass;
    __u32 read = tcp->copied_seq - state->base_seq;
    if (own) {
        own->tcp_read = read;
        own->ingress_unread = unread_ingress(tcp);
        own->sends++;
    }
    struct strait_endpoint_route *route = bpf_map_lookup_elem(&endpoint_routes, &state->self);
    if (!route) {
        // No route yet (PASSING), or the relay is gone: its sockets are closing, and the endpoint's
        // own connection is where its sends belong from now on.
        if (state->mode != STRAIT_ENDPOINT_PASSING)
            state->mode = STRAIT_ENDPOINT_STACK;
        goto pass;
    }
    if (state->mode == STRAIT_ENDPOINT_PASSING) {
        if ((__u32)route->forwarded != tcp->write_seq - state->base_write_seq)
            goto pass;
        state->mode = STRAIT_ENDPOINT_EGRESS;
        c->directions_switched++;
    }
    struct strait_sock_key peer = route->peer_key;
    // The other endpoint's progress matters only until this direction settles and reaches ingress.
    int look = route->peer_tracked && (!state->settled || state->mode == STRAIT_ENDPOINT_EGRESS || route->max_in_flight);
    struct strait_endpoint_progress *other = look ? bpf_map_lookup_elem(&endpoint_progress, &peer) : 0;
    if (!state->settled) {
        __u32 inbound = other ? (__u32)other->ingress : 0;
        if (size >= STRAIT_ENDPOINT_BULK_BYTES || (state->sends > 0 && (read != state->last_read || inbound != state->last_inbound))) {
            state->settled = 1;
        } else if (++state->sends >= STRAIT_ENDPOINT_PROBE_SENDS) {
            state->mode = STRAIT_ENDPOINT_STACK;
            c->directions_to_stack++;
            goto pass;
        }
        state->last_read = read;
        state->last_inbound = inbound;
    }
    if (state->mode == STRAIT_ENDPOINT_EGRESS && !state->ingress_closed && other && other->tcp_read == (__u32)(route->forwarded + state->egress)) {
        state->mode = STRAIT_ENDPOINT_INGRESS;
        c->directions_to_ingress++;
    }
    if (state->mode == STRAIT_ENDPOINT_INGRESS && route->max_in_flight) {
        // Bound what the other endpoint holds unread in its ingress queue (charged to TCP's global
        // memory only). It publishes that count at each of its sends; since its last one, add what
        // this direction sent. Over the budget, back to EGRESS for good, where its receive window
        // bounds the rest (safe: it reads its ingress queue before its TCP queue; and a receiver
        // this far behind is a one-way stream, which egress serves as well).
        if (other && other->sends != state->answer_sends) {
            state->answer_sends = other->sends;
            state->unanswered = other->ingress_unread;
        }
        if (state->unanswered + size > route->max_in_flight) {
            state->mode = STRAIT_ENDPOINT_EGRESS;
            state->ingress_closed = 1;
            c->directions_to_egress++;
        } else {
            state->unanswered += size;
        }
    }
    if (state->mode == STRAIT_ENDPOINT_INGRESS) {
        if (bpf_msg_redirect_hash(msg, &endpoint_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
            if (own)
                __sync_fetch_and_add(&own->ingress, size);
            c->redirected_bytes += size;
            c->redirected_messages++;
            return SK_PASS;
        }
    } else {
        __u64 target = route->target_cookie;
        if (bpf_msg_redirect_hash(msg, &endpoint_targets, &target, 0) == SK_PASS) {
            state->egress += size;
            c->redirected_bytes += size;
            c->redirected_messages++;
            return SK_PASS;
        }
    }
    // The target has closed: so is the relay, and the endpoint's own connection takes the bytes.
    state->mode = STRAIT_ENDPOINT_STACK;
    c->redirect_failures++;
pass:
    c->passed_bytes += size;
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
