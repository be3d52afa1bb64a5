import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// A splice direction's pipe: its two ends, owned here and closed when the direction lets go of it
/// (``Direction/releaseResources()``), and the bytes spliced into it and not yet out.
final class SplicePipe {
    let ends: OwnedPipe
    var queued = 0

    init(_ ends: consuming OwnedPipe) {
        self.ends = ends
    }
}

/// One direction of a relay (client → upstream or back) on a userspace datapath: reads `source`,
/// writes `sink`, and after `source`'s end of stream and the last byte, shuts `sink`'s write side
/// so the FIN crosses over (half-close). Loop thread only.
final class Direction {
    enum Mode {
        /// Bytes read into a ``LinkBuffer`` and written from it (`readv`/`writev`, no extra copy).
        case copy(LinkBuffer)
        /// Bytes spliced socket → pipe → socket.
        case splice(SplicePipe)
        /// The kernel forwards; userspace only watches for the end.
        case kernel
    }

    /// What stopped a pump early.
    enum Failure: Error {
        /// Reading `source` failed: it was reset (or another socket error).
        case source(SystemCallError)
        /// Writing `sink` failed: the sink's peer is gone.
        case sink(SystemCallError)
    }

    let source: CInt
    let sink: CInt
    var mode: Mode
    /// `source` reached end of stream (its peer sent FIN).
    var sourceEnded = false
    /// `sink`'s write side was shut down: this direction is finished.
    var sinkShut = false
    /// The last write would have blocked: poll `sink` for output.
    var sinkBlocked = false
    /// Bytes handed to `sink` by userspace.
    var bytesForwarded: UInt64 = 0
    /// Reads from `source` and the bytes they returned, for ``AutoRule``.
    var reads = 0
    var bytesRead = 0
    /// The last splice into the pipe would have blocked with bytes in it: the pipe is full.
    var pipeFull = false
    /// Reading pauses while a datapath switch waits for buffers to empty.
    var readingPaused = false
    /// Sockmap only: the verdict went over this direction's in-flight budget and now passes its
    /// bytes to `source`'s own queue; the relay copies them once the kernel's backlog has reached
    /// `sink`.
    var throttled = false
    /// Asked at end of stream: false when `source` still has bytes on their way to its queue (a
    /// sockmap socket reports the end while the kernel's backlog may hold the last passed bytes).
    /// Then reading stops with ``awaitingEnd`` set, and the relay asks again later.
    var confirmEnd: (() -> Bool)?
    var awaitingEnd = false
    /// Sockmap half-close: bytes the sink had taken at the last look (progress resets idleness).
    var lastWrittenSeen: UInt64 = 0

    /// Most bytes held in userspace per direction (copy) before reading pauses.
    static let bufferLimit = 1 << 20
    static let readChunk = 256 << 10
    /// Most bytes one splice into a pipe asks for (the pipe is sized to 1 MiB where allowed).
    static let spliceChunk = 1 << 20

    init(source: CInt, sink: CInt, mode: Mode) {
        self.source = source
        self.sink = sink
        self.mode = mode
    }

    /// Bytes read and not yet written.
    var pendingBytes: Int {
        switch mode {
        case .copy(let buffer): buffer.readableBytes
        case .splice(let pipe): pipe.queued
        case .kernel: 0
        }
    }

    var wantsInput: Bool {
        switch mode {
        case .kernel: return false
        case .copy(let buffer): return !sourceEnded && !readingPaused && !awaitingEnd && buffer.readableBytes < Self.bufferLimit
        case .splice: return !sourceEnded && !readingPaused && !pipeFull
        }
    }

    var wantsOutput: Bool { sinkBlocked && pendingBytes > 0 }

    /// Moves what it can: writes pending bytes unless the sink is blocked, reads more while there is
    /// room, repeats until nothing moves; then carries the end of stream over. The sink stays
    /// blocked until its writable event (``sinkBlocked`` cleared by the relay).
    @discardableResult
    func pump() throws(Failure) -> Bool {
        var moved = false
        switch mode {
        case .kernel:
            return false
        case .copy(let buffer):
            while true {
                if buffer.readableBytes > 0 && !sinkBlocked {
                    let result: NonBlockingResult<Int>
                    do { result = try buffer.write(to: sink) } catch { throw .sink(error) }
                    if case .done(let count) = result {
                        bytesForwarded += UInt64(count)
                        moved = true
                        if buffer.readableBytes > 0 { continue }
                    } else {
                        sinkBlocked = true
                    }
                }
                guard wantsInput else { break }
                let result: NonBlockingResult<Int>
                do { result = try buffer.read(from: source, limit: Self.readChunk) } catch { throw .source(error) }
                guard case .done(let count) = result else { break }
                if count == 0 {
                    if let confirmEnd, !confirmEnd() {
                        awaitingEnd = true
                        break
                    }
                    sourceEnded = true
                    break
                }
                reads += 1
                bytesRead += count
                moved = true
            }
        case .splice(let pipe):
            while true {
                if pipe.queued > 0 && !sinkBlocked {
                    let result: NonBlockingResult<Int>
                    do { result = try RelayCall.splice(from: pipe.ends.readEnd.rawValue, to: sink, length: pipe.queued) } catch { throw .sink(error) }
                    if case .done(let count) = result {
                        pipe.queued -= count
                        bytesForwarded += UInt64(count)
                        pipeFull = false
                        moved = true
                        if pipe.queued > 0 { continue }
                    } else {
                        sinkBlocked = true
                    }
                }
                guard !sourceEnded && !readingPaused && !pipeFull else { break }
                let result: NonBlockingResult<Int>
                do { result = try RelayCall.splice(from: source, to: pipe.ends.writeEnd.rawValue, length: Self.spliceChunk) } catch {
                    throw .source(error)
                }
                guard case .done(let count) = result else {
                    // With bytes in the pipe, EAGAIN may mean the pipe's slots are full (a slot can
                    // hold less than a page of an skb): stop polling input until some go out.
                    if pipe.queued > 0 { pipeFull = true }
                    break
                }
                if count == 0 {
                    sourceEnded = true
                    break
                }
                pipe.queued += count
                reads += 1
                bytesRead += count
                moved = true
            }
        }
        try finishIfDrained()
        return moved
    }

    /// After the source's end and the last byte out, shut the sink's write side (the FIN crosses).
    func finishIfDrained() throws(Failure) {
        guard sourceEnded, !sinkShut, pendingBytes == 0 else { return }
        sinkShut = true
        do { try SocketCall.shutdown(sink, how: CInt(SHUT_WR)) } catch where error.errno == .socketNotConnected {
            return  // the sink is already fully closed: nothing to carry
        } catch {
            throw .sink(error)
        }
    }

    /// Frees the pipe (its descriptors close with the last reference, this one) or the buffer.
    func releaseResources() {
        switch mode {
        case .splice:
            mode = .kernel
        case .copy(let buffer):
            buffer.removeAll()
        case .kernel:
            break
        }
    }
}
