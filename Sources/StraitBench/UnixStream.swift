import Foundation

/// One stream over an AF_UNIX socketpair, in this process: a kernel copy with no TCP at all,
/// the ceiling same-host acceleration can approach.
public enum UnixStream {
    /// Gbit/s of one writer thread sending `messageBytes` writes to one reader for `seconds`.
    public static func throughput(messageBytes: Int, seconds: Double) throws -> Double {
        var ends: [CInt] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0 else {
            throw ProcessRunner.Failure(command: ["socketpair"], status: errno, output: "socketpair(AF_UNIX) failed")
        }
        let writer = ends[0], reader = ends[1]
        nonisolated(unsafe) var received = 0
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            while true {
                let got = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if got <= 0 { break }
                received += got
            }
            done.signal()
        }
        let message = [UInt8](repeating: 0x5a, count: messageBytes)
        let start = Date()
        let deadline = start.addingTimeInterval(seconds)
        var sent = 0
        while Date() < deadline {
            let wrote = message.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }
            if wrote <= 0 { break }
            sent += wrote
        }
        close(writer)
        done.wait()
        close(reader)
        return Double(received) * 8 / Date().timeIntervalSince(start) / 1e9
    }
}
