/// The middle value (the mean of the two middle ones for an even count); 0 for none. Every ratio
/// `strait bench` reports is a median of interleaved runs. Sorts a copy: O(n log n).
public func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}
