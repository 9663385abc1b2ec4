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
}
