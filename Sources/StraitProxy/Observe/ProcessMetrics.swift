import Foundation
import StraitExposition
import StraitSystem

/// The standard `process_*` series of Prometheus client libraries, read from `/proc/self` at each
/// scrape (swift-prometheus has none): CPU seconds, resident and virtual memory, open and maximum
/// descriptors, threads and start time. Costs a few small file reads and one directory listing
/// per scrape; a value that cannot be read is left out rather than reported as 0.
enum ProcessMetrics {
    /// The series in the Prometheus text format.
    static func exposition() -> String {
        var text = PrometheusText()
        if let stat = selfStat() {
            let ticks = Double(sysconf(CInt(_SC_CLK_TCK)))
            let pageSize = Double(sysconf(CInt(_SC_PAGESIZE)))
            text.counter("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", seconds: (stat.userTicks + stat.systemTicks) / ticks)
            text.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", stat.residentPages * pageSize)
            text.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", stat.virtualBytes)
            text.gauge("process_threads", "Threads in the process.", stat.threads)
            if let boot = bootTime() {
                text.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.", boot + stat.startTicks / ticks)
            }
        }
        if let open = openDescriptors() {
            text.gauge("process_open_fds", "Open file descriptors.", Double(open))
        }
        if let limits = try? ResourceLimits.openFiles() {
            text.gauge("process_max_fds", "The soft limit of open file descriptors (RLIMIT_NOFILE).", Double(limits.soft))
        }
        return text.text
    }

    /// Descriptors open now: one listing of `/proc/self/fd` (less the listing's own), or nil when
    /// it cannot be read.
    static func openDescriptors() -> Int? {
        guard let open = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return nil }
        return max(0, open.count - 1)
    }

    /// The fields of `/proc/self/stat` used above (proc(5): utime 14, stime 15, num_threads 20,
    /// starttime 22, vsize 23, rss 24; counted after the parenthesised command name, which may hold
    /// spaces).
    struct Stat {
        var userTicks: Double
        var systemTicks: Double
        var threads: Double
        var startTicks: Double
        var virtualBytes: Double
        var residentPages: Double
    }

    static func selfStat() -> Stat? {
        guard let bytes = try? FileContents.read(path: "/proc/self/stat", limit: 4096) else { return nil }
        return parseStat(String(decoding: bytes, as: UTF8.self))
    }

    /// Parses a `/proc/PID/stat` line.
    static func parseStat(_ line: String) -> Stat? {
        guard let close = line.lastIndex(of: ")") else { return nil }
        // After ")": field 3 (state) onwards.
        let fields = line[line.index(after: close)...].split(separator: " ")
        func field(_ number: Int) -> Double? { number - 3 < fields.count ? Double(fields[number - 3]) : nil }
        guard let user = field(14), let system = field(15), let threads = field(20), let start = field(22), let virtual = field(23), let resident = field(24)
        else { return nil }
        return Stat(userTicks: user, systemTicks: system, threads: threads, startTicks: start, virtualBytes: virtual, residentPages: resident)
    }

    /// `btime` of `/proc/stat`: when the system booted, in seconds since the epoch.
    static func bootTime() -> Double? {
        guard let bytes = try? FileContents.read(path: "/proc/stat", limit: 1 << 20) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }) else { return nil }
        return Double(line.dropFirst("btime ".count))
    }
}
