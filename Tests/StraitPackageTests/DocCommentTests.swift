import Foundation
import Testing

/// Every public declaration has a doc comment (issue 14), checked in every target below Sources/.
/// A new target is checked from the day it is added.
///
/// A declaration counts as documented when a `///` line, or the end of a `/** … */` block, is
/// right above it or above the attributes (`@inlinable`) in front of it. Members a `public extension`
/// makes public without the word are not seen; extensions themselves need no comment.
@Suite("doc comments")
struct DocCommentTests {
    /// The folders below Sources/ that are checked: every target.
    static func checkedTargets() throws -> [String] {
        let sources = PackageRoot.url.appending(path: "Sources")
        return try FileManager.default.contentsOfDirectory(atPath: sources.path)
            .filter { !$0.hasPrefix(".") }
            .sorted()
    }

    @Test("every public declaration has a doc comment")
    func everyPublicDeclarationDocumented() throws {
        let targets = try Self.checkedTargets()
        #expect(["StraitSystem", "StraitBench", "StraitProxy"].allSatisfy { targets.contains($0) }, "the scan found the targets below Sources/: \(targets)")
        var missing: [String] = []
        for target in targets {
            for (path, text) in try ErrorShapeTests.files(below: "Sources/\(target)") {
                for (line, declaration) in Self.undocumented(in: text) {
                    missing.append("\(path):\(line): \(declaration)")
                }
            }
        }
        #expect(missing.isEmpty, "public declarations without a doc comment (say why, who owns what, what it costs):\n\(missing.sorted().joined(separator: "\n"))")
    }

    @Test("the scan finds what it looks for")
    func scanFindsUndocumented() {
        let text = """
            /// Documented.
            public struct A {
                public let bare: Int
                /// Documented, behind an attribute.
                @inlinable
                public static func documented() {}
                @discardableResult public func alsoBare() -> Int { 0 }
                let internalOnly = 1
            }
            public extension A {}
            /** Block-documented. */
            public enum B {}
            """
        #expect(Self.undocumented(in: text).map(\.line) == [3, 7])
    }

    /// A line that declares something public, after any attributes on the same line.
    static var declaration: Regex<(Substring, Substring)> {
        /^\s*(?:@\w+(?:\([^)]*\))?\s+)*(?:public|open)\s+(?:(?:static|final|override|mutating|nonmutating|convenience|required|indirect|nonisolated|class|private\(set\)|internal\(set\))\s+)*(func|var|let|init|subscript|struct|enum|class|protocol|typealias|actor|extension)\b/
    }

    /// The public declarations in `text` with no doc comment: the line (from 1) and its text.
    static func undocumented(in text: String) -> [(line: Int, declaration: String)] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let declaration = Self.declaration
        var found: [(line: Int, declaration: String)] = []
        for (index, line) in lines.enumerated() where line.contains("public") || line.contains("open") {
            guard let match = line.firstMatch(of: declaration), match.output.1 != "extension" else { continue }
            var above = index - 1
            while above >= 0, lines[above].trimmingCharacters(in: .whitespaces).hasPrefix("@") { above -= 1 }
            let previous = above >= 0 ? lines[above].trimmingCharacters(in: .whitespaces) : ""
            if !previous.hasPrefix("///") && !previous.hasSuffix("*/") {
                found.append((index + 1, line.trimmingCharacters(in: .whitespaces)))
            }
        }
        return found
    }
}
