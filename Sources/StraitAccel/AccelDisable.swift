import Foundation
import StraitBPF
import StraitKernelABI
import StraitSystem

extension Accelerator {
    /// Turns acceleration off and removes everything `enable` made.
    ///
    /// Order matters for data: redirects stop first (every direction falls back to the stack at its
    /// next send, which keeps byte order), then no new socket enters, and only then are the pins
    /// removed. Sockets established meanwhile keep their (now pass-through) sk_msg hook until they
    /// close: the kernel frees the programs and maps with the last of them, and no queued byte is lost.
    public func disable() throws {
        try Self.disable(pinDirectory: pinDirectory)
    }

    /// Disables whatever is pinned under `pinDirectory`, even a layout left by another Strait
    /// version or a half-finished enable.
    public static func disable(pinDirectory: String = defaultPinDirectory) throws {
        if let config = try? BPFMap.open(pinned: path(.config, in: pinDirectory)).typed(key: UInt32.self, value: strait_accel_config.self),
            var configuration = try config.lookup(0)
        {
            configuration.flags &= ~STRAIT_ACCEL_REDIRECT.rawValue
            try config.update(0, configuration)
        }
        if BPFFS.exists(path(.sockopsLink, in: pinDirectory)) {
            try BPFLink.open(pinned: path(.sockopsLink, in: pinDirectory)).detach()
        }
        try BPFFS.removeTree(pinDirectory)
        // The default folder's parent (/sys/fs/bpf/strait) was made by enable too: drop it if empty.
        if pinDirectory == defaultPinDirectory {
            try? FileCall.removeDirectory((pinDirectory as NSString).deletingLastPathComponent)
        }
    }
}
