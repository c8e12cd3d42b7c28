//! RFC 3339 timestamps with nanosecond precision, as every time in the event JSON is written:
//! UTC, nine fractional digits, `Z` (`2026-11-22T10:00:00.123456789Z`).
//!
//! The `time` crate does the calendar. A hand-written formatter (Hinnant's `civil_from_days`)
//! was measured against it on this path, which runs twice per stored event, and was not faster
//! (both about 0.4–0.9 µs a call including the `String`, within the machine's noise), so the
//! crate made for the job writes them. What does pay is not doing the calendar at all for most
//! calls: an event's `time` and `received` fall in the same few seconds as the event before it,
//! so each thread keeps the formatted `YYYY-MM-DDTHH:MM:SS.` of the last two whole seconds it
//! saw and only writes the nine fractional digits (the `time` crate runs once per second).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// The one form: RFC 3339 with exactly nine fractional digits, always in UTC.
const FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Nanoseconds since the Unix epoch by the wall clock. A clock set before 1970 reads as 0.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_ns(ns: u64) -> String {
    let second = ns / NS_PER_SECOND;
    let fraction = ns % NS_PER_SECOND;
    SECONDS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let prefix = cache.prefix(second);
        let mut text = String::with_capacity(prefix.len() + 10);
        text.push_str(prefix);
        push_nine_digits(&mut text, fraction);
        text.push('Z');
        text
    })
}

const NS_PER_SECOND: u64 = 1_000_000_000;

/// The calendar part of a whole second, by the `time` crate: `YYYY-MM-DDTHH:MM:SS.`.
fn second_prefix(second: u64) -> String {
    // Every u64 of nanoseconds (up to the year 2554) is inside `time`'s range, and the format
    // has no component a valid instant could fail to fill, so neither step can fail.
    let formatted = OffsetDateTime::from_unix_timestamp(second as i64)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| unreachable!("second {second} is a formattable instant"));
    // The format ends in the nine digits of a whole second and `Z`: drop those ten.
    formatted[..formatted.len() - 10].to_owned()
}

fn push_nine_digits(text: &mut String, mut value: u64) {
    let mut digits = [b'0'; 9];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    // Nine ASCII digits.
    text.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// The prefixes of the two whole seconds formatted last. Two, because an event's producer time
/// and its receipt are often on either side of a second boundary.
#[derive(Default)]
struct SecondCache {
    slots: [Option<(u64, String)>; 2],
    /// The slot to replace next.
    victim: usize,
}

impl SecondCache {
    fn prefix(&mut self, second: u64) -> &str {
        let slot = match self
            .slots
            .iter()
            .position(|s| matches!(s, Some((at, _)) if *at == second))
        {
            Some(slot) => slot,
            None => {
                let slot = self.victim;
                self.victim = (slot + 1) % self.slots.len();
                self.slots[slot] = Some((second, second_prefix(second)));
                slot
            }
        };
        self.slots[slot].as_ref().map_or("", |(_, p)| p.as_str())
    }
}

thread_local! {
    static SECONDS: RefCell<SecondCache> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339_ns(4_102_444_799_999_999_999),
            "2099-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn largest_input_does_not_panic() {
        assert!(rfc3339_ns(u64::MAX).starts_with("2554-07-21T23:34:33"));
    }

    /// The cached path writes exactly what the `time` crate writes for the whole instant,
    /// across second boundaries, both cache slots and slot replacement.
    #[test]
    fn cached_seconds_match_the_time_crate() {
        let full = |ns: u64| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                .unwrap()
                .format(FORMAT)
                .unwrap()
        };
        let base = 1_700_000_000_999_999_990u64;
        let mut ns = Vec::new();
        for i in 0..40u64 {
            ns.push(base + i);
            ns.push(base - 3 * NS_PER_SECOND + i * 7);
            ns.push(base + (i % 5) * NS_PER_SECOND + i * 123_456);
        }
        ns.extend([
            0,
            1,
            999_999_999,
            NS_PER_SECOND,
            u64::MAX,
            u64::MAX - NS_PER_SECOND,
        ]);
        for n in ns {
            assert_eq!(rfc3339_ns(n), full(n), "{n}");
        }
    }

    #[test]
    fn output_parses_back_as_rfc3339() {
        for ns in [0, 1, 1_700_000_000_123_456_789, u64::MAX] {
            let parsed = OffsetDateTime::parse(&rfc3339_ns(ns), &Rfc3339).unwrap();
            assert_eq!(parsed.unix_timestamp_nanos(), i128::from(ns));
        }
    }
}
