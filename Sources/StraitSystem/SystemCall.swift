import CStraitSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A system call that failed: the call's name and the `errno` it left.
///
/// Every syscall in Strait goes through ``systemCall(_:_:)`` so that errno is read once, right
/// after the call, and never by callers.
public struct SystemCallError: Error, Equatable, CustomStringConvertible {
    /// The call that failed, often with what it acted on (`open /path`).
    public let function: String
    /// The error number the call left, read right after it.
    public let errno: Errno

    /// A failure of `function` with `errno`; for wrappers in StraitSystem (features throw their own errors).
    public init(_ function: String, _ errno: Errno) {
        self.function = function
        self.errno = errno
    }

    /// `function: error (errno N)`: the call, the kernel's reason, and its number for `errno(1)` lookups.
    public var description: String { "\(function): \(errno) (errno \(errno.rawValue))" }

    /// For a failed `bind(2)`, what to do about it: each errno has its own cause (`EADDRNOTAVAIL`
    /// is an address this host does not have, not a port in use). Nil for other calls.
    public var bindAdvice: String? {
        guard function == "bind" else { return nil }
        switch errno.rawValue {
        case EADDRINUSE: return "Another socket is bound to that address and port (`ss -ltnp` names its process): stop it, or choose another port."
        case EADDRNOTAVAIL: return "That address is on no interface of this host (or network namespace): use a local address, or 0.0.0.0 / [::]."
        case EACCES: return "Ports below 1024 need root or CAP_NET_BIND_SERVICE."
        default: return "Check the address, and that this process may bind it."
        }
    }
}

/// Runs a call that reports failure as `-1` and `errno`, retrying on `EINTR`.
@inlinable
@discardableResult
public func systemCall<Result: FixedWidthInteger>(_ function: String, _ body: () -> Result) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: Glibc.errno)
        if error == .interrupted { continue }
        throw SystemCallError(function, error)
    }
}

/// The outcome of a non-blocking call: done, or it would have blocked (`EAGAIN`).
public enum NonBlockingResult<Value> {
    case done(Value)
    case wouldBlock
}

/// Like ``systemCall(_:_:)``, but `EAGAIN`/`EWOULDBLOCK` is a result, not an error.
@inlinable
public func nonBlockingCall<Result: FixedWidthInteger>(_ function: String, _ body: () -> Result) throws(SystemCallError) -> NonBlockingResult<Result> {
    while true {
        let result = body()
        if result >= 0 { return .done(result) }
        let error = Errno(rawValue: Glibc.errno)
        switch error {
        case .interrupted: continue
        case .wouldBlock, .resourceTemporarilyUnavailable: return .wouldBlock
        default: throw SystemCallError(function, error)
        }
    }
}

/// Closes a descriptor, ignoring `EINTR` (Linux has already released it then).
@inlinable
public func closeDescriptor(_ fd: CInt) {
    _ = Glibc.close(fd)
}

/// The filesystem type (`f_type` of statfs) at `path`, e.g. to tell whether bpffs is mounted there.
public func fileSystemType(at path: String) throws(SystemCallError) -> Int {
    var info = statfs()
    try systemCall("statfs \(path)") { statfs(path, &info) }
    return Int(info.f_type)
}

/// Mounts a filesystem (mount(2)).
public func mountFileSystem(source: String, target: String, type: String, options: String) throws(SystemCallError) {
    try systemCall("mount \(type) at \(target)") { mount(source, target, type, 0, options) }
}
