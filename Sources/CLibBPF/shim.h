// The one place Strait includes libbpf; every Swift file sees libbpf through this module.
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
