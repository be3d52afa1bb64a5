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

// The skmsg datapath (endpoint.bpf.c): local endpoints' own sends go straight into the proxy's
// other socket. Endpoint sockets are keyed by `struct strait_sock_key` (strait/accel.h).

/// What `endpoint_filter` marks: which established sockets in the endpoints cgroup are tracked.
enum strait_endpoint_role {
    STRAIT_ENDPOINT_CLIENT = 1,    // an active socket whose remote end is a proxy listener
    STRAIT_ENDPOINT_UPSTREAM = 2,  // a passive socket whose local end is a proxy upstream
};

/// Key of `endpoint_filter`. An all-zero `ip` matches any address on `port` (wildcard listener).
struct strait_endpoint_filter_key {
    __u8 ip[16];   // IPv4 as IPv4-mapped IPv6
    __u16 port;    // host byte order
    __u16 role;    // enum strait_endpoint_role
    __u32 reserved;
};

/// Value of `endpoint_routes`, keyed by the endpoint socket's own key. Written only by userspace
/// (a whole-value replace), read by sk_msg: the endpoint's sends may go into `target_cookie` once
/// every byte the endpoint sent through its own connection has been forwarded by the proxy.
struct strait_endpoint_route {
    __u64 target_cookie;  // key in `endpoint_targets`: the proxy socket facing the other endpoint
    __u64 forwarded;      // bytes of this endpoint the proxy has written into that socket
};

enum strait_endpoint_mode {
    STRAIT_ENDPOINT_PASSING = 0,      // sends take the endpoint's own connection to the proxy
    STRAIT_ENDPOINT_REDIRECTING = 1,  // sends go into the proxy's socket facing the other endpoint
    STRAIT_ENDPOINT_ENDED = 2,        // the relay ended: sends take the endpoint's own connection
};

/// Per endpoint socket (socket-local storage), written only by the kernel.
struct strait_endpoint_state {
    __u64 passed;         // bytes sent through the endpoint's own connection
    __u64 redirected;     // bytes sent straight into the target
    __u64 target_cookie;
    __u32 mode;           // enum strait_endpoint_mode
    __u32 reserved;
};

/// Per-CPU totals (index 0 of `endpoint_stats`).
struct strait_endpoint_counters {
    __u64 endpoints_tracked;
    __u64 directions_switched;
    __u64 redirected_bytes;
    __u64 redirected_messages;
    __u64 passed_bytes;
    __u64 redirect_failures;  // the target had left the map (relay ended): sent on the own connection
};
