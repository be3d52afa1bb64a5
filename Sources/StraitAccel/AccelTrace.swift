import Foundation
import StraitBPF
import StraitKernelABI

/// One socket event from the kernel programs' ring buffer.
public struct AccelEvent: Sendable, Codable, CustomStringConvertible {
    /// What happened to the socket, from the `STRAIT_EVENT_*` codes; `unknown` for a code this
    /// build does not know.
    public enum Kind: String, Sendable, Codable {
        case established, skipped, accelerated, stack, released, closed, unknown
    }

    /// `bpf_ktime_get_ns()` when the kernel emitted it: CLOCK_MONOTONIC nanoseconds, not wall time.
    public var timestampNanoseconds: UInt64
    /// The socket's cookie (`SO_COOKIE`), unique for the socket's life, unlike its fd number or
    /// 4-tuple.
    public var socketCookie: UInt64
    /// What happened.
    public var kind: Kind
    /// The socket's local address, as text (IPv4 unmapped).
    public var local: String
    /// The peer's address, as text (IPv4 unmapped).
    public var remote: String
    /// The local port (host byte order).
    public var localPort: UInt16
    /// The peer's port (host byte order).
    public var remotePort: UInt16
    /// The cookie of the socket's network namespace: the same 4-tuple in two namespaces is two
    /// sockets.
    public var netnsCookie: UInt64
    /// For `established`: 1 if this side connected (active), 0 if it accepted. For `accelerated`
    /// and `stack`: 1 when the decision is final (adaptive mode settled), 0 when the direction only began.
    public var detail: UInt32

    init(_ raw: strait_accel_event) {
        timestampNanoseconds = raw.timestamp_ns
        socketCookie = raw.socket_cookie
        kind = switch raw.kind {
        case STRAIT_EVENT_ESTABLISHED.rawValue: .established
        case STRAIT_EVENT_SKIPPED.rawValue: .skipped
        case STRAIT_EVENT_ACCELERATED.rawValue: .accelerated
        case STRAIT_EVENT_STACK.rawValue: .stack
        case STRAIT_EVENT_RELEASED.rawValue: .released
        case STRAIT_EVENT_CLOSED.rawValue: .closed
        default: .unknown
        }
        local = raw.key.localAddress.description
        remote = raw.key.remoteAddress.description
        localPort = raw.key.local_port
        remotePort = raw.key.remote_port
        netnsCookie = raw.key.netns_cookie
        detail = raw.detail
    }

    /// Whether, after this event, the socket is in the accelerated path.
    public var accelerated: Bool { kind == .established || kind == .accelerated }

    /// One line for `strait accel trace`: both endpoints, the namespace and socket cookies, and
    /// what happened.
    public var description: String {
        let what: String = switch kind {
        case .established: detail == 1 ? "established (connect), tracked" : "established (accept), tracked"
        case .skipped: "established, not tracked (policy)"
        case .accelerated: detail == 1 ? "sends keep being redirected (settled)" : "sends redirected to peer"
        case .stack: "sends go back to the TCP stack"
        case .released: "left the socket hash"
        case .closed: "closed"
        case .unknown: "unknown event"
        }
        func endpoint(_ address: String, _ port: UInt16) -> String { address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)" }
        return "\(endpoint(local, localPort)) -> \(endpoint(remote, remotePort))  netns \(netnsCookie)  cookie \(socketCookie)  \(what)"
    }
}

extension Accelerator {
    /// Streams socket events to `handler` until it returns false, `count` events were delivered, or
    /// `shouldStop` says so (checked every `pollMilliseconds`). Blocks the calling thread.
    public func trace(
        count: Int? = nil, pollMilliseconds: Int32 = 200, shouldStop: () -> Bool = { false },
        handler: @escaping (AccelEvent) -> Bool
    ) throws {
        var delivered = 0
        var keepGoing = true
        // The ring keeps events nobody read; a live trace starts from now.
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let start = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        let reader = try RingBufferReader(map: events) { bytes in
            guard bytes.count >= MemoryLayout<strait_accel_event>.size else { return true }
            let raw = bytes.loadUnaligned(as: strait_accel_event.self)
            guard raw.timestamp_ns >= start else { return true }
            let event = AccelEvent(raw)
            delivered += 1
            keepGoing = handler(event) && (count.map { delivered < $0 } ?? true)
            return keepGoing
        }
        while keepGoing && !shouldStop() {
            try reader.poll(timeoutMilliseconds: pollMilliseconds)
        }
    }
}
