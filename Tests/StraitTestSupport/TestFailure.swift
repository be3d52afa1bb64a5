/// A test fixture's own failure, in words: a check that went wrong where no system call failed (a
/// short transfer, no backend accepting in time), so there is no errno to carry. Real syscall
/// failures stay ``SystemCallError``s with the kernel's errno.
public struct TestFailure: Error, CustomStringConvertible {
    /// What went wrong and what was expected instead.
    public let description: String

    /// A failure described by `description`.
    public init(_ description: String) { self.description = description }
}
