import Foundation
import StraitSystem

/// Ports for benchmark servers on 127.0.0.1, and waiting until one listens.
public enum BenchPorts {
    /// Strait's benchmark range for servers that must sit on a known port.
    public static let range: ClosedRange<UInt16> = 47000...47999

    /// Whether a TCP socket can bind 127.0.0.1:`port` now (with `SO_REUSEADDR`). One socket, closed.
    public static func canBind(_ port: UInt16) -> Bool {
        guard let fd = try? SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue)) else { return false }
        defer { closeDescriptor(fd) }
        try? SocketCall.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
        return (try? SocketCall.bind(fd, to: .loopback(port: port))) != nil
    }

    /// The first port from `preferred` on (wrapping within ``range``) that a server can bind on
    /// 127.0.0.1 with `SO_REUSEADDR`. Load generators' closed connections sit in TIME_WAIT on
    /// ephemeral ports that may fall in this range, and such a port cannot be bound for a minute, so
    /// every server start asks again. Costs one socket per port tried.
    public static func available(preferred: UInt16) -> UInt16 {
        let count = Int(range.upperBound - range.lowerBound) + 1
        for offset in 0..<count {
            let port = range.lowerBound + UInt16((Int(preferred) - Int(range.lowerBound) + offset) % count)
            if canBind(port) { return port }
        }
        return preferred
    }

    /// A port the kernel chose (bind to port 0, read it back, release it): free now, though another
    /// process may take it before the caller binds it.
    public static func free() -> UInt16 {
        guard let fd = try? SocketCall.socket(domain: AF_INET, type: CInt(SOCK_STREAM.rawValue)) else { return 0 }
        defer { closeDescriptor(fd) }
        guard (try? SocketCall.bind(fd, to: .loopback(port: 0))) != nil else { return 0 }
        return (try? SocketCall.localAddress(of: fd))?.port ?? 0
    }

    /// Waits until something listens on 127.0.0.1:`port` (read from `/proc/net/tcp`, so the server
    /// never sees a probe connection: iperf3's one-off server would take it for its test), polling
    /// every 20 ms for at most `timeout` seconds.
    public static func waitForListener(port: UInt16, timeout: Double = 5) throws(BenchmarkError) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if isListening(port: port) { return }
            usleep(20_000)
        }
        throw .serverDidNotStart(port: port, seconds: timeout)
    }

    /// Whether an IPv4 socket of this network namespace listens on `port` (any address).
    public static func isListening(port: UInt16) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return false }
        let needle = String(format: ":%04X", port)
        return table.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1].hasSuffix(needle) && fields[3] == "0A"
        }
    }
}
