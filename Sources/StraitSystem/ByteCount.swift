// Byte counts as people read them, for tables, status lines and chart ticks.

/// `64 B`, `4 KiB`, `256 KiB`.
public func formatBytes(_ count: Int) -> String {
    if count >= 1 << 20 && count % (1 << 20) == 0 { return "\(count >> 20) MiB" }
    if count >= 1024 && count % 1024 == 0 { return "\(count >> 10) KiB" }
    return "\(count) B"
}
