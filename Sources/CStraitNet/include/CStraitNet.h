// The Linux-only C declarations StraitNet needs that Swift's Glibc module leaves out:
// epoll, eventfd, accept4 and the TCP option names. Every name defined here starts with strait_.
#ifndef STRAIT_NET_C_H
#define STRAIT_NET_C_H

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/tcp.h>

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC (accept4 needs _GNU_SOURCE, set in the .c file).
int strait_accept4_nonblocking(int fd);

/// Names the calling thread (at most 15 bytes), for top and debuggers.
void strait_set_thread_name(const char *name);

#endif
