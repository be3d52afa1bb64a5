// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
// Layout shared by steer.bpf.c and StraitSteer (Swift): how an sk_reuseport program picks a member
// of a SO_REUSEPORT group. Fixed-width fields, explicit padding.
#pragma once
#include <linux/types.h>

/// Members a group can have (slots of the `steer_sockets` socket array).
#define STRAIT_STEER_MAX_MEMBERS 64
/// Entries of the lookup table (a prime, for Maglev): a key's hash modulo this picks an entry,
/// which names a member slot. 16381 entries keep each of 64 members within ~1% of its share.
#define STRAIT_STEER_TABLE_SIZE 16381
/// Longest payload key, in bytes.
#define STRAIT_STEER_MAX_KEY 16
/// A slot number meaning "none".
#define STRAIT_STEER_NO_SLOT 0xffffffffu

/// How the program chooses.
enum strait_steer_mode {
    /// Hash the key, look the hash up in `steer_table` (consistent-hash, active-active with weights).
    STRAIT_STEER_MODE_TABLE = 1,
    /// The first live member of `order` (active-backup).
    STRAIT_STEER_MODE_ORDERED = 2,
};

/// What the table mode hashes.
enum strait_steer_key {
    STRAIT_STEER_KEY_CLIENT_ADDRESS = 1,  // source IP (4 or 16 bytes)
    STRAIT_STEER_KEY_FOUR_TUPLE = 2,      // source IP, destination IP, source port, destination port
    STRAIT_STEER_KEY_PAYLOAD = 3,         // UDP: `payload_length` bytes at `payload_offset` of the datagram
};

/// `steer_config`, index 0.
struct strait_steer_config {
    __u32 mode;            // enum strait_steer_mode; 0: select nothing (the kernel's hash decides)
    __u32 key;             // enum strait_steer_key
    __u32 payload_offset;  // bytes after the UDP header
    __u32 payload_length;  // 1...STRAIT_STEER_MAX_KEY
    /// Member for datagrams too short to hold the payload key; STRAIT_STEER_NO_SLOT: the kernel's hash.
    __u32 fallback_slot;
    __u32 order_count;     // members in `order` (ordered mode)
    __u32 order[STRAIT_STEER_MAX_MEMBERS];
};

// `steer_table`, index 0, is STRAIT_STEER_TABLE_SIZE __u32 member slots, one per hash bucket. It
// is declared in steer.bpf.c only: Swift writes it as raw bytes (a 16381-element C array would
// import into Swift as a tuple of that many elements).

/// `steer_counters` (per CPU), index 0.
struct strait_steer_counters {
    __u64 selected;        // a member was chosen by the policy
    __u64 unavailable;     // the chosen member had closed: the kernel's hash chose among live ones
    __u64 short_payload;   // datagram too short for the key: sent to the fallback
    __u64 migrated;        // a request queued on a closing listener was given a new listener
};

/// The hash both sides compute (FNV-1a, then murmur3's finaliser), so Swift can predict placement.
#define STRAIT_STEER_FNV_OFFSET 2166136261u
#define STRAIT_STEER_FNV_PRIME 16777619u
