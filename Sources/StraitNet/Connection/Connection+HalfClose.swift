import StraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a relay needs beyond request/response: half-closure both ways, back-pressure between two
/// sockets, and closing with a reset.
///
/// **Half-closure** (shaped after SwiftNIO's `allowRemoteHalfClosure`). With
/// ``ConnectionOptions/allowRemoteHalfClosure`` on, the peer's FIN does not close the connection:
/// once every byte before it went to `onRequest`, ``ConnectionHandlers/onInputClosed`` runs and
/// the connection keeps writing. ``shutdownOutput()`` sends this side's FIN after the pending
/// output. When both directions are shut the connection closes: ``CloseReason/peerClosed`` if the
/// peer's FIN came last, ``CloseReason/local`` if ours did.
extension Connection {
    // MARK: Back-pressure

    /// True between ``pauseReading()`` and ``resumeReading()``. Loop thread (or `onRequest`).
    public var isReadingPaused: Bool { readingPaused }

    /// Stops reading from the socket and stops calling `onRequest`, until ``resumeReading()``:
    /// what a relay does to its source while the destination cannot take more. Bytes already
    /// read stay in ``reader``; the peer's further bytes wait in the kernel's receive buffer, and
    /// once that is full TCP flow control stops the peer, so a paused connection holds at most
    /// its reader plus the socket buffer. Costs nothing: the epoll registration is not touched
    /// (edge-triggered wake-ups while paused just do not read).
    /// On the connection's loop thread, or from its `onRequest`.
    public func pauseReading() {
        readingPaused = true
    }

    /// Undoes ``pauseReading()``: queues one pass on the loop that hands the reader's bytes to
    /// `onRequest` and reads what arrived meanwhile. The pass is needed because edge-triggered
    /// polling reported those arrivals already and will not again. Costs one queued task (no
    /// allocation, no wake-up from the loop's own thread). Does nothing unless paused.
    /// On the connection's loop thread, or from its `onRequest`.
    public func resumeReading() {
        guard readingPaused else { return }
        readingPaused = false
        if state == .active && !inDispatch && !handlerRunning { loop.enqueue(.dispatch(self)) }
    }

    // MARK: Half-closure

    /// Sends this side's FIN (`shutdown(SHUT_WR)`) once the bytes already flushed are sent, and
    /// keeps reading. Bytes written after it are dropped. If the peer's FIN was already delivered
    /// (``ConnectionHandlers/onInputClosed``) the connection then closes with ``CloseReason/local``.
    /// Safe from any thread; off the loop it costs a queued closure.
    public func shutdownOutput() {
        if loop.inEventLoop && !handlerRunning {
            beginShutdownOutput()
        } else {
            loop.execute { [self] in beginShutdownOutput() }
        }
    }

    private func beginShutdownOutput() {
        guard state == .active, !outputShut else { return }
        if output.readableBytes > 0 {
            outputShutdownPending = true
        } else {
            finishShutdownOutput()
        }
    }

    /// The output is empty: shut the write side, and close if the input is shut too. Loop only.
    func finishShutdownOutput() {
        outputShutdownPending = false
        outputShut = true
        do {
            try SocketCall.shutdown(fd, how: CInt(SHUT_WR))
        } catch {
            close(reason: CloseReason(error))
            return
        }
        if inputClosedDelivered { close(reason: .local) }
    }

    /// The peer's FIN was read and everything before it dispatched: tell the handler, or close if
    /// our side is already shut. Loop only; called again on later events, once it acts.
    func inputDidEnd() {
        guard !inputClosedDelivered, !readingPaused else { return }
        inputClosedDelivered = true
        if outputShut {
            close(reason: .peerClosed)
        } else if draining {
            closeWhenFlushed(.shutdown)
        } else {
            handlers.onInputClosed?(self)
        }
    }

    /// A hang-up or error after the input ended (a reset while we still write): close with what
    /// the socket reports. Loop only.
    func closeAfterHangUp() {
        let error = (try? SocketCall.option(fd, level: SOL_SOCKET, name: SO_ERROR)) ?? 0
        if error != 0 {
            close(reason: CloseReason(SystemCallError("SO_ERROR", Errno(rawValue: error))))
        } else {
            close(reason: .peerClosed)
        }
    }

    // MARK: Reset

    /// Closes now with a reset: `SO_LINGER` zero, so the peer's next call fails with
    /// `ECONNRESET` instead of reading a FIN, and unsent output is dropped. What a relay does when
    /// the other side was reset. `onDisconnect` gets ``CloseReason/local``. Safe from any
    /// thread; off the loop it costs a queued closure.
    public func closeWithReset() {
        if loop.inEventLoop {
            resetNow()
        } else {
            loop.execute { [self] in resetNow() }
        }
    }

    private func resetNow() {
        guard state != .closed else { return }
        try? SocketCall.setResetOnClose(fd)
        close(reason: .local)
    }
}
