import Foundation
import StraitBPF
import StraitKernelABI

extension Accelerator {
    /// Turns acceleration off and removes everything `enable` made.
    ///
    /// Order matters for data: redirects stop first (every direction falls back to the stack at its
    /// next send, which keeps byte order), then no new socket enters, and only then are the links
    /// and maps released.
    public func disable() throws {
        if var configuration = try config.lookup(0) {
            configuration.flags &= ~STRAIT_ACCEL_REDIRECT.rawValue
            try config.update(0, configuration)
        }
        let sockopsLink = try BPFLink.open(pinned: Self.path(.sockopsLink, in: pinDirectory))
        try sockopsLink.detach()
        try BPFFS.removeTree(pinDirectory)
    }
}
