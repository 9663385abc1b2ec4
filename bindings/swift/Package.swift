// swift-tools-version:5.9
// Concord for Swift. `cargo xtask bindings` generates Sources/ConcordFFI
// and Sources/concord_ffiFFI (uniffi's Swift code, C header and module map);
// `cargo xtask swift-test` stages them with this manifest and runs the tests.
// On Apple platforms the C library comes as an XCFramework built by
// build-xcframework.sh on a Mac; on Linux it is lib/libconcord_ffi.so.
import PackageDescription

#if os(Linux)
let nativeTarget: Target = .systemLibrary(name: "concord_ffiFFI", path: "Sources/concord_ffiFFI")
let nativeLinker: [LinkerSetting] = [
    .unsafeFlags(["-L\(Context.packageDirectory)/lib", "-Xlinker", "-rpath", "-Xlinker", "\(Context.packageDirectory)/lib"]),
]
#else
let nativeTarget: Target = .binaryTarget(name: "concord_ffiFFI", path: "ConcordFFI.xcframework")
let nativeLinker: [LinkerSetting] = []
#endif

let package = Package(
    name: "Concord",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Concord", targets: ["Concord"]),
    ],
    targets: [
        nativeTarget,
        // uniffi's generated Swift (one file, generated, not edited).
        .target(
            name: "ConcordFFI",
            dependencies: ["concord_ffiFFI"],
            path: "Sources/ConcordFFI",
            linkerSettings: nativeLinker
        ),
        // The idiomatic layer.
        .target(name: "Concord", dependencies: ["ConcordFFI"], path: "Sources/Concord"),
        .testTarget(name: "ConcordTests", dependencies: ["Concord"], path: "Tests/ConcordTests"),
    ]
)
