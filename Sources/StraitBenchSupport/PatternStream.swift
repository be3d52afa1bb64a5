import Foundation
import StraitSystem

/// A deterministic byte stream for byte-exact transfer checks of any length. Byte `i` is
/// `block[i % period]`, with a prime period so that no write or read size lines up with it: a lost,
/// duplicated or reordered run of bytes shows up as a mismatch. Generating and checking are
/// memcpy/memcmp over the block, fast enough for multi-gigabyte streams in a debug build.
public struct PatternStream: Sendable {
    /// Bytes before the pattern repeats: 1,048,573, a prime just under 1 MiB.
    public static let period = 1_048_573  // prime, just under 1 MiB
    private let block: [UInt8]

    /// Builds the block for `seed` (xorshift, so the same seed gives the same stream). Allocates
    /// and fills 2 MiB, the block doubled so any window is contiguous.
    public init(seed: UInt64) {
        var state = seed | 1
        var bytes = [UInt8](repeating: 0, count: Self.period * 2)  // doubled: any window is contiguous
        for index in 0..<Self.period {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            bytes[index] = UInt8(truncatingIfNeeded: state)
        }
        bytes.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: Self.period).update(from: $0.baseAddress!, count: Self.period) }
        block = bytes
    }

    /// The `count` bytes starting at stream offset `offset`.
    public func bytes(at offset: Int, count: Int) -> [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(count)
        var position = offset
        while result.count < count {
            let start = position % Self.period
            let length = min(count - result.count, Self.period)
            result += block[start..<(start + length)]
            position += length
        }
        return result
    }

    /// Calls `body` with views of the stream from `offset`, up to `chunk` bytes each, until `count`.
    public func forEachChunk(from offset: Int = 0, count: Int, chunk: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        precondition(chunk <= Self.period)
        try block.withUnsafeBytes { raw in
            var sent = 0
            while sent < count {
                let start = (offset + sent) % Self.period
                let length = min(chunk, count - sent)
                try body(UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)]))
                sent += length
            }
        }
    }

    /// Whether `received` equals the stream at `offset`.
    public func matches(_ received: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        block.withUnsafeBytes { raw in
            var checked = 0
            while checked < received.count {
                let start = (offset + checked) % Self.period
                let length = min(received.count - checked, Self.period)
                if memcmp(raw.baseAddress! + start, received.baseAddress! + checked, length) != 0 { return false }
                checked += length
            }
            return true
        }
    }
}

extension TestSocket {
    /// Sends `count` bytes of `pattern` in writes of `chunk` bytes.
    public func send(_ pattern: PatternStream, count: Int, chunk: Int) throws {
        try pattern.forEachChunk(count: count, chunk: min(chunk, PatternStream.period)) { try sendAll($0, chunk: chunk) }
    }

    /// Reads to the end (or `limit` bytes) checking every byte against `pattern`; returns the count
    /// read and the offset of the first mismatch, if any.
    public func receiveAndVerify(_ pattern: PatternStream, limit: Int = .max, flags: Int32 = 0) throws -> (count: Int, firstMismatch: Int?) {
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        var total = 0
        var mismatch: Int?
        while total < limit {
            let want = min(buffer.count, limit - total)
            let got = try buffer.withUnsafeMutableBytes { raw in
                try systemCall("recv") { recv(fd, raw.baseAddress!, want, flags) }
            }
            if got == 0 { break }
            if mismatch == nil {
                let ok = buffer.withUnsafeBytes { pattern.matches(UnsafeRawBufferPointer(rebasing: $0[0..<got]), at: total) }
                if !ok { mismatch = total }
            }
            total += got
        }
        return (total, mismatch)
    }
}
