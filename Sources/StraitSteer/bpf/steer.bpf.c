// SPDX-License-Identifier: GPL-2.0
// Steering for a SO_REUSEPORT group: for every new TCP connection or UDP datagram the kernel asks
// this program which socket of the group gets it. Swift (StraitSteer) fills the socket array,
// computes the lookup table (Maglev, weighted or not) and the configuration; this file only hashes
// and looks up. Whatever cannot be decided here (a chosen member that closed, a datagram too short
// for its key without a fallback) is left to the kernel's own hash over the live sockets: a
// packet is never dropped and never sent to a closed socket.
//
// `steer_select` runs for new connections and datagrams; `steer_select_or_migrate` is the same
// program loaded with BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, so it also places connections queued on a
// listener that closes (net.ipv4.tcp_migrate_req=1).
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/hash.bpf.h>
#include <strait/steer.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define UDP_HEADER 8

struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, STRAIT_STEER_MAX_MEMBERS);
    __type(key, __u32);
    __type(value, __u64);
} steer_sockets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_steer_config);
} steer_config SEC(".maps");

struct strait_steer_table {
    __u32 slots[STRAIT_STEER_TABLE_SIZE];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_steer_table);
} steer_table SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_steer_counters);
} steer_counters SEC(".maps");

static __always_inline __u32 fnv1a(__u32 hash, const __u8 *bytes, __u32 length, __u32 max) {
    for (__u32 i = 0; i < max; i++) {
        if (i >= length) break;
        hash ^= bytes[i];
        hash *= STRAIT_STEER_FNV_PRIME;
    }
    return hash;
}

/// Source address then destination address, back to back (8 bytes for IPv4, 32 for IPv6), read
/// from the network header in one call.
static __always_inline int read_addresses(struct sk_reuseport_md *md, __u8 addresses[32], __u32 *length) {
    if (md->eth_protocol == bpf_htons(ETH_P_IP)) {
        *length = 4;
        return bpf_skb_load_bytes_relative(md, 12, addresses, 8, BPF_HDR_START_NET);
    }
    if (md->eth_protocol == bpf_htons(ETH_P_IPV6)) {
        *length = 16;
        return bpf_skb_load_bytes_relative(md, 8, addresses, 32, BPF_HDR_START_NET);
    }
    return -1;
}

enum key_result { KEY_OK, KEY_UNREADABLE, KEY_SHORT };

/// The hash of the configured key. Ports come from the transport header, where `md->data` starts.
static __always_inline enum key_result key_hash(struct sk_reuseport_md *md, const struct strait_steer_config *config, __u32 *hash) {
    __u32 h = STRAIT_STEER_FNV_OFFSET;
    if (config->key == STRAIT_STEER_KEY_PAYLOAD) {
        __u8 key[STRAIT_STEER_MAX_KEY] = {};
        __u32 length = config->payload_length;
        if (length == 0 || length > STRAIT_STEER_MAX_KEY) return KEY_SHORT;
        if (bpf_skb_load_bytes(md, UDP_HEADER + config->payload_offset, key, length)) return KEY_SHORT;
        *hash = strait_mix32(fnv1a(h, key, length, STRAIT_STEER_MAX_KEY));
        return KEY_OK;
    }
    __u8 addresses[32] = {};
    __u32 length = 0;
    if (read_addresses(md, addresses, &length)) return KEY_UNREADABLE;
    h = fnv1a(h, addresses, length, 16);
    if (config->key == STRAIT_STEER_KEY_FOUR_TUPLE) {
        __u8 ports[4] = {};
        if (bpf_skb_load_bytes(md, 0, ports, 4)) return KEY_UNREADABLE;
        h = length == 4 ? fnv1a(h, addresses + 4, 4, 4) : fnv1a(h, addresses + 16, 16, 16);
        h = fnv1a(h, ports, 4, 4);
    }
    *hash = strait_mix32(h);
    return KEY_OK;
}

static __always_inline int try_slot(struct sk_reuseport_md *md, __u32 slot) {
    return bpf_sk_select_reuseport(md, &steer_sockets, &slot, 0);
}

static __always_inline int steer(struct sk_reuseport_md *md) {
    __u32 zero = 0;
    const struct strait_steer_config *config = bpf_map_lookup_elem(&steer_config, &zero);
    struct strait_steer_counters *counters = bpf_map_lookup_elem(&steer_counters, &zero);
    if (!config || !counters || config->mode == 0) return SK_PASS;
    int migrating = md->migrating_sk != 0;

    if (config->mode == STRAIT_STEER_MODE_ORDERED) {
        __u32 count = config->order_count;
        for (__u32 i = 0; i < STRAIT_STEER_MAX_MEMBERS; i++) {
            if (i >= count) break;
            if (try_slot(md, config->order[i]) == 0) {
                if (migrating) counters->migrated++;
                else counters->selected++;
                return SK_PASS;
            }
        }
        counters->unavailable++;
        return SK_PASS;
    }

    if (config->mode != STRAIT_STEER_MODE_TABLE) return SK_PASS;
    __u32 hash = 0;
    enum key_result result = key_hash(md, config, &hash);
    if (result == KEY_SHORT) {
        counters->short_payload++;
        if (config->fallback_slot != STRAIT_STEER_NO_SLOT) try_slot(md, config->fallback_slot);
        return SK_PASS;
    }
    if (result == KEY_UNREADABLE) {
        // A connection being migrated off a closing listener may come without its packet: use
        // the kernel's flow hash, which is stable for the connection.
        if (!migrating) {
            counters->unavailable++;
            return SK_PASS;
        }
        hash = md->hash;
    }
    const struct strait_steer_table *table = bpf_map_lookup_elem(&steer_table, &zero);
    if (!table) return SK_PASS;
    __u32 bucket = hash % STRAIT_STEER_TABLE_SIZE;
    // clang knows the remainder is in range and drops the check; the verifier needs to see it.
    asm volatile("" : "+r"(bucket));
    if (bucket >= STRAIT_STEER_TABLE_SIZE) return SK_PASS;
    if (try_slot(md, table->slots[bucket]) == 0) {
        if (migrating) counters->migrated++;
        else counters->selected++;
    } else {
        counters->unavailable++;
    }
    return SK_PASS;
}

SEC("sk_reuseport")
int steer_select(struct sk_reuseport_md *md) {
    return steer(md);
}

SEC("sk_reuseport/migrate")
int steer_select_or_migrate(struct sk_reuseport_md *md) {
    return steer(md);
}

char LICENSE[] SEC("license") = "GPL";
