import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension SocketCall {
    /// Waits with `poll(2)` until one of `descriptors` is readable (or has hung up), or until
    /// `timeout` has passed (nil: no limit). Returns the index of the first ready descriptor, or nil
    /// on timeout. Retries on `EINTR` with the time that is left, so a signal never shortens the
    /// wait. For blocking threads that must give up at a deadline instead of failing with `EAGAIN`.
    public static func waitReadable(_ descriptors: [CInt], timeout: Duration?) throws(SystemCallError) -> Int? {
        try wait(descriptors, for: Int16(POLLIN), timeout: timeout)
    }

    /// Waits with `poll(2)` until `fd` can take more bytes (or has failed), at most `timeout`; true
    /// when it can, false on timeout. For a writer that met back-pressure.
    public static func waitWritable(_ fd: CInt, timeout: Duration) throws(SystemCallError) -> Bool {
        try wait([fd], for: Int16(POLLOUT), timeout: timeout) != nil
    }

    private static func wait(_ descriptors: [CInt], for events: Int16, timeout: Duration?) throws(SystemCallError) -> Int? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var entries = descriptors.map { pollfd(fd: $0, events: events, revents: 0) }
        while true {
            var milliseconds: CInt = -1
            if let deadline {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return nil }
                milliseconds = CInt(min(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1, 60_000))
            }
            let ready = Glibc.poll(&entries, nfds_t(entries.count), milliseconds)
            if ready < 0 {
                if Glibc.errno == EINTR { continue }  // again, with the time that is left
                throw SystemCallError("poll", Errno(rawValue: Glibc.errno))
            }
            if let index = entries.firstIndex(where: { $0.revents != 0 }) { return index }
        }
    }

    /// `rename(2)`: replaces `destination` by `source` in one step, so a reader of `destination`
    /// finds the old file or the new one, never none.
    public static func rename(_ source: String, to destination: String) throws(SystemCallError) {
        try systemCall("rename \(source) to \(destination)") { Glibc.rename(source, destination) }
    }
}
