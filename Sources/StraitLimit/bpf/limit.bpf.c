// SPDX-License-Identifier: GPL-2.0
// strait limit: rate limits held in maps (never in code), in two places.
//
// Per connection (`strait_limit_sockops`, sock_ops on a cgroup): when a TCP socket of the cgroup
// is established, its rule is looked up and `SO_MAX_PACING_RATE` set; TCP then paces itself (the
// stack's internal pacing, or fq's when fq is the qdisc). The socket's cgroup is recorded at
// connect() and listen(), in process context, in socket storage that accepted children inherit
// (BPF_F_CLONE). Lookup order, first match wins: local port, remote port, remote prefix (longest),
// the whole cgroup. Every established socket asks for RTT callbacks; at each one it compares the
// rule generation it last saw with `config.generation` and, when they differ, looks its rule up
// again: a changed or removed rule reaches live connections at their next ACK. The cost is one
// array lookup and one storage lookup per RTT sample.
//
// In aggregate (`strait_limit_egress`, tc egress as a tcx link): Earliest Departure Time, as
// Cilium's bandwidth manager does it. Each matching packet gets a departure time one
// packet-length-at-the-rate after the previous packet of the same rule, whatever its connection,
// and the fq qdisc holds it until then. TCP's small-queue limit turns the wait into
// back-pressure on the senders. Lookup order: the socket's cgroup, then the destination prefix.
#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/limit.h>

#define AF_INET 2
#define AF_INET6 10
#define SOL_SOCKET 1
#define SO_MAX_PACING_RATE 47
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define NSEC_PER_SEC 1000000000ull

char LICENSE[] SEC("license") = "GPL";

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_limit_config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, struct strait_limit_rule);
} rules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u64);
    __type(value, __u32);
} conn_cgroup SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_limit_port_key);
    __type(value, __u32);
} conn_port SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_limit_conn_prefix_key);
    __type(value, __u32);
} conn_prefix SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_limit_agg_cgroup_key);
    __type(value, __u32);
} agg_cgroup SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct strait_limit_agg_dest_key);
    __type(value, __u32);
} agg_dest SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __type(key, __u32);
    __type(value, struct strait_limit_counter);
} counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_INTERFACES);
    __type(key, __u32);
    __type(value, struct strait_limit_interface);
} interfaces SEC(".maps");

// Kernel only: the departure clock of each aggregate rule, shared by every CPU under its lock.
struct departure {
    struct bpf_spin_lock lock;
    __u64 next_ns;  // when the rule's previous packet leaves
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, STRAIT_LIMIT_MAX_RULES);
    __type(key, __u32);
    __type(value, struct departure);
} departures SEC(".maps");

// Kernel only: what sock_ops knows about one socket.
struct sock_limit {
    __u64 cgroup_id;     // of the process that called connect() or listen()
    __u32 generation;    // config.generation when the rule was last looked up
    __u32 rate;          // the SO_MAX_PACING_RATE set last (bytes/s), STRAIT_LIMIT_UNLIMITED if none
};

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
    __type(key, int);
    __type(value, struct sock_limit);
} sock_limits SEC(".maps");

static __always_inline struct strait_limit_counter *counter_of(__u32 id)
{
    return bpf_map_lookup_elem(&counters, &id);
}

// --- per connection --------------------------------------------------------------------------

static __always_inline __u32 connection_rule(struct bpf_sock_ops *skops, __u64 cgroup_id)
{
    struct strait_limit_port_key port = {.cgroup_id = cgroup_id, .port = (__u16)skops->local_port, .remote = 0};
    __u32 *id = bpf_map_lookup_elem(&conn_port, &port);
    if (id) return *id;
    port.port = (__u16)bpf_ntohl(skops->remote_port);
    port.remote = 1;
    id = bpf_map_lookup_elem(&conn_port, &port);
    if (id) return *id;

    struct strait_limit_conn_prefix_key prefix = {.prefixlen = 64 + 128};
    __builtin_memcpy(prefix.cgroup_id, &cgroup_id, 8);
    if (skops->family == AF_INET) {
        __u32 address = skops->remote_ip4;
        prefix.addr[10] = 0xff;
        prefix.addr[11] = 0xff;
        __builtin_memcpy(prefix.addr + 12, &address, 4);
    } else if (skops->family == AF_INET6) {
        __u32 w0 = skops->remote_ip6[0], w1 = skops->remote_ip6[1], w2 = skops->remote_ip6[2], w3 = skops->remote_ip6[3];
        __builtin_memcpy(prefix.addr, &w0, 4);
        __builtin_memcpy(prefix.addr + 4, &w1, 4);
        __builtin_memcpy(prefix.addr + 8, &w2, 4);
        __builtin_memcpy(prefix.addr + 12, &w3, 4);
    } else {
        return 0;
    }
    id = bpf_map_lookup_elem(&conn_prefix, &prefix);
    if (id) return *id;
    id = bpf_map_lookup_elem(&conn_cgroup, &cgroup_id);
    return id ? *id : 0;
}

// Looks the socket's rule up and sets its pacing rate when it changed (also back to unlimited).
static __always_inline void apply_connection_rule(struct bpf_sock_ops *skops, struct sock_limit *state, __u32 generation)
{
    state->generation = generation;
    __u32 id = connection_rule(skops, state->cgroup_id);
    __u32 rate = STRAIT_LIMIT_UNLIMITED;
    struct strait_limit_rule *rule = id ? bpf_map_lookup_elem(&rules, &id) : 0;
    if (rule && rule->scope == STRAIT_LIMIT_CONNECTION)
        rate = rule->rate_bytes_per_second >= STRAIT_LIMIT_UNLIMITED ? STRAIT_LIMIT_UNLIMITED - 1 : (__u32)rule->rate_bytes_per_second;
    if (rate == state->rate) return;
    if (bpf_setsockopt(skops, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof(rate)) != 0) return;
    state->rate = rate;
    struct strait_limit_counter *counter = rule ? counter_of(id) : 0;
    if (counter) counter->sockets += 1;
}

SEC("sockops")
int strait_limit_sockops(struct bpf_sock_ops *skops)
{
    struct bpf_sock *sk = skops->sk;
    if (!sk) return 1;
    __u32 zero = 0;
    struct strait_limit_config *configuration = bpf_map_lookup_elem(&config, &zero);
    if (!configuration) return 1;
    struct sock_limit *state;

    switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
    case BPF_SOCK_OPS_TCP_LISTEN_CB:
        // Process context: the current task's cgroup is the socket owner's.
        state = bpf_sk_storage_get(&sock_limits, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (state) {
            state->cgroup_id = bpf_get_current_cgroup_id();
            state->generation = 0;
            state->rate = STRAIT_LIMIT_UNLIMITED;
        }
        break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        state = bpf_sk_storage_get(&sock_limits, sk, 0, 0);
        if (!state) break;  // made before the program was attached: never limited
        apply_connection_rule(skops, state, configuration->generation);
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG);
        break;
    case BPF_SOCK_OPS_RTT_CB:
        state = bpf_sk_storage_get(&sock_limits, sk, 0, 0);
        if (state && state->generation != configuration->generation)
            apply_connection_rule(skops, state, configuration->generation);
        break;
    }
    return 1;
}

// --- in aggregate ----------------------------------------------------------------------------

static __always_inline __u32 aggregate_rule(struct __sk_buff *skb)
{
    __u32 ifindex = skb->ifindex;
    struct strait_limit_agg_cgroup_key by_cgroup = {.cgroup_id = bpf_skb_cgroup_id(skb), .ifindex = ifindex};
    __u32 *id = by_cgroup.cgroup_id ? bpf_map_lookup_elem(&agg_cgroup, &by_cgroup) : 0;
    if (id) return *id;

    struct strait_limit_agg_dest_key dest = {.prefixlen = 32 + 128};
    __builtin_memcpy(dest.ifindex, &ifindex, 4);
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        __u32 address;
        if (bpf_skb_load_bytes(skb, ETH_HLEN + 16, &address, 4) < 0) return 0;
        dest.addr[10] = 0xff;
        dest.addr[11] = 0xff;
        __builtin_memcpy(dest.addr + 12, &address, 4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, ETH_HLEN + 24, dest.addr, 16) < 0) return 0;
    } else {
        return 0;
    }
    id = bpf_map_lookup_elem(&agg_dest, &dest);
    return id ? *id : 0;
}

SEC("tc")
int strait_limit_egress(struct __sk_buff *skb)
{
    __u32 id = aggregate_rule(skb);
    if (!id) return TC_ACT_UNSPEC;
    struct strait_limit_rule *rule = bpf_map_lookup_elem(&rules, &id);
    struct departure *clock = bpf_map_lookup_elem(&departures, &id);
    __u32 zero = 0;
    struct strait_limit_config *configuration = bpf_map_lookup_elem(&config, &zero);
    if (!rule || !clock || !configuration || rule->rate_bytes_per_second == 0) return TC_ACT_UNSPEC;
    struct strait_limit_counter *counter = counter_of(id);

    __u64 now = bpf_ktime_get_ns();
    __u64 wanted = skb->tstamp > now ? skb->tstamp : now;  // TCP's own pacing may already have set one
    __u64 gap = (__u64)skb->len * NSEC_PER_SEC / rule->rate_bytes_per_second;
    __u64 departure;
    bpf_spin_lock(&clock->lock);
    departure = clock->next_ns + gap;
    if (departure <= wanted) {
        clock->next_ns = wanted;
        departure = 0;
    } else if (departure - now <= configuration->horizon_ns) {
        clock->next_ns = departure;
    } else {
        departure = ~0ull;
    }
    bpf_spin_unlock(&clock->lock);

    if (counter) {
        counter->packets += 1;
        counter->bytes += skb->len;
    }
    if (departure == ~0ull) {
        if (counter) counter->dropped += 1;
        return TC_ACT_SHOT;
    }
    if (departure) {
        skb->tstamp = departure;
        if (counter) counter->delayed += 1;
    }
    return TC_ACT_UNSPEC;
}
