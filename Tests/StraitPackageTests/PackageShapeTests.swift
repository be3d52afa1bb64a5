import Foundation
import Testing

/// Package.swift is the architecture (issue 14): targets listed bottom layer first, and every
/// target names what it imports among its dependencies, so no module leans on one it reaches only
/// through another. Read from Package.swift's text and the sources; nothing is built or run.
@Suite("the package's shape")
struct PackageShapeTests {
    /// One target as Package.swift declares it.
    struct Target {
        var name: String
        var folder: String
        /// Targets and products it names (dependencies and plugins).
        var dependencies: Set<String>
    }

    /// Modules every target may import without naming them: the toolchain's.
    static let toolchain: Set<String> = ["Foundation", "FoundationEssentials", "Glibc", "Musl", "Dispatch", "Synchronization", "Testing", "XCTest", "PackagePlugin"]
    /// Modules that come with a product of another name.
    static let providedBy = ["DequeModule": "Collections", "HeapModule": "Collections", "CYaml": "Yams"]

    @Test("every target comes after the targets it depends on")
    func bottomLayerFirst() throws {
        let targets = try Self.targets()
        #expect(targets.count > 20, "read \(targets.count) targets from Package.swift")
        let names = Set(targets.map(\.name))
        var seen: Set<String> = []
        var late: [String] = []
        for target in targets {
            for dependency in target.dependencies.sorted() where names.contains(dependency) && !seen.contains(dependency) {
                late.append("\(target.name) is listed before its dependency \(dependency)")
            }
            seen.insert(target.name)
        }
        #expect(late.isEmpty, "\(late.joined(separator: "\n"))")
    }

    @Test("every target names what it imports among its dependencies")
    func importsAreDependencies() throws {
        var missing: [String] = []
        for target in try Self.targets() {
            for module in try Self.imports(below: target.folder).sorted() where !Self.toolchain.contains(module) && module != target.name {
                if !target.dependencies.contains(module) && !target.dependencies.contains(Self.providedBy[module] ?? module) {
                    missing.append("\(target.name) imports \(module)")
                }
            }
        }
        #expect(missing.isEmpty, "add these to the targets' dependencies in Package.swift:\n\(missing.joined(separator: "\n"))")
    }

    /// The targets in Package.swift's order: each `.target(`, `.executableTarget(`, `.testTarget(`,
    /// `.systemLibrary(` and `.plugin(` call, its name, `path:` and the quoted names in its arguments.
    static func targets() throws -> [Target] {
        let text = try String(contentsOf: PackageRoot.url.appending(path: "Package.swift"), encoding: .utf8)
        let manifest = text.components(separatedBy: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("//") }.joined(separator: "\n")
        var targets: [Target] = []
        for match in manifest.matches(of: /\.(target|executableTarget|testTarget|systemLibrary|plugin)\(/) {
            let arguments = Self.balanced(manifest[match.range.upperBound...])
            guard let name = arguments.firstMatch(of: /name:\s*"([^"]+)"/)?.1 else { continue }
            let kind = match.1
            let path = arguments.firstMatch(of: /path:\s*"([^"]+)"/).map { String($0.1) }
            let folder = path ?? (kind == "testTarget" ? "Tests/" : kind == "plugin" ? "Plugins/" : "Sources/") + name
            // Product dependencies are `.product(name: "X", package: "y")`: "X" is the name they add.
            var named = Set(arguments.matches(of: /"([^"]+)"/).map { String($0.1) })
            named.remove(String(name))
            targets.append(Target(name: String(name), folder: folder, dependencies: named))
        }
        return targets
    }

    /// The text up to the parenthesis that closes the one just opened.
    static func balanced(_ text: Substring) -> Substring {
        var depth = 1
        for index in text.indices {
            if text[index] == "(" { depth += 1 }
            if text[index] == ")" { depth -= 1 }
            if depth == 0 { return text[..<index] }
        }
        return text
    }

    /// The modules the Swift files below `folder` import.
    static func imports(below folder: String) throws -> Set<String> {
        let root = PackageRoot.url.appending(path: folder)
        let files = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)?.compactMap { $0 as? URL } ?? []
        var modules: Set<String> = []
        for file in files where file.pathExtension == "swift" {
            var inMultilineString = false  // generated code in a """ literal imports nothing
            for line in try String(contentsOf: file, encoding: .utf8).split(separator: "\n") {
                if line.components(separatedBy: "\"\"\"").count % 2 == 0 { inMultilineString.toggle() }
                guard !inMultilineString, line.contains("import ") else { continue }
                if let match = line.wholeMatch(of: /\s*(?:@_exported |@testable )?import (?:enum |struct |class )?([A-Za-z_][A-Za-z_0-9]*)[.A-Za-z_0-9]*\s*/) {
                    modules.insert(String(match.1))
                }
            }
        }
        return modules
    }
}
