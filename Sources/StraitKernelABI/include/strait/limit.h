// Layout shared by limit.bpf.c and StraitLimit (Swift): rate limits per connection (sock_ops
// pacing) and per client or cgroup in aggregate (Earliest Departure Time at tc egress, under fq).
#pragma once
#include <linux/types.h>

/// Capacity of the rule and selector maps (not preallocated: memory follows use).
#define STRAIT_LIMIT_MAX_RULES 16384
/// Interfaces the egress program may be attached to at once.
#define STRAIT_LIMIT_MAX_INTERFACES 256
/// Sentinel for "no limit" in `SO_MAX_PACING_RATE` (bytes per second, a 32-bit value for bpf_setsockopt).
#define STRAIT_LIMIT_UNLIMITED 0xffffffffu

enum strait_limit_scope {
    /// sock_ops sets `SO_MAX_PACING_RATE` on each matching socket: TCP paces itself.
    STRAIT_LIMIT_CONNECTION = 1,
    /// The tc egress program spaces the departures of every matching packet together.
    STRAIT_LIMIT_AGGREGATE = 2,
};

/// `config` array, index 0.
struct strait_limit_config {
    /// Bumped by every rule change. A socket whose recorded generation differs looks its rule up
    /// again at its next RTT callback: changed rules reach established connections within an RTT
    /// of their next ACK, without a reload.
    __u32 generation;
    /// User space only: the id the next new rule gets (ids are never reused, so counters never mix).
    __u32 next_rule_id;
    /// Aggregate limits drop a packet rather than schedule it later than now + horizon: a
    /// flow that ignores back-pressure (UDP) cannot fill fq's queue with hours of backlog.
    __u64 horizon_ns;
};

/// `rules` hash: rule id → rule.
struct strait_limit_rule {
    __u64 rate_bytes_per_second;
    __u32 scope;    // strait_limit_scope
    __u32 reserved;
};

/// `conn_cgroup` hash key is the cgroup id (__u64). `conn_port` hash key:
struct strait_limit_port_key {
    __u64 cgroup_id;
    __u16 port;       // host byte order
    __u8 remote;      // 0: the socket's local port, 1: its peer's
    __u8 reserved[5];
};

/// `conn_prefix` LPM trie key: the cgroup id (all 64 bits always match) then the peer's address,
/// IPv4 as IPv4-mapped IPv6, so one trie holds both families. prefixlen = 64 + mapped length.
struct strait_limit_conn_prefix_key {
    __u32 prefixlen;
    __u8 cgroup_id[8];   // native byte order, as the kernel returns it
    __u8 addr[16];
};

/// `agg_cgroup` hash key: packets leaving `ifindex` from sockets of this cgroup (exactly this one).
struct strait_limit_agg_cgroup_key {
    __u64 cgroup_id;
    __u32 ifindex;
    __u32 reserved;
};

/// `agg_dest` LPM trie key: packets leaving `ifindex` for a destination in the prefix (a client,
/// or a network of them). prefixlen = 32 + IPv4-mapped length.
struct strait_limit_agg_dest_key {
    __u32 prefixlen;
    __u8 ifindex[4];     // native byte order
    __u8 addr[16];
};

/// `counters` per-CPU hash: rule id → what the rule did (summed over CPUs by user space).
struct strait_limit_counter {
    __u64 packets;    // aggregate: packets matched
    __u64 bytes;      // aggregate: their bytes
    __u64 delayed;    // aggregate: packets given a later departure time
    __u64 dropped;    // aggregate: packets beyond the horizon, dropped
    __u64 sockets;    // per connection: times a pacing rate was set on a socket
};

/// `interfaces` hash: ifindex → what `strait limit` did to that interface, so `remove` can undo it.
struct strait_limit_interface {
    __u32 ifindex;
    __u32 installed_fq;  // 1: strait limit replaced the default root qdisc with fq; remove deletes it
    char name[16];       // IFNAMSIZ
};
