//! Names chosen by others (file and queue directory names, thread names, comms) on their way
//! to a terminal: a control character in one (`\x1b[2J`, a newline) would act on the
//! operator's terminal or forge report lines. JSON escapes them itself and keeps the raw name.

use std::{borrow::Cow, fmt::Write as _};

/// `s` with every control character (C0, DEL, C1) escaped as `\n`, `\t`, `\r` or `\xNN` /
/// `\u{NN}`, and backslashes doubled so an escape in the output is never the name's own text.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_plain_names_borrowed() {
        assert!(matches!(
            printable("msgs.0000000001"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\x1b[2Jb\nc\td\x7f"), "a\\x1b[2Jb\\nc\\td\\x7f");
        assert_eq!(printable("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(printable("back\\x1b"), "back\\\\x1b");
        assert_eq!(printable("é ✓"), "é ✓");
    }
}
