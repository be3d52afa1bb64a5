// Layout shared by lb.bpf.c and StraitLB (Swift): connect-time load balancing for local clients.
#pragma once
#include <linux/types.h>

/// Entries of every service's lookup table (prime, as Maglev needs). A service holds at most
/// STRAIT_LB_MAX_BACKENDS live backends, so each owns at least ~16 entries.
#define STRAIT_LB_TABLE_SIZE 1021
#define STRAIT_LB_MAX_BACKENDS 64
/// Default capacity of the service and backend maps (user space may raise it before load).
#define STRAIT_LB_MAX_SERVICES 1024
#define STRAIT_LB_MAX_BACKEND_ENTRIES 16384
/// Sockets remembered for reverse translation (getpeername, UDP replies): an LRU map.
#define STRAIT_LB_MAX_SOCKETS 65536

enum strait_lb_policy {
    /// Maglev table over a hash of the socket cookie: a socket's choice moves only if its backend leaves.
    STRAIT_LB_MAGLEV = 0,
    /// A random entry of a table filled in proportion to the weights.
    STRAIT_LB_RANDOM = 1,
};

/// Key of `lb_services`: the virtual address (IPv4 as `::ffff:a.b.c.d`, so AF_INET and AF_INET6
/// sockets find the same service), port in network order, and IPPROTO_TCP or IPPROTO_UDP.
struct strait_lb_service_key {
    __u8 addr[16];
    __u16 port;
    __u8 protocol;
    __u8 reserved;
};

/// Value of `lb_services`. Writing it is the one map write that switches a service to a new
/// table: `table` names which of the service's two tables (`slot * 2 + table` in `lb_tables`)
/// connects read. `live` 0 means no live backend: connect and sendmsg fail with ECONNREFUSED.
struct strait_lb_service {
    __u32 slot;      // stable per service, keys its tables
    __u32 table;     // 0 or 1
    __u32 live;      // live backends in that table
    __u32 policy;    // strait_lb_policy
};

/// Value of `lb_tables`: for each entry, the id of the backend (a key of `lb_backends`).
struct strait_lb_table {
    __u32 backends[STRAIT_LB_TABLE_SIZE];
};

/// Value of `lb_backends` (key: the backend id, never reused while the process runs).
struct strait_lb_backend {
    __u8 addr[16];   // IPv4 as ::ffff:a.b.c.d
    __u16 port;      // network order
    __u16 reserved;
};

/// Key of `lb_reverse`: a socket and the backend it was sent to. Its value is the service
/// (`struct strait_lb_service_key`) that getpeername and recvmsg report instead of the backend.
struct strait_lb_reverse_key {
    __u64 cookie;
    __u8 addr[16];
    __u16 port;
    __u16 reserved;
    __u32 reserved2;
};

/// Value of the per-CPU `lb_backend_stats` (key: backend id).
struct strait_lb_backend_stats {
    __u64 connects;   // connect() calls sent to the backend
    __u64 datagrams;  // unconnected sendmsg() calls sent to it
};

/// Index of the per-CPU `lb_counters` array.
enum strait_lb_counter {
    STRAIT_LB_BALANCED = 0,   // connects and sends rewritten to a backend
    STRAIT_LB_REFUSED = 1,    // refused: the service had no live backend
    STRAIT_LB_REVERSED = 2,   // getpeername/recvmsg answers rewritten back to the service
    STRAIT_LB_COUNTERS = 3,
};

/// The connect-time hash of a socket cookie (both halves through murmur3's finaliser), mirrored
/// in Swift by `LBHash.cookie`: the table entry a socket lands on is this modulo the table size.
#define STRAIT_LB_HASH_SEED 0x9e3779b9u
