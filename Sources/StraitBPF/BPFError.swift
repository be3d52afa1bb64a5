import StraitSystem
import SystemPackage

/// Why a BPF operation failed, with the errno and, for a rejected program, the verifier's log.
/// Each description ends with what to do about it.
public enum BPFError: Error, CustomStringConvertible {
    /// A libbpf or bpf(2) call failed.
    case call(String, Errno)
    /// The verifier rejected a program. `log` is the verifier's whole output.
    case verifierRejected(program: String, errno: Errno, log: String)
    /// A Swift type's size differs from the map's key or value size: the two sides of the ABI disagree.
    case layoutMismatch(map: String, part: String, swiftSize: Int, kernelSize: Int)
    /// The object file has no program or map of that name.
    case missing(kind: String, name: String, available: [String])
    /// Something the kernel or machine does not offer.
    case unsupported(String)

    /// The errno of a failed call or a verifier rejection; nil for the failures that have none
    /// (a missing program or map, something unsupported).
    public var errno: Errno? {
        switch self {
        case .call(_, let code), .verifierRejected(_, let code, _): code
        default: nil
        }
    }

    /// What failed, the errno's meaning where there is one, and what to do about it; a verifier
    /// rejection ends with the last lines of its log.
    public var description: String {
        switch self {
        case .call(let function, let code):
            return "\(function) failed: \(code) (errno \(code.rawValue)). \(Self.advice(for: code))"
        case .verifierRejected(let program, let code, let log):
            let tail = log.split(separator: "\n").suffix(8).joined(separator: "\n  ")
            return "the kernel's verifier rejected program '\(program)' (\(code)). Last lines of its log:\n  \(tail)\nThe whole log is in the error's `log`; this is a bug in Strait's kernel program or a kernel too old for it: run `strait doctor`."
        case .layoutMismatch(let map, let part, let swiftSize, let kernelSize):
            return "map '\(map)': the Swift \(part) type is \(swiftSize) bytes but the map's \(part) is \(kernelSize) bytes. The shared struct in StraitKernelABI and the kernel program disagree: rebuild both from the same source."
        case .missing(let kind, let name, let available):
            return "no \(kind) named '\(name)' in the BPF object (it has: \(available.joined(separator: ", ")))."
        case .unsupported(let what):
            return what
        }
    }

    static func advice(for code: Errno) -> String {
        switch code {
        case .notPermitted, .permissionDenied:
            "BPF needs root, or CAP_BPF with CAP_NET_ADMIN (and CAP_SYS_ADMIN for cgroup attachments): run with sudo."
        case .noSuchFileOrDirectory:
            "Nothing there: check the path, or whether it was pinned (is bpffs mounted at /sys/fs/bpf?)."
        case .invalidArgument:
            "The kernel refused the arguments: it may be too old for this program or attach type (run `strait doctor`)."
        case .noMemory:
            KernelRelease.current.isAtLeast(5, 11)
                ? "The kernel could not allocate memory for the map, its elements or the program. This kernel charges BPF memory to the memory cgroup (RLIMIT_MEMLOCK does not apply): check free memory and the cgroup's memory.max."
                : "The kernel could not allocate memory for the map or program; on this kernel (before 5.11) raise RLIMIT_MEMLOCK (ulimit -l)."
        case .fileExists:
            "Something is already there: detach or unpin it first."
        case .resourceBusy:
            "It is in use: another program may be attached already."
        case .notSupported, .noFunction:
            "The kernel does not support this: run `strait doctor` to see which features it has."
        default:
            ""
        }
    }
}

/// Runs a libbpf call that returns a negative errno on failure (libbpf 1.x convention).
@discardableResult
func libbpfCall(_ function: String, _ body: () -> CInt) throws(BPFError) -> CInt {
    let result = body()
    if result < 0 { throw .call(function, Errno(rawValue: -result)) }
    return result
}

/// Runs a libbpf call that returns a pointer, or NULL with errno set.
func libbpfPointer<T>(_ function: String, _ body: () -> T?) throws(BPFError) -> T {
    guard let pointer = body() else { throw .call(function, Errno(rawValue: currentErrno())) }
    return pointer
}

/// Converts a `SystemCallError` from StraitSystem into a ``BPFError``.
extension BPFError {
    init(_ error: SystemCallError) { self = .call(error.function, error.errno) }
}
