//! Human units for sizes (`64MiB`, `608`, `1.5GB`) and durations (`500ms`, `30s`, `30d`), in
//! flags and in the config file alike.
//!
//! Parsing is the kept crates' (`bytesize`, `humantime`); these newtypes only give clap a
//! `FromStr` with an error that says what is accepted, and a `Display` that round-trips, so
//! `lpcmon config show` prints a value the file would accept. A new size or duration flag takes
//! `units::Bytes` or `units::Span` as its type and gets all of this with no extra code.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A size in bytes. A bare number is bytes; `KiB`/`MiB`/`GiB` are powers of 1024, `kB`/`MB`/`GB`
/// powers of 1000 (case does not matter, a space before the unit is allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl Bytes {
    /// The size as a `usize`, saturating on (32-bit) targets where it does not fit.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Bytes {
    /// Rounded for people (`2.4 KiB`); [`Display`](fmt::Display) is the exact form.
    pub fn human(self) -> String {
        bytesize::ByteSize(self.0).display().iec().to_string()
    }
}

impl FromStr for Bytes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        // bytesize saturates on overflow; a size nobody can have is a typo, so say so.
        match text.parse::<bytesize::ByteSize>() {
            Ok(size) if size.0 == u64::MAX => Err(format!("{text:?} is too large")),
            Ok(size) => Ok(Bytes(size.0)),
            Err(_) => Err(format!(
                "{text:?} is not a size: write bytes (65536) or a number and a unit (64KiB, 64MiB, 1GiB, 500MB)"
            )),
        }
    }
}

impl fmt::Display for Bytes {
    /// The largest binary unit that divides the size exactly, so the text parses back to the
    /// same number of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (factor, unit) in UNITS {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration: `500ms`, `2s`, `5m`, `12h`, `30d`, or combined (`1h30m`). A bare number is an
/// error rather than a guess at its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        humantime::parse_duration(text).map(Span).map_err(|e| {
            format!(
                "{text:?} is not a duration ({e}): write a number and a unit, e.g. 500ms, 30s, 5m, 12h, 30d"
            )
        })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime's format is `1h 30m`; without spaces it is one shell word and still parses.
        let text = humantime::format_duration(self.0).to_string().replace(' ', "");
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        let cases: &[(&str, u64)] = &[
            ("67108864", 64 << 20),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("608", 608),
            ("608B", 608),
            ("64KiB", 64 << 10),
            ("1GiB", 1 << 30),
            ("500MB", 500_000_000),
            ("1.5GiB", 3 << 29),
            ("0", 0),
        ];
        for &(text, bytes) in cases {
            assert_eq!(text.parse::<Bytes>(), Ok(Bytes(bytes)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_accepted() {
        for text in ["", "MiB", "64XB", "-1", "lots", "99999999999999999999EiB"] {
            let err = text.parse::<Bytes>().expect_err(text);
            assert!(err.contains(&format!("{:?}", text.trim())), "{text}: {err}");
        }
        assert!("64XB".parse::<Bytes>().unwrap_err().contains("64MiB"));
    }

    #[test]
    fn sizes_print_in_a_form_that_parses_back() {
        for bytes in [
            0,
            1,
            608,
            1024,
            65_536,
            64 << 20,
            (64 << 20) + 1,
            3 << 29,
            500_000_000,
            1 << 40,
        ] {
            let text = Bytes(bytes).to_string();
            assert_eq!(
                text.parse::<Bytes>(),
                Ok(Bytes(bytes)),
                "{bytes} printed as {text}"
            );
        }
        assert_eq!(Bytes(64 << 20).to_string(), "64MiB");
        assert_eq!(Bytes(608).to_string(), "608");
    }

    #[test]
    fn durations_parse_with_units() {
        let cases: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("1h30m", Duration::from_secs(5400)),
            (" 1h 30m ", Duration::from_secs(5400)),
        ];
        for &(text, d) in cases {
            assert_eq!(text.parse::<Span>(), Ok(Span(d)), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in ["", "30", "soon", "5 parsecs", "-1s"] {
            let err = text.parse::<Span>().expect_err(text);
            assert!(err.contains("500ms"), "{text}: {err}");
        }
    }

    #[test]
    fn durations_print_in_a_form_that_parses_back() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(5400),
            Duration::from_secs(30 * 86_400),
        ] {
            let text = Span(d).to_string();
            assert!(!text.contains(' '), "{text}");
            assert_eq!(text.parse::<Span>(), Ok(Span(d)), "{text}");
        }
    }
}
