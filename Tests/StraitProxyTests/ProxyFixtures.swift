import CStraitSystem
import Foundation
import Logging
import StraitNet
import StraitProxy
import StraitSystem
import StraitTestSupport
import Synchronization
import Testing

/// A blocking upstream server on 127.0.0.1 (ephemeral port) that runs `handler` on its own thread
/// for every accepted connection. Stopping closes the listener; handlers finish on their own.
final class ThreadedUpstream: @unchecked Sendable {
    let listener: TestListener
    let accepted = NSLock()
    private(set) var acceptedCount = 0
    private var stopped = false
    private let thread: Thread

    var port: UInt16 { listener.port }
    var address: SocketAddress { .ip(IPAddress("127.0.0.1")!, port: port) }

    init(port: UInt16 = 0, _ handler: @escaping @Sendable (TestSocket) -> Void) throws {
        listener = try TestListener(.ipv4, port: port)
        let listenerFD = listener.socket.fd
        nonisolated(unsafe) var selfReference: ThreadedUpstream?
        thread = Thread {
            while true {
                let fd = accept(listenerFD, nil, nil)
                if fd < 0 {
                    if errno == EINTR { continue }
                    return
                }
                selfReference?.accepted.withLock { selfReference?.acceptedCount += 1 }
                let socket = TestSocket(fd: fd)
                socket.setReceiveTimeout(seconds: 30)
                Thread.detachNewThread { handler(socket) }
            }
        }
        selfReference = self
        thread.start()
    }

    var connections: Int { accepted.withLock { acceptedCount } }

    /// Stops accepting (the listening socket is shut down and closed).
    func stop() {
        guard !stopped else { return }
        stopped = true
        shutdown(listener.socket.fd, CInt(SHUT_RDWR))
        listener.socket.close()
    }

    deinit { stop() }
}

/// Echoes until the peer's FIN, then closes.
func echoHandler(_ socket: TestSocket) {
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let got = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress!, $0.count, 0) }
        if got <= 0 { break }
        do { try buffer.withUnsafeBytes { try socket.sendAll(UnsafeRawBufferPointer(rebasing: $0[0..<got])) } } catch { break }
    }
    socket.close()
}

/// Echoes through a pipe with splice(2) (a reader the kernel serves with `tcp_splice_read`), then
/// half-closes and closes.
func spliceEchoHandler(_ socket: TestSocket) {
    var fds: [CInt] = [0, 0]
    guard pipe(&fds) == 0 else { return }
    defer { close(fds[0]); close(fds[1]) }
    while true {
        let got = strait_splice(socket.fd, fds[1], 1 << 16, 0)
        if got <= 0 { break }
        var left = got
        while left > 0 {
            let sent = strait_splice(fds[0], socket.fd, left, 0)
            if sent <= 0 { return }
            left -= sent
        }
    }
    try? socket.shutdownWrite()
    socket.close()
}

/// A connected blocking client socket to 127.0.0.1:`port`.
func connectClient(port: UInt16, timeoutSeconds: Int = 30) throws -> TestSocket {
    try HostilePeers.connect(port: port, timeoutSeconds: timeoutSeconds)
}

/// recv once; returns the count, 0 at end of stream, or -errno.
func receiveOnce(_ socket: TestSocket, max: Int = 1 << 16) -> Int {
    var buffer = [UInt8](repeating: 0, count: max)
    let got = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress!, $0.count, 0) }
    return got >= 0 ? got : -Int(errno)
}

enum ProxyHarness {
    /// The datapaths a test can run here: copy and splice always; sockmap and auto need the kernel
    /// gate (root), since without BPF they would silently run on splice.
    static let userspaceDatapaths: [Datapath] = [.copy, .splice]
    static let kernelDatapaths: [Datapath] = [.sockmap, .auto]

    static let logger: Logger = {
        var logger = Logger(label: "strait.proxy.test")
        logger.logLevel = ProcessInfo.processInfo.environment["STRAIT_TEST_LOG"] == nil ? .critical : .debug
        return logger
    }()

    static func config(datapath: Datapath, upstreams: [SocketAddress], balancing: Balancing = .roundRobin, health: HealthCheck? = nil, connectTimeout: Duration = .seconds(5)) -> ProxyConfig {
        ProxyConfig(
            listeners: [ListenerConfig(name: "test", address: .ip(IPAddress("127.0.0.1")!, port: 0), cluster: "backend", datapath: datapath, connectTimeout: connectTimeout)],
            clusters: [ClusterConfig(name: "backend", upstreams: upstreams.map { UpstreamConfig(address: $0) }, balancing: balancing, healthCheck: health)])
    }

    /// 1,000 relayed connections take 4,000 descriptors and the test process also runs StraitNet's
    /// 10,000-connection test: raise the limit once, as far as this process may (`make test` runs
    /// suites one at a time, so they never need their descriptors at once).
    static let descriptorHeadroom: Void = {
        var limit = rlimit()
        getrlimit(CInt(RLIMIT_NOFILE.rawValue), &limit)
        let wanted: rlim_t = 65_536
        if limit.rlim_cur < wanted {
            var raised = rlimit(rlim_cur: wanted, rlim_max: max(wanted, limit.rlim_max))
            if setrlimit(CInt(RLIMIT_NOFILE.rawValue), &raised) != 0 {
                raised = rlimit(rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max)
                setrlimit(CInt(RLIMIT_NOFILE.rawValue), &raised)
            }
        }
    }()

    /// Runs `body` with a started proxy and its listener port; shuts the proxy down after.
    static func with(_ config: ProxyConfig, _ body: (Proxy, UInt16) async throws -> Void) async throws {
        _ = descriptorHeadroom
        let proxy = try Proxy(config: config, loopCount: 2, kernelDatapath: true, logger: logger)
        // A kernel-datapath test on a proxy whose SK_SKB programs failed to load would pass on
        // splice, the fallback, and prove nothing: where the kernel test gate is on, that fails.
        if KernelTestGate.enabled, config.listeners.contains(where: { [.sockmap, .auto, .skmsg].contains($0.datapath) }) {
            #expect(proxy.sockmapUnavailable == nil, "the kernel datapath is off: \(proxy.sockmapUnavailable ?? "")")
        }
        do {
            let port = proxy.listenerAddresses.values.first!.port!
            try await body(proxy, port)
        } catch {
            await proxy.shutdown(drainTimeout: .zero)
            throw error
        }
        await proxy.shutdown(drainTimeout: .seconds(2))
    }

    /// The sum of the metric lines named `name` that carry every label of `labels` (`key="value"`).
    static func metric(_ proxy: Proxy, _ name: String, _ labels: String...) -> Double {
        proxy.metrics.exposition().split(separator: "\n")
            .filter { line in (line.hasPrefix(name + "{") || line.hasPrefix(name + " ")) && labels.allSatisfy { line.contains($0) } }
            .compactMap { Double($0.split(separator: " ").last ?? "") }
            .reduce(0, +)
    }
}

/// A little xorshift so random sizes are reproducible from the printed seed.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
