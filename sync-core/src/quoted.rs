//! Names in error messages.
//!
//! Collection names, document ids and field names are chosen by apps and
//! by peers, and may hold any character: quoted raw, a name with a newline
//! would forge a line in a relay's or an app's log. `Debug` would escape
//! them, but brings the escaping of all of Unicode (and its tables) into
//! the browser package; control characters are all a log needs escaped.

use std::fmt;

/// Displays a name between single quotes, with control characters, `'`
/// and `\` escaped (`\u{a}`, `\'`, `\\`).
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'")?;
        let mut plain = 0;
        for (at, c) in self.0.char_indices() {
            let escaped = c.is_control() || c == '\'' || c == '\\';
            if !escaped {
                continue;
            }
            f.write_str(&self.0[plain..at])?;
            match c {
                '\'' => f.write_str("\\'")?,
                '\\' => f.write_str("\\\\")?,
                _ => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            plain = at + c.len_utf8();
        }
        f.write_str(&self.0[plain..])?;
        f.write_str("'")
    }
}

#[cfg(test)]
mod tests {
    use super::Quoted;

    #[test]
    fn names_are_quoted_with_control_characters_escaped() {
        assert_eq!(Quoted("todos").to_string(), "'todos'");
        assert_eq!(Quoted("").to_string(), "''");
        assert_eq!(Quoted("a\nb").to_string(), "'a\\u{a}b'");
        assert_eq!(
            Quoted("x\r\n2026 INFO forged\u{7f}").to_string(),
            "'x\\u{d}\\u{a}2026 INFO forged\\u{7f}'"
        );
        assert_eq!(Quoted("it's a\\b").to_string(), "'it\\'s a\\\\b'");
        assert_eq!(Quoted("żółw ☃").to_string(), "'żółw ☃'");
    }
}
