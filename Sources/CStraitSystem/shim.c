#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include "strait_system.h"

int strait_setns_network(int fd) {
    return setns(fd, CLONE_NEWNET);
}

ssize_t strait_splice(int from, int to, size_t length, unsigned int flags) {
    return splice(from, NULL, to, NULL, length, flags);
}
