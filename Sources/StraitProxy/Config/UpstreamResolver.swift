import StraitNet
import StraitSystem

#if canImport(Glibc)
import Glibc
#endif

/// Upstreams given by DNS name: resolved (A and AAAA) when a file is checked, and again every
/// `dns_refresh` while the proxy runs (``ProxyController``). Each address of a name becomes one
/// upstream with the name's weight and backup flag, so health, ejection and drain work per address.
///
/// Resolution is `getaddrinfo(3)` (so `/etc/hosts`, nsswitch and the system resolver apply as for
/// any program); it blocks, so it runs at check time and on the controller's refresh thread, never
/// on a proxy loop.
public enum UpstreamResolver {
    /// Why a name gave no address.
    public struct Failure: Error, Equatable, CustomStringConvertible {
        /// The name asked for.
        public let name: String
        /// `gai_strerror`'s sentence.
        public let reason: String

        /// One line for `--check` and a rejected reload: the name, the resolver's reason, and what was
        /// expected.
        public var description: String { "`\(name)` does not resolve: \(reason); expected a name with A or AAAA records, or a numeric IP" }
    }

    /// `name:port` split, when `text` is a DNS name (letters, digits, `-` and `.`, at most 253
    /// characters) with a port; nil for anything else (a numeric address, a typo with a space).
    public static func nameAndPort(_ text: String) -> (name: String, port: UInt16)? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let name = text[..<colon]
        let portText = text[text.index(after: colon)...]
        guard !name.isEmpty, name.count <= 253, !name.hasPrefix("-"), !name.hasPrefix("."),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }),
              name.contains(where: \.isLetter),
              !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), let port = UInt16(portText)
        else { return nil }
        return (String(name), port)
    }

    /// Every TCP address of `name` at `port`, IPv4 first then IPv6, each once, in the resolver's order.
    public static func resolve(_ name: String, port: UInt16) throws(Failure) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, nil, &hints, &list)
        guard status == 0 else { throw Failure(name: name, reason: String(cString: gai_strerror(status))) }
        defer { freeaddrinfo(list) }
        var v4: [SocketAddress] = []
        var v6: [SocketAddress] = []
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ai_next }
            guard let raw = current.pointee.ai_addr else { continue }
            switch CInt(raw.pointee.sa_family) {
            case AF_INET:
                let address = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress.ip(.v4($0.pointee.sin_addr.s_addr), port: port) }
                if !v4.contains(address) { v4.append(address) }
            case AF_INET6:
                let bytes = raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in withUnsafeBytes(of: pointer.pointee.sin6_addr) { Array($0) } }
                let address = SocketAddress.ip(.v6(bytes), port: port)
                if !v6.contains(address) { v6.append(address) }
            default:
                continue
            }
        }
        guard !(v4 + v6).isEmpty else { throw Failure(name: name, reason: "no IPv4 or IPv6 address") }
        return v4 + v6
    }

    /// `cluster`'s upstreams with every name resolved again (numeric ones as they are). Throws the
    /// first name that does not resolve: the caller keeps the addresses it has.
    static func refreshed(_ cluster: ClusterConfig) throws(Failure) -> [UpstreamConfig] {
        var result: [UpstreamConfig] = []
        var done = Set<String>()
        for upstream in cluster.upstreams {
            guard let name = upstream.hostname, let port = upstream.address.port else {
                result.append(upstream)
                continue
            }
            guard done.insert("\(name):\(port)").inserted else { continue }
            result += try resolve(name, port: port).map { UpstreamConfig(address: $0, weight: upstream.weight, backup: upstream.backup, hostname: name) }
        }
        return result
    }
}
