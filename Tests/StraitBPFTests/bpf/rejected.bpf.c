// SPDX-License-Identifier: GPL-2.0
// Compiles, but the verifier must reject it: it reads the packet without checking its end.
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int unchecked_packet_read(struct xdp_md *ctx)
{
    unsigned char *first = (unsigned char *)(long)ctx->data;
    return *first == 0xff ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
