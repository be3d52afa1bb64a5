// Fuzzes the proxy configuration loader (DNS names refused, not resolved: no network I/O): bytes → size and text checks → nesting bound → Yams →
// the schema reader → ProxyConfig.validate(). Any input may be refused; none may crash or hang,
// and no error message may carry a raw control character.
import FuzzSupport
import StraitProxy

FuzzMain.run { bytes in
    do throws(ProxyConfigError) {
        _ = try ProxyConfigLoader.parse(bytes: bytes, file: "fuzz.yaml", resolvingNames: false)
    } catch {
        precondition(!error.description.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }, "raw control character in: \(error.description.debugDescription)")
    }
}
