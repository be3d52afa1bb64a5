// Fuzzes the proxy's `/metrics` request reader. No input may crash; a request is classified the
// same whatever follows its header block, and an unfinished header never grows past the bound.
import FuzzSupport
import StraitProxy

FuzzMain.run { bytes in
    bytes.withUnsafeBytes { raw in
        let verdict = MetricsRequest.classify(raw)
        if verdict == .incomplete { precondition(raw.count <= MetricsRequest.maximumHeaderBytes, "an unfinished header above the bound") }
        if verdict == .metrics || verdict == .other {
            let longer = Array(raw) + Array("trailing body bytes".utf8)
            longer.withUnsafeBytes { precondition(MetricsRequest.classify($0) == verdict, "bytes after the headers changed the verdict") }
        }
    }
}
