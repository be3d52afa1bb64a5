import CLibBPF

/// Asks the kernel whether it accepts a program type, map type or helper by loading a tiny
/// program or creating a tiny map (libbpf's probes), never by reading version numbers.
/// Each probe is one or two bpf(2) calls.
public enum FeatureProbe {
    /// What a probe found.
    public enum Answer: String, Sendable, Codable {
        case supported, unsupported
        /// The probe itself failed (e.g. EPERM without privileges), so the answer is unknown.
        case unknown
    }

    /// Whether this kernel loads programs of `type` (loads a minimal one and closes it at once).
    public static func programType(_ type: bpf_prog_type) -> Answer {
        answer(libbpf_probe_bpf_prog_type(type, nil))
    }

    /// Whether this kernel creates maps of `type` (creates a tiny one and closes it at once).
    public static func mapType(_ type: bpf_map_type) -> Answer {
        answer(libbpf_probe_bpf_map_type(type, nil))
    }

    /// Whether programs of `programType` may call `helper` on this kernel (loads a probe program).
    public static func helper(_ helper: bpf_func_id, in programType: bpf_prog_type) -> Answer {
        answer(libbpf_probe_bpf_helper(programType, helper, nil))
    }

    private static func answer(_ result: CInt) -> Answer {
        result == 1 ? .supported : result == 0 ? .unsupported : .unknown
    }
}
