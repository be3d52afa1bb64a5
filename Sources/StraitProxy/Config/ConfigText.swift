import CYaml
import StraitSystem

/// The bounds a configuration's text must keep before Yams builds its node tree, so that no file
/// can crash or stall `strait proxy --check` or a running proxy's reload.
///
/// Yams builds the tree recursively, one stack frame chain per nesting level: a few thousand
/// nested `[` overflow the stack. libyaml's own parser is a state machine with its own heap
/// stacks, so ``checkShape(_:file:)`` runs it first, event by event (no tree, no recursion), and
/// refuses nesting deeper than ``maximumDepth`` at the first node too deep. It imports Yams's bundled
/// libyaml (`CYaml`) so that both passes read the text with the same parser.
public enum ConfigText {
    /// The largest configuration file read: 16 MiB (a 100,000-listener file is about 10 MiB).
    public static let maximumBytes = 16 << 20
    /// The deepest nesting of mappings and sequences accepted. A valid file nests 5 deep
    /// (`clusters` → cluster → `upstreams` → upstream); at this bound Yams's recursion fits a
    /// 256 KiB thread stack (tested), where 5,000 levels overflow the main thread's 8 MiB.
    public static let maximumDepth = 32

    /// The file's bytes, at most ``maximumBytes`` + 1 of them; the error carries the errno.
    static func read(path: String) throws(SystemCallError) -> [UInt8] {
        try FileContents.read(path: path, limit: maximumBytes)
    }

    /// The text of a file's bytes: refuses a file over ``maximumBytes``, bytes that are not UTF-8,
    /// and control characters other than tab, line feed and carriage return (a binary file), each
    /// at its line and column, without echoing the byte. Skips a leading UTF-8 byte-order mark.
    static func decode(_ bytes: [UInt8], file: String) throws(ProxyConfigError) -> String {
        guard bytes.count <= maximumBytes else {
            throw ProxyConfigError(file: file, line: 0, column: 0, message: "larger than \(maximumBytes >> 20) MiB; expected a configuration file")
        }
        let body = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? bytes[3...] : bytes[...]
        var iterator = body.makeIterator()
        var decoder = UTF8()
        var position = (line: 1, column: 1)
        var text = String.UnicodeScalarView()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                try checkCharacter(scalar, at: position, file: file)
                text.append(scalar)
                position = scalar == "\n" ? (position.line + 1, 1) : (position.line, position.column + 1)
            case .emptyInput:
                return String(text)
            case .error:
                throw ProxyConfigError(file: file, line: position.line, column: position.column, message: "bytes that are not UTF-8; expected a text file in UTF-8")
            }
        }
    }

    /// Refuses control characters in text already decoded (``ProxyConfigLoader/parse(_:file:)``'s
    /// callers), then checks the nesting depth.
    static func checkShape(_ text: String, file: String) throws(ProxyConfigError) {
        var position = (line: 1, column: 1)
        for scalar in text.unicodeScalars {
            try checkCharacter(scalar, at: position, file: file)
            position = scalar == "\n" ? (position.line + 1, 1) : (position.line, position.column + 1)
        }
        if let (line, column) = firstTooDeep(text) {
            throw ProxyConfigError(file: file, line: line, column: column, message: "nested more than \(maximumDepth) levels deep; a configuration nests at most 5")
        }
    }

    private static func checkCharacter(_ scalar: Unicode.Scalar, at position: (line: Int, column: Int), file: String) throws(ProxyConfigError) {
        let value = scalar.value
        guard value < 0x20 && value != 0x09 && value != 0x0A && value != 0x0D || value == 0x7F || (0x80...0x9F).contains(value) else { return }
        throw ProxyConfigError(file: file, line: position.line, column: position.column, message: "a control character (U+\(String(value, radix: 16, uppercase: true))); expected text (is this a binary file?)")
    }

    /// The 1-based line and column of the first mapping or sequence nested deeper than
    /// ``maximumDepth``, or nil. A syntax error ends the walk with nil: Yams then reports it, and
    /// it has nested no deeper than this walk has seen.
    static func firstTooDeep(_ text: String) -> (Int, Int)? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return nil }
        defer { yaml_parser_delete(&parser) }
        var bytes = Array(text.utf8)
        return bytes.withUnsafeMutableBufferPointer { buffer -> (Int, Int)? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var depth = 0
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return nil }
                defer { yaml_event_delete(&event) }
                switch event.type {
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    depth += 1
                    if depth > maximumDepth { return (Int(event.start_mark.line) + 1, Int(event.start_mark.column) + 1) }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    depth -= 1
                case YAML_STREAM_END_EVENT, YAML_NO_EVENT:
                    return nil
                default:
                    continue
                }
            }
        }
    }

    /// Advice for a syntax error on `line`: an unquoted `[::1]:6000` is a YAML flow sequence
    /// followed by text, which YAML refuses.
    static func hint(line: Int, in text: String) -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard line >= 1, line <= lines.count else { return "" }
        let content = lines[line - 1]
        guard let open = content.firstIndex(of: "["), content[open...].contains("]:") else { return "" }
        return " (an IPv6 host:port must be quoted in YAML: \"[2001:db8::1]:6000\")"
    }
}
