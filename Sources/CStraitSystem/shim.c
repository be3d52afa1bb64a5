#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sched.h>
#include <sys/socket.h>
#include "strait_system.h"

int strait_setns_network(int fd) {
    return setns(fd, CLONE_NEWNET);
}

ssize_t strait_splice(int from, int to, size_t length, unsigned int flags) {
    return splice(from, NULL, to, NULL, length, flags);
}

#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/socket.h>
#include <linux/ethtool.h>

int strait_interface_driver(const char *name, char *driver, size_t length) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ethtool_drvinfo info = { .cmd = ETHTOOL_GDRVINFO };
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_data = (void *)&info;
    int result = ioctl(fd, SIOCETHTOOL, &request);
    close(fd);
    if (result < 0) return -1;
    strncpy(driver, info.driver, length - 1);
    driver[length - 1] = 0;
    return 0;
}

int strait_pin_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}
int strait_pipe_nonblocking(int fds[2], int size) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
    if (size > 0) (void)fcntl(fds[0], F_SETPIPE_SZ, size);
    return 0;
}

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STRAIT_BATCH_MAX 256

/// Points one mmsghdr and iovec at each datagram: the peer address is filled in when receiving and
/// used (if set) when sending. Returns the count, capped at STRAIT_BATCH_MAX.
static unsigned int prepare_batch(struct mmsghdr *headers, struct iovec *vectors,
                                  struct strait_datagram *datagrams, unsigned int count, int receiving) {
    if (count > STRAIT_BATCH_MAX) count = STRAIT_BATCH_MAX;
    memset(headers, 0, sizeof(struct mmsghdr) * count);
    for (unsigned int i = 0; i < count; i++) {
        vectors[i].iov_base = datagrams[i].bytes;
        vectors[i].iov_len = datagrams[i].capacity;
        headers[i].msg_hdr.msg_iov = &vectors[i];
        headers[i].msg_hdr.msg_iovlen = 1;
        if (receiving) {
            headers[i].msg_hdr.msg_name = &datagrams[i].peer;
            headers[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        } else {
            headers[i].msg_hdr.msg_name = datagrams[i].peer_length ? &datagrams[i].peer : NULL;
            headers[i].msg_hdr.msg_namelen = datagrams[i].peer_length;
        }
    }
    return count;
}

int strait_receive_datagrams(int fd, struct strait_datagram *datagrams, unsigned int count) {
    struct mmsghdr headers[STRAIT_BATCH_MAX];
    struct iovec vectors[STRAIT_BATCH_MAX];
    count = prepare_batch(headers, vectors, datagrams, count, 1);
    int received = recvmmsg(fd, headers, count, MSG_DONTWAIT, NULL);
    for (int i = 0; i < received; i++) {
        datagrams[i].length = headers[i].msg_len;
        datagrams[i].peer_length = headers[i].msg_hdr.msg_namelen;
        datagrams[i].truncated = (headers[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
    }
    return received;
}

int strait_send_datagrams(int fd, struct strait_datagram *datagrams, unsigned int count) {
    struct mmsghdr headers[STRAIT_BATCH_MAX];
    struct iovec vectors[STRAIT_BATCH_MAX];
    count = prepare_batch(headers, vectors, datagrams, count, 0);
    return sendmmsg(fd, headers, count, MSG_DONTWAIT);
}

#define STRAIT_FDS_MAX 64

ssize_t strait_send_with_descriptors(int socket, const void *bytes, size_t length, const int *fds, unsigned int fd_count) {
    if (fd_count > STRAIT_FDS_MAX) { errno = EINVAL; return -1; }
    char control[CMSG_SPACE(sizeof(int) * STRAIT_FDS_MAX)];
    memset(control, 0, sizeof(control));
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1 };
    if (fd_count > 0) {
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * fd_count);
    }
    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

ssize_t strait_receive_with_descriptors(int socket, void *bytes, size_t capacity, int *fds, unsigned int fd_capacity,
                                        unsigned int *fd_count, int *truncated) {
    char control[CMSG_SPACE(sizeof(int) * STRAIT_FDS_MAX)];
    struct iovec vector = { .iov_base = bytes, .iov_len = capacity };
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
    *fd_count = 0;
    *truncated = 0;
    ssize_t received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    if (received < 0) return received;
    if (message.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        unsigned int count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received_fds = (int *)CMSG_DATA(header);
        for (unsigned int i = 0; i < count; i++) {
            if (*fd_count < fd_capacity) fds[(*fd_count)++] = received_fds[i];
            else { close(received_fds[i]); *truncated = 1; }
        }
    }
    return received;
}
