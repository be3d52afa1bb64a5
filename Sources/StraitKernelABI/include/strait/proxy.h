// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// Shared between proxy.bpf.c and StraitProxy: the pairing of a proxied socket with its peer.
#pragma once
#include <linux/types.h>
#include "accel.h"  // struct strait_sock_key

/// Value of `proxy_pairs`, keyed by the socket cookie (SO_COOKIE) of the socket whose received
/// bytes are redirected. Written by userspace before the socket joins `proxy_socks`; the verdict
/// program adds to `bytes`, `messages` and `passed`, and sets `throttled`.
///
/// Back-pressure. A redirected skb waits in the peer's psock backlog until the peer's send buffer
/// takes it, and that backlog has no limit of its own: a peer that never reads would let the
/// source's window stay open for ever. So the verdict keeps the bytes in flight (redirected, not yet
/// in the peer's TCP send queue: `bytes - (peer write_seq - peer_base_write_seq)`) under
/// `max_in_flight`. The first message that would go over it, and every later one (`throttled`
/// latches, so order holds), is passed to the source socket's own receive queue instead, where it
/// is charged to the source's receive buffer: TCP's window closes and the sender stops. The proxy
/// sees the source readable, waits until the backlog has reached the peer's send queue, and copies
/// the rest of that direction in userspace (Relay.swift).
struct strait_proxy_pair {
    __u64 peer_cookie;   // key in `proxy_targets` of the socket whose egress gets the bytes
    __u64 bytes;         // bytes redirected so far
    __u64 messages;      // verdicts run (one per parsed message)
    __u64 passed;        // bytes passed to the source's own queue once throttled
    __u32 max_in_flight; // bytes redirected and not yet in the peer's send queue, at most (0: no limit)
    __u32 peer_base_write_seq; // the peer's write_seq at this source's first verdict (nothing of
                               // the source's was redirected yet); set by the verdict
    __u32 throttled;     // 1: over budget once; from then on every message is passed
    __u32 based;         // 1: peer_base_write_seq is set
};

/// Per-CPU totals across all connections (index 0 of `proxy_stats`).
struct strait_proxy_counters {
    __u64 redirected_bytes;
    __u64 redirected_messages;
    __u64 unpaired_drops;    // a verdict for a socket with no pair entry: dropped (never expected)
    __u64 redirect_failures; // the peer had already left the map (it closed): dropped
    __u64 throttles;         // directions that went over their in-flight budget (moved to copy)
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
/// every byte the endpoint sent through its own connection has been forwarded by the proxy, and
/// straight into the other endpoint's receive queue (`peer_key`) once that endpoint has also read
/// every byte that reached it over TCP.
struct strait_endpoint_route {
    __u64 target_cookie;  // key in `endpoint_targets`: the proxy socket facing the other endpoint
    __u64 forwarded;      // bytes of this endpoint the proxy has written into that socket
    struct strait_sock_key peer_key;  // the other endpoint's own key
    __u32 peer_tracked;   // 1: the other endpoint is in `endpoint_socks`
    __u32 max_in_flight;  // INGRESS: most bytes unread in the other endpoint's ingress queue
                          // (0: no limit); above, back to EGRESS for good, where TCP's window
                          // bounds the rest
};

enum strait_endpoint_mode {
    STRAIT_ENDPOINT_PASSING = 0,  // sends take the endpoint's own connection to the proxy
    STRAIT_ENDPOINT_EGRESS = 1,   // sends go into the proxy's socket facing the other endpoint
    STRAIT_ENDPOINT_INGRESS = 2,  // sends go straight into the other endpoint's receive queue
    STRAIT_ENDPOINT_STACK = 3,    // for good on the endpoint's own connection: the relay ended, or
                                  // the direction streams small writes, which TCP batches better
};

/// Adaptive rule of a redirecting direction, until it settles: a send of at least
/// STRAIT_ENDPOINT_BULK_BYTES, or a send after the endpoint received something (request/response),
/// keeps it redirecting; STRAIT_ENDPOINT_PROBE_SENDS small sends in a row without receiving move it
/// to STACK. Measured with iperf3 through the proxy: redirecting 1-8 KiB writes ran at 0.63-0.89x
/// of copying them, 16 KiB at par, 32 KiB at 1.68x.
#define STRAIT_ENDPOINT_BULK_BYTES 16384
#define STRAIT_ENDPOINT_PROBE_SENDS 32

/// Per endpoint socket (socket-local storage), written only by the kernel.
struct strait_endpoint_state {
    struct strait_sock_key self;  // this socket's own key
    __u64 egress;         // bytes sent into the proxy's socket
    __u32 mode;           // enum strait_endpoint_mode
    __u32 base_seq;       // copied_seq when established: TCP bytes read = copied_seq - base_seq
    __u32 base_write_seq; // write_seq when established: bytes queued on the endpoint's own
                          // connection = write_seq - base_write_seq, however they got there
    __u32 reserved;
    __u32 settled;        // 1: the adaptive rule keeps this direction redirecting
    __u32 sends;          // redirected sends while unsettled
    __u32 last_read;      // TCP bytes read, and bytes the other endpoint put straight into this
    __u32 last_inbound;   // one's queue, at the previous redirected send
    __u32 unanswered;     // INGRESS: bytes the other endpoint may hold unread: what it had unread
                          // at its last send, plus what this one sent since
    __u32 ingress_closed; // 1: went back to EGRESS over the budget; never INGRESS again
    __u64 answer_sends;   // the other endpoint's `sends` when `unanswered` was last reset
};

/// Value of `endpoint_progress`, keyed by an endpoint socket's own key; written by that socket's
/// sk_msg at each send, read by the other endpoint's sk_msg and by the proxy (accounting, idle).
struct strait_endpoint_progress {
    __u32 tcp_read;       // TCP bytes this endpoint's application had read, at its last send
    __u32 ingress_unread; // bytes unread in this endpoint's own ingress queue, at its last send
    __u64 ingress;        // bytes this endpoint sent straight into the other endpoint's queue
    __u64 sends;          // sends this endpoint made (each publishes the fields above)
};

/// Per-CPU totals (index 0 of `endpoint_stats`).
struct strait_endpoint_counters {
    __u64 endpoints_tracked;
    __u64 directions_switched;     // to egress
    __u64 directions_to_ingress;
    __u64 directions_to_stack;     // small streaming writes: back on the endpoint's own connection
    __u64 redirected_bytes;        // egress and ingress
    __u64 redirected_messages;
    __u64 passed_bytes;
    __u64 redirect_failures;  // the target had left its map (relay ended): sent on the own connection
    __u64 directions_to_egress;  // INGRESS over its budget with a receiver that does not read: back to EGRESS
};
