// OS declarations the Swift Glibc module leaves out. Functions that need _GNU_SOURCE are wrapped
// in shim.c (which defines it) so this header never changes how system headers read elsewhere.
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
