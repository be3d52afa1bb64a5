import Foundation
import StraitSystem

/// A read that did not end in data or end of stream: the errno, or ETIMEDOUT after the deadline.
public struct ReadFailure: Error, CustomStringConvertible {
    /// The errno value.
    public let code: Int32
    /// A failure with errno `code`.
    public init(code: Int32) { self.code = code }
    /// The errno's text and number, e.g. `read failed: Connection reset by peer (errno 104)`.
    public var description: String { "read failed: \(String(cString: strerror(code))) (errno \(code))" }
}

/// Endpoint reads the way an event-driven program does them: poll(2) for input, then a
/// non-blocking recv, waiting at most ``readDeadline`` for each. A *blocking* recv on a tracked endpoint can fail
/// with a spurious EAGAIN (the kernel's `tcp_bpf_recvmsg`; see
/// `SkmsgTests.blockingReceiveOnTrackedEndpoint` in StraitProxyTests), which would end a transfer that has not failed,
/// so every other test reads this way and checks what it is about: the bytes.
extension TestSocket {
    /// How long one polled read waits for a byte before it reports `ETIMEDOUT`.
    public static let readDeadline: Duration = .seconds(10)

    /// One read into `buffer`: the count, 0 at end of stream, or -errno (-ETIMEDOUT at the deadline).
    public func polledReceive(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let deadline = ContinuousClock.now + Self.readDeadline
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return -Int(ETIMEDOUT) }
            do {
                guard try SocketCall.waitReadable([fd], timeout: left) != nil else { continue }
                if case .done(let got) = try RelayCall.receive(fd, into: buffer) { return got }
            } catch {
                return -Int(error.errno.rawValue)
            }
        }
    }

    /// One polled read of at most `max` bytes into a scratch buffer: the count, 0 or -errno.
    public func polledReceiveOnce(max: Int = 1 << 16) -> Int {
        var buffer = [UInt8](repeating: 0, count: max)
        return buffer.withUnsafeMutableBytes { polledReceive(into: $0) }
    }

    /// Exactly `count` bytes, or fewer if the stream ends first; throws on an error or timeout.
    public func polledReceive(exactly count: Int) throws(ReadFailure) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = buffer.withUnsafeMutableBytes { polledReceive(into: UnsafeMutableRawBufferPointer(rebasing: $0[offset...])) }
            if got < 0 { throw ReadFailure(code: Int32(-got)) }
            if got == 0 { break }
            offset += got
        }
        return Array(buffer[0..<offset])
    }

    /// Reads to the end of the stream checking every byte against `pattern`.
    public func polledReceiveAndVerify(_ pattern: PatternStream) throws(ReadFailure) -> (count: Int, firstMismatch: Int?) {
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        var total = 0
        var mismatch: Int?
        while true {
            let got = buffer.withUnsafeMutableBytes { polledReceive(into: $0) }
            if got < 0 { throw ReadFailure(code: Int32(-got)) }
            if got == 0 { return (total, mismatch) }
            if mismatch == nil, !buffer.withUnsafeBytes({ pattern.matches(UnsafeRawBufferPointer(rebasing: $0[0..<got]), at: total) }) {
                mismatch = total
            }
            total += got
        }
    }
}

