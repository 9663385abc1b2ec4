//! `cargo xtask bindings` and the binding suites (`kotlin-test`,
//! `python-test`, `swift-test`, `c-abi-test`).
//!
//! One release build of the `concord-ffi` cdylib and of `concord-relay`
//! serves every suite: [`build`] makes both (a no-op when they are fresh),
//! generates the Kotlin, Swift and Python code with uniffi's library-mode
//! bindgen into `bindings/generated/`, stages the Python package and
//! builds its wheel. Each suite then only runs its own tool. Installs
//! (Maven, a JDK, a Python venv with pytest) are idempotent: skipped when present.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::runner::workspace_root;

/// The cdylib's file name on this host.
const LIB: &str = "libconcord_ffi.so";

/// Python packages the suite installs into its venv, pinned.
const PY_PACKAGES: &[&str] = &["pytest==8.3.4", "cryptography==44.0.0"];

/// Where the build puts things, from the workspace root.
pub(crate) struct Paths {
    /// The workspace root.
    pub(crate) root: PathBuf,
    /// `target/release`: the cdylib and `concord-relay`.
    pub(crate) release: PathBuf,
    /// `bindings/generated`: uniffi's output, one folder per language.
    pub(crate) generated: PathBuf,
}

impl Paths {
    /// The paths for this workspace.
    pub(crate) fn new() -> Paths {
        let root = workspace_root();
        Paths {
            release: root.join("target/release"),
            generated: root.join("bindings/generated"),
            root,
        }
    }

    /// The built cdylib.
    pub(crate) fn lib(&self) -> PathBuf {
        self.release.join(LIB)
    }

    /// The built relay binary.
    pub(crate) fn relay(&self) -> PathBuf {
        self.release.join("concord-relay")
    }
}

/// Runs `command` with inherited output; an error names it if it fails.
pub(crate) fn run(command: &mut Command) -> Result<(), String> {
    let line = format!("{command:?}");
    println!("$ {line}");
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{line}` failed ({status})")),
        Err(error) => Err(format!("could not run `{line}`: {error}")),
    }
}

/// Cargo as xtask was started with (`$CARGO`), from the workspace root,
/// without the package variables `cargo run` set for xtask (build scripts
/// watch some of them, and a change would rebuild their crates).
fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    for (key, _) in std::env::vars_os() {
        let leaked = key.to_str().is_some_and(|key| {
            key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || key == "CARGO_MANIFEST_DIR"
                || key == "CARGO_MANIFEST_PATH"
                || key == "CARGO_CRATE_NAME"
                || key == "CARGO_PRIMARY_PACKAGE"
        });
        if leaked {
            command.env_remove(key);
        }
    }
    command
}

/// Whether `program` can be run (it is on PATH and answers `arg`).
pub(crate) fn has(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `apt-get install -y PACKAGES` (after `apt-get update`), for tools
/// missing from a fresh machine.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Builds the cdylib and the relay in release, the bindgen in debug,
/// generates every language's code, and stages the Python package and wheel.
pub(crate) fn build() -> Result<Paths, String> {
    let paths = Paths::new();
    let root = &paths.root;
    run(cargo(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "concord-ffi",
        "-p",
        "relay-server",
    ]))?;
    // A debug generator reads a release library fine, and shares the
    // debug dependencies `cargo test` already built.
    run(cargo(root).args([
        "build",
        "--locked",
        "-p",
        "concord-ffi",
        "--features",
        "cli",
        "--bin",
        "uniffi-bindgen",
    ]))?;
    let bindgen = root.join("target/debug/uniffi-bindgen");
    for language in ["kotlin", "swift", "python"] {
        let out = paths.generated.join(language);
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
        }
        run(Command::new(&bindgen)
            .current_dir(root)
            .args([
                "generate",
                "--no-format",
                "--language",
                language,
                "--out-dir",
            ])
            .arg(&out)
            .arg(paths.lib()))?;
    }
    stage_python(&paths)?;
    Ok(paths)
}

/// Copies the generated Python module and the library into the package's
/// gitignored `concord/_native/`, so `bindings/python` imports from the
/// source tree, then builds the wheel into `target/bindings/python/`.
fn stage_python(paths: &Paths) -> Result<(), String> {
    let native = paths.root.join("bindings/python/concord/_native");
    std::fs::create_dir_all(&native)
        .map_err(|e| format!("cannot create {}: {e}", native.display()))?;
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
    };
    copy(
        &paths.generated.join("python/concord_ffi.py"),
        &native.join("concord_ffi.py"),
    )?;
    copy(&paths.lib(), &native.join(LIB))?;
    std::fs::write(
        native.join("__init__.py"),
        "\"\"\"Generated by `cargo xtask bindings` (uniffi); do not edit.\"\"\"\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", native.display()))?;
    run(Command::new(python())
        .current_dir(&paths.root)
        .arg("bindings/python/build_wheel.py")
        .arg("--out")
        .arg(paths.root.join("target/bindings/python")))
}

/// The host's Python 3.
fn python() -> &'static str {
    "python3"
}

/// `cargo xtask bindings`.
pub(crate) fn bindings() -> Result<(), String> {
    let paths = build()?;
    println!(
        "bindings ready: {} (Kotlin, Swift, Python), wheel in target/bindings/python",
        paths.generated.display()
    );
    Ok(())
}

/// `cargo xtask kotlin-test`: Maven's Surefire runs the JUnit suite on
/// the JVM against the release library and relay.
pub(crate) fn kotlin_test() -> Result<(), String> {
    let paths = build()?;
    if !has("mvn", "--version") || !has("javac", "-version") {
        apt_install(&["maven", "default-jdk-headless"])?;
    }
    run(Command::new("mvn")
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(paths.root.join("bindings/kotlin"))
        .args(["-B", "--no-transfer-progress", "test"]))
}

/// `cargo xtask python-test`: installs the built wheel into a venv under
/// `target/` (with pytest and cryptography) and runs the pytest suite
/// against the installed package, not the source tree.
pub(crate) fn python_test() -> Result<(), String> {
    let paths = build()?;
    let venv = paths.root.join("target/py-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        if !has(python(), "--version")
            || run(Command::new(python())
                .args(["-m", "venv", "--help"])
                .stdout(std::process::Stdio::null()))
            .is_err()
        {
            apt_install(&["python3", "python3-venv"])?;
        }
        run(Command::new(python()).args(["-m", "venv"]).arg(&venv))?;
    }
    let have_packages = Command::new(&py)
        .args(["-c", "import pytest, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_packages {
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PY_PACKAGES))?;
    }
    let wheel = newest_wheel(&paths.root.join("target/bindings/python"))?;
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(&wheel))?;
    run(Command::new(&py)
        .current_dir(&paths.root)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "bindings/python/tests",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .env("CONCORD_TEST_INSTALLED", "1")
        .env("CONCORD_RELAY", paths.relay()))
}

/// The wheel `build_wheel.py` wrote last.
fn newest_wheel(dir: &Path) -> Result<PathBuf, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .ok_or_else(|| format!("no wheel in {}", dir.display()))
}

/// `cargo xtask c-abi-test`: the generated C header compiles as C11, and
/// a small C program links against the library and drives it through the
/// raw ABI (see `bindings/c/abi_check.c`). The contract version and API
/// checksums it compares come from the generated Swift, so the header, the
/// library and the bindings are checked to agree.
pub(crate) fn c_abi_test() -> Result<(), String> {
    let paths = build()?;
    if !has("cc", "--version") {
        apt_install(&["gcc", "libc6-dev"])?;
    }
    let out = paths.root.join("target/bindings/c");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let swift = paths.generated.join("swift/concord_ffi.swift");
    let swift = std::fs::read_to_string(&swift)
        .map_err(|e| format!("cannot read {}: {e}", swift.display()))?;
    let (contract, checks) = expected_abi(&swift)?;
    std::fs::write(out.join("checks.inc"), checks)
        .map_err(|e| format!("cannot write checks.inc: {e}"))?;
    let exe = out.join("abi_check");
    run(Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_DEFAULT_SOURCE",
        ])
        .arg(format!("-DEXPECTED_CONTRACT_VERSION={contract}"))
        .arg("-o")
        .arg(&exe)
        .arg(paths.root.join("bindings/c/abi_check.c"))
        .arg("-I")
        .arg(paths.generated.join("swift"))
        .arg("-I")
        .arg(&out)
        .arg("-L")
        .arg(&paths.release)
        .arg("-lconcord_ffi")
        .arg(format!("-Wl,-rpath,{}", paths.release.display())))?;
    // `cargo run` puts target/debug on LD_LIBRARY_PATH, which outranks the
    // rpath: a debug build of the library would be loaded instead.
    run(Command::new(&exe).env_remove("LD_LIBRARY_PATH"))
}

/// The contract version and the `CHECKSUM(fn, value)` lines the generated
/// Swift checks at load time.
fn expected_abi(swift: &str) -> Result<(u32, String), String> {
    let mut contract = None;
    let mut checks = String::new();
    for line in swift.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("let bindings_contract_version = ") {
            contract = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("if (uniffi_") {
            let Some((name, rest)) = rest.split_once("() != ") else {
                continue;
            };
            let Some(value) = rest.strip_suffix(") {") else {
                continue;
            };
            if name.contains("_checksum_") {
                checks.push_str(&format!("CHECKSUM(uniffi_{name}, {value})\n"));
            }
        }
    }
    let contract =
        contract.ok_or("the generated Swift has no `bindings_contract_version`".to_owned())?;
    if checks.is_empty() {
        return Err("the generated Swift has no API checksums".to_owned());
    }
    Ok((contract, checks))
}
