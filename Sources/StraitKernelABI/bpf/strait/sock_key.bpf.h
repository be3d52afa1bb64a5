// SPDX-License-Identifier: GPL-2.0
// Kernel-side helpers shared by Strait's sock_ops and sk_msg programs: building a socket's
// `strait_sock_key` (see strait/accel.h) from the program context, and the CO-RE views they read. BPF only; Swift never sees it.
#pragma once
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <strait/accel.h>

// Context fields must be read one 32-bit word at a time; keep clang from merging the loads.
#define CTX_READ(field) (*(volatile __u32 *)&(field))

#define AF_INET 2
#define AF_INET6 10

// CO-RE view of the kernel's tcp_sock (from bpf_skc_to_tcp_sock): only the fields read here;
// libbpf relocates the offsets against the running kernel's BTF.
struct tcp_sock {
    __u32 copied_seq;
    __u32 write_seq;
} __attribute__((preserve_access_index));

static __always_inline void map_ipv4(__u8 out[16], __u32 address)
{
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &address, 4);
}

static __always_inline void copy_ipv6(__u8 out[16], const __u32 words[4])
{
    __u32 w0 = words[0], w1 = words[1], w2 = words[2], w3 = words[3];
    __builtin_memcpy(out, &w0, 4);
    __builtin_memcpy(out + 4, &w1, 4);
    __builtin_memcpy(out + 8, &w2, 4);
    __builtin_memcpy(out + 12, &w3, 4);
}

// The socket's own key, as sock_ops sees it.
static __always_inline int key_of_sockops(struct bpf_sock_ops *skops, struct strait_sock_key *key)
{
    __builtin_memset(key, 0, sizeof(*key));
    key->netns_cookie = bpf_get_netns_cookie(skops);
    key->local_port = (__u16)skops->local_port;
    key->remote_port = (__u16)bpf_ntohl(skops->remote_port);
    if (skops->family == AF_INET) {
        map_ipv4(key->local_ip, skops->local_ip4);
        map_ipv4(key->remote_ip, skops->remote_ip4);
        return 0;
    }
    if (skops->family == AF_INET6) {
        __u32 local[4] = {CTX_READ(skops->local_ip6[0]), CTX_READ(skops->local_ip6[1]), CTX_READ(skops->local_ip6[2]), CTX_READ(skops->local_ip6[3])};
        __u32 remote[4] = {CTX_READ(skops->remote_ip6[0]), CTX_READ(skops->remote_ip6[1]), CTX_READ(skops->remote_ip6[2]), CTX_READ(skops->remote_ip6[3])};
        copy_ipv6(key->local_ip, local);
        copy_ipv6(key->remote_ip, remote);
        return 0;
    }
    return -1;
}

// The peer's key, as sk_msg sees the sender: local and remote swapped.
static __always_inline int peer_key_of_msg(struct sk_msg_md *msg, struct strait_sock_key *key)
{
    __builtin_memset(key, 0, sizeof(*key));
    key->netns_cookie = bpf_get_netns_cookie(msg);
    key->local_port = (__u16)bpf_ntohl(msg->remote_port);
    key->remote_port = (__u16)msg->local_port;
    if (msg->family == AF_INET) {
        map_ipv4(key->local_ip, msg->remote_ip4);
        map_ipv4(key->remote_ip, msg->local_ip4);
        return 0;
    }
    if (msg->family == AF_INET6) {
        __u32 local[4] = {CTX_READ(msg->remote_ip6[0]), CTX_READ(msg->remote_ip6[1]), CTX_READ(msg->remote_ip6[2]), CTX_READ(msg->remote_ip6[3])};
        __u32 remote[4] = {CTX_READ(msg->local_ip6[0]), CTX_READ(msg->local_ip6[1]), CTX_READ(msg->local_ip6[2]), CTX_READ(msg->local_ip6[3])};
        copy_ipv6(key->local_ip, local);
        copy_ipv6(key->remote_ip, remote);
        return 0;
    }
    return -1;
}

// The same connection seen from the other end: local and remote swapped.
static __always_inline void reverse(const struct strait_sock_key *key, struct strait_sock_key *out)
{
    *out = *key;
    __builtin_memcpy(out->local_ip, key->remote_ip, 16);
    __builtin_memcpy(out->remote_ip, key->local_ip, 16);
    out->local_port = key->remote_port;
    out->remote_port = key->local_port;
}
