// swift-tools-version:6.1
// Strait: shortens the path data takes between sockets on Linux.
// The target list below is the architecture, bottom layer first: every target comes after all the
// targets it depends on, and names every module it imports (StraitPackageTests checks both).
import PackageDescription

let package = Package(
    name: "strait",
    products: [
        .executable(name: "strait", targets: ["strait"]),
        // The side-by-side benchmarks, apart from what an operator installs (`strait bench` runs it).
        .executable(name: "strait-bench", targets: ["strait-bench"]),
        .library(name: "StraitBPF", targets: ["StraitBPF"]),
        .library(name: "StraitNet", targets: ["StraitNet"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // Layer 0: C. Debian's libbpf through pkg-config, the structs shared by kernel programs and
        // Swift, and the one shim for what Swift's Glibc module leaves out.
        .systemLibrary(
            name: "CLibBPF",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev"])]
        ),
        // include/: structs shared with Swift. bpf/: helpers for kernel programs only.
        .target(name: "StraitKernelABI", exclude: ["bpf"]),
        // statfs, mount, setns, splice, recvmmsg, SCM_RIGHTS, TCP_INFO, epoll, eventfd, accept4, thread slices.
        .target(name: "CStraitSystem"),

        // Layer 1: every syscall wrapped once, with its errno; the address types (IPAddress, SocketAddress).
        .target(
            name: "StraitSystem",
            dependencies: [
                "CStraitSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),

        // Layer 2: the eBPF object/map/program/link API over libbpf, and the pure algorithms.
        .target(
            name: "StraitBPF",
            dependencies: [
                "CLibBPF", "StraitSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Maglev consistent hashing, shared by every balancer (StraitSteer, StraitLB).
        .target(name: "StraitMaglev"),

        // Build-time only: compiles each feature's `bpf/*.bpf.c` with the toolchain's clang and embeds
        // the object in the target as Swift source (StraitCodegen writes it); records the git commit.
        .executableTarget(name: "StraitCodegen"),
        .plugin(name: "BPFCompiler", capability: .buildTool(), dependencies: ["StraitCodegen"]),
        .plugin(name: "BuildInfoGenerator", capability: .buildTool(), dependencies: ["StraitCodegen"]),
        // The version and commit every installed binary reports.
        .target(name: "StraitBuildInfo", plugins: ["BuildInfoGenerator"]),
        // The one writer of Prometheus text for values read at scrape time (kernel counters).
        .target(name: "StraitExposition"),

        // Layer 3: the reactor network library: LinkBuffer, epoll reactors, connections, multiplexed RPC.
        .target(
            name: "StraitNet",
            dependencies: [
                "CStraitSystem", "StraitSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Collections", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Layer 4: features, each with its kernel C beside the Swift that loads it.
        // Same-host acceleration: sock_ops + sk_msg redirects between local sockets (`strait accel`).
        .target(
            name: "StraitAccel",
            dependencies: ["CLibBPF", "StraitBPF", "StraitExposition", "StraitKernelABI", "StraitSystem"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // XDP early drop from rule maps changed at run time (`strait drop`).
        .target(
            name: "StraitDrop",
            dependencies: ["CLibBPF", "StraitBPF", "StraitExposition", "StraitKernelABI", "StraitSystem"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // Rate limits per connection (sock_ops pacing) and in aggregate (tc egress EDT under fq) (`strait limit`).
        .target(
            name: "StraitLimit",
            dependencies: ["CLibBPF", "StraitBPF", "StraitKernelABI", "StraitSystem", "StraitDrop"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // The L4 TCP proxy engine: copy, splice and sockmap datapaths, balancing, health checks.
        .target(
            name: "StraitProxy",
            dependencies: [
                "CStraitSystem", "StraitBPF", "StraitBuildInfo", "StraitExposition", "StraitKernelABI", "StraitSystem", "StraitNet",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // Kernel steering of SO_REUSEPORT groups (sk_reuseport policies computed in Swift) and the
        // listener hand-over that restarts a StraitNet server without losing a connection.
        .target(
            name: "StraitSteer",
            dependencies: ["CLibBPF", "StraitBPF", "StraitKernelABI", "StraitMaglev", "StraitSystem", "StraitNet"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // Connect-time load balancing for local clients (cgroup sock_addr programs, `strait lb`).
        .target(
            name: "StraitLB",
            dependencies: [
                "CLibBPF", "StraitBPF", "StraitExposition", "StraitKernelABI", "StraitMaglev", "StraitSystem", "StraitNet", "StraitProxy",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        // The node agent: one file of desired state (accel, drop, proxy) reconciled into the kernel,
        // kept on SIGHUP, served as one /metrics, /healthz, /readyz endpoint (`strait agent`).
        .target(
            name: "StraitAgent",
            dependencies: [
                "StraitAccel", "StraitBPF", "StraitDrop", "StraitKernelABI", "StraitLB", "StraitNet", "StraitProxy", "StraitSystem",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),

        // Layer 5: the commands. StraitCLI is what `strait` and `strait-bench` share: exit codes,
        // one-line failures, JSON and table output, logging set-up.
        .target(
            name: "StraitCLI",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What an operator installs: no benchmark code, no interposer.
        .executableTarget(
            name: "strait",
            dependencies: [
                "CLibBPF", "StraitBPF", "StraitAccel", "StraitSystem", "StraitDrop", "StraitProxy", "StraitSteer", "StraitNet", "StraitCLI",
                "StraitBuildInfo", "StraitAgent", "StraitLimit", "StraitLB",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Benchmarks, apart from what an operator installs (no library product exports them).
        // The one bench-support target: process running, medians, ports, charts, and the peers and
        // sockets the soak and steer benchmarks share with the tests (StraitTestSupport re-exports it).
        .target(name: "StraitBenchSupport", dependencies: ["StraitBPF", "StraitSystem"]),
        // What every bench server process shares, apart from StraitBenchSupport (which the servers
        // do not link): the one heap-allocation counter (malloc-interposer preloaded,
        // `--count-allocations`) and the one CPU placement of loop threads (`--pin-loops`).
        .target(name: "BenchServerSupport", dependencies: ["StraitSystem"], path: "Sources/StraitNetBenchServers/ServerSupport"),
        // The two HTTP/1.1 plaintext servers `strait bench net` runs side by side, each in its own process.
        .executableTarget(
            name: "straitnet-http",
            dependencies: ["StraitNet", "StraitSystem", "BenchServerSupport"],
            path: "Sources/StraitNetBenchServers/StraitNetHTTP"
        ),
        .executableTarget(
            name: "swiftnio-http",
            dependencies: [
                "BenchServerSupport", "StraitSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/StraitNetBenchServers/SwiftNIOHTTP"
        ),
        // The echo RPC peers: `serve` (a frame echo server) and `load` (closed-loop callers, HdrHistogram latency).
        .executableTarget(
            name: "straitnet-rpc",
            dependencies: ["StraitNet", "StraitSystem", "BenchServerSupport", .product(name: "Histogram", package: "hdrhistogram-swift")],
            path: "Sources/StraitNetBenchServers/StraitNetRPC"
        ),
        .executableTarget(
            name: "swiftnio-rpc",
            dependencies: [
                "BenchServerSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/StraitNetBenchServers/SwiftNIORPC"
        ),
        // Runs the servers above side by side (wrk for HTTP, the load peers for RPC); `strait bench net` calls it.
        // It links the interposer only so that the build produces the library the servers are preloaded with.
        .target(
            name: "StraitNetBench",
            dependencies: ["StraitBenchSupport", .product(name: "MallocInterposerSwift", package: "malloc-interposer")]
        ),
        // Side-by-side measurement against the peers each issue names.
        .target(
            name: "StraitBench",
            dependencies: [
                "StraitSystem", "StraitBPF", "StraitNet", "StraitAccel", "StraitDrop", "StraitLimit", "StraitProxy", "StraitSteer", "StraitLB",
                "StraitBenchSupport", "StraitNetBench",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "strait-bench",
            dependencies: [
                "StraitBench", "StraitBenchSupport", "StraitNetBench", "StraitNet", "StraitProxy", "StraitLimit", "StraitSystem", "StraitCLI",
                "StraitBuildInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Fuzz targets for the parsers that read hostile input (`make fuzz`, README "Reliability").
        // Built normally each replays the inputs given as arguments; built with -DFUZZING and
        // -sanitize=fuzzer it runs libFuzzer.
        .target(name: "CFuzzDriver", path: "Fuzz/CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver"], path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "fuzz-config", dependencies: ["FuzzSupport", "StraitProxy"], path: "Fuzz/config"),
        .executableTarget(name: "fuzz-drop-rules", dependencies: ["FuzzSupport", "StraitDrop"], path: "Fuzz/drop-rules"),
        .executableTarget(name: "fuzz-rpc-frame", dependencies: ["FuzzSupport", "StraitNet"], path: "Fuzz/rpc-frame"),
        .executableTarget(name: "fuzz-metrics-request", dependencies: ["FuzzSupport", "StraitNet"], path: "Fuzz/metrics-request"),
        .executableTarget(name: "fuzz-proxy-header", dependencies: ["FuzzSupport", "StraitProxy"], path: "Fuzz/proxy-header"),

        // Tests. Fixtures every kernel test uses: the CI gate, namespaces, built products (and, re-exported,
        // StraitBenchSupport's private cgroup, sockets and hostile peers).
        .target(
            name: "StraitTestSupport",
            dependencies: ["StraitSystem", "StraitBPF", "StraitBenchSupport"],
            path: "Tests/StraitTestSupport"
        ),
        // The package's shape: one syscall layer, and this file's order and dependencies (reads the tree only).
        .testTarget(name: "StraitPackageTests"),
        .testTarget(
            name: "StraitBPFTests",
            dependencies: ["StraitBPF", "CLibBPF", "StraitSystem", "StraitTestSupport"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        .testTarget(
            name: "StraitNetTests",
            dependencies: ["StraitNet", "StraitSystem", "StraitTestSupport", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(
            name: "StraitAccelTests",
            dependencies: ["StraitAccel", "StraitBPF", "CLibBPF", "CStraitSystem", "StraitKernelABI", "StraitSystem", "StraitTestSupport"]
        ),
        .testTarget(name: "StraitDropTests", dependencies: ["StraitDrop", "StraitBPF", "StraitKernelABI", "StraitSystem", "CStraitSystem", "StraitTestSupport"]),
        .testTarget(name: "StraitLimitTests", dependencies: ["StraitLimit", "StraitDrop", "StraitBPF", "CLibBPF", "StraitKernelABI", "StraitSystem", "StraitTestSupport"]),
        .testTarget(
            name: "StraitProxyTests",
            dependencies: [
                "StraitProxy", "StraitBPF", "StraitKernelABI", "StraitSystem", "CStraitSystem", "StraitNet", "StraitTestSupport", "StraitBench",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "StraitSteerTests",
            // StraitBench: the restart drill (a measurement, not part of the StraitSteer library).
            dependencies: [
                "StraitSteer", "StraitMaglev", "StraitNet", "StraitBPF", "StraitSystem", "StraitKernelABI", "StraitTestSupport", "StraitBench",
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        .testTarget(
            name: "StraitLBTests",
            dependencies: ["StraitExposition", "StraitLB", "StraitMaglev", "StraitBPF", "StraitKernelABI", "StraitSystem", "StraitNet", "StraitProxy", "StraitTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "StraitAgentTests",
            dependencies: [
                "StraitAgent", "StraitAccel", "StraitDrop", "StraitLB", "StraitProxy", "StraitBPF", "StraitSystem", "StraitNet", "StraitTestSupport",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(name: "StraitNetBenchTests", dependencies: ["StraitNetBench", "StraitBenchSupport"]),
    ]
)

// `make fuzz` (STRAIT_FUZZ=1): every target is built with libFuzzer's coverage and AddressSanitizer
// and the fuzz executables link libFuzzer; the build-time tool the plugins run (StraitCodegen) is
// left alone, since a tool linked with libFuzzer would run libFuzzer instead of its own main.
if Context.environment["STRAIT_FUZZ"] != nil {
    for target in package.targets where target.type != .plugin && target.type != .system && target.name != "StraitCodegen" {
        target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-sanitize=fuzzer,address"]), .define("FUZZING")]
        target.cSettings = (target.cSettings ?? []) + [.unsafeFlags(["-fsanitize=fuzzer-no-link,address"])]
        if target.name.hasPrefix("fuzz-") {
            target.linkerSettings = (target.linkerSettings ?? []) + [.unsafeFlags(["-sanitize=fuzzer,address"])]
        }
    }
}
