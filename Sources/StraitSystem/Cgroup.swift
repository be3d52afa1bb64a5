import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why a cgroup could not be found, apart from a failed syscall (those throw ``SystemCallError``).
public enum CgroupError: Error, Equatable, CustomStringConvertible {
    /// No cgroup2 filesystem in `/proc/self/mountinfo`.
    case notMounted
    /// `/proc/PID/cgroup` is unreadable or has no cgroup v2 line (`0::`): the process is gone, or
    /// lives only in v1 hierarchies.
    case noMembership(pid: pid_t)

    /// What is missing and what to do about it.
    public var description: String {
        switch self {
        case .notMounted: "cgroup v2 is not mounted: mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd's unified hierarchy"
        case .noMembership(let pid): "process \(pid) has no cgroup v2 (no `0::` line in /proc/\(pid)/cgroup): it has exited, or this host uses cgroup v1 only"
        }
    }
}

/// A cgroup v2 directory. Strait attaches socket programs to these; tests make their own
/// below the v2 root and remove them afterwards. A plain value: it names the directory and owns
/// nothing (``openDirectory()`` returns a descriptor the caller closes).
public struct Cgroup: Sendable, Hashable, CustomStringConvertible {
    /// Absolute path in the cgroup v2 filesystem, e.g. `/sys/fs/cgroup/unified/strait-test-1`.
    public let path: String

    /// Names the directory at `path`; nothing is checked or opened.
    public init(path: String) { self.path = path }

    /// The cgroup's directory below the cgroup v2 mount.
    public var description: String { path }

    /// Where cgroup v2 is mounted (read from `/proc/self/mountinfo`), or nil when it is not.
    public static func v2MountPoint() -> String? {
        guard let mounts = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in mounts.split(separator: "\n") {
            // "... mountpoint options - fstype source superoptions"
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count > 4 { return String(fields[4]) }
        }
        return nil
    }

    /// The root of the cgroup v2 hierarchy; ``CgroupError/notMounted`` when cgroup v2 is not mounted.
    public static func root() throws(CgroupError) -> Cgroup {
        guard let mount = v2MountPoint() else { throw .notMounted }
        return Cgroup(path: mount)
    }

    /// The v2 cgroup a process belongs to, from `/proc/PID/cgroup` (`0::/relative/path`).
    public static func of(process pid: pid_t = getpid()) throws(CgroupError) -> Cgroup {
        let root = try root()
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") })
        else { throw .noMembership(pid: pid) }
        let relative = line.dropFirst(3)
        return Cgroup(path: relative == "/" ? root.path : root.path + relative)
    }

    /// The same cgroup under its canonical absolute path (`realpath(3)`: a relative path from the
    /// working directory, `.`, `..`, symlinks and trailing slashes resolved), so two spellings of
    /// one directory compare equal. Throws when the directory does not exist.
    public func canonical() throws(SystemCallError) -> Cgroup {
        guard let resolved = realpath(path, nil) else { throw SystemCallError("realpath(\(path))", Errno(rawValue: errno)) }
        defer { free(resolved) }
        return Cgroup(path: String(cString: resolved))
    }

    /// Makes a child cgroup (mkdir); it is empty until processes are moved into it.
    public func makeChild(named name: String) throws(SystemCallError) -> Cgroup {
        let child = Cgroup(path: path + "/" + name)
        try systemCall("mkdir \(child.path)") { mkdir(child.path, 0o755) }
        return child
    }

    /// Moves a whole process (every thread) into this cgroup. Sockets remember the cgroup of the
    /// process that created them, so a move affects only sockets made afterwards.
    public func add(process pid: pid_t = getpid()) throws(SystemCallError) {
        try write("\(pid)\n", to: "cgroup.procs")
    }

    /// The processes in this cgroup.
    public func processes() -> [pid_t] {
        let text = (try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { pid_t($0) }
    }

    /// Removes the (empty) cgroup directory.
    public func remove() throws(SystemCallError) {
        try systemCall("rmdir \(path)") { rmdir(path) }
    }

    /// Opens the directory; cgroup attachments take this descriptor. The caller closes it.
    public func openDirectory() throws(SystemCallError) -> CInt {
        try systemCall("open \(path)") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    }

    /// Whether the directory exists now (one stat(2)).
    public var exists: Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    private func write(_ text: String, to file: String) throws(SystemCallError) {
        let fd = try systemCall("open \(path)/\(file)") { open(path + "/" + file, O_WRONLY | O_CLOEXEC) }
        defer { closeDescriptor(fd) }
        let bytes = Array(text.utf8)
        try systemCall("write \(path)/\(file)") { Glibc.write(fd, bytes, bytes.count) }
    }
}

extension Cgroup {
    /// The cgroup v2 directory whose inode number is `id` (the kernel's cgroup id), searched
    /// breadth-first below the v2 root to a bounded depth.
    public static func find(id: UInt64, maximumDepth: Int = 8) -> Cgroup? {
        guard let root = v2MountPoint() else { return nil }
        var level = [root]
        for _ in 0...maximumDepth {
            var next: [String] = []
            for directory in level {
                var info = stat()
                if stat(directory, &info) == 0 && UInt64(info.st_ino) == id { return Cgroup(path: directory) }
                let children = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
                for child in children {
                    let path = directory + "/" + child
                    var childInfo = stat()
                    if lstat(path, &childInfo) == 0 && (childInfo.st_mode & S_IFMT) == S_IFDIR { next.append(path) }
                }
            }
            if next.isEmpty { break }
            level = next
        }
        return nil
    }
}
