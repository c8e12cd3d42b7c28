//! Text a peer supplies (a Hello's `os` string), made safe to log, show in `/stats` and put in
//! the dashboard's JSON: control characters would otherwise forge log lines (`\n`) or drive
//! the reader's terminal (ESC sequences), and bidirectional overrides would reorder what a
//! person reads.

use alloc::string::String;
use core::fmt::Write as _;

/// Bidirectional embedding, override and isolate characters (U+202A..U+202E, U+2066..U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character (C0, DEL, C1) and bidi control written as `\u{XX}`, and
/// a backslash doubled so an escape cannot be faked. Printable text, Unicode included, is kept.
pub fn escape_peer_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || is_bidi_control(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 8: a forged newline and an escape sequence reach no log or page raw.
    #[test]
    fn escapes_controls_and_keeps_printable_text() {
        assert_eq!(escape_peer_text("Linux 6.1 ü"), "Linux 6.1 ü");
        assert_eq!(
            escape_peer_text("x\n2026 INFO forged\u{1b}[31m"),
            "x\\u{a}2026 INFO forged\\u{1b}[31m"
        );
        assert_eq!(
            escape_peer_text("a\\u{a}\u{202e}\u{85}\u{7f}"),
            "a\\\\u{a}\\u{202e}\\u{85}\\u{7f}"
        );
    }
}
