import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Takes the PROXY v2 header off the front of an accepted connection (`accept_proxy: v2`), for a
/// ``Relay`` before it picks an upstream.
///
/// The socket's queue is only **peeked** (`MSG_PEEK`, at most ``maximumLength`` bytes) until a whole
/// header is there; then exactly the header's bytes are read, and the payload behind them stays
/// queued for the datapath. No header byte is ever forwarded. The header and the first payload
/// bytes often share one segment, so a kernel datapath joins with that segment partly read; its
/// stream parser starts at the message's offset in the segment (`proxy.bpf.c`, ``SockmapJoinTests``).
///
/// Stateless: the relay calls ``read(_:peerClosed:)`` on each readiness of the client socket
/// (edge-triggered, so bytes left queued do not wake it again) and keeps the deadline itself.
/// Each call costs one `recv` into a stack buffer, plus one more once the header is complete.
enum ProxyHeaderReader {
    /// The longest header accepted: the address block of any family (at most 216 bytes) plus
    /// TLVs. Balancers' TLVs (AWS's VPC endpoint id, GCP's PSC id, TLS details) take a few hundred
    /// bytes at most; a longer header is refused as ``Rejection/oversized`` rather than waited for.
    static let maximumLength = 4096

    /// Why a connection was closed before relaying: the `reason` label of
    /// `strait_proxy_proxy_header_rejected_total`.
    enum Rejection: String, CaseIterable {
        /// The bytes cannot start a v2 header (``ProxyHeaderV2/DecodeError``).
        case malformed
        /// The client closed (or reset) before the whole header arrived.
        case truncated
        /// The header's length field asks for more than ``maximumLength`` bytes.
        case oversized
        /// No whole header within the listener's `connect_timeout`.
        case timeout
    }

    /// What one look at the socket found.
    enum Outcome {
        /// Not a whole header yet: wait for more bytes.
        case waiting
        /// A whole header, now read off the socket (`length` bytes); what follows it is still queued.
        case header(ProxyHeaderV2, length: Int)
        /// Close the connection; `detail` says why, for the debug log.
        case rejected(Rejection, detail: String)
    }

    /// Looks at what `fd` has queued. `peerClosed`: the poller saw the client's FIN, reset or an
    /// error, so bytes that do not make a header now never will.
    static func read(_ fd: CInt, peerClosed: Bool) -> Outcome {
        withUnsafeTemporaryAllocation(byteCount: maximumLength, alignment: 1) { buffer -> Outcome in
            let queued: Int
            do throws(SystemCallError) {
                queued = try SocketCall.receive(fd, into: buffer, flags: CInt(MSG_PEEK) | CInt(MSG_DONTWAIT))
            } catch {
                if error.errno == .wouldBlock || error.errno == .resourceTemporarilyUnavailable, !peerClosed { return .waiting }
                return .rejected(.truncated, detail: "reading the header failed: \(error)")
            }
            let decoded: ProxyHeaderV2.Decoded
            do throws(ProxyHeaderV2.DecodeError) {
                decoded = try ProxyHeaderV2.decode(UnsafeRawBufferPointer(rebasing: buffer[..<queued]))
            } catch {
                return .rejected(.malformed, detail: error.description)
            }
            switch decoded {
            case .incomplete(let needed):
                if needed > maximumLength { return .rejected(.oversized, detail: "a \(needed)-byte header; at most \(maximumLength) accepted") }
                if queued == 0 || peerClosed { return .rejected(.truncated, detail: "the client closed after \(queued) of \(needed) header bytes") }
                return .waiting
            case .header(let header, let length):
                // Exactly the header: the peek saw all of it queued, so one read takes it.
                let taken = try? SocketCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<length]), flags: CInt(MSG_DONTWAIT))
                guard taken == length else { return .rejected(.truncated, detail: "read \(taken ?? -1) of the header's \(length) bytes") }
                return .header(header, length: length)
            }
        }
    }
}

extension ProxyHeaderV2 {
    /// The client's address and the address it reached, as the header says; nil for a `LOCAL`
    /// header (a balancer's own health check), an unspecified or a Unix family: the receiver then
    /// uses the connection's own addresses, as the spec asks.
    var socketAddresses: (source: SocketAddress, destination: SocketAddress)? {
        guard command == .proxy, case .ip(let source, let sourcePort, let destination, let destinationPort) = addresses else { return nil }
        return (.ip(source, port: sourcePort), .ip(destination, port: destinationPort))
    }
}
