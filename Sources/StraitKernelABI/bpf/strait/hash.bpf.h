// Hash steps shared by Strait's kernel programs (steer.bpf.c, lb.bpf.c). BPF only; Swift mirrors
// them in StraitMaglev (`Maglev.mix`), so placement can be predicted from user space.
#pragma once
#include <linux/types.h>

// murmur3's 32-bit finaliser.
static __always_inline __u32 strait_mix32(__u32 hash) {
    hash ^= hash >> 16;
    hash *= 0x85ebca6b;
    hash ^= hash >> 13;
    hash *= 0xc2b2ae35;
    hash ^= hash >> 16;
    return hash;
}
