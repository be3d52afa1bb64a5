import CStraitSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A network interface of the calling thread's network namespace, by name and kernel index.
public struct NetworkInterface: Sendable, Hashable, CustomStringConvertible {
    /// The interface name, e.g. `eth0`.
    public let name: String
    /// The kernel's index (`if_nametoindex`), valid only in the namespace it was read in.
    public let index: UInt32

    /// Looks `name` up in the calling thread's network namespace (one `SIOCGIFINDEX` ioctl).
    public init(named name: String) throws(SystemCallError) {
        let index = if_nametoindex(name)
        guard index != 0 else { throw SystemCallError("if_nametoindex(\(name))", Errno(rawValue: Glibc.errno)) }
        self.name = name
        self.index = index
    }

    /// Every interface of the calling thread's namespace, in index order.
    public static func all() -> [NetworkInterface] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var result: [NetworkInterface] = []
        var entry = list
        while entry.pointee.if_index != 0, let name = entry.pointee.if_name {
            result.append(NetworkInterface(name: String(cString: name), index: entry.pointee.if_index))
            entry += 1
        }
        return result.sorted { $0.index < $1.index }
    }

    /// The driver's name (`ethtool -i`: e.g. `veth`, `virtio_net`, `mlx5_core`), read with one
    /// ETHTOOL_GDRVINFO ioctl that changes nothing; nil when the interface does not say.
    public var driver: String? {
        var buffer = [CChar](repeating: 0, count: 64)
        guard strait_interface_driver(name, &buffer, buffer.count) == 0 else { return nil }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.isEmpty ? nil : text
    }

    init(name: String, index: UInt32) {
        self.name = name
        self.index = index
    }

    /// The interface's name (`eth0`).
    public var description: String { name }
}
