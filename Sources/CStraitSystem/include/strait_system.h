// The one C shim of Strait: OS declarations the Swift Glibc module leaves out. Functions that need
// _GNU_SOURCE are wrapped in the .c files (which define it) so this header never changes how system
// headers read elsewhere. Every name defined here starts with strait_ (or STRAIT_).
#pragma once
#include <sys/statfs.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/types.h>
#include <linux/sockios.h>
#include <netpacket/packet.h>

/// setns(2) into the network namespace open at `fd` (CLONE_NEWNET), for the calling thread only.
int strait_setns_network(int fd);


/// splice(2) between two descriptors with no offsets.
ssize_t strait_splice(int from, int to, size_t length, unsigned int flags);

/// The driver name of interface `name` (ETHTOOL_GDRVINFO, read-only) into `driver`; 0 or -1 with errno.
int strait_interface_driver(const char *name, char *driver, size_t length);

/// sched_setaffinity(2) of the calling thread to the one CPU `cpu`.
int strait_pin_thread(int cpu);
/// pipe2(2) with O_NONBLOCK | O_CLOEXEC, sized to `size` bytes (F_SETPIPE_SZ) when non-zero.
int strait_pipe_nonblocking(int fds[2], int size);

/// The TCP stream counters of `fd` from TCP_INFO: bytes the peer acknowledged (the handshake may
/// count one), bytes received in order (a received FIN counts one). Returns -1 with errno on failure.
int strait_tcp_stream_counters(int fd, unsigned long long *bytes_acked, unsigned long long *bytes_received);
// ---- Socket steering and hand-over (SO_REUSEPORT groups, SCM_RIGHTS, batched datagrams) ----
#include <sys/socket.h>
#include <sys/uio.h>

/// setsockopt names from asm-generic/socket.h, spelled out so Swift sees plain constants.
enum {
    STRAIT_SO_ATTACH_REUSEPORT_EBPF = 52,
    STRAIT_SO_COOKIE = 57,
    STRAIT_SO_DETACH_REUSEPORT_BPF = 68,
    STRAIT_SO_NETNS_COOKIE = 71,
};

/// One datagram of a recvmmsg/sendmmsg batch: a buffer, its length, and the peer's address.
struct strait_datagram {
    void *bytes;
    unsigned int capacity;   // buffer size (receive) or bytes to send (send)
    unsigned int length;     // bytes received (receive); unused on send
    struct sockaddr_storage peer;
    unsigned int peer_length;
    unsigned int truncated;  // MSG_TRUNC: the datagram was longer than `capacity`
};

/// recvmmsg(2) of up to `count` datagrams without blocking (MSG_DONTWAIT). Returns how many were
/// received, or -1 with errno.
int strait_receive_datagrams(int fd, struct strait_datagram *datagrams, unsigned int count);

/// sendmmsg(2) of up to `count` datagrams to their `peer`s without blocking. Returns how many went
/// out, or -1 with errno.
int strait_send_datagrams(int fd, struct strait_datagram *datagrams, unsigned int count);

/// sendmsg(2) of `length` bytes with `fd_count` descriptors attached as SCM_RIGHTS.
ssize_t strait_send_with_descriptors(int socket, const void *bytes, size_t length, const int *fds, unsigned int fd_count);

/// recvmsg(2) of up to `capacity` bytes and up to `fd_capacity` SCM_RIGHTS descriptors, received
/// close-on-exec (MSG_CMSG_CLOEXEC). `*fd_count` is set to how many arrived; `*truncated` is
/// non-zero when the sender attached more descriptors than fit (the kernel closed the extra ones).
ssize_t strait_receive_with_descriptors(int socket, void *bytes, size_t capacity, int *fds, unsigned int fd_capacity,
                                        unsigned int *fd_count, int *truncated);

// ---- The reactor (StraitNet's Poll layer): epoll, eventfd, accept4, loop threads ----
#include <sys/epoll.h>
#include <sys/eventfd.h>
// tcp_info.c reads the kernel's own struct tcp_info from linux/tcp.h, which cannot be included with
// glibc's netinet/tcp.h; it defines STRAIT_KERNEL_TCP_INFO to leave the glibc copy out.
#ifndef STRAIT_KERNEL_TCP_INFO
#include <netinet/tcp.h>
#endif

/// accept4(2) with `flags` (SOCK_NONBLOCK, SOCK_CLOEXEC), no peer address.
int strait_accept4(int fd, int flags);

/// Sets the calling thread's scheduler slice (EEVDF, Linux 6.12 and later) to `nanoseconds`
/// with sched_setattr(2), keeping its policy and nice value; the kernel clamps it to 0.1-100 ms.
/// A shorter slice lets the thread preempt a longer-slice thread when it wakes up. Returns 0,
/// or -1 with errno set (EINVAL on kernels without custom slices).
int strait_set_thread_slice(unsigned long long nanoseconds);

/// Names the calling thread (at most 15 bytes), for top and debuggers.
void strait_set_thread_name(const char *name);
