//! `cargo xtask swift-test`: the Swift package's XCTest suite, run for real
//! with `swift test` inside a Debian 13 (trixie) chroot, whose `swiftlang`
//! package is a Swift 6 toolchain with XCTest for Linux (its glibc is newer
//! than the host's, hence the chroot).
//!
//! The chroot lives in `target/swift-root` and is set up once (debootstrap,
//! then apt inside it), each stage marked done by a file so an interrupted
//! setup resumes instead of trusting a half-made root. `/proc` is mounted
//! only while the chroot runs something, and always unmounted after. The
//! host builds the library and the relay; the chroot shares the host's
//! network, so the tests' relay listens on the host's loopback.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::bindings::{self, Paths};
use crate::process::{apt_install, has, run};

/// Packages the chroot needs for `swift build` and `swift test`.
const CHROOT_PACKAGES: &[&str] = &["swiftlang", "libc6-dev", "libstdc++-14-dev"];

/// `cargo xtask swift-test`.
pub(crate) fn test() -> Result<(), String> {
    let paths = bindings::build()?;
    let root = paths.root.join("target/swift-root");
    set_up(&root)?;
    stage(&paths, &root)?;
    let (ok, output) = in_chroot(&root, "cd /pkg && swift test 2>&1")?;
    let (passed, failed) = xctest_counts(&output);
    println!("{passed} passed, {failed} failed");
    if ok && failed == 0 && passed > 0 {
        Ok(())
    } else {
        Err("`swift test` failed in the chroot".to_owned())
    }
}

/// Debootstraps the chroot and installs Swift in it, skipping done stages.
fn set_up(root: &Path) -> Result<(), String> {
    let bootstrapped = root.with_extension("debootstrap-ok");
    if !bootstrapped.exists() {
        if root.exists() {
            // A half-made root from an interrupted run: start over.
            unmount_proc(root);
            std::fs::remove_dir_all(root)
                .map_err(|e| format!("cannot remove {}: {e}", root.display()))?;
        }
        if !has("debootstrap", "--version") {
            apt_install(&["debootstrap"])?;
        }
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "trixie"])
            .arg(root))?;
        touch(&bootstrapped)?;
    }
    let swift_ready = root.with_extension("swift-ok");
    if !swift_ready.exists() {
        std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
            .map_err(|e| format!("cannot copy resolv.conf into the chroot: {e}"))?;
        let install = format!(
            // `apt-get clean`: the downloaded packages (540 MB) are not needed once installed.
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {} && apt-get clean",
            CHROOT_PACKAGES.join(" ")
        );
        let (ok, _) = in_chroot(root, &install)?;
        if !ok {
            return Err("installing Swift in the chroot failed".to_owned());
        }
        touch(&swift_ready)?;
    }
    Ok(())
}

/// Copies the Swift package, the generated code, the library and the relay
/// to `/pkg` in the chroot (keeping its `.build` cache).
fn stage(paths: &Paths, root: &Path) -> Result<(), String> {
    let pkg = root.join("pkg");
    let src = paths.root.join("bindings/swift");
    for dir in ["Sources", "Tests", "lib", "bin"] {
        let path = pkg.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot clear {}: {e}", path.display()))?;
        }
    }
    copy_tree(&src.join("Sources"), &pkg.join("Sources"))?;
    copy_tree(&src.join("Tests"), &pkg.join("Tests"))?;
    // The README's Swift quick start compiles with the tests (it is a
    // function, not a program, so it fits in the test target).
    copy(
        &paths.root.join("examples/quickstart/quickstart.swift"),
        &pkg.join("Tests/ConcordTests/Quickstart.swift"),
    )?;
    copy(&src.join("Package.swift"), &pkg.join("Package.swift"))?;
    let generated = paths.generated.join("swift");
    copy(
        &generated.join("concord_ffi.swift"),
        &pkg.join("Sources/ConcordFFI/concord_ffi.swift"),
    )?;
    let ffi = pkg.join("Sources/concord_ffiFFI");
    copy(
        &generated.join("concord_ffiFFI.h"),
        &ffi.join("concord_ffiFFI.h"),
    )?;
    std::fs::write(
        ffi.join("module.modulemap"),
        "module concord_ffiFFI {\n    header \"concord_ffiFFI.h\"\n    link \"concord_ffi\"\n    export *\n}\n",
    )
    .map_err(|e| format!("cannot write the module map: {e}"))?;
    copy(&paths.lib(), &pkg.join("lib/libconcord_ffi.so"))?;
    copy(&paths.relay(), &pkg.join("bin/concord-relay"))?;
    Ok(())
}

/// Runs `script` with `sh -c` in the chroot with `/proc` mounted (Swift
/// finds its libraries through `/proc/self/exe`), streaming and capturing
/// its output; `/proc` is unmounted whatever happens.
fn in_chroot(root: &Path, script: &str) -> Result<(bool, String), String> {
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| format!("cannot create /proc: {e}"))?;
    unmount_proc(root);
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir))?;
    println!("$ chroot {} sh -c '{script}'", root.display());
    let result = Command::new("chroot")
        .arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/root",
        ])
        .args(["sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .and_then(stream);
    unmount_proc(root);
    result.map_err(|e| format!("cannot run chroot: {e}"))
}

/// Copies the child's stdout to ours as it comes, and keeps it.
fn stream(mut child: std::process::Child) -> std::io::Result<(bool, String)> {
    use std::io::{BufRead, BufReader};
    let mut captured = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            captured.push_str(&line);
            captured.push('\n');
        }
    }
    Ok((child.wait()?.success(), captured))
}

/// Unmounts the chroot's `/proc` if mounted (quietly: it often is not).
fn unmount_proc(root: &Path) {
    let proc_dir = root.join("proc");
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        let target = proc_dir.to_string_lossy();
        mounts
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(target.as_ref()))
    });
    if mounted {
        let _ = Command::new("umount").arg(&proc_dir).status();
    }
}

/// XCTest's totals: the last `Executed N tests, with M failures` line.
fn xctest_counts(output: &str) -> (u64, u64) {
    output
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("Executed ")?;
            let (tests, rest) = rest.split_once(" test")?;
            let failures = rest.split_once("with ")?.1.split_once(" failure")?.0;
            let tests: u64 = tests.trim().parse().ok()?;
            let failures: u64 = failures.trim().parse().ok()?;
            Some((tests.saturating_sub(failures), failures))
        })
        .unwrap_or((0, 0))
}

/// Marks a setup stage done.
fn touch(path: &Path) -> Result<(), String> {
    std::fs::write(path, b"").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Copies a file, creating the target's folder.
fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// Copies a folder recursively.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            copy(&path, &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_xctest_totals() {
        let output = "\
Test Suite 'ConcordTests' passed at 2026-01-01 00:00:00.000.
\t Executed 5 tests, with 0 failures (0 unexpected) in 1.2 (1.2) seconds
Test Suite 'All tests' failed at 2026-01-01 00:00:00.000.
\t Executed 6 tests, with 1 failure (0 unexpected) in 1.3 (1.3) seconds
";
        assert_eq!(xctest_counts(output), (5, 1));
        assert_eq!(xctest_counts("error: compile\n"), (0, 0));
    }
}
