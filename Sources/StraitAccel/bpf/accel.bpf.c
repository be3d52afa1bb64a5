// SPDX-License-Identifier: GPL-2.0
// Same-host TCP acceleration: sock_ops records established sockets in a SOCKHASH keyed by their
// 4-tuple and network namespace; sk_msg sends each message straight into the peer socket's
// ingress queue, skipping TCP/IP and loopback.
//
// Ordering rules this file keeps. The receive side (tcp_bpf_recvmsg) reads a socket's ingress queue
// before its TCP receive queue, so:
//  - a direction may start redirecting only at its first send, when nothing of it is on the stack;
//  - redirect -> stack is always safe afterwards (the older, redirected bytes are read first);
//  - a socket leaves the hash only if nothing was ever redirected into it (`inbound`), because
//    leaving frees its ingress queue.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <strait/accel.h>
#include <strait/sock_key.bpf.h>

// CO-RE views of kernel structs: only the fields read here; libbpf relocates the offsets
// against the running kernel's BTF.
struct sock___strait {
    void *sk_user_data;
} __attribute__((preserve_access_index));

struct sk_psock___strait {
    __u32 msg_tot_len;
} __attribute__((preserve_access_index));

// sk_user_data carries flag bits in its low bits (SK_USER_DATA_NOCOPY, _BPF, _PSOCK).
#define SK_USER_DATA_PTRMASK (~7UL)

// A socket that has watched this many received packets without deciding anything stops watching.
#define WATCH_PACKETS_LIMIT 64
// Received headers (slow path), RTT samples (every ACK received, fast path included) and sent
// headers (every ACK a pure receiver sends).
#define WATCH_FLAGS (BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG)

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct strait_sock_key);
    __type(value, __u64);
} socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_accel_config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u16);
    __type(value, __u8);
} ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u16);
    __type(value, __u8);
} exclude_ports SEC(".maps");

// Ports of Strait's own calibration traffic: sockets with one of them are never tracked, so a
// calibration in a child cgroup measures its own sockets only and leaves this accelerator alone.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u16);
    __type(value, __u8);
} bypass_ports SEC(".maps");

// Written and read by userspace only (see strait_accel_calibration); pinned with the rest.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_accel_calibration);
} calibration SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_lpm_key);
    __type(value, __u8);
} cidrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_accel_counters);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct strait_accel_sock_state);
} sock_state SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct strait_sock_key);
    __type(value, struct strait_accel_inbound);
} inbound SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline struct strait_accel_counters *counters(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&stats, &zero);
}


static __always_inline void emit(const struct strait_sock_key *key, __u64 cookie, __u32 kind, __u32 detail)
{
    struct strait_accel_event *event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
    if (!event) {
        struct strait_accel_counters *c = counters();
        if (c)
            c->events_dropped++;
        return;
    }
    event->timestamp_ns = bpf_ktime_get_ns();
    event->socket_cookie = cookie;
    event->key = *key;
    event->kind = kind;
    event->detail = detail;
    bpf_ringbuf_submit(event, 0);
}


static __always_inline int policy_allows(const struct strait_accel_config *cfg, const struct strait_sock_key *key)
{
    if (bpf_map_lookup_elem(&exclude_ports, &key->local_port) || bpf_map_lookup_elem(&exclude_ports, &key->remote_port))
        return 0;
    if (cfg->flags & STRAIT_ACCEL_PORT_FILTER) {
        if (!bpf_map_lookup_elem(&ports, &key->local_port) && !bpf_map_lookup_elem(&ports, &key->remote_port))
            return 0;
    }
    if (cfg->flags & STRAIT_ACCEL_CIDR_FILTER) {
        struct strait_lpm_key lpm = {.prefixlen = 128};
        __builtin_memcpy(lpm.addr, key->remote_ip, 16);
        if (!bpf_map_lookup_elem(&cidrs, &lpm))
            return 0;
    }
    return 1;
}

static __always_inline void on_established(struct bpf_sock_ops *skops, struct strait_accel_config *cfg)
{
    struct strait_sock_key key;
    struct strait_accel_counters *c = counters();
    if (key_of_sockops(skops, &key) < 0 || !c)
        return;
    if (bpf_map_lookup_elem(&bypass_ports, &key.local_port) || bpf_map_lookup_elem(&bypass_ports, &key.remote_port))
        return;
    __u64 cookie = bpf_get_socket_cookie(skops);
    if (!policy_allows(cfg, &key)) {
        c->sockets_skipped_policy++;
        emit(&key, cookie, STRAIT_EVENT_SKIPPED, 0);
        return;
    }
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return;
    struct strait_accel_sock_state *state = bpf_sk_storage_get(&sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!state)
        return;
    state->socket_cookie = cookie;
    if (bpf_sock_hash_update(skops, &socks, &key, BPF_ANY) != 0)
        return;
    c->sockets_tracked++;
    // Watch received packets and ACKs until this socket's directions are decided: that is where a
    // socket whose flows stay on the stack leaves the hash (sk_msg may not delete).
    bpf_sock_ops_cb_flags_set(skops, WATCH_FLAGS);
    emit(&key, cookie, STRAIT_EVENT_ESTABLISHED, skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB);
}

// Bytes waiting in the socket's ingress queue (redirected, not yet read), or -1 if unknown.
static __always_inline long ingress_bytes(struct bpf_sock *sk)
{
    struct tcp_sock *tcp = bpf_skc_to_tcp_sock(sk);
    if (!tcp)
        return -1;
    struct sock___strait *full = (void *)tcp;
    unsigned long user_data = 0;
    if (bpf_core_read(&user_data, sizeof(user_data), &full->sk_user_data) || !user_data)
        return -1;
    struct sk_psock___strait *psock = (void *)(user_data & SK_USER_DATA_PTRMASK);
    __u32 queued = 0;
    if (bpf_core_read(&queued, sizeof(queued), &psock->msg_tot_len))
        return -1;
    return queued;
}

static __always_inline void stop_watching(struct bpf_sock_ops *skops)
{
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

// Removes the socket from the hash (its flows continue on the stack) and tells its peer, whose
// ingress queue then receives nothing more from it.
static __always_inline void release(struct bpf_sock_ops *skops, struct strait_accel_sock_state *state, const struct strait_sock_key *key)
{
    stop_watching(skops);
    if (bpf_map_delete_elem(&socks, key) != 0)
        return;
    struct strait_sock_key peer;
    reverse(key, &peer);
    struct strait_accel_inbound *peer_inbound = bpf_map_lookup_elem(&inbound, &peer);
    if (peer_inbound)
        peer_inbound->sender_left = 1;
    struct strait_accel_counters *c = counters();
    if (c)
        c->sockets_released++;
    emit(key, state->socket_cookie, STRAIT_EVENT_RELEASED, 0);
}

// Runs for each received packet or ACK while the socket watches (WATCH_FLAGS). sk_msg may not
// delete from the hash, so this is where a socket whose flows stay on the stack leaves it:
//  - a sender settled on the stack, if nothing was ever redirected into it;
//  - a receiver whose sender has left, once its ingress queue has been read empty.
static __always_inline void on_packet(struct bpf_sock_ops *skops)
{
    struct bpf_sock *sk = skops->sk;
    struct strait_sock_key key;
    if (!sk || key_of_sockops(skops, &key) < 0)
        return;
    struct strait_accel_sock_state *state = bpf_sk_storage_get(&sock_state, sk, 0, 0);
    if (!state) {
        stop_watching(skops);
        return;
    }
    if (state->mode == STRAIT_MODE_REDIRECT && state->settled) {
        stop_watching(skops);
        return;
    }
    struct strait_accel_inbound *received = bpf_map_lookup_elem(&inbound, &key);
    if (!received) {
        if (state->mode == STRAIT_MODE_STACK)
            release(skops, state, &key);
        else if (++state->packets_watched >= WATCH_PACKETS_LIMIT)
            stop_watching(skops);
        return;
    }
    if (state->mode != STRAIT_MODE_REDIRECT && received->sender_left && ingress_bytes(sk) == 0)
        release(skops, state, &key);
}

SEC("sockops")
int strait_accel_sockops(struct bpf_sock_ops *skops)
{
    __u32 zero = 0;
    struct strait_accel_config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg)
        return 1;
    switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        on_established(skops, cfg);
        break;
    case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
    case BPF_SOCK_OPS_RTT_CB:
    case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
        on_packet(skops);
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (skops->args[1] == BPF_TCP_CLOSE) {
            struct strait_sock_key key;
            if (key_of_sockops(skops, &key) == 0) {
                bpf_map_delete_elem(&inbound, &key);
                emit(&key, bpf_get_socket_cookie(skops), STRAIT_EVENT_CLOSED, skops->args[0]);
            }
        }
        break;
    }
    return 1;
}

// Emits an event about the sender, whose key is the peer's key reversed.
static __always_inline void report(const struct strait_accel_sock_state *state, const struct strait_sock_key *peer, __u32 kind, __u32 detail)
{
    struct strait_sock_key self;
    reverse(peer, &self);
    emit(&self, state->socket_cookie, kind, detail);
}

// Final decision for a direction (detail 1 in the event: settled).
static __always_inline void settle(struct strait_accel_sock_state *state, const struct strait_sock_key *peer, __u32 mode)
{
    state->mode = mode;
    state->settled = 1;
    report(state, peer, mode == STRAIT_MODE_REDIRECT ? STRAIT_EVENT_ACCELERATED : STRAIT_EVENT_STACK, 1);
}

// floor(log2(size)): the size class `redirect_size_classes` is indexed by.
static __always_inline __u32 size_class(__u32 size)
{
    __u32 class = 0;
    if (size >= 1U << 16) { class += 16; size >>= 16; }
    if (size >= 1U << 8) { class += 8; size >>= 8; }
    if (size >= 1U << 4) { class += 4; size >>= 4; }
    if (size >= 1U << 2) { class += 2; size >>= 2; }
    if (size >= 1U << 1) class += 1;
    return class;
}

// Whether a bulk send of `size` bytes is faster redirected on this machine (the calibration's answer).
static __always_inline int bulk_redirects(const struct strait_accel_config *cfg, __u32 size)
{
    return (cfg->redirect_size_classes >> size_class(size)) & 1;
}

// Whether a stream of small writes of `size` bytes is faster redirected on this machine (the
// calibration's answer; never when bulk_bytes was set by hand or nothing was measured).
static __always_inline int stream_redirects(const struct strait_accel_config *cfg, __u32 size)
{
    return (cfg->stream_size_classes >> size_class(size)) & 1;
}

// Adaptive mode, while a redirecting direction is still undecided: keep it redirecting if its sends
// are bulk of a size the calibration found faster redirected, or alternate with receives
// (request/response, where redirect cuts latency). A direction that streams small writes for
// probe_sends sends keeps redirecting only where the calibration measured such streams faster
// redirected (elsewhere TCP batches them better than per-message redirects); bulk of a size where
// redirect loses goes to the stack.
static __always_inline void observe_send(struct sk_msg_md *msg, const struct strait_accel_config *cfg,
                                         struct strait_accel_sock_state *state, const struct strait_sock_key *peer, __u32 size)
{
    struct strait_sock_key self;
    reverse(peer, &self);
    struct strait_accel_inbound *received = bpf_map_lookup_elem(&inbound, &self);
    __u32 inbound_now = received ? (__u32)received->messages : 0;
    struct tcp_sock *tcp = bpf_skc_to_tcp_sock(msg->sk);
    __u32 copied_now = tcp ? tcp->copied_seq : 0;

    if (size >= cfg->bulk_bytes) {
        settle(state, peer, bulk_redirects(cfg, size) ? STRAIT_MODE_REDIRECT : STRAIT_MODE_STACK);
    } else if (state->sends > 0 && (inbound_now != state->last_inbound || copied_now != state->last_copied_seq)) {
        if (++state->idle_sends >= cfg->idle_sends)
            settle(state, peer, STRAIT_MODE_REDIRECT);
    } else if (state->sends >= cfg->probe_sends) {
        settle(state, peer, stream_redirects(cfg, size) ? STRAIT_MODE_REDIRECT : STRAIT_MODE_STACK);
    }
    state->sends++;
    state->last_inbound = inbound_now;
    state->last_copied_seq = copied_now;
}

SEC("sk_msg")
int strait_accel_msg(struct sk_msg_md *msg)
{
    __u32 zero = 0;
    __u32 size = msg->size;
    struct strait_accel_config *cfg = bpf_map_lookup_elem(&config, &zero);
    struct strait_accel_counters *c = counters();
    struct bpf_sock *sk = msg->sk;
    if (!cfg || !c || !sk)
        return SK_PASS;
    struct strait_accel_sock_state *state = bpf_sk_storage_get(&sock_state, sk, 0, 0);
    struct strait_sock_key peer;
    if (!state || peer_key_of_msg(msg, &peer) < 0)
        return SK_PASS;

    if (state->mode == STRAIT_MODE_FRESH) {
        if (!(cfg->flags & STRAIT_ACCEL_REDIRECT)) {
            state->mode = STRAIT_MODE_STACK;
        } else {
            // Mark the peer's ingress queue as in use before anything can be queued there.
            struct strait_accel_inbound first = {.messages = 0};
            if (bpf_map_update_elem(&inbound, &peer, &first, BPF_NOEXIST) == 0 || bpf_map_lookup_elem(&inbound, &peer)) {
                state->mode = STRAIT_MODE_REDIRECT;
                report(state, &peer, STRAIT_EVENT_ACCELERATED, 0);
            } else {
                state->mode = STRAIT_MODE_STACK;
            }
        }
    }
    if (state->mode == STRAIT_MODE_REDIRECT && !(cfg->flags & STRAIT_ACCEL_REDIRECT)) {
        c->fallback_disabled_messages++;
        c->fallback_disabled_bytes += size;
        settle(state, &peer, STRAIT_MODE_STACK);
        return SK_PASS;
    }
    if (state->mode == STRAIT_MODE_REDIRECT && (cfg->flags & STRAIT_ACCEL_ADAPTIVE)) {
        if (!state->settled)
            observe_send(msg, cfg, state, &peer, size);
        else if (size >= cfg->bulk_bytes && !bulk_redirects(cfg, size))
            // Settled by request/response, now sending bulk of a size where redirect loses: to the
            // stack from this message on (redirect -> stack keeps byte order).
            settle(state, &peer, STRAIT_MODE_STACK);
    }
    if (state->mode != STRAIT_MODE_REDIRECT) {
        c->fallback_stack_messages++;
        c->fallback_stack_bytes += size;
        return SK_PASS;
    }

    // The peer's request/response detector reads this count, however far this side has decided.
    struct strait_accel_inbound *queued = bpf_map_lookup_elem(&inbound, &peer);
    if (queued)
        __sync_fetch_and_add(&queued->messages, 1);
    if (bpf_msg_redirect_hash(msg, &socks, &peer, BPF_F_INGRESS) == SK_PASS) {
        c->redirected_messages++;
        c->redirected_bytes += size;
        return SK_PASS;
    }
    // The peer is not (or no longer) in the hash: this direction stays on the stack from now on.
    settle(state, &peer, STRAIT_MODE_STACK);
    c->fallback_no_peer_messages++;
    c->fallback_no_peer_bytes += size;
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
