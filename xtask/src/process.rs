//! Running the tools the other commands need: cargo, apt-get, npm.

use std::path::Path;
use std::process::Command;

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
pub(crate) fn cargo(root: &Path) -> Command {
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

/// `npm ci` in `dir` unless its node_modules already matches its
/// package-lock.json (a stamp of the lock file is kept in node_modules).
pub(crate) fn npm_ci(dir: &Path) -> Result<(), String> {
    let lock_path = dir.join("package-lock.json");
    let lock = std::fs::read(&lock_path)
        .map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    let stamp = dir.join("node_modules/.concord-lock");
    if std::fs::read(&stamp).ok().as_deref() == Some(&lock[..]) {
        return Ok(());
    }
    run(Command::new("npm")
        .current_dir(dir)
        .args(["ci", "--no-audit", "--no-fund"]))?;
    std::fs::write(&stamp, &lock).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}
