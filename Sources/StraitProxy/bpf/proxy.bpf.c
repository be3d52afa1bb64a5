// SPDX-License-Identifier: GPL-2.0
// The proxy's kernel datapath: each proxied socket's received bytes go straight to its peer's
// egress (tcp_sendmsg from the psock backlog), so userspace never touches the payload.
//
// Two SOCKHASH maps, both keyed by socket cookie:
//  - proxy_targets carries no programs. A pair's two sockets enter it first, so by the time either
//    socket can run a verdict, its peer is already a valid redirect target.
//  - proxy_socks carries the stream parser and verdict. Joining it starts the strparser.
// Bytes that reached a socket before it joined proxy_socks sit in its TCP receive queue; the
// strparser only looks at the queue on the next data_ready. Userspace raises one (setsockopt
// SO_RCVLOWAT calls tcp_data_ready) right after insertion, so they go through the verdict, in order,
// ahead of anything that arrives later. See SockmapForwarder.swift.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <strait/proxy.h>

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} proxy_socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} proxy_targets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct strait_proxy_pair);
} proxy_pairs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_proxy_counters);
} proxy_stats SEC(".maps");

// CO-RE view of the kernel's tcp_sock: only the field read here.
struct tcp_sock {
    __u32 write_seq;
} __attribute__((preserve_access_index));

// Would `length` more bytes put more than `max_in_flight` of this source's bytes between the
// verdict and the peer's TCP send queue (in the peer's psock backlog)? Verdicts of one socket run
// one at a time, so the first one, with nothing redirected yet, takes the peer's base.
static __always_inline int over_budget(struct strait_proxy_pair *pair, __u64 peer, __u32 length)
{
    struct bpf_sock *target = bpf_map_lookup_elem(&proxy_targets, &peer);
    if (!target)
        return 0;  // the peer is gone; the redirect below fails and says so
    int over = 0;
    struct tcp_sock *tcp = bpf_skc_to_tcp_sock(target);
    if (tcp) {
        __u32 written = tcp->write_seq;
        if (!pair->based) {
            pair->peer_base_write_seq = written;
            pair->based = 1;
        }
        __u32 in_flight = (__u32)pair->bytes - (written - pair->peer_base_write_seq);
        over = in_flight + length > pair->max_in_flight;
    }
    bpf_sk_release(target);
    return over;
}

// The kernel's view of a strparser message, kept in the skb's control block
// (`struct sk_skb_cb` in include/net/strparser.h), read through CO-RE.
struct strp_msg {
    int full_len;  // the message's length, as the parser answered
    int offset;    // where the message starts in the skb
} __attribute__((preserve_access_index));

struct _strp_msg {
    struct strp_msg strp;
} __attribute__((preserve_access_index));

struct sk_skb_cb {
    struct _strp_msg strp;
} __attribute__((preserve_access_index));

struct sk_buff {
    char cb[48];
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *ctx) __ksym;

static __always_inline struct strp_msg *strparser_message(struct __sk_buff *skb)
{
    struct sk_buff *kernel = bpf_cast_to_kern_ctx(skb);
    return &((struct sk_skb_cb *)kernel->cb)->strp.strp;
}

// One message is whatever the strparser has: a TCP stream has no framing to respect. The skb it
// hands over is a whole segment, of which the message starts `offset` bytes in: after a join with
// the segment partly read by userspace, or after a message that ended inside it. Answering the
// segment's length would claim those bytes again: the message would wait for as many bytes of the
// next segment, every later message would start inside a segment too, and the last one of the
// stream would never come out.
SEC("sk_skb/stream_parser")
int strait_proxy_parser(struct __sk_buff *skb)
{
    return skb->len - strparser_message(skb)->offset;
}

SEC("sk_skb/stream_verdict")
int strait_proxy_verdict(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct strait_proxy_counters *stats = bpf_map_lookup_elem(&proxy_stats, &zero);
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct strait_proxy_pair *pair = bpf_map_lookup_elem(&proxy_pairs, &cookie);
    if (!pair) {
        if (stats)
            stats->unpaired_drops++;
        return SK_DROP;
    }
    // The message's bytes: the skb may hold bytes before it (see the parser).
    __u32 length = strparser_message(skb)->full_len;
    __u64 peer = pair->peer_cookie;
    __sync_fetch_and_add(&pair->messages, 1);
    if (!pair->throttled && pair->max_in_flight && over_budget(pair, peer, length)) {
        pair->throttled = 1;
        if (stats)
            stats->throttles++;
    }
    if (pair->throttled) {
        // Kept in this socket's own receive queue, charged to its receive buffer: the sender's
        // window closes. The proxy reads these bytes and copies them, after the backlog.
        __sync_fetch_and_add(&pair->passed, length);
        return SK_PASS;
    }
    __sync_fetch_and_add(&pair->bytes, length);
    long verdict = bpf_sk_redirect_hash(skb, &proxy_targets, &peer, 0);
    if (stats) {
        if (verdict == SK_PASS) {
            stats->redirected_bytes += length;
            stats->redirected_messages++;
        } else {
            stats->redirect_failures++;
        }
    }
    return verdict;
}

char LICENSE[] SEC("license") = "GPL";
