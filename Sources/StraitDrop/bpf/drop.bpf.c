// SPDX-License-Identifier: GPL-2.0
// XDP early drop: every frame is checked against rules held in maps (never in code), in this
// order, and the first match decides:
//   1. Ethernet source address            (mac_N)
//   2. ARP sender IPv4 address             (arp_N; in allow-list mode also host4_N, src4_N)
//      IPv4 / IPv6 source address          (host4_N / host6_N hashes for /32 and /128 rules,
//                                           then src4_N / src6_N tries: longest prefix wins)
//   3. TCP / UDP destination port          (port_N)
// Block-list mode drops a frame that matches; allow-list mode passes it and drops the rest.
//
// Frames the parser cannot trust are dropped and counted as STRAIT_DROP_DROP_MALFORMED, in both
// modes (the stack would discard them anyway, and passing them would let a crafted header slip
// past a rule):
//   - shorter than an Ethernet header, or a VLAN tag cut short;
//   - IPv4 with version != 4, IHL < 5, or a header longer than the frame;
//   - IPv6 with version != 6 or a truncated fixed header;
//   - an IPv6 extension chain longer than 8 headers, or one cut short;
//   - Ethernet/IPv4 ARP shorter than 28 bytes;
//   - TCP or UDP (unfragmented or first fragment) without room for the two ports.
// Not filtered and always passed (STRAIT_DROP_PASS_NOT_IP): EtherTypes other than IPv4, IPv6 and
// ARP, frames with more than two VLAN tags, ARP for other hardware or protocol types.
// IPv6 extension headers: hop-by-hop, routing, destination options, fragment and AH are walked to
// find TCP/UDP. Non-first fragments (IPv4 or IPv6) and ESP carry no ports: only address rules
// apply to them. In allow-list mode ICMPv6 neighbour discovery (types 133-137) always passes, as
// link-local and unspecified sources could never be listed.
#include <linux/bpf.h>
#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/drop.h>

#define IPPROTO_HOPOPTS 0
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define MAX_IPV6_EXTENSIONS 8

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct strait_drop_config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STRAIT_DROP_VERDICTS);
    __type(key, __u32);
    __type(value, struct strait_drop_counter);
} verdicts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, STRAIT_DROP_MAX_RULES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, struct strait_drop_counter);
} rule_hits SEC(".maps");

#define RULE_MAP(name, map_type, size, key_type)      \
    struct {                                          \
        __uint(type, map_type);                       \
        __uint(max_entries, size);                    \
        __uint(map_flags, BPF_F_NO_PREALLOC);         \
        __type(key, key_type);                        \
        __type(value, __u32);                         \
    } name SEC(".maps")

RULE_MAP(src4_0, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv4_key);
RULE_MAP(src4_1, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv4_key);
RULE_MAP(src6_0, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv6_key);
RULE_MAP(src6_1, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv6_key);
RULE_MAP(host4_0, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv4_host);
RULE_MAP(host4_1, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv4_host);
RULE_MAP(host6_0, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv6_host);
RULE_MAP(host6_1, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PREFIXES, struct strait_drop_ipv6_host);
RULE_MAP(arp_0, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_ARP, struct strait_drop_ipv4_key);
RULE_MAP(arp_1, BPF_MAP_TYPE_LPM_TRIE, STRAIT_DROP_MAX_ARP, struct strait_drop_ipv4_key);
RULE_MAP(port_0, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PORTS, struct strait_drop_port_key);
RULE_MAP(port_1, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_PORTS, struct strait_drop_port_key);
RULE_MAP(mac_0, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_MACS, struct strait_drop_mac_key);
RULE_MAP(mac_1, BPF_MAP_TYPE_HASH, STRAIT_DROP_MAX_MACS, struct strait_drop_mac_key);

// Looks `key` up in set 0's or set 1's map of a kind.
#define LOOKUP(kind, set, key) ((set) ? bpf_map_lookup_elem(&kind##_1, (key)) : bpf_map_lookup_elem(&kind##_0, (key)))

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct arp_ipv4 {
    __be16 hardware;
    __be16 protocol;
    __u8 hardware_length;
    __u8 protocol_length;
    __be16 operation;
    __u8 sender_mac[6];
    __u8 sender_ip[4];
    __u8 target_mac[6];
    __u8 target_ip[4];
};

struct ipv4_header {
    __u8 version_ihl;
    __u8 tos;
    __be16 total_length;
    __be16 id;
    __be16 fragment;
    __u8 ttl;
    __u8 protocol;
    __be16 checksum;
    __u8 source[4];
    __u8 destination[4];
};

struct ipv6_header {
    __be32 version_class_flow;
    __be16 payload_length;
    __u8 next_header;
    __u8 hop_limit;
    __u8 source[16];
    __u8 destination[16];
};

struct ipv6_extension {
    __u8 next_header;
    __u8 length;
    __be16 fragment;  // fragment header only: offset (13 bits), reserved, more-fragments
};

static __always_inline int finish(__u32 verdict, __u64 bytes)
{
    struct strait_drop_counter *counter = bpf_map_lookup_elem(&verdicts, &verdict);
    if (counter) {
        counter->packets++;
        counter->bytes += bytes;
    }
    return verdict >= STRAIT_DROP_DROP_BLOCKED ? XDP_DROP : XDP_PASS;
}

static __always_inline int matched(__u32 *rule, int allow_list, __u64 bytes)
{
    __u32 id = *rule;
    struct strait_drop_counter *counter = bpf_map_lookup_elem(&rule_hits, &id);
    if (counter) {
        counter->packets++;
        counter->bytes += bytes;
    }
    return finish(allow_list ? STRAIT_DROP_PASS_ALLOWED : STRAIT_DROP_DROP_BLOCKED, bytes);
}

static __always_inline int unmatched(int allow_list, __u64 bytes)
{
    return finish(allow_list ? STRAIT_DROP_DROP_NOT_ALLOWED : STRAIT_DROP_PASS_NO_MATCH, bytes);
}

// The transport header at `l4`: destination-port rules for TCP and UDP, neighbour discovery.
static __always_inline int transport(void *l4, void *end, __u8 protocol, __u32 set, int allow_list, __u64 bytes)
{
    if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) {
        __be16 *ports = l4;
        if ((void *)(ports + 2) > end)
            return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
        struct strait_drop_port_key key = { .port = bpf_ntohs(ports[1]), .protocol = protocol };
        __u32 *rule = LOOKUP(port, set, &key);
        if (rule)
            return matched(rule, allow_list, bytes);
    } else if (protocol == IPPROTO_ICMPV6 && allow_list) {
        __u8 *type = l4;
        if ((void *)(type + 1) > end)
            return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
        if (*type >= 133 && *type <= 137)
            return finish(STRAIT_DROP_PASS_NEIGHBOR, bytes);
    }
    return unmatched(allow_list, bytes);
}

static __always_inline int arp(void *cursor, void *end, __u32 set, int allow_list, __u64 bytes)
{
    struct arp_ipv4 *arp = cursor;
    if ((void *)&arp->operation > end)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    if (arp->hardware != bpf_htons(1) || arp->protocol != bpf_htons(ETH_P_IP) || arp->hardware_length != 6 || arp->protocol_length != 4)
        return finish(STRAIT_DROP_PASS_NOT_IP, bytes);
    if ((void *)(arp + 1) > end)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    struct strait_drop_ipv4_key key = { .prefixlen = 32 };
    __builtin_memcpy(key.addr, arp->sender_ip, 4);
    __u32 *rule = LOOKUP(arp, set, &key);
    if (!rule && allow_list) {
        struct strait_drop_ipv4_host host;
        __builtin_memcpy(host.addr, arp->sender_ip, 4);
        rule = LOOKUP(host4, set, &host);
        if (!rule)
            rule = LOOKUP(src4, set, &key);
    }
    if (rule)
        return matched(rule, allow_list, bytes);
    return unmatched(allow_list, bytes);
}

static __always_inline int ipv4(void *cursor, void *end, __u32 set, int allow_list, __u64 bytes)
{
    struct ipv4_header *ip = cursor;
    if ((void *)(ip + 1) > end)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    __u32 header_length = (ip->version_ihl & 0x0f) * 4;
    if ((ip->version_ihl >> 4) != 4 || header_length < sizeof(*ip) || cursor + header_length > end)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    struct strait_drop_ipv4_host host;
    __builtin_memcpy(host.addr, ip->source, 4);
    __u32 *rule = LOOKUP(host4, set, &host);
    if (!rule) {
        struct strait_drop_ipv4_key key = { .prefixlen = 32 };
        __builtin_memcpy(key.addr, ip->source, 4);
        rule = LOOKUP(src4, set, &key);
    }
    if (rule)
        return matched(rule, allow_list, bytes);
    if (ip->fragment & bpf_htons(0x1fff))
        return unmatched(allow_list, bytes);  // a later fragment: no transport header
    return transport(cursor + header_length, end, ip->protocol, set, allow_list, bytes);
}

static __always_inline int ipv6(void *cursor, void *end, __u32 set, int allow_list, __u64 bytes)
{
    struct ipv6_header *ip = cursor;
    if ((void *)(ip + 1) > end || (bpf_ntohl(ip->version_class_flow) >> 28) != 6)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    struct strait_drop_ipv6_host host;
    __builtin_memcpy(host.addr, ip->source, 16);
    __u32 *rule = LOOKUP(host6, set, &host);
    if (!rule) {
        struct strait_drop_ipv6_key key = { .prefixlen = 128 };
        __builtin_memcpy(key.addr, ip->source, 16);
        rule = LOOKUP(src6, set, &key);
    }
    if (rule)
        return matched(rule, allow_list, bytes);

    __u8 next = ip->next_header;
    cursor = ip + 1;
#pragma unroll
    for (int i = 0; i < MAX_IPV6_EXTENSIONS; i++) {
        struct ipv6_extension *extension = cursor;
        switch (next) {
        case IPPROTO_HOPOPTS:
        case IPPROTO_ROUTING:
        case IPPROTO_DSTOPTS:
            if ((void *)(extension + 1) > end)
                return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
            next = extension->next_header;
            cursor += ((__u32)extension->length + 1) * 8;
            break;
        case IPPROTO_AH:
            if ((void *)(extension + 1) > end)
                return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
            next = extension->next_header;
            cursor += ((__u32)extension->length + 2) * 4;
            break;
        case IPPROTO_FRAGMENT:
            if ((void *)(extension + 1) > end)
                return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
            if (extension->fragment & bpf_htons(0xfff8))
                return unmatched(allow_list, bytes);  // a later fragment: no transport header
            next = extension->next_header;
            cursor += 8;
            break;
        default:
            return transport(cursor, end, next, set, allow_list, bytes);
        }
    }
    return finish(STRAIT_DROP_DROP_MALFORMED, bytes);  // chain longer than MAX_IPV6_EXTENSIONS
}

SEC("xdp")
int strait_drop(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u64 bytes = end - data;
    __u32 zero = 0;
    struct strait_drop_config *configuration = bpf_map_lookup_elem(&config, &zero);
    if (!configuration)
        return XDP_PASS;
    __u32 set = configuration->active_set & 1;
    int allow_list = (configuration->set_flags[set] & STRAIT_DROP_ALLOW_LIST) != 0;

    struct ethhdr *ethernet = data;
    if ((void *)(ethernet + 1) > end)
        return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
    struct strait_drop_mac_key mac = {};
    __builtin_memcpy(mac.addr, ethernet->h_source, 6);
    __u32 *rule = LOOKUP(mac, set, &mac);
    if (rule)
        return matched(rule, allow_list, bytes);

    __be16 protocol = ethernet->h_proto;
    void *cursor = ethernet + 1;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (protocol != bpf_htons(ETH_P_8021Q) && protocol != bpf_htons(ETH_P_8021AD))
            break;
        struct vlan_tag *tag = cursor;
        if ((void *)(tag + 1) > end)
            return finish(STRAIT_DROP_DROP_MALFORMED, bytes);
        protocol = tag->proto;
        cursor = tag + 1;
    }

    if (protocol == bpf_htons(ETH_P_IP))
        return ipv4(cursor, end, set, allow_list, bytes);
    if (protocol == bpf_htons(ETH_P_IPV6))
        return ipv6(cursor, end, set, allow_list, bytes);
    if (protocol == bpf_htons(ETH_P_ARP))
        return arp(cursor, end, set, allow_list, bytes);
    return finish(STRAIT_DROP_PASS_NOT_IP, bytes);
}

char LICENSE[] SEC("license") = "GPL";
