// SPDX-License-Identifier: GPL-2.0
// Programs and maps that exercise StraitBPF itself: typed maps, per-CPU values, the ring buffer,
// test runs, and each attach type.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

struct pair {
    __u32 left;
    __u32 right;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 128);
    __type(key, __u32);
    __type(value, struct pair);
} pairs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} runs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} records SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} sockets SEC(".maps");

// On each test run: count it, and publish the packet's length in the ring buffer.
SEC("xdp")
int count_and_publish(struct xdp_md *ctx)
{
    __u32 zero = 0;
    __u64 *count = bpf_map_lookup_elem(&runs, &zero);
    if (count)
        (*count)++;
    __u32 *length = bpf_ringbuf_reserve(&records, sizeof(__u32), 0);
    if (length) {
        *length = ctx->data_end - ctx->data;
        bpf_ringbuf_submit(length, 0);
    }
    return XDP_PASS;
}

SEC("sockops")
int observe_sockops(struct bpf_sock_ops *skops)
{
    return 1;
}

SEC("sk_msg")
int pass_messages(struct sk_msg_md *msg)
{
    return SK_PASS;
}

SEC("sk_skb/stream_parser")
int parse_whole(struct __sk_buff *skb)
{
    return skb->len;
}

SEC("sk_skb/stream_verdict")
int pass_stream(struct __sk_buff *skb)
{
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
