//! `cargo xtask npm`: builds the npm package `concord-sync` in
//! `bindings/npm` from the `sync-wasm` crate, ready for `npm pack`; and the
//! idempotent installs its tests need.
//!
//! The pipeline: the wasm32 build of `sync-wasm` in the workspace's
//! `wasm-release` profile (release, tuned for size); `wasm-bindgen`
//! (the CLI of exactly the version in Cargo.lock, installed with
//! `cargo install` when missing); `npm ci` for the package's dev tools;
//! `wasm-opt -Oz` from npm's `binaryen` (Debian's is too old: its output
//! fails to load); `tsc` for the TypeScript layer; then terser strips
//! whitespace and comments from every JavaScript file the package ships.

use std::path::Path;
use std::process::Command;

use crate::process::{apt_install, cargo, npm_ci, run};
use crate::runner::workspace_root;
use crate::summary::Counts;

/// The package's folder, relative to the workspace root.
const PACKAGE_DIR: &str = "bindings/npm";
/// The wasm build wasm-bindgen reads.
const WASM: &str = "target/wasm32-unknown-unknown/wasm-release/sync_wasm.wasm";

/// Builds the package; the error says which stage failed.
pub(crate) fn build() -> Result<(), String> {
    crate::setup::run()?;
    let root = workspace_root();
    let pkg = root.join(PACKAGE_DIR);
    ensure_wasm_bindgen(&root)?;
    npm_ci(&pkg)?;
    run(cargo(&root).args([
        "build",
        "--profile",
        "wasm-release",
        "--locked",
        "-p",
        "sync-wasm",
        "--target",
        "wasm32-unknown-unknown",
    ]))?;
    let out = pkg.join("wasm");
    run(Command::new("wasm-bindgen")
        .current_dir(&root)
        .args(["--target", "web", "--out-name", "sync_wasm", "--out-dir"])
        .arg(&out)
        .arg(WASM))?;
    let wasm = out.join("sync_wasm_bg.wasm");
    // The feature flags are the ones rustc's wasm32 target emits.
    // `--converge` repeats the passes until the output stops shrinking:
    // 0.7 KB of gzip for a few seconds more. The `producers` and
    // `target_features` sections (toolchain versions, the features above)
    // are metadata no engine reads: 0.2 KB of gzip.
    run(Command::new(pkg.join("node_modules/.bin/wasm-opt"))
        .current_dir(&pkg)
        .args([
            "-Oz",
            "--converge",
            "--strip-producers",
            "--strip-target-features",
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
        ])
        .arg(&wasm)
        .arg("-o")
        .arg(&wasm))?;
    run(Command::new(pkg.join("node_modules/.bin/tsc"))
        .current_dir(&pkg)
        .args(["-p", "tsconfig.json"]))?;
    minify_js(&pkg)?;
    println!("concord-sync built in {PACKAGE_DIR} (npm pack there makes the tarball)");
    Ok(())
}

/// Rewrites the package's JavaScript (tsc's `dist`, wasm-bindgen's glue
/// and snippets) minified: the browser downloads it as is when served
/// unbundled (see docs/BENCHMARKS.md). terser compresses and renames local
/// variables (2 KB of gzip over stripping whitespace and comments alone),
/// but keeps class and function names, since errors take their `name`
/// from their class (`new.target.name`) and stack traces stay readable;
/// exported names never change. The bundler directives on the Node-only
/// dynamic import (`webpackIgnore`, `@vite-ignore`) stay, which esbuild
/// drops. The `.d.ts` files keep their doc comments for editors.
fn minify_js(pkg: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    for dir in ["dist", "wasm"] {
        js_files(&pkg.join(dir), &mut files)?;
    }
    for file in files {
        run(Command::new(pkg.join("node_modules/.bin/terser"))
            .current_dir(pkg)
            .arg(&file)
            .args([
                "--module",
                "--compress",
                "--mangle",
                "--keep-classnames",
                "--keep-fnames",
                "--format",
                "comments=/webpackIgnore|@vite-ignore/",
                "-o",
            ])
            .arg(&file))?;
    }
    Ok(())
}

/// Every `.js` file under `dir`, into `out`.
fn js_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            js_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "js") {
            out.push(path);
        }
    }
    Ok(())
}

/// Installs what the browser tests need: Debian's Chromium (Playwright
/// drives it; `npx playwright install` cannot download here) and its
/// chromedriver (for wasm-bindgen-test-runner).
pub(crate) fn ensure_chromium() -> Result<(), String> {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        return Ok(());
    }
    apt_install(&["chromium", "chromium-driver"])
}

/// The version of `name` in Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\n");
    let at = lock.find(&needle)? + needle.len();
    let line = lock[at..].lines().next()?;
    let version = line.strip_prefix("version = \"")?.strip_suffix('"')?;
    Some(version.to_owned())
}

/// Installs the wasm-bindgen CLI of the version the crate links, unless
/// it is already on PATH (the two must match exactly).
fn ensure_wasm_bindgen(root: &Path) -> Result<(), String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    let version =
        locked_version(&lock, "wasm-bindgen").ok_or("Cargo.lock has no wasm-bindgen entry")?;
    let present = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if present.split_whitespace().nth(1) == Some(version.as_str()) {
        return Ok(());
    }
    // Not --locked: the CLI's own lock file pins a crate the registry no
    // longer has (see ../shared/TOOLCHAIN.md).
    run(cargo(root).args(["install", "wasm-bindgen-cli", "--version", &version]))
}

/// Counts from `node --test --test-reporter=tap`: its `# pass N` and
/// `# fail N` lines.
pub(crate) fn node_tap(output: &str) -> Option<Counts> {
    let count = |prefix: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix)?.trim().parse().ok())
    };
    Some(Counts {
        passed: count("# pass ")?,
        failed: count("# fail ")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_locked_versions() {
        let lock = "[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(
            locked_version(lock, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(locked_version(lock, "wasm-bindgen-cli"), None);
    }

    #[test]
    fn parses_node_tap() {
        let counts = node_tap("ok 1 - a\n1..3\n# tests 3\n# pass 2\n# fail 1\n").unwrap();
        assert_eq!((counts.passed, counts.failed), (2, 1));
        assert!(node_tap("# pass 2").is_none());
    }
}
