#if canImport(Glibc)
import Glibc
#endif

/// The running kernel's release (`uname -r`), for reports and for advice that depends on the
/// kernel version (never for feature detection: probe the feature instead).
public struct KernelRelease: Sendable, CustomStringConvertible {
    /// The release text, e.g. `6.1.0-18-amd64`.
    public let text: String

    /// The running kernel's, from `uname(2)`.
    public static var current: KernelRelease {
        var name = utsname()
        uname(&name)
        return KernelRelease(text: withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
    }

    /// A release as `uname -r` prints it (for tests, and for releases read elsewhere).
    public init(text: String) { self.text = text }

    /// The leading `major.minor`, or nil when the text does not start with them.
    public var version: (major: Int, minor: Int)? {
        let numbers = text.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
    }

    /// Whether this release is `major.minor` or later (true when the version cannot be read: the
    /// advice for current kernels is the likelier one).
    public func isAtLeast(_ major: Int, _ minor: Int) -> Bool {
        guard let version else { return true }
        return version.major > major || (version.major == major && version.minor >= minor)
    }

    /// The release as `uname -r` prints it.
    public var description: String { text }
}
