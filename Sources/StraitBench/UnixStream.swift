import Foundation
import StraitSystem

/// One stream over an AF_UNIX socketpair, in this process: a kernel copy with no TCP at all,
/// the ceiling same-host acceleration can approach.
public enum UnixStream {
    /// Gbit/s of one writer thread sending `messageBytes` writes to one reader for `seconds`.
    public static func throughput(messageBytes: Int, seconds: Double) throws -> Double {
        let (writer, reader) = try SocketCall.unixPair()
        nonisolated(unsafe) var received = 0
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            while case .done(let got)? = try? buffer.withUnsafeMutableBytes({ try SocketCall.read(reader, $0.baseAddress!, $0.count) }), got > 0 {
                received += got
            }
            done.signal()
        }
        let message = [UInt8](repeating: 0x5a, count: messageBytes)
        let start = Date()
        let deadline = start.addingTimeInterval(seconds)
        while Date() < deadline, case .done(let wrote)? = try? message.withUnsafeBytes({ try SocketCall.write(writer, $0.baseAddress!, $0.count) }), wrote > 0 {}
        closeDescriptor(writer)
        done.wait()
        closeDescriptor(reader)
        return Double(received) * 8 / Date().timeIntervalSince(start) / 1e9
    }
}
