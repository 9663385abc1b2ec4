//! `cargo xtask demo [--port N] [--build-only]`: builds what the todo demo
//! in `examples/web-todo` needs and runs it.
//!
//! Builds (each skipped when up to date, so a second run starts in
//! seconds): the release `concord-relay`; the npm package `concord-sync`
//! through [`crate::npm::build`] when its inputs are newer than its output;
//! `npm ci` for the demo when its package-lock.json changed; the demo's
//! Vite build when its sources or the package changed. Then
//! `examples/web-todo/demo.mjs` starts the relay on its default address
//! (data in `target/demo/relay`, so the todos outlive a restart), serves
//! the demo with development tokens for room `demo`, and prints the one
//! URL to open, then the commands (with a token) that watch the same room
//! with the `concord` CLI and the Kotlin and Python examples. Ctrl-C stops both; so does this process going away (the
//! script watches its stdin, a pipe from here).
//!
//! `--build-only` builds and exits: the test step before the demo's
//! end-to-end test, which also needs the debug `concord` CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use crate::process::{self, cargo, npm_ci};
use crate::runner::workspace_root;

/// The demo's folder, relative to the workspace root.
const DEMO_DIR: &str = "examples/web-todo";
/// The port the demo is served on unless `--port` says otherwise.
const DEFAULT_PORT: u16 = 5173;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
struct Args {
    /// The HTTP port for the demo.
    port: u16,
    /// Build, then exit without serving.
    build_only: bool,
}

/// Parses `[--port N] [--build-only]`.
fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        port: DEFAULT_PORT,
        build_only: false,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        match flag {
            "--port" => {
                let value = inline
                    .or_else(|| rest.next().cloned())
                    .ok_or("--port needs a value, e.g. --port 8080")?;
                parsed.port = value
                    .parse()
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| {
                        format!("--port must be a port number (1-65535), got {value:?}")
                    })?;
            }
            "--build-only" if inline.is_none() => parsed.build_only = true,
            _ => {
                return Err(format!(
                    "unknown argument {arg:?} (usage: cargo xtask demo [--port N] [--build-only])"
                ));
            }
        }
    }
    Ok(parsed)
}

/// Runs `cargo xtask demo` with the arguments after `demo`.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(args) => args,
        Err(message) => {
            // Bad usage, like the other commands: exit code 2.
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let result = build(args.build_only).and_then(|()| {
        if args.build_only {
            Ok(ExitCode::SUCCESS)
        } else {
            serve(args.port)
        }
    });
    result.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    })
}

/// Builds whatever is out of date; with `for_tests`, also the debug CLI.
fn build(for_tests: bool) -> Result<(), String> {
    let root = workspace_root();
    let mut relay = cargo(&root);
    relay.args(["build", "--release", "--locked", "-p", "relay-server"]);
    if for_tests {
        // Built in its own command: unifying features with the release
        // relay's build would change (and rebuild) the relay.
        process::run(cargo(&root).args(["build", "--locked", "-p", "concord-cli"]))?;
    }
    process::run(&mut relay)?;

    let npm_inputs = [
        "Cargo.lock",
        "sync-core/src",
        "sync-core/Cargo.toml",
        "sync-client/src",
        "sync-client/Cargo.toml",
        "sync-wasm/src",
        "sync-wasm/Cargo.toml",
        "bindings/npm/src",
        "bindings/npm/package-lock.json",
        "bindings/npm/tsconfig.json",
    ];
    let npm_outputs = [
        "bindings/npm/dist/index.js",
        "bindings/npm/dist/server.js",
        "bindings/npm/wasm/sync_wasm_bg.wasm",
    ];
    if stale(&root, &npm_inputs, &npm_outputs) {
        crate::npm::build()?;
    } else {
        println!("concord-sync is up to date");
    }

    let demo = root.join(DEMO_DIR);
    npm_ci(&demo)?;
    let demo_inputs = [
        "bindings/npm/dist",
        "bindings/npm/wasm",
        "examples/web-todo/src",
        "examples/web-todo/index.html",
        "examples/web-todo/tsconfig.json",
        "examples/web-todo/package-lock.json",
    ];
    if stale(&root, &demo_inputs, &["examples/web-todo/dist/index.html"]) {
        process::run(
            Command::new("npm")
                .current_dir(&demo)
                .args(["run", "--silent", "build"]),
        )?;
    } else {
        println!("the web-todo build is up to date");
    }
    Ok(())
}

/// Starts `demo.mjs` and waits for it; it prints the URL.
fn serve(port: u16) -> Result<ExitCode, String> {
    let root = workspace_root();
    let data = root.join("target/demo/relay");
    let mut child = Command::new("node")
        .current_dir(root.join(DEMO_DIR))
        .arg("demo.mjs")
        .arg("--relay")
        .arg(root.join("target/release/concord-relay"))
        .arg("--data")
        .arg(&data)
        .args(["--port", &port.to_string()])
        // Held open until this process exits: the script stops the relay
        // when it closes, so nothing outlives us even without Ctrl-C.
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start node: {e}"))?;
    let _stdin = child.stdin.take();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the demo: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether any output is missing or older than the newest input file.
fn stale(root: &Path, inputs: &[&str], outputs: &[&str]) -> bool {
    let oldest_output = outputs
        .iter()
        .map(|path| modified(&root.join(path)))
        .min()
        .flatten();
    let Some(oldest_output) = oldest_output else {
        return true;
    };
    inputs
        .iter()
        .filter_map(|path| newest(&root.join(path)))
        .any(|input| input > oldest_output)
}

/// A file's modification time; `None` when it does not exist.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file or of any file under a folder.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    let mut stack: Vec<PathBuf> = vec![path.to_owned()];
    let mut latest = None;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                latest = latest.max(meta.modified().ok());
            }
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_the_flags() {
        assert_eq!(
            args(&[]).unwrap(),
            Args {
                port: DEFAULT_PORT,
                build_only: false
            }
        );
        assert_eq!(args(&["--port", "8080"]).unwrap().port, 8080);
        assert_eq!(args(&["--port=9000"]).unwrap().port, 9000);
        assert!(args(&["--build-only"]).unwrap().build_only);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(args(&["--port"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--port", "0"]).unwrap_err().contains("port number"));
        assert!(args(&["--port", "99999"]).is_err());
        assert!(
            args(&["--verbose"])
                .unwrap_err()
                .contains("unknown argument")
        );
    }

    #[test]
    fn missing_outputs_are_stale() {
        let root = workspace_root();
        assert!(stale(&root, &["Cargo.toml"], &["no/such/file"]));
        // An output newer than its input is fresh.
        assert!(!stale(&root, &["no/such/input"], &["Cargo.toml"]));
    }
}
