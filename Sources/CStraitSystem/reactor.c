// What StraitNet's reactor needs beyond Glibc's module: accept4 (a _GNU_SOURCE call), the
// scheduler slice of a loop thread, and thread names.
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <pthread.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "strait_system.h"

// struct sched_attr of sched_setattr(2), size SCHED_ATTR_SIZE_VER1; glibc declares none.
struct strait_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
    uint32_t sched_util_min, sched_util_max;
};

int strait_set_thread_slice(unsigned long long nanoseconds) {
    struct strait_sched_attr attributes;
    memset(&attributes, 0, sizeof attributes);
    if (syscall(SYS_sched_getattr, 0, &attributes, sizeof attributes, 0) != 0) return -1;
    if (attributes.sched_policy != SCHED_OTHER && attributes.sched_policy != SCHED_BATCH) {
        errno = EPERM;  // a real-time or deadline thread keeps what it was given
        return -1;
    }
    attributes.size = sizeof attributes;
    attributes.sched_flags = 0;
    attributes.sched_runtime = nanoseconds;
    return (int)syscall(SYS_sched_setattr, 0, &attributes, 0);
}

void strait_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}

int strait_accept4(int fd, int flags) {
    return accept4(fd, NULL, NULL, flags);
}
