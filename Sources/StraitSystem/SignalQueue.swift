import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The write end of the signal pipe, read by the handlers (a plain global: set once, before any
/// handler is installed, and only loaded from the handlers).
nonisolated(unsafe) private var signalPipeWrite: CInt = -1

/// Signals as a queue the main thread reads in order, so that none is lost: each delivery writes
/// its number, one byte, to a pipe from the handler (async-signal-safe), and ``next(timeout:)``
/// reads them back one by one, in the order the handlers ran: `kill -HUP; kill -TERM` within a
/// microsecond gives both (in either order: back-to-back signals may reach two threads, and the
/// kernel delivers pending ones lowest number first). Only two deliveries of the *same* signal
/// while it is still pending coalesce (the kernel keeps one pending instance per standard signal),
/// which for HUP, TERM and USR2 means the same thing.
///
/// Process-wide, like signal dispositions: ``install(_:)`` once. Events that are not signals
/// (a hand-over finished, say) join the same queue with ``post(_:)``. Costs one pipe.
public enum SignalQueue {
    nonisolated(unsafe) private static var readEnd: CInt = -1

    /// Creates the pipe and installs handlers for `signals`, after unblocking them in the calling
    /// thread (a launcher may have left them blocked: a child spawned from a libdispatch thread
    /// inherits that thread's full mask).
    public static func install(_ signals: [CInt]) throws(SystemCallError) {
        if readEnd < 0 {
            let (read, write) = try RelayCall.pipe(size: 65536).take()  // for the process's lifetime
            readEnd = read
            signalPipeWrite = write
        }
        var handled = sigset_t()
        sigemptyset(&handled)
        for number in signals { sigaddset(&handled, number) }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        for number in signals {
            signal(number) { received in
                let saved = errno
                var byte = UInt8(truncatingIfNeeded: received)
                _ = write(signalPipeWrite, &byte, 1)
                errno = saved
            }
        }
    }

    /// Queues `event` (a value above every signal number, 64) behind the signals received so far.
    public static func post(_ event: UInt8) {
        var byte = event
        _ = write(signalPipeWrite, &byte, 1)
    }

    /// The next signal number or posted event, waiting at most `timeout` (nil: until one comes);
    /// nil on timeout.
    public static func next(timeout: Duration? = nil) throws(SystemCallError) -> CInt? {
        while true {
            guard try SocketCall.waitReadable([readEnd], timeout: timeout) != nil else { return nil }
            var byte: UInt8 = 0
            if case .done(let count) = try nonBlockingCall("read signal pipe", { Glibc.read(readEnd, &byte, 1) }), count == 1 {
                return CInt(byte)
            }
        }
    }
}
