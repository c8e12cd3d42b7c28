//! Durations as NT relative timeouts (`LARGE_INTEGER`, negative, in 100 ns units).
//!
//! Decided once, for the driver and the user-mode ports alike: **round up**. A wait given a
//! timeout never ends before the time asked for (the kernel's waits may end later, at the next
//! clock tick, but a rounded-down timeout could end up to 99 ns early and let a deadline loop
//! spin once more). And never 0: a zero timeout means "do not wait at all" (Microsoft's
//! `KeWaitForSingleObject` documentation), so the shortest wait is one unit, -1.

use core::time::Duration;

/// The relative timeout for `duration_ns` nanoseconds.
pub const fn relative_ns(duration_ns: u64) -> i64 {
    let units = duration_ns.div_ceil(100);
    let units = if units == 0 {
        1
    } else if units > i64::MAX as u64 {
        i64::MAX as u64
    } else {
        units
    };
    -(units as i64)
}

/// The relative timeout for `duration`.
pub const fn relative(duration: Duration) -> i64 {
    let nanos = duration.as_nanos();
    let nanos = if nanos > u64::MAX as u128 {
        u64::MAX
    } else {
        nanos as u64
    };
    relative_ns(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_relative_rounded_up_and_never_zero() {
        assert_eq!(relative_ns(2_000_000_000), -20_000_000);
        assert_eq!(relative_ns(101), -2);
        assert_eq!(relative_ns(100), -1);
        assert_eq!(relative_ns(1), -1);
        assert_eq!(relative_ns(0), -1);
        assert_eq!(relative_ns(u64::MAX), -(u64::MAX.div_ceil(100) as i64));
        assert_eq!(relative(Duration::from_millis(100)), -1_000_000);
        assert_eq!(relative(Duration::from_nanos(150)), -2);
        assert_eq!(relative(Duration::MAX), relative_ns(u64::MAX));
    }
}
