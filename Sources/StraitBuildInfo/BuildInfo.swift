/// What this binary is: the release it belongs to (set here, by hand, when a release is cut) and
/// the commit it was built from (`BuildInfo.commit`, written at build time by the BuildInfoGenerator
/// plugin). `strait --version`, `strait-bench --version` and the agent's `strait_build_info` read it.
public enum BuildInfo {
    /// The release, as semantic versioning.
    public static let version = "0.1.0"

    /// `0.1.0 (commit abcdef1)`: what `--version` prints after the command's name.
    public static var versionLine: String { "\(version) (commit \(commit))" }
}
