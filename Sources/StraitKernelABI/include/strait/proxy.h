// Shared between proxy.bpf.c and StraitProxy: the pairing of a proxied socket with its peer.
#pragma once
#include <linux/types.h>

/// Value of `proxy_pairs`, keyed by the socket cookie (SO_COOKIE) of the socket whose received
/// bytes are redirected. Written by userspace before the socket joins `proxy_socks`; the verdict
/// program adds to `bytes` and `messages`.
struct strait_proxy_pair {
    __u64 peer_cookie;   // key in `proxy_targets` of the socket whose egress gets the bytes
    __u64 bytes;         // bytes redirected so far
    __u64 messages;      // verdicts run (one per parsed message)
};

/// Per-CPU totals across all connections (index 0 of `proxy_stats`).
struct strait_proxy_counters {
    __u64 redirected_bytes;
    __u64 redirected_messages;
    __u64 unpaired_drops;    // a verdict for a socket with no pair entry: dropped (never expected)
    __u64 redirect_failures; // the peer had already left the map (it closed): dropped
};
