//! One monotonic clock for every source.
//!
//! Camera frames, audio periods and alert outputs are stamped on `CLOCK_MONOTONIC`, the clock
//! V4L2 and ALSA use for their own buffer timestamps, so a kernel timestamp can be compared with
//! a decision time without conversion, and audio and video events line up.

use std::fmt;
use std::time::Duration;

/// A point on the system monotonic clock, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(u64);

impl MonoTime {
    /// Reads `CLOCK_MONOTONIC`.
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        debug_assert_eq!(rc, 0);
        Self(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    pub const fn from_nanos(ns: u64) -> Self {
        Self(ns)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    pub const fn as_micros(self) -> u64 {
        self.0 / 1_000
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_nanos() as u64))
    }
}

impl fmt::Display for MonoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000_000, (self.0 / 1_000) % 1_000_000)
    }
}

/// Sleeps until `deadline` on the monotonic clock (no-op if it has passed).
pub fn sleep_until(deadline: MonoTime) {
    let now = MonoTime::now();
    if deadline > now {
        std::thread::sleep(deadline.since(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_ordered() {
        let a = MonoTime::now();
        let b = MonoTime::now();
        assert!(b >= a);
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(MonoTime::from_nanos(5_000).plus(Duration::from_micros(2)).as_micros(), 7);
    }
}
