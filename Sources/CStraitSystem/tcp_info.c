// TCP_INFO through the kernel's own struct: glibc's netinet/tcp.h copy stops before the byte
// counters, and the two headers cannot be included together.
#include <linux/tcp.h>
#include <sys/socket.h>
#include <netinet/in.h>
#define STRAIT_KERNEL_TCP_INFO
#include "strait_system.h"

int strait_tcp_stream_counters(int fd, unsigned long long *bytes_acked, unsigned long long *bytes_received) {
    struct tcp_info info = {0};
    socklen_t length = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return -1;
    *bytes_acked = info.tcpi_bytes_acked;
    *bytes_received = info.tcpi_bytes_received;
    return 0;
}
