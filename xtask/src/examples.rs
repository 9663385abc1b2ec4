//! The native "watch" examples and the README's quick starts.
//!
//! - `cargo xtask example kotlin|python [ARGS]` builds what the example
//!   needs (the one release library through [`bindings::build`]; for Kotlin
//!   the binding installed into the local Maven repository, as an app would
//!   consume it, then `examples/kotlin-console`'s runnable jar; for Python
//!   the wheel in the suite's venv) and runs it with `ARGS`, its settings
//!   coming from the flags or `CONCORD_RELAY`, `CONCORD_ROOM`,
//!   `CONCORD_TOKEN` like the `concord` CLI. `cargo xtask demo` prints these
//!   commands for its room.
//! - [`kotlin_suite`] and [`PYTHON_TESTS`] put the examples' tests (and the
//!   Kotlin and Python quick starts) into the binding steps of
//!   `cargo xtask test`, so the release library is built once.
//! - A unit test here keeps the README's quick starts
//!   byte-identical to the files under `examples/quickstart/`.

use std::process::{Command, ExitCode};

use crate::bindings::{self, Paths};
use crate::process::run;

/// The Kotlin console example, from the workspace root.
const KOTLIN_DIR: &str = "examples/kotlin-console";
/// The Python example script, from the workspace root.
const PYTHON_SCRIPT: &str = "examples/python-watch/watch.py";

/// Folders of Python tests the python step runs besides the binding's own.
pub(crate) const PYTHON_TESTS: &[&str] = &["examples/python-watch", "examples/quickstart"];

/// `cargo xtask example <kotlin|python> [ARGS]`.
pub(crate) fn run_example(args: &[String]) -> ExitCode {
    let usage = "usage: cargo xtask example <kotlin|python> [--relay URL] [--room ROOM] [--token TOKEN] [--data FILE]";
    let result = match args.first().map(String::as_str) {
        Some("kotlin") => kotlin_example(&args[1..]),
        Some("python") => python_example(&args[1..]),
        Some(other) => {
            eprintln!("error: unknown example `{other}`\n{usage}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("error: which example?\n{usage}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        // The example's own code (2: bad settings or syncing stopped).
        Ok(status) => ExitCode::from(status.code().map_or(1, |code| code.clamp(1, 255) as u8)),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds and runs `concord-watch` (the Kotlin example) with `args`.
fn kotlin_example(args: &[String]) -> Result<std::process::ExitStatus, String> {
    let paths = bindings::build()?;
    bindings::ensure_maven()?;
    install_kotlin_binding(&paths, false)?;
    run(maven(&paths, KOTLIN_DIR).args(["-q", "package", "-DskipTests"]))?;
    let jar = paths.root.join(KOTLIN_DIR).join("target/concord-watch.jar");
    start(
        Command::new("java").arg("-jar").arg(jar).args(args),
        &paths,
        "kotlin",
    )
}

/// Builds the wheel into the venv and runs `watch.py` with `args`.
fn python_example(args: &[String]) -> Result<std::process::ExitStatus, String> {
    let paths = bindings::build()?;
    let python = bindings::python_venv(&paths)?;
    start(
        Command::new(python)
            .arg(paths.root.join(PYTHON_SCRIPT))
            .args(args),
        &paths,
        "python",
    )
}

/// Runs an example in the foreground; its database defaults to a file
/// under `target/demo/` (beside the demo's relay data) unless
/// `CONCORD_DATA` or `--data` says otherwise.
fn start(
    command: &mut Command,
    paths: &Paths,
    name: &str,
) -> Result<std::process::ExitStatus, String> {
    let demo = paths.root.join("target/demo");
    std::fs::create_dir_all(&demo).map_err(|e| format!("cannot create {}: {e}", demo.display()))?;
    if std::env::var_os("CONCORD_DATA").is_none() {
        command.env("CONCORD_DATA", demo.join(format!("{name}-watch.db")));
    }
    // `cargo run` puts target/debug on LD_LIBRARY_PATH, which would load a
    // debug build of the library instead of the release one.
    command
        .env_remove("LD_LIBRARY_PATH")
        .status()
        .map_err(|e| format!("could not start the {name} example: {e}"))
}

/// `mvn -B` in `dir` (from the workspace root), without `cargo run`'s
/// `LD_LIBRARY_PATH`.
fn maven(paths: &Paths, dir: &str) -> Command {
    let mut command = Command::new("mvn");
    command
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(paths.root.join(dir))
        .args(["-B", "--no-transfer-progress"]);
    command
}

/// Installs `bindings/kotlin` into the local Maven repository, running
/// its JUnit suite first when `with_tests`.
fn install_kotlin_binding(paths: &Paths, with_tests: bool) -> Result<(), String> {
    let mut mvn = maven(paths, "bindings/kotlin");
    if with_tests {
        mvn.arg("install");
    } else {
        mvn.args(["-q", "install", "-DskipTests"]);
    }
    run(&mut mvn)
}

/// The kotlin step of `cargo xtask test`: the binding's JUnit suite (then
/// its jar installed where Maven finds it), then the console example's
/// tests against that jar, which also compile the Kotlin quick start.
/// Surefire prints a `Tests run:` summary for each; the step adds them up.
pub(crate) fn kotlin_suite(paths: &Paths) -> Result<(), String> {
    install_kotlin_binding(paths, true)?;
    run(maven(paths, KOTLIN_DIR).arg("verify"))
}

/// Extracts the code blocks the README marks with
/// `<!-- quickstart: PATH -->` (the fenced block right after the marker)
/// and returns `(PATH, code)` pairs; an error names a marker without a
/// block after it. (Only the unit test below needs it.)
#[cfg(test)]
fn readme_snippets(readme: &str) -> Result<Vec<(String, String)>, String> {
    const MARK: &str = "<!-- quickstart: ";
    let mut snippets = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line.trim().strip_prefix(MARK) else {
            continue;
        };
        let path = path.trim_end_matches("-->").trim().to_owned();
        let fence = lines.next().unwrap_or_default();
        if !fence.starts_with("```") {
            return Err(format!(
                "README.md: the quick start marker for {path} must be followed by a ``` block"
            ));
        }
        let mut code = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == "```" {
                closed = true;
                break;
            }
            code.push_str(line);
            code.push('\n');
        }
        if !closed {
            return Err(format!(
                "README.md: the code block for {path} is not closed"
            ));
        }
        snippets.push((path, code));
    }
    Ok(snippets)
}

/// Checks that every quick start file under `examples/quickstart/` is in
/// the README byte for byte; the error lists every difference.
#[cfg(test)]
fn check_readme(root: &std::path::Path) -> Result<usize, String> {
    let readme = std::fs::read_to_string(root.join("README.md"))
        .map_err(|e| format!("cannot read README.md: {e}"))?;
    let snippets = readme_snippets(&readme)?;
    let mut problems = Vec::new();
    for (path, code) in &snippets {
        match std::fs::read_to_string(root.join(path)) {
            Ok(file) if &file == code => {}
            Ok(_) => problems.push(format!(
                "README.md's quick start differs from {path}: copy the file into the README"
            )),
            Err(e) => problems.push(format!("README.md names {path}, which cannot be read: {e}")),
        }
    }
    let dir = root.join("examples/quickstart");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_quickstart = name.starts_with("quickstart.") || name.starts_with("Quickstart.");
        let path = format!("examples/quickstart/{name}");
        if is_quickstart && !snippets.iter().any(|(p, _)| *p == path) {
            problems.push(format!("{path} is not shown in README.md"));
        }
    }
    if problems.is_empty() {
        Ok(snippets.len())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_quick_starts_match_their_files() {
        let root = crate::runner::workspace_root();
        match check_readme(&root) {
            // TypeScript, Rust, Kotlin, Swift and Python.
            Ok(count) => assert_eq!(count, 5, "README.md should show five quick starts"),
            Err(problems) => panic!("{problems}"),
        }
    }

    #[test]
    fn snippets_are_read_between_marker_and_fence() {
        let readme = "text\n<!-- quickstart: a.py -->\n```python\nprint(1)\n\nx = 2\n```\nmore\n";
        assert_eq!(
            readme_snippets(readme).unwrap(),
            vec![("a.py".to_owned(), "print(1)\n\nx = 2\n".to_owned())]
        );
        let unfenced = "<!-- quickstart: a.py -->\nprint(1)\n";
        assert!(
            readme_snippets(unfenced)
                .unwrap_err()
                .contains("followed by")
        );
        let open = "<!-- quickstart: a.py -->\n```python\nprint(1)\n";
        assert!(readme_snippets(open).unwrap_err().contains("not closed"));
    }
}
