#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <pthread.h>
#include "CStraitNet.h"

void strait_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}

int strait_accept4_nonblocking(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
