// Fuzzes the StraitNet RPC frame decoder: the input is what a peer sent, fed to a LinkBuffer in
// pieces whose sizes come from the input's first byte. Frames are taken as they complete; any
// protocol violation ends the stream (as it closes the connection). No input may crash, and the
// decoder must never consume more bytes than it was given.
import FuzzSupport
import StraitNet

FuzzMain.run { bytes in
    guard let first = bytes.first else { return }
    let piece = Int(first % 64) + 1
    let reader = LinkBuffer()
    var offset = 1
    var consumed = 0
    while offset < bytes.count {
        let end = min(offset + piece, bytes.count)
        reader.write(bytes[offset..<end])
        reader.flush()
        offset = end
        while true {
            let before = reader.readableBytes
            guard let header = try? Frame.next(in: reader, maximumLength: 1 << 16) else { break }
            precondition(header.payloadLength >= 0 && header.payloadLength <= reader.readableBytes, "header promises more than arrived")
            try! reader.skip(header.payloadLength)
            consumed += before - reader.readableBytes
        }
    }
    precondition(consumed + reader.readableBytes == bytes.count - 1, "bytes lost or invented")
}
