//! Runs [`Step`]s: headers, wall times, test counts, the final tally.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::guard;
use crate::setup;
use crate::steps::{Check, Cmd, Program, Step};
use crate::summary::Counts;

/// What came of one step.
struct Outcome {
    /// Whether the step passed.
    ok: bool,
    /// What it adds to the final tally.
    counts: Counts,
    /// Test counts to show in the report, for test suites.
    tests: Option<Counts>,
    /// Wall time.
    elapsed: Duration,
}

/// Runs every step, even after a failure, then prints a report whose last
/// line is `N passed, N failed`. Fails if anything failed.
pub(crate) fn run_all(steps: &[Step]) -> ExitCode {
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        println!();
        println!(
            "==> [{}/{}] {}: {}",
            index + 1,
            steps.len(),
            step.name,
            describe(&step.check)
        );
        let outcome = run_step(&step.check);
        println!(
            "<== {}: {} in {}{}{}",
            step.name,
            if outcome.ok { "ok" } else { "FAILED" },
            format_duration(outcome.elapsed),
            outcome
                .tests
                .map(|tests| format!(" ({tests})"))
                .unwrap_or_default(),
            free_disk()
                .map(|free| format!(" [{free} free on disk]"))
                .unwrap_or_default()
        );
        outcomes.push(outcome);
    }

    let mut total = Counts::default();
    let width = steps.iter().map(|step| step.name.len()).max().unwrap_or(0);
    println!();
    println!("==> summary");
    for (step, outcome) in steps.iter().zip(&outcomes) {
        total.add(outcome.counts);
        println!(
            "  {:<6}  {:<width$}  {:>8}{}",
            if outcome.ok { "ok" } else { "FAILED" },
            step.name,
            format_duration(outcome.elapsed),
            outcome
                .tests
                .map(|tests| format!("  tests: {tests}"))
                .unwrap_or_default()
        );
    }
    println!("total time {}", format_duration(start.elapsed()));
    println!("{total}");
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `cmd` with the terminal as its input and output, and exits as it did.
pub(crate) fn run_inherited(cmd: &Cmd) -> ExitCode {
    match command(cmd).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("error: `{}` failed ({status})", command_line(cmd));
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: could not run `{}`: {error}", command_line(cmd));
            ExitCode::FAILURE
        }
    }
}

/// Runs one step and judges it.
fn run_step(check: &Check) -> Outcome {
    let start = Instant::now();
    let (ok, tests) = match check {
        Check::Setup => match setup::run() {
            Ok(()) => (true, None),
            Err(message) => {
                println!("error: {message}");
                (false, None)
            }
        },
        Check::ExitStatus(cmd) => (report(cmd, step_command(cmd).status()), None),
        Check::Tests(cmd, parse) => match stream_and_capture(step_command(cmd)) {
            Ok((status, output)) => {
                let tests = parse(&output);
                if tests.is_none() {
                    println!("note: found no test counts in the output");
                }
                (report(cmd, Ok(status)), tests)
            }
            Err(error) => (report(cmd, Err(error)), None),
        },
        Check::ForbidDeps {
            cmd,
            package,
            forbidden,
        } => (check_deps(cmd, package, forbidden), None),
    };
    let counts = match tests {
        // A failed run with no failed test (a compile error, a crash) is
        // still one failure.
        Some(tests) if !ok && tests.failed == 0 => Counts {
            passed: tests.passed,
            failed: 1,
        },
        Some(tests) => tests,
        None if !ok => Counts {
            passed: 0,
            failed: 1,
        },
        // A test suite that passed without printing counts counts as one
        // passed step, like any other command.
        None => Counts {
            passed: 1,
            failed: 0,
        },
    };
    Outcome {
        ok,
        counts,
        tests,
        elapsed: start.elapsed(),
    }
}

/// Prints why a command failed, if it did; returns whether it passed.
fn report(cmd: &Cmd, result: io::Result<ExitStatus>) -> bool {
    match result {
        Ok(status) if status.success() => true,
        Ok(status) => {
            println!("error: `{}` failed ({status})", command_line(cmd));
            false
        }
        Err(error) => {
            println!("error: could not run `{}`: {error}", command_line(cmd));
            false
        }
    }
}

/// The no-IO guard: runs a `cargo tree --prefix none` command, prints the
/// crates it lists and fails if any is forbidden.
fn check_deps(cmd: &Cmd, package: &str, forbidden: &[&str]) -> bool {
    let output = match step_command(cmd).stderr(Stdio::inherit()).output() {
        Ok(output) if output.status.success() => output,
        result => return report(cmd, result.map(|output| output.status)),
    };
    let deps = guard::parse_tree(&String::from_utf8_lossy(&output.stdout), package);
    let names: Vec<&str> = deps.iter().map(|dep| dep.name.as_str()).collect();
    println!(
        "{package}'s normal dependencies, all targets ({}): {}",
        deps.len(),
        names.join(", ")
    );
    let found = guard::forbidden(&deps, forbidden);
    if found.is_empty() {
        println!("no forbidden crates (checked: {})", forbidden.join(", "));
        return true;
    }
    println!(
        "error: {package} must do no IO, but its dependency tree contains {} forbidden crate(s):",
        found.len()
    );
    for dep in &found {
        println!("  {} {}", dep.name, dep.version);
    }
    println!(
        "see why with: cargo tree -p {package} -e normal --target all -i {}",
        found[0].name
    );
    false
}

/// Runs `command` with its stdout piped, copying everything to our stdout as
/// it arrives and keeping a copy. Stderr goes straight to the terminal.
fn stream_and_capture(mut command: Command) -> io::Result<(ExitStatus, String)> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let mut captured = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        let mut buffer = [0_u8; 8192];
        let mut stdout = io::stdout();
        loop {
            let read = match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Do not leave the child blocked on a full pipe.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error);
                }
            };
            captured.extend_from_slice(&buffer[..read]);
            // The terminal going away must not stop the count.
            let _ = stdout
                .write_all(&buffer[..read])
                .and_then(|()| stdout.flush());
        }
    }
    let status = child.wait()?;
    Ok((status, String::from_utf8_lossy(&captured).into_owned()))
}

/// The [`Command`] for `cmd`, run from the workspace root (or `cmd.dir`).
///
/// Cargo is `$CARGO` when set (`cargo run` sets it to the cargo that runs
/// xtask). The package variables `cargo run` set for xtask itself are removed
/// so they do not leak into the builds xtask starts.
fn command(cmd: &Cmd) -> Command {
    let program: OsString = match cmd.program {
        Program::Cargo => std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
        Program::Tool(tool) => tool.into(),
    };
    let mut command = Command::new(program);
    command.args(cmd.args);
    let root = workspace_root();
    command.current_dir(match cmd.dir {
        Some(dir) => root.join(dir),
        None => root,
    });
    for (key, _) in std::env::vars_os() {
        let leaked = key.to_str().is_some_and(|key| {
            key.starts_with("CARGO_PKG_")
                || key == "CARGO_MANIFEST_DIR"
                || key == "CARGO_MANIFEST_PATH"
        });
        if leaked {
            command.env_remove(key);
        }
    }
    command
}

/// The [`Command`] for a step of a full run: [`command`], with Cargo's
/// incremental compilation off unless the caller chose otherwise. A full run
/// builds each crate once per configuration; the incremental caches would
/// only take disk (1.5 GB for the workspace's tests), which CI machines have
/// little of.
fn step_command(cmd: &Cmd) -> Command {
    let mut command = command(cmd);
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        command.env("CARGO_INCREMENTAL", "0");
    }
    command
}

/// Free space on the disk that holds the workspace, such as `12.3 GiB`, as
/// `df` reports it; `None` where `df` is missing or prints something else.
/// Shown after each step so that a run that fills the disk says where.
fn free_disk() -> Option<String> {
    let output = Command::new("df")
        .arg("-Pk")
        .arg(workspace_root())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
}

/// The workspace root: the parent of this crate's directory.
pub(crate) fn workspace_root() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match xtask_dir.parent() {
        Some(root) => root.to_path_buf(),
        None => xtask_dir,
    }
}

/// How a step is shown in its header.
fn describe(check: &Check) -> String {
    match check {
        Check::Setup => "rustup components and targets".to_owned(),
        Check::ExitStatus(cmd) | Check::Tests(cmd, _) | Check::ForbidDeps { cmd, .. } => {
            command_line(cmd)
        }
    }
}

/// `cmd` as the user would type it.
fn command_line(cmd: &Cmd) -> String {
    let program = match cmd.program {
        Program::Cargo => "cargo",
        Program::Tool(tool) => tool,
    };
    let mut line = String::from(program);
    for arg in cmd.args {
        line.push(' ');
        line.push_str(arg);
    }
    match cmd.dir {
        Some(dir) => format!("(cd {dir} && {line})"),
        None => line,
    }
}

/// A wall time such as `0.4s`, `12.0s` or `3m05.2s`.
fn format_duration(elapsed: Duration) -> String {
    let tenths = elapsed.as_millis() / 100;
    let (minutes, tenths) = (tenths / 600, tenths % 600);
    if minutes == 0 {
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else {
        format!("{minutes}m{:02}.{}s", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(Duration::from_millis(0)), "0.0s");
        assert_eq!(format_duration(Duration::from_millis(1_249)), "1.2s");
        assert_eq!(format_duration(Duration::from_millis(59_999)), "59.9s");
        assert_eq!(format_duration(Duration::from_millis(185_200)), "3m05.2s");
    }

    #[test]
    fn shows_commands_as_typed() {
        let cmd = Cmd {
            program: Program::Tool("mvn"),
            args: &["-q", "test"],
            dir: Some("bindings/kotlin"),
        };
        assert_eq!(command_line(&cmd), "(cd bindings/kotlin && mvn -q test)");
    }
}
