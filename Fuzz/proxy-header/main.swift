// Fuzzes the PROXY protocol v2 decoder, which reads the first bytes of every connection on an
// `accept_proxy: v2` listener (from whatever sits in front). No input may crash; a decoded header
// re-encodes to one that decodes the same (without a CRC TLV, whose value covers padding the
// decoder drops); and the verdict does not depend on the bytes after the header.
import FuzzSupport
import StraitProxy

FuzzMain.run { bytes in
    guard case .header(let header, let length)? = try? ProxyHeaderV2.decode(bytes) else { return }
    precondition(length <= bytes.count && length <= ProxyHeaderV2.maximumLength, "a header longer than its input")
    guard case .header(let again, length)? = try? ProxyHeaderV2.decode(bytes.prefix(length)) else {
        preconditionFailure("the header alone decodes differently")
    }
    precondition(again == header, "the bytes after the header changed it")
    guard !header.tlvs.contains(where: { $0.type == ProxyHeaderV2.crc32cType }) else { return }
    guard case .header(let reencoded, _)? = try? ProxyHeaderV2.decode(header.encode()), reencoded == header else {
        preconditionFailure("encode(decode(x)) does not decode to the same header")
    }
}
