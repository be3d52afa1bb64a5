// Fuzzes the request reader of StraitNet's PlainHTTPEndpoint, which serves the proxy's and the
// agent's `/metrics`, `/healthz` and `/readyz`. No input may crash; a request is classified the
// same whatever follows its header block, and an unfinished header never grows past the bound.
import FuzzSupport
import StraitNet

FuzzMain.run { bytes in
    bytes.withUnsafeBytes { raw in
        let verdict = HTTPRequestHead.classify(raw)
        if verdict == .incomplete { precondition(raw.count <= HTTPRequestHead.maximumHeaderBytes, "an unfinished header above the bound") }
        if verdict != .incomplete && verdict != .tooLarge {
            let longer = Array(raw) + Array("trailing body bytes".utf8)
            longer.withUnsafeBytes { precondition(HTTPRequestHead.classify($0) == verdict, "bytes after the headers changed the verdict") }
        }
    }
}
