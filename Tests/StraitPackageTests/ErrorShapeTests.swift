import Foundation
import Testing

/// No invented errnos (issue 14): a ``SystemCallError`` says that a system call failed and carries
/// the errno the kernel left. Outside StraitSystem's wrappers, which read errno right after the call,
/// nobody builds one with an errno constant of their own choosing (`SystemCallError("…", .timedOut)`):
/// a failure that is not a syscall's gets an error type of its own that says what happened.
///
/// Constructions whose errno is a value (`error.errno`, `Errno(rawValue: code)` with a code the
/// kernel returned) pass; only a literal errno (`.name`, `Errno.name`, `.init(rawValue: ENAME)`,
/// `Errno(rawValue: ENAME)`) as the last argument is reported. Comments and string literals
/// (multi-line ones whole) are not code; what a one-line string interpolates is.
@Suite("errors carry real errnos")
struct ErrorShapeTests {
    /// Folders, below the package root, whose files may build a SystemCallError from a constant:
    /// the wrappers themselves.
    static let wrappers = ["Sources/StraitSystem/"]

    @Test("no SystemCallError is built with a literal errno outside StraitSystem")
    func noInventedErrnos() throws {
        var offenders: [String] = []
        for folder in ["Sources", "Tests"] {
            for (path, text) in try Self.files(below: folder) where !Self.wrappers.contains(where: path.hasPrefix) {
                for (line, argument) in Self.literalErrnoConstructions(in: text) {
                    offenders.append("\(path):\(line): SystemCallError(…, \(argument))")
                }
            }
        }
        #expect(
            offenders.isEmpty,
            "SystemCallError with an invented errno; give the failure its own error type (what happened, what to do):\n\(offenders.sorted().joined(separator: "\n"))")
    }

    @Test("the scan finds what it looks for")
    func scanFindsLiterals() {
        let text = """
            throw SystemCallError("listener hand-over: no \\(what) within \\(timeout)", .timedOut)
            throw SystemCallError(
                "multi-line, with a comma, in the text",
                Errno.badMessage)
            throw SystemCallError("socket", .init(rawValue: EINVAL))
            throw SystemCallError("connect", error)
            throw SystemCallError("SO_ERROR", Errno(rawValue: code))
            // throw SystemCallError("in a comment", .ioError)
            let name = "SystemCallError(\\"in a string\\", .ioError)"
            throw SystemCallError(name(f(1, 2)), error.errno)
            """
        let found = Self.literalErrnoConstructions(in: text)
        #expect(found.map(\.line) == [1, 2, 5], "\(found)")
        #expect(found.map(\.argument) == [".timedOut", "Errno.badMessage", ".init(rawValue: EINVAL)"])
    }

    /// Every Swift file below `folder` (of the package root), keyed by its path from the root.
    static func files(below folder: String) throws -> [(String, String)] {
        let root = PackageRoot.url
        let base = root.appending(path: folder)
        let files = FileManager.default.enumerator(at: base, includingPropertiesForKeys: nil)?.compactMap { $0 as? URL } ?? []
        return try files.filter { $0.pathExtension == "swift" }.map { file in
            (String(file.path.dropFirst(root.path.count + 1)), try String(contentsOf: file, encoding: .utf8))
        }
    }

    /// The `SystemCallError(…)` constructions in `text` whose last argument is a literal errno:
    /// each with the line it starts on (from 1) and that argument.
    static func literalErrnoConstructions(in text: String) -> [(line: Int, argument: String)] {
        let bytes = Array(text.utf8)
        let name = Array("SystemCallError(".utf8)
        var found: [(line: Int, argument: String)] = []
        var line = 1
        var index = 0
        var inString = false
        var interpolations: [Int] = []  // parenthesis depth inside each open \( … ) of a string
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\n") { line += 1 }
            if inString {
                if byte == UInt8(ascii: "\\") && index + 1 < bytes.count {
                    if bytes[index + 1] == UInt8(ascii: "(") {
                        interpolations.append(0)
                        inString = false
                    }
                    index += 2
                    continue
                }
                if byte == UInt8(ascii: "\"") { inString = false }
                index += 1
                continue
            }
            if byte == UInt8(ascii: "/") && index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "/") {
                while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
                continue
            }
            if byte == UInt8(ascii: "\"") && bytes[index...].starts(with: Self.multiLineQuote) {
                // A multi-line string is text, not code: skip to its end.
                var end = index + 3
                while end < bytes.count && !bytes[end...].starts(with: Self.multiLineQuote) {
                    if bytes[end] == UInt8(ascii: "\n") { line += 1 }
                    end += 1
                }
                index = end + 3
                continue
            }
            if byte == UInt8(ascii: "\"") {
                inString = true
            } else if !interpolations.isEmpty && byte == UInt8(ascii: "(") {
                interpolations[interpolations.count - 1] += 1
            } else if !interpolations.isEmpty && byte == UInt8(ascii: ")") {
                if interpolations[interpolations.count - 1] == 0 {
                    interpolations.removeLast()
                    inString = true
                } else {
                    interpolations[interpolations.count - 1] -= 1
                }
            } else if interpolations.isEmpty && byte == name[0] && bytes[index...].starts(with: name)
                && (index == 0 || !Self.isIdentifier(bytes[index - 1]))
            {
                let start = index + name.count
                if let argument = Self.lastArgument(bytes, from: start), Self.isLiteralErrno(argument) {
                    found.append((line, argument))
                }
                index = start
                continue
            }
            index += 1
        }
        return found
    }

    /// The last top-level argument of the call whose arguments start at `start` (after its `(`),
    /// trimmed; nil when the parentheses never close.
    static func lastArgument(_ bytes: [UInt8], from start: Int) -> String? {
        var depth = 0
        var inString = false
        var interpolations: [Int] = []
        var argumentStart = start
        var index = start
        while index < bytes.count {
            let byte = bytes[index]
            if inString {
                if byte == UInt8(ascii: "\\") && index + 1 < bytes.count {
                    if bytes[index + 1] == UInt8(ascii: "(") {
                        interpolations.append(depth)
                        inString = false
                    }
                    index += 2
                    continue
                }
                if byte == UInt8(ascii: "\"") { inString = false }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: "(") {
                depth += 1
            } else if byte == UInt8(ascii: ")") {
                if let open = interpolations.last, open == depth {
                    interpolations.removeLast()
                    inString = true
                } else if depth == 0 {
                    let argument = String(decoding: bytes[argumentStart..<index], as: UTF8.self)
                    return argument.trimmingCharacters(in: .whitespacesAndNewlines)
                } else {
                    depth -= 1
                }
            } else if byte == UInt8(ascii: ",") && depth == 0 {
                argumentStart = index + 1
            }
            index += 1
        }
        return nil
    }

    /// Whether `argument` names an errno constant rather than a value the kernel returned.
    static func isLiteralErrno(_ argument: String) -> Bool {
        argument.wholeMatch(of: /(?:Errno)?\.[A-Za-z]\w*/) != nil
            || argument.wholeMatch(of: /(?:Errno|\.init)\(rawValue:\s*E[A-Z0-9]+\)/) != nil
    }

    static let multiLineQuote = Array("\"\"\"".utf8)

    static func isIdentifier(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
    }
}
