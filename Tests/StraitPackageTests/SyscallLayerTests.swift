import Foundation
import Testing

/// One syscall layer (issue 14): features never create an epoll instance, accept with `accept4`, or
/// read `errno` themselves; they call StraitSystem, whose `systemCall`/`nonBlockingCall` read errno
/// once, right after the call. The only other place allowed is StraitNet's Poll layer, the reactor
/// that wraps epoll the same way. Nor do they build C socket addresses (`sockaddr_in()`, a pointer
/// rebound to `sockaddr`): every socket call takes a `SocketAddress`, which StraitSystem turns into one.
@Suite("the syscall layer")
struct SyscallLayerTests {
    /// Folders (below Sources/) where raw calls belong.
    static let layers = ["StraitSystem/", "CStraitSystem/", "StraitNet/Poll/"]

    /// What counts as a raw call: `epoll_create1(`, `accept4(`, `errno` read as the C global
    /// (not `.errno`, a property of SystemCallError or BPFError, and not a label or binding), and a
    /// C socket address made by hand (`sockaddr_in()`, `sockaddr_in6()`, `sockaddr_un()`,
    /// `sockaddr_storage()`, `withMemoryRebound(to: sockaddr.self …)`).
    static let names = ["epoll_create1", "accept4", "errno", "sockaddr"]
    static var patterns: [(name: String, regex: Regex<Substring>)] {
        [
            ("epoll_create1", /\bepoll_create1\s*\(/),
            ("accept4", /\baccept4\s*\(/),
            ("errno", /(?:^|[^.\w])errno(?![\w:])/),
            ("sockaddr", /\bsockaddr(?:_in6?|_un|_storage)?\s*\(\s*\)|\bto:\s*sockaddr\.self/),
        ]
    }

    @Test("no epoll_create1, accept4, raw errno read or hand-made sockaddr outside StraitSystem and StraitNet's Poll layer")
    func rawCallsStayInTheLayer() throws {
        var offenders: [String] = []
        let patterns = Self.patterns
        for (path, text) in try Self.sources() where !Self.layers.contains(where: path.hasPrefix) {
            for (number, line) in Self.code(text).enumerated() {
                // A plain substring test first: the regular expressions are slow on every line.
                for pattern in patterns where line.contains(pattern.name) && line.contains(pattern.regex) {
                    offenders.append("\(path):\(number + 1): \(pattern.name)")
                }
            }
        }
        #expect(offenders.isEmpty, "raw calls outside StraitSystem; call its wrappers instead:\n\(offenders.sorted().joined(separator: "\n"))")
    }

    @Test("the scan finds what it looks for")
    func patternsMatch() {
        let code = Self.code("let fd = epoll_create1(0)\nif errno == EINTR {}\n// accept4( in a comment\nerror.errno\nlet s = \"accept4(\"\nprint(\"failed: \\(strerror(errno))\")\nvar address = sockaddr_in()\n$0.withMemoryRebound(to: sockaddr.self, capacity: 1) {}\nlet address: SocketAddress")
        #expect(code[0].contains(Self.patterns[0].regex))
        #expect(code[1].contains(Self.patterns[2].regex))
        #expect(!code[2].contains(Self.patterns[1].regex), "comments are not code")
        #expect(!code[3].contains(Self.patterns[2].regex), "a property named errno is not the C global")
        #expect(!code[4].contains(Self.patterns[1].regex), "string literals are not code")
        #expect(code[5].contains(Self.patterns[2].regex), "what a string interpolates is code")
        #expect(code[6].contains(Self.patterns[3].regex) && code[7].contains(Self.patterns[3].regex), "a C address built by hand")
        #expect(!code[8].contains(Self.patterns[3].regex), "SocketAddress is the one address type")
    }

    /// Every Swift file below Sources/, keyed by its path below Sources/.
    static func sources() throws -> [(String, String)] {
        let root = PackageRoot.url.appending(path: "Sources")
        let files = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)?.compactMap { $0 as? URL } ?? []
        return try files.filter { $0.pathExtension == "swift" }.map { file in
            (String(file.path.dropFirst(root.path.count + 1)), try String(contentsOf: file, encoding: .utf8))
        }
    }

    /// The lines of `text` with comments and string literals blanked (line count kept). What is
    /// interpolated into a string (`"\\(errno)"`) is code and stays. Multi-line strings are read as code.
    static func code(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            guard names.contains(where: { line.contains($0) }) else { return "" }  // nothing to find
            var kept = ""
            var inString = false
            var interpolation = 0  // parentheses open inside a string's \\( … )
            var previous: Character = " "
            for character in line {
                if inString && interpolation == 0 {
                    if character == "(" && previous == "\\" {
                        interpolation = 1
                    } else if character == "\"" && previous != "\\" {
                        inString = false
                    }
                    kept.append(" ")
                } else if character == "/" && previous == "/" {
                    kept.removeLast()
                    break
                } else if character == "\"" {
                    inString = true
                    kept.append(" ")
                } else {
                    if interpolation > 0 {
                        if character == "(" { interpolation += 1 }
                        if character == ")" { interpolation -= 1 }
                    }
                    kept.append(interpolation == 0 && inString ? " " : character)
                }
                previous = character
            }
            return kept
        }
    }
}

/// The package's folder, from this file's path (Tests/StraitPackageTests/…).
enum PackageRoot {
    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}
