// The Linux-only C declarations StraitNet needs that Swift's Glibc module leaves out:
// epoll, eventfd, thread naming and slices, and the TCP option names (accept4 is StraitSystem's). Every name defined here starts with strait_.
#ifndef STRAIT_NET_C_H
#define STRAIT_NET_C_H

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/tcp.h>

/// Sets the calling thread's scheduler slice (EEVDF, Linux 6.12 and later) to `nanoseconds`
/// with sched_setattr(2), keeping its policy and nice value; the kernel clamps it to 0.1-100 ms.
/// A shorter slice lets the thread preempt a longer-slice thread when it wakes up. Returns 0,
/// or -1 with errno set (EINVAL on kernels without custom slices).
int strait_set_thread_slice(unsigned long long nanoseconds);

/// Names the calling thread (at most 15 bytes), for top and debuggers.
void strait_set_thread_name(const char *name);

#endif
