// swift-tools-version:6.1
// Strait: shortens the path data takes between sockets on Linux.
// The target list below is the architecture, bottom layer first.
import PackageDescription

let package = Package(
    name: "strait",
    products: [
        .executable(name: "strait", targets: ["strait"]),
        .library(name: "StraitBPF", targets: ["StraitBPF"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
    ],
    targets: [
        // Layer 0: C. Debian's libbpf through pkg-config, and the structs shared by kernel programs and Swift.
        .systemLibrary(
            name: "CLibBPF",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev"])]
        ),
        .target(name: "StraitKernelABI"),
        .target(name: "CStraitSystem"),

        // Layer 1: every syscall wrapped once, with its errno.
        .target(
            name: "StraitSystem",
            dependencies: [
                "CStraitSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),

        // Layer 2: the eBPF object/map/program/link API over libbpf.
        .target(
            name: "StraitBPF",
            dependencies: [
                "CLibBPF", "StraitSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Compiles each feature's `bpf/*.bpf.c` with the toolchain's clang and ships the object as a resource.
        .plugin(name: "BPFCompiler", capability: .buildTool()),

        // Layer 3: features, each with its kernel C beside the Swift that loads it.
        .target(
            name: "StraitAccel",
            dependencies: ["StraitBPF", "StraitKernelABI", "StraitSystem"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),

        // Side-by-side measurement against the peers each issue names.
        .target(
            name: "StraitBench",
            dependencies: ["StraitSystem", "StraitBPF", "StraitAccel"]
        ),

        // Layer 4: the command.
        .executableTarget(
            name: "strait",
            dependencies: [
                "StraitBPF", "StraitAccel", "StraitBench", "StraitSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Fixtures every kernel test uses: a private cgroup, a private pin folder, namespaces, the CI gate.
        .target(
            name: "StraitTestSupport",
            dependencies: ["StraitSystem", "StraitBPF"],
            path: "Tests/StraitTestSupport"
        ),
        .testTarget(
            name: "StraitBPFTests",
            dependencies: ["StraitBPF", "CLibBPF", "StraitSystem", "StraitTestSupport"],
            exclude: ["bpf"],
            plugins: ["BPFCompiler"]
        ),
        .testTarget(name: "StraitAccelTests", dependencies: ["StraitAccel", "StraitBPF", "CLibBPF", "StraitTestSupport"]),
    ]
)
