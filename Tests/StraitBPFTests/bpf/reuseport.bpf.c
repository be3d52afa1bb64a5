// SPDX-License-Identifier: GPL-2.0
// sk_reuseport fixtures: pick the socket in the slot `choice` says, for new connections and (the
// migrate variant) for connections queued on a closing listener.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} targets SEC(".maps");

/// [0]: the slot to select; [1]: selections made; [2]: migrations steered.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u32);
} choice SEC(".maps");

static __always_inline int select_choice(struct sk_reuseport_md *md, __u32 counter) {
    __u32 zero = 0;
    __u32 *slot = bpf_map_lookup_elem(&choice, &zero);
    if (!slot) return SK_PASS;
    __u32 index = *slot;
    if (bpf_sk_select_reuseport(md, &targets, &index, 0) == 0) {
        __u32 *count = bpf_map_lookup_elem(&choice, &counter);
        if (count) __sync_fetch_and_add(count, 1);
    }
    return SK_PASS;
}

SEC("sk_reuseport")
int select_by_choice(struct sk_reuseport_md *md) {
    return select_choice(md, 1);
}

SEC("sk_reuseport/migrate")
int migrate_by_choice(struct sk_reuseport_md *md) {
    return select_choice(md, md->migrating_sk ? 2 : 1);
}

char LICENSE[] SEC("license") = "GPL";
