#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sched.h>
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
