// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// Layout shared by drop.bpf.c and StraitDrop (Swift): XDP early drop from rules held in maps.
#pragma once
#include <linux/types.h>

/// Rules live in two complete sets (0 and 1) of maps; the program reads `active_set` once per
/// packet and consults only that set. `strait drop load` fills the standby set, then flips
/// `active_set` with one map write, so every packet sees either the whole old set or the whole new one.
#define STRAIT_DROP_RULE_SETS 2

/// Capacity of each rule map of one set (the maps are not preallocated: memory follows use).
#define STRAIT_DROP_MAX_PREFIXES 262144
#define STRAIT_DROP_MAX_PORTS 8192
#define STRAIT_DROP_MAX_MACS 8192
#define STRAIT_DROP_MAX_ARP 8192
/// Capacity of the per-rule counters: rules of both sets together.
#define STRAIT_DROP_MAX_RULES (STRAIT_DROP_RULE_SETS * (4 * STRAIT_DROP_MAX_PREFIXES + STRAIT_DROP_MAX_PORTS + STRAIT_DROP_MAX_MACS + STRAIT_DROP_MAX_ARP))

enum strait_drop_set_flags {
    /// Allow-list mode: a frame that matches no rule is dropped; a match passes it.
    STRAIT_DROP_ALLOW_LIST = 1 << 0,
};

/// `config` map, index 0.
struct strait_drop_config {
    __u32 active_set;                          // 0 or 1
    __u32 set_flags[STRAIT_DROP_RULE_SETS];    // strait_drop_set_flags of each set
    __u32 next_rule_id;                        // user space only: the id the next new rule gets
};

/// Key of the IPv4 host maps (`host4_N`): a source rule of a whole /32 lives in a hash, as in
/// Cilium's prefilter, so that the common case (many single addresses) costs one hash lookup
/// whatever the number of rules; the tries hold only shorter prefixes. A /32 is the longest
/// possible match, so looking in the hash first keeps "longest prefix wins".
struct strait_drop_ipv4_host {
    __u8 addr[4];
};

/// Key of the IPv6 host maps (`host6_N`), for /128 source rules.
struct strait_drop_ipv6_host {
    __u8 addr[16];
};

/// Key of the IPv4 source-prefix and ARP-sender tries (`src4_N`, `arp_N`). Address in network order.
struct strait_drop_ipv4_key {
    __u32 prefixlen;
    __u8 addr[4];
};

/// Key of the IPv6 source-prefix tries (`src6_N`).
struct strait_drop_ipv6_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/// Key of the destination-port maps (`port_N`).
struct strait_drop_port_key {
    __u16 port;       // host byte order
    __u8 protocol;    // IPPROTO_TCP (6) or IPPROTO_UDP (17)
    __u8 reserved;
};

/// Key of the Ethernet source maps (`mac_N`).
struct strait_drop_mac_key {
    __u8 addr[6];
    __u16 reserved;
};

/// Every rule map's value is the rule's id (a `__u32`), which keys `rule_hits`.

/// Packets and bytes (whole frames, as the driver handed them over).
struct strait_drop_counter {
    __u64 packets;
    __u64 bytes;
};

/// Index of the per-CPU `verdicts` array: why a frame was passed or dropped.
enum strait_drop_verdict {
    STRAIT_DROP_PASS_NO_MATCH = 0,      // block-list mode, no rule matched
    STRAIT_DROP_PASS_ALLOWED = 1,       // allow-list mode, a rule matched
    STRAIT_DROP_PASS_NOT_IP = 2,        // neither IPv4, IPv6 nor ARP: never filtered
    STRAIT_DROP_PASS_NEIGHBOR = 3,      // allow-list mode, ICMPv6 neighbour discovery (types 133-137)
    STRAIT_DROP_DROP_BLOCKED = 4,       // block-list mode, a rule matched
    STRAIT_DROP_DROP_NOT_ALLOWED = 5,   // allow-list mode, no rule matched
    STRAIT_DROP_DROP_MALFORMED = 6,     // a header was truncated or invalid
    STRAIT_DROP_VERDICTS = 7,
};
