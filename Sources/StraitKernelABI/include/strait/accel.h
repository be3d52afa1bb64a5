// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// Layout shared by accel.bpf.c and StraitAccel (Swift).
#pragma once
#include <linux/types.h>

/// Key of the socket hash: one socket, seen from itself. Addresses are 16 bytes, IPv4 stored as
/// IPv4-mapped IPv6 (::ffff:a.b.c.d) so an AF_INET client and an AF_INET6 server on [::] still
/// pair. The network-namespace cookie keeps equal 4-tuples in different namespaces apart.
struct strait_sock_key {
    __u64 netns_cookie;
    __u8 local_ip[16];
    __u8 remote_ip[16];
    __u16 local_port;   // host byte order
    __u16 remote_port;  // host byte order
    __u32 reserved;
};

/// `config` map, index 0. Ports in `exclude_ports` are never tracked, whatever the flags.
enum strait_accel_flags {
    STRAIT_ACCEL_REDIRECT = 1 << 0,     // redirect at all; cleared while draining before disable
    STRAIT_ACCEL_PORT_FILTER = 1 << 1,  // track only sockets with a port in `ports`
    STRAIT_ACCEL_CIDR_FILTER = 1 << 2,  // track only sockets whose remote address is in `cidrs`
    STRAIT_ACCEL_ADAPTIVE = 1 << 3,     // probe each direction and keep small streaming writes on the stack
    STRAIT_ACCEL_BULK_BY_HAND = 1 << 4, // userspace only: bulk_bytes was set by hand and overrides the calibration
};

struct strait_accel_config {
    __u32 flags;
    /// A send of at least this many bytes makes its direction accelerate (adaptive mode).
    __u32 bulk_bytes;
    /// Sends observed before an undecided direction settles on the stack (adaptive mode).
    __u32 probe_sends;
    /// Consecutive sends into an idle pipe (request/response) that make a direction accelerate.
    __u32 idle_sends;
    /// Which bulk sends redirect, by size class: bit k covers sends of 2^k to 2^(k+1) - 1 bytes.
    /// A bulk send (adaptive mode) whose bit is clear puts its direction on the stack, also one
    /// already settled on redirect. Written from this machine's calibration, or all ones (every
    /// bulk send redirects) when `bulk_bytes` was set by hand or nothing was measured.
    __u32 redirect_size_classes;
    /// Which streams of small writes keep redirecting (adaptive mode), by the size class of the
    /// send that ends the probe (`probe_sends` sends under `bulk_bytes`, no request/response): a
    /// clear bit puts the direction on the stack. From this machine's calibration; 0 (every such
    /// stream on the stack) when `bulk_bytes` was set by hand or nothing was measured.
    __u32 stream_size_classes;
};

/// Sizes a calibration can hold (`calibration` map).
#define STRAIT_ACCEL_CALIBRATION_POINTS 8

/// One message size of a calibration: one stream's throughput plain and redirected, per CPU
/// placement (index 0: both ends on one CPU; 1: on two CPUs; see `placements`).
struct strait_accel_calibration_point {
    __u32 message_bytes;
    /// 1 if sends of this size (down to the previous point's) redirect: bulk sends, and streams of
    /// small writes below `bulk_bytes`.
    __u32 redirect;
    /// Medians of the samples.
    __u32 plain_mbit_s[2];
    __u32 redirected_mbit_s[2];
    /// Redirected over plain of interleaved sample pairs, in thousandths: their median and the
    /// lower confidence bound of that median (the decision's inputs).
    __u32 median_ratio_milli[2];
    __u32 lower_ratio_milli[2];
};

/// `calibration` map, index 0: the measurement `redirect_size_classes` came from. Only userspace
/// reads and writes it; it is pinned so `status` can show what is in force and when it was measured.
struct strait_accel_calibration {
    /// Unix time in seconds; 0 when never measured.
    __u64 measured_at;
    __u32 elapsed_ms;
    __u32 points;
    /// Interleaved plain/redirected pairs measured per size and placement.
    __u32 pairs;
    /// CPU placements measured (1 or 2): how many entries of each point's arrays are filled.
    __u32 placements;
    struct strait_accel_calibration_point point[STRAIT_ACCEL_CALIBRATION_POINTS];
};

/// Per-direction state, kept in socket-local storage.
enum strait_accel_mode {
    STRAIT_MODE_FRESH = 0,     // nothing sent yet: the first send may still choose redirect
    STRAIT_MODE_REDIRECT = 1,  // sends go straight to the peer's ingress queue
    STRAIT_MODE_STACK = 2,     // sends take the stack; the socket leaves the hash when it safely can
};

struct strait_accel_sock_state {
    __u32 mode;
    /// Adaptive mode: 1 once a redirecting direction has shown bulk or request/response traffic.
    __u32 settled;
    __u32 sends;
    __u32 idle_sends;
    /// What this socket had received when it last sent: TCP bytes read (copied_seq) and redirected
    /// messages queued to it. A change between two sends means request/response traffic.
    __u32 last_copied_seq;
    __u32 last_inbound;
    /// The socket's cookie, kept for events raised where the cookie helper is not allowed (sk_msg).
    __u64 socket_cookie;
    __u32 packets_watched;
    __u32 reserved;
};

/// `inbound` map value: messages redirected into a socket (keyed by its own key). Its presence
/// means the socket's ingress queue may hold data, so the socket must stay in the hash: leaving
/// frees that queue.
struct strait_accel_inbound {
    __u64 messages;
    /// Set when the sender left the hash: nothing more can be redirected here, so once the ingress
    /// queue is read empty this socket may leave too.
    __u32 sender_left;
    __u32 reserved;
};

/// Per-CPU counters (`stats` map, index 0). Userspace sums them over CPUs.
struct strait_accel_counters {
    __u64 sockets_tracked;        // entered the hash
    __u64 sockets_skipped_policy; // established but outside the port/CIDR policy
    __u64 sockets_released;       // left the hash early because their flows stay on the stack
    __u64 redirected_messages;
    __u64 redirected_bytes;
    __u64 fallback_no_peer_messages;  // peer not in the hash (outside the cgroup, remote, closed)
    __u64 fallback_no_peer_bytes;
    __u64 fallback_stack_messages;    // direction probing or settled on the stack
    __u64 fallback_stack_bytes;
    __u64 fallback_disabled_messages; // redirect switched off (draining)
    __u64 fallback_disabled_bytes;
    __u64 events_dropped;             // ring buffer full
};

enum strait_accel_event_kind {
    STRAIT_EVENT_ESTABLISHED = 1,
    STRAIT_EVENT_SKIPPED = 2,      // established, not tracked (policy)
    STRAIT_EVENT_ACCELERATED = 3,  // a direction switched to redirect
    STRAIT_EVENT_STACK = 4,        // a direction settled on the stack
    STRAIT_EVENT_RELEASED = 5,     // left the hash
    STRAIT_EVENT_CLOSED = 6,
};

/// One record of the `events` ring buffer.
struct strait_accel_event {
    __u64 timestamp_ns;  // CLOCK_MONOTONIC (bpf_ktime_get_ns)
    __u64 socket_cookie;
    struct strait_sock_key key;
    __u32 kind;
    __u32 detail;        // mode, or TCP state for CLOSED
};

/// Key of the `cidrs` LPM trie: prefix over the 16-byte mapped address.
struct strait_lpm_key {
    __u32 prefixlen;
    __u8 addr[16];
};
