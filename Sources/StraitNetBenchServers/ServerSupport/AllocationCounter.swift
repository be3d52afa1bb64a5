// Counts heap allocations per request in a bench server, for `strait bench net`.
//
// The server runs with ordo-one/malloc-interposer preloaded (`LD_PRELOAD=.../libMallocInterposerSwift.so`,
// which the benchmark sets) and `--count-allocations`. The counter finds the interposer's C entry
// points with `dlsym`, so the same server binary runs un-interposed (and unslowed) in the timed runs.
// The benchmark drives it over standard input, one word a line:
//
//   begin  → reset the counters, start counting, note the request count
//   end    → stop counting; print "allocations A frees F requests R" (R since `begin`)
//
// Between the two, every `malloc`/`calloc`/`realloc`/`posix_memalign` of every thread counts.
// The command thread itself allocates nothing in that window (read(2) into a stack buffer; the
// report is formatted after counting stops).
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The one heap-allocation counter of the bench servers (every `strait bench net` server links it
/// through BenchServerSupport). Exists once per server process, from ``fromArguments(_:)``, and
/// lives as long as the process: its command thread holds it.
public final class AllocationCounter: Sendable {
    /// Requests the server has answered; the server adds to it on its request path when counting.
    public let requests = Atomic<Int>(0)

    private typealias Toggle = @convention(c) () -> Void
    private typealias Statistics = @convention(c) (
        UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Int64>,
        UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Int64>
    ) -> Void

    private let enable: Toggle
    private let disable: Toggle
    private let reset: Toggle
    private let statistics: Statistics

    /// The counter when `--count-allocations` is among the arguments, nil otherwise. Exits with a
    /// message when asked to count but the interposer is not preloaded.
    public static func fromArguments(_ arguments: [String]) -> AllocationCounter? {
        guard arguments.contains("--count-allocations") else { return nil }
        guard let counter = AllocationCounter() else {
            writeLine("--count-allocations needs malloc-interposer preloaded: LD_PRELOAD=<build dir>/libMallocInterposerSwift.so", to: 2)
            exit(2)
        }
        counter.startCommandThread()
        return counter
    }

    private init?() {
        func symbol(_ name: String) -> UnsafeMutableRawPointer? { dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) }  // RTLD_DEFAULT
        guard let enable = symbol("malloc_interposer_enable"), let disable = symbol("malloc_interposer_disable"),
            let reset = symbol("malloc_interposer_reset"), let statistics = symbol("malloc_interposer_get_stats")
        else { return nil }
        self.enable = unsafeBitCast(enable, to: Toggle.self)
        self.disable = unsafeBitCast(disable, to: Toggle.self)
        self.reset = unsafeBitCast(reset, to: Toggle.self)
        self.statistics = unsafeBitCast(statistics, to: Statistics.self)
    }

    private func startCommandThread() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<AllocationCounter>.fromOpaque(context!).takeRetainedValue().serveCommands()
            return nil
        }, context)
        guard result == 0 else {
            // Without the command thread no count would ever be reported: say so and stop.
            writeLine("--count-allocations: cannot start the command thread (pthread_create: \(String(cString: strerror(result))))", to: 2)
            exit(71)
        }
        pthread_detach(thread)
    }

    private func serveCommands() {
        var requestsAtBegin = 0
        var line = [UInt8](repeating: 0, count: 64)
        var length = 0
        while true {
            let count = line.withUnsafeMutableBytes { read(0, $0.baseAddress! + length, 1) }
            if count <= 0 { return }
            if line[length] != 0x0A {
                length = min(length + 1, line.count - 1)
                continue
            }
            let command = line[0..<length]
            length = 0
            if command.elementsEqual("begin".utf8) {
                reset()
                requestsAtBegin = requests.load(ordering: .relaxed)
                enable()
            } else if command.elementsEqual("end".utf8) {
                disable()
                let requestsServed = requests.load(ordering: .relaxed) - requestsAtBegin
                var mallocs: Int64 = 0, bytes: Int64 = 0, small: Int64 = 0, large: Int64 = 0, frees: Int64 = 0, freedBytes: Int64 = 0
                statistics(&mallocs, &bytes, &small, &large, &frees, &freedBytes)
                writeLine("allocations \(mallocs) frees \(frees) requests \(requestsServed)", to: 1)
            }
        }
    }
}

/// Writes `text` and a newline straight to a descriptor (1: standard output, 2: standard error),
/// unbuffered, so a parent reading a pipe sees it at once.
public func writeLine(_ text: String, to fd: CInt) {
    var line = text + "\n"
    line.withUTF8 { bytes in _ = write(fd, bytes.baseAddress, bytes.count) }
}
