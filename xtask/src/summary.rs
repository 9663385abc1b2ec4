//! Test counts: parsing them out of test runners' output and adding them up.

use std::fmt;

/// How many tests (or steps) passed and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Number passed.
    pub(crate) passed: u64,
    /// Number failed.
    pub(crate) failed: u64,
}

impl Counts {
    /// Adds `other` to `self`.
    pub(crate) fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

impl fmt::Display for Counts {
    /// The final line's format: `N passed, N failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// Sums the `test result: ...` lines that libtest prints once per test binary
/// and once per crate's doctests, e.g.
/// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`
/// or `test result: FAILED. 3 passed; 1 failed; ...`.
///
/// Only lines that start with `test result:` count, so output a test prints
/// elsewhere on a line does not. Returns `None` when there is no such line.
pub(crate) fn cargo_test(output: &str) -> Option<Counts> {
    let mut total = None::<Counts>;
    for line in output.lines() {
        if let Some(counts) = cargo_test_line(line) {
            total.get_or_insert_with(Counts::default).add(counts);
        }
    }
    total
}

/// Parses one libtest `test result:` line; `None` if it is not one.
fn cargo_test_line(line: &str) -> Option<Counts> {
    let rest = line.trim_end().strip_prefix("test result: ")?;
    // Skip the status (`ok` or `FAILED`, possibly wrapped in colour codes).
    let (_status, fields) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    let mut seen = false;
    for field in fields.split(';') {
        let Some((number, label)) = field.trim().split_once(' ') else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => counts.passed = number,
            "failed" => counts.failed = number,
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(counts)
}

/// Sums Maven Surefire's closing `Tests run:` lines (one per module,
/// under `Results:`), e.g.
/// `[INFO] Tests run: 5, Failures: 1, Errors: 0, Skipped: 0`.
/// The per-class lines carry `Time elapsed` and are skipped, so nothing
/// counts twice. Failures and errors count as failed; skipped tests count
/// as neither. Returns `None` when there is no such line.
pub(crate) fn surefire(output: &str) -> Option<Counts> {
    let mut total = None::<Counts>;
    for line in output.lines() {
        let line = line.trim_end();
        let Some(start) = line.find("Tests run: ") else {
            continue;
        };
        let prefix = &line[..start];
        if line.contains("Time elapsed") || !(prefix.is_empty() || prefix.ends_with("] ")) {
            continue;
        }
        let mut run = None;
        let (mut failures, mut errors, mut skipped) = (0, 0, 0);
        for field in line[start..].split(',') {
            let Some((label, number)) = field.split_once(':') else {
                continue;
            };
            let Ok(number) = number.trim().parse::<u64>() else {
                continue;
            };
            match label.trim() {
                "Tests run" => run = Some(number),
                "Failures" => failures = number,
                "Errors" => errors = number,
                "Skipped" => skipped = number,
                _ => {}
            }
        }
        let Some(run) = run else { continue };
        let failed = failures + errors;
        total.get_or_insert_with(Counts::default).add(Counts {
            passed: run.saturating_sub(failed + skipped),
            failed,
        });
    }
    total
}

/// pytest's closing line, e.g. `==== 5 passed, 1 failed in 2.31s ====` or
/// `1 failed, 4 passed, 2 skipped in 0.5s` (with `-q`). Errors (a fixture
/// or collection failure) count as failed. The last such line wins.
pub(crate) fn pytest(output: &str) -> Option<Counts> {
    output.lines().rev().find_map(pytest_line)
}

/// Parses one pytest summary line; `None` if it is not one.
fn pytest_line(line: &str) -> Option<Counts> {
    let line = line.trim().trim_matches('=').trim();
    let (tally, time) = line.rsplit_once(" in ")?;
    // "3.21s", or "61.55s (0:01:01)" for a run over a minute.
    if !time.split_whitespace().next()?.ends_with('s') {
        return None;
    }
    let mut counts = Counts::default();
    let mut seen = false;
    for part in tally.split(',') {
        let (number, label) = part.trim().split_once(' ')?;
        let number = number.parse::<u64>().ok()?;
        match label {
            "passed" => counts.passed += number,
            "failed" | "error" | "errors" => counts.failed += number,
            _ => {}
        }
        seen = true;
    }
    seen.then_some(counts)
}

/// The closing `N passed, N failed` line that our own runners print (the
/// Swift and C-ABI suites). The last such line wins.
pub(crate) fn passed_failed(output: &str) -> Option<Counts> {
    output.lines().rev().find_map(|line| {
        let (passed, failed) = line.trim().split_once(" passed, ")?;
        let failed = failed.strip_suffix(" failed")?;
        Some(Counts {
            passed: passed.trim().parse().ok()?,
            failed: failed.trim().parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shorthand for a [`Counts`].
    fn counts(passed: u64, failed: u64) -> Counts {
        Counts { passed, failed }
    }

    #[test]
    fn sums_every_result_line_including_doctests() {
        let output = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 2 tests
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

   Doc-tests sync_core
test result: ok. 4 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.20s
";
        assert_eq!(cargo_test(output), Some(counts(8, 1)));
    }

    #[test]
    fn zero_tests_is_zero_not_none() {
        let output = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        assert_eq!(cargo_test(output), Some(counts(0, 0)));
    }

    #[test]
    fn no_result_line_is_none() {
        assert_eq!(cargo_test("error[E0425]: cannot find value `x`\n"), None);
        assert_eq!(cargo_test(""), None);
    }

    #[test]
    fn ignores_result_text_not_at_line_start() {
        let output = "note: test result: ok. 99 passed; 0 failed;\n";
        assert_eq!(cargo_test(output), None);
    }

    #[test]
    fn tolerates_colour_codes_and_crlf() {
        let output = "test result: \u{1b}[32mok\u{1b}[0m. 5 passed; 2 failed; 0 ignored\r\n";
        assert_eq!(cargo_test(output), Some(counts(5, 2)));
    }

    #[test]
    fn displays_as_the_final_line() {
        assert_eq!(counts(7, 0).to_string(), "7 passed, 0 failed");
    }

    #[test]
    fn surefire_sums_module_results_not_class_lines() {
        let output = "\
[INFO] Tests run: 3, Failures: 0, Errors: 0, Skipped: 0, Time elapsed: 1.2 s -- in dev.concord.SyncTest
[ERROR] Tests run: 2, Failures: 1, Errors: 0, Skipped: 0, Time elapsed: 0.3 s <<< FAILURE! -- in dev.concord.X
[INFO] Results:
[ERROR] Tests run: 5, Failures: 1, Errors: 1, Skipped: 1
";
        assert_eq!(surefire(output), Some(counts(2, 2)));
        assert_eq!(surefire("[INFO] BUILD SUCCESS\n"), None);
    }

    #[test]
    fn pytest_reads_the_closing_line() {
        let output = "tests/test_sync.py ..F\n===== 1 failed, 4 passed, 2 skipped in 3.21s =====\n";
        assert_eq!(pytest(output), Some(counts(4, 1)));
        assert_eq!(pytest("5 passed in 0.50s\n"), Some(counts(5, 0)));
        assert_eq!(
            pytest("== 3 passed, 1 error in 1.0s ==\n"),
            Some(counts(3, 1))
        );
        assert_eq!(
            pytest("==== 1 failed, 16 passed in 61.55s (0:01:01) ====\n"),
            Some(counts(16, 1))
        );
        assert_eq!(pytest("collected 5 items\nprinted in 2s\n"), None);
    }

    #[test]
    fn passed_failed_reads_our_own_closing_line() {
        let output = "Executed 6 tests\n6 passed, 0 failed\n";
        assert_eq!(passed_failed(output), Some(counts(6, 0)));
        assert_eq!(passed_failed("nothing\n"), None);
    }
}
