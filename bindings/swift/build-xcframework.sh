#!/usr/bin/env bash
# Builds ConcordFFI.xcframework for Package.swift's Apple binary target.
# Runs on a Mac only (needs Xcode's xcodebuild and the Apple SDKs); it is not
# run by this repository's CI, which is Linux.
#
#   cargo xtask bindings               # generates bindings/generated/swift
#   bindings/swift/build-xcframework.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
    cargo build --release --locked -p concord-ffi --lib --target "$t"
done

out=target/xcframework
rm -rf "$out" bindings/swift/ConcordFFI.xcframework
mkdir -p "$out/headers" "$out/ios-sim" "$out/macos"
cp bindings/generated/swift/concord_ffiFFI.h "$out/headers/"
cat > "$out/headers/module.modulemap" <<'MAP'
module concord_ffiFFI {
    header "concord_ffiFFI.h"
    export *
}
MAP
# One static library per platform; simulators and Macs get fat libraries.
lipo -create target/aarch64-apple-ios-sim/release/libconcord_ffi.a \
     target/x86_64-apple-ios/release/libconcord_ffi.a -output "$out/ios-sim/libconcord_ffi.a"
lipo -create target/aarch64-apple-darwin/release/libconcord_ffi.a \
     target/x86_64-apple-darwin/release/libconcord_ffi.a -output "$out/macos/libconcord_ffi.a"
xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libconcord_ffi.a -headers "$out/headers" \
    -library "$out/ios-sim/libconcord_ffi.a" -headers "$out/headers" \
    -library "$out/macos/libconcord_ffi.a" -headers "$out/headers" \
    -output bindings/swift/ConcordFFI.xcframework
mkdir -p bindings/swift/Sources/ConcordFFI
cp bindings/generated/swift/concord_ffi.swift bindings/swift/Sources/ConcordFFI/
echo "built bindings/swift/ConcordFFI.xcframework"
