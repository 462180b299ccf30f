//! `web_time` (1.1.0) for native targets, with an [`Instant`] read from tokio's clock.
//!
//! libp2p's crates read the time through `web_time::Instant` (on native targets web-time 1.1.0 is
//! `std::time` re-exported) and wait through futures-timer (replaced by `simnet/timer`, on
//! tokio's timer wheel). This crate replaces web-time in the whole workspace
//! (`[patch.crates-io]` in the root Cargo.toml) so that both read one clock: tokio's. On a runtime
//! whose clock is paused (`simnet run` with `clock = "virtual"`) time then advances only when
//! every task waits for a timer, and a simulated network of a thousand nodes measures the
//! protocol instead of the host's load. Anywhere else — the `commucat` binary, whose runtime's
//! clock is never paused, or a thread outside any runtime — `Instant::now()` is the system's
//! monotonic clock, exactly what web-time returns.
//!
//! [`Instant`] is a newtype (web-time's is `std::time::Instant` itself): code that mixes the two
//! converts with `From`, which the compiler points out.

#![deny(missing_docs)]

use std::ops::{Add, AddAssign, Sub, SubAssign};
pub use std::time::{Duration, SystemTime, SystemTimeError, TryFromFloatSecsError, UNIX_EPOCH};

/// A reading of tokio's monotonic clock: the system's, unless the current runtime's clock is
/// paused (then the runtime's virtual time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(std::time::Instant);

impl Instant {
    /// Now, on the current tokio runtime's clock (the system's outside a runtime).
    pub fn now() -> Self {
        Self(tokio::time::Instant::now().into_std())
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later (as std's since Rust 1.60).
    pub fn duration_since(&self, earlier: Self) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    /// Time from `earlier` to `self`, `None` if `earlier` is later.
    pub fn checked_duration_since(&self, earlier: Self) -> Option<Duration> {
        self.0.checked_duration_since(earlier.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(&self, earlier: Self) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    /// Time since `self`, on the same clock as [`Instant::now`].
    pub fn elapsed(&self) -> Duration {
        Self::now().duration_since(*self)
    }

    /// `self + d`, `None` if it does not fit.
    pub fn checked_add(&self, d: Duration) -> Option<Self> {
        self.0.checked_add(d).map(Self)
    }

    /// `self - d`, `None` if it does not fit.
    pub fn checked_sub(&self, d: Duration) -> Option<Self> {
        self.0.checked_sub(d).map(Self)
    }
}

impl Add<Duration> for Instant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        Self(self.0 - d)
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Self) -> Duration {
        self.duration_since(earlier)
    }
}

impl From<std::time::Instant> for Instant {
    fn from(i: std::time::Instant) -> Self {
        Self(i)
    }
}

impl From<Instant> for std::time::Instant {
    fn from(i: Instant) -> Self {
        i.0
    }
}

impl From<tokio::time::Instant> for Instant {
    fn from(i: tokio::time::Instant) -> Self {
        Self(i.into_std())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn on_a_paused_runtime_it_reads_the_runtimes_virtual_clock() {
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3600));
        // A real sleep does not move a paused clock.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t0.elapsed(), Duration::from_secs(3600));
    }

    #[test]
    fn outside_a_runtime_it_reads_the_systems_clock() {
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(t0.elapsed() >= Duration::from_millis(20));
        let system = std::time::Instant::now();
        let ours = std::time::Instant::from(Instant::now());
        assert!(ours >= system && ours - system < Duration::from_secs(1));
    }

    #[test]
    fn arithmetic_saturates_like_std() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        assert_eq!(later - t0, Duration::from_secs(5));
        assert_eq!(t0 - later, Duration::ZERO);
        assert_eq!(t0.checked_duration_since(later), None);
        let mut t = later;
        t -= Duration::from_secs(5);
        assert_eq!(t, t0);
    }
}
