import Dispatch
import Foundation
import Logging
import StraitSystem
import Synchronization

/// One finished connection, as the access log writes it.
struct AccessEntry: Sendable, Encodable {
    /// Unix time the connection ended.
    var time: Double
    var listener: String
    var client: String
    var upstream: String
    var datapath: String
    var bytesUp: UInt64
    var bytesDown: UInt64
    var durationSeconds: Double
    var end: String

    enum CodingKeys: String, CodingKey {
        case time, listener, client, upstream, datapath, end
        case bytesUp = "bytes_up", bytesDown = "bytes_down", durationSeconds = "duration_s"
    }
}

/// The access log, written off the loop threads: a relay's ``record(_:)`` appends to a bounded
/// queue (a lock and an array append, no I/O) and one writer thread formats and writes. Where the
/// writer falls behind (journald's rate limit on stderr, a slow disk), entries beyond
/// ``capacity`` are dropped and counted (`strait_proxy_errors_total{kind="access_log_dropped"}`),
/// never waited for: a loop thread never blocks on the log.
///
/// Destination: the proxy's logger at `info` (one structured line, as before), or, with
/// `access_log_file`, a file opened for appending with one JSON object per line. Owns the file's
/// descriptor and its thread; ``stop()`` writes what is queued, then closes both.
final class AccessLog: @unchecked Sendable {
    /// Entries held for the writer at most.
    static let capacity = 8192

    private let logger: Logger
    private let metrics: ProxyMetrics
    private let file: CInt?
    private let queue = Mutex<(entries: [AccessEntry], stopping: Bool)>(([], false))
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    /// Entries dropped because the queue was full.
    let dropped = Atomic<Int>(0)

    /// Starts the writer. `path` nil: lines go to `logger`; else JSON lines appended to that file
    /// (created 0640 if missing), whose open error is thrown with its errno.
    init(path: String?, logger: Logger, metrics: ProxyMetrics) throws(SystemCallError) {
        self.logger = logger
        self.metrics = metrics
        file = try path.map { path throws(SystemCallError) in try systemCall("open(\(path))") { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640) } }
        let thread = Thread { [self] in run() }
        thread.name = "strait-access-log"
        thread.start()
    }

    /// Queues `entry` for the writer, or drops and counts it when ``capacity`` are waiting. Any thread.
    func record(_ entry: AccessEntry) {
        let wasEmpty = queue.withLock { state -> Bool? in
            guard state.entries.count < Self.capacity, !state.stopping else { return nil }
            state.entries.append(entry)
            return state.entries.count == 1
        }
        switch wasEmpty {
        case nil:
            dropped.add(1, ordering: .relaxed)
            metrics.error("access_log_dropped")
        case true?:
            wake.signal()
        case false?:
            break
        }
    }

    /// Writes what is queued, then stops the thread and closes the file. Call once.
    func stop() {
        queue.withLock { $0.stopping = true }
        wake.signal()
        finished.wait()
        if let file { closeDescriptor(file) }
    }

    private func run() {
        defer { finished.signal() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        while true {
            wake.wait()
            let (batch, stopping) = queue.withLock { state in
                defer { state.entries.removeAll(keepingCapacity: true) }
                return (state.entries, state.stopping)
            }
            if let file {
                var bytes: [UInt8] = []
                for entry in batch {
                    guard let line = try? encoder.encode(entry) else { continue }
                    bytes += line
                    bytes.append(UInt8(ascii: "\n"))
                }
                write(bytes, to: file)
            } else {
                for entry in batch { logLine(entry) }
            }
            if stopping { return }
        }
    }

    private func write(_ bytes: [UInt8], to fd: CInt) {
        var offset = 0
        while offset < bytes.count {
            let result = try? bytes.withUnsafeBytes { raw throws(SystemCallError) in try SocketCall.write(fd, raw.baseAddress! + offset, raw.count - offset) }
            guard case .done(let count)? = result, count > 0 else { return }  // a full disk: the rest of this batch is lost
            offset += count
        }
    }

    private func logLine(_ entry: AccessEntry) {
        logger.info("connection", metadata: [
            "listener": "\(entry.listener)", "client": "\(entry.client)", "upstream": "\(entry.upstream)", "datapath": "\(entry.datapath)",
            "bytes_up": "\(entry.bytesUp)", "bytes_down": "\(entry.bytesDown)",
            "duration_s": "\(String(format: "%.3f", entry.durationSeconds))", "end": "\(entry.end)",
        ])
    }
}
