import CLibBPF

/// How a program attaches to a SOCKMAP or SOCKHASH.
public enum SockmapAttachment: Sendable {
    /// `sk_msg` verdict on each sendmsg of a socket in the map.
    case messageVerdict
    /// `sk_skb` stream parser: frames the receive stream into messages.
    case streamParser
    /// `sk_skb` stream verdict on each received message.
    case streamVerdict

    var attachType: bpf_attach_type {
        switch self {
        case .messageVerdict: BPF_SK_MSG_VERDICT
        case .streamParser: BPF_SK_SKB_STREAM_PARSER
        case .streamVerdict: BPF_SK_SKB_STREAM_VERDICT
        }
    }
}

extension BPFProgram {
    /// Attaches an `sk_msg` or `sk_skb` program to a socket map. Uses a BPF link (kernel 6.10 and
    /// later); on older kernels falls back to a legacy attachment, which ``BPFLink/close()`` detaches.
    public func attach(sockmap map: BPFMap, as kind: SockmapAttachment) throws(BPFError) -> BPFLink {
        try BPFLink.create(
            program: self, target: map.descriptor.rawValue, attachType: kind.attachType,
            summary: "\(name) → \(kind) of map \(map.name)", legacyAllowed: true)
    }
}
