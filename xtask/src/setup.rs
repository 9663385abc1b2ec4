//! Idempotent installs: quick when everything is already there.

use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};

/// Rustup components the checks need.
const COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// Rustup targets the builds need.
const TARGETS: &[&str] = &["wasm32-unknown-unknown"];

/// Installs the missing [`COMPONENTS`] and [`TARGETS`] with rustup.
///
/// Without rustup, checks that the toolchain on PATH already has them and
/// fails with a message saying what is missing otherwise.
pub(crate) fn run() -> Result<(), String> {
    let components = match installed("component") {
        Ok(list) => list,
        Err(RustupError::Missing) => return without_rustup(),
        Err(RustupError::Other(message)) => return Err(message),
    };
    let targets = installed("target").map_err(RustupError::into_message)?;
    ensure("component", COMPONENTS, &components)?;
    ensure("target", TARGETS, &targets)?;
    crate::postgres::ensure()?;
    Ok(())
}

/// Why asking rustup failed.
enum RustupError {
    /// `rustup` is not on PATH.
    Missing,
    /// Anything else, with a message for the user.
    Other(String),
}

impl RustupError {
    /// The message to show the user.
    fn into_message(self) -> String {
        match self {
            RustupError::Missing => "`rustup` is not on PATH".to_owned(),
            RustupError::Other(message) => message,
        }
    }
}

/// `rustup <kind> list --installed`, one name per line
/// (components carry the host triple, e.g. `clippy-x86_64-unknown-linux-gnu`).
fn installed(kind: &str) -> Result<Vec<String>, RustupError> {
    let output = Command::new("rustup")
        .args([kind, "list", "--installed"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| match error.kind() {
            ErrorKind::NotFound => RustupError::Missing,
            _ => RustupError::Other(format!("could not run `rustup`: {error}")),
        })?;
    if !output.status.success() {
        return Err(RustupError::Other(format!(
            "`rustup {kind} list --installed` failed ({})",
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().to_owned())
        .collect())
}

/// Whether `name` is in rustup's `installed` list: equal, or followed by `-`
/// and a target triple.
fn is_installed(name: &str, installed: &[String]) -> bool {
    installed.iter().any(|line| {
        line == name
            || line
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

/// Runs `rustup <kind> add` for the `wanted` names not yet `installed`.
fn ensure(kind: &str, wanted: &[&str], installed: &[String]) -> Result<(), String> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|name| !is_installed(name, installed))
        .collect();
    if missing.is_empty() {
        println!("rustup {kind}s already installed: {}", wanted.join(", "));
        return Ok(());
    }
    println!("installing rustup {kind}s: {}", missing.join(", "));
    let status = Command::new("rustup")
        .args([kind, "add"])
        .args(&missing)
        .status()
        .map_err(|error| format!("could not run `rustup`: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rustup {kind} add {}` failed ({status})",
            missing.join(" ")
        ))
    }
}

/// Without rustup nothing can be installed: check the toolchain on PATH has
/// everything, and say clearly what to do if not.
fn without_rustup() -> Result<(), String> {
    println!("`rustup` is not on PATH: checking the toolchain on PATH instead");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let works = |args: &[&str]| {
        Command::new(&cargo)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !works(&["--version"]) {
        return Err(
            "neither rustup nor cargo can be run: install Rust with rustup \
                    from https://rustup.rs, then run `cargo xtask setup`."
                .to_owned(),
        );
    }
    let mut missing = Vec::new();
    for component in ["fmt", "clippy"] {
        if !works(&[component, "--version"]) {
            missing.push(format!("`cargo {component}`"));
        }
    }
    for target in TARGETS {
        if !has_target(target) {
            missing.push(format!("the `{target}` target"));
        }
    }
    if missing.is_empty() {
        println!(
            "the toolchain on PATH has rustfmt, clippy and {}",
            TARGETS.join(", ")
        );
        return Ok(());
    }
    Err(format!(
        "rustup is not installed (`rustup` is not on PATH), and the Rust toolchain on PATH lacks {}. \
         Install rustup from https://rustup.rs, then run `cargo xtask setup`.",
        missing.join(", ")
    ))
}

/// Whether the standard library for `target` is installed in rustc's sysroot.
fn has_target(target: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", target])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let libdir = String::from_utf8_lossy(&output.stdout);
    output.status.success() && Path::new(libdir.trim()).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rustup_list_lines() {
        let installed: Vec<String> = [
            "cargo-x86_64-unknown-linux-gnu",
            "clippy-x86_64-unknown-linux-gnu",
            "rust-std-wasm32-unknown-unknown",
            "wasm32-unknown-unknown",
        ]
        .map(str::to_owned)
        .into();
        assert!(is_installed("clippy", &installed));
        assert!(is_installed("wasm32-unknown-unknown", &installed));
        assert!(!is_installed("rustfmt", &installed));
        assert!(!is_installed("clip", &installed));
    }
}
