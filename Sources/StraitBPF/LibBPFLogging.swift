import CLibBPF
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// libbpf prints its warnings through one process-wide callback; Strait routes them to swift-log
/// under the label `strait.libbpf`, at debug level unless they are warnings.
enum LibBPFLogging {
    static let logger = Logger(label: "strait.libbpf")

    /// Installs the callback once; cheap to call again.
    static let install: Void = {
        _ = libbpf_set_print { level, format, arguments in
            guard let format, let arguments else { return 0 }
            var buffer = [CChar](repeating: 0, count: 1024)
            let count = vsnprintf(&buffer, buffer.count, format, arguments)
            let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .trimmingCharacters(in: .newlines)
            switch level {
            case LIBBPF_WARN: LibBPFLogging.logger.warning("\(text)")
            case LIBBPF_INFO: LibBPFLogging.logger.info("\(text)")
            default: LibBPFLogging.logger.debug("\(text)")
            }
            return count
        }
    }()
}

func currentErrno() -> CInt { Glibc.errno }
