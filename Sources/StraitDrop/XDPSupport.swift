import StraitBPF
import StraitSystem

/// Whether native XDP works on an interface, for `strait doctor`.
public struct XDPSupport: Sendable, Codable {
    /// The interface checked.
    public var interface: String
    /// Its driver as `ethtool -i` names it (`veth`, `virtio_net`, …), read with one
    /// ETHTOOL_GDRVINFO ioctl; nil when the interface does not say.
    public var driver: String?
    /// Native (driver) mode works; false means generic mode only.
    public var native: Bool
    /// How it was found: `attached` (a program runs there now, in that mode), `probed` (a pass-all
    /// program was attached for an instant) or `read-only, by driver` (the driver is one known
    /// to implement XDP).
    public var method: String
    /// The mode of the XDP program attached now, if any.
    public var attached: XDPMode?

    /// Drivers of Linux 6.x that implement native XDP (ndo_bpf), for the read-only answer.
    static let nativeDrivers: Set<String> = [
        "veth", "virtio_net", "tun", "xen-netfront", "hv_netvsc", "mana", "ena", "gve",
        "mlx4_en", "mlx5_core", "i40e", "ice", "ixgbe", "ixgbevf", "igb", "igc", "bnxt_en",
        "qede", "nfp", "sfc", "thunder-nicvf", "ionic", "atlantic", "stmmac", "mvneta", "mvpp2",
        "fec", "enetc", "dpaa2-eth", "dpaa_eth", "cpsw", "netsec", "lan966x-switch", "tsnep", "octeontx2-nicpf",
        "bonding", "netdevsim",
    ]

    /// Answers for `interface` in the calling thread's namespace. Read-only unless `probe` is true:
    /// then, on an interface with no XDP program, it attaches a pass-all program for an instant
    /// (``XDPProbe``), which some NICs answer with a brief ring reset.
    public static func check(_ interface: NetworkInterface, probe: Bool) -> XDPSupport {
        let driver = interface.driver
        if let attached = try? XDPAttachment.query(ifindex: interface.index), let mode = attached.mode {
            let native = mode == .native || nativeDrivers.contains(driver ?? "")
            return XDPSupport(interface: interface.name, driver: driver, native: native, method: mode == .native ? "attached" : "read-only, by driver", attached: mode)
        }
        if probe, let modes = try? XDPProbe.supportedModes(ifindex: interface.index) {
            return XDPSupport(interface: interface.name, driver: driver, native: modes.contains(.native), method: "probed", attached: nil)
        }
        return XDPSupport(interface: interface.name, driver: driver, native: nativeDrivers.contains(driver ?? ""), method: "read-only, by driver", attached: nil)
    }
}
