//! The host's wall clock, as the core sees it.
//!
//! The core never reads a clock: every call that stamps, expires or times
//! out takes the host's current [`Timestamp`]. A dedicated type (rather than
//! a bare `u64`) keeps a wall-clock reading from being mixed up with a
//! sequence number, a cursor or a duration at a call site.

use core::fmt;
use core::time::Duration;

/// A wall-clock reading: milliseconds since the Unix epoch, as the host's
/// system clock gives it.
///
/// Readings may go backwards when the host's clock is adjusted; the hybrid
/// logical clock absorbs that, so hosts pass what the clock says.
///
/// ```
/// use core::time::Duration;
/// use sync_core::Timestamp;
///
/// let now = Timestamp::from_unix_ms(1_700_000_000_000);
/// let later = now + Duration::from_secs(2);
/// assert_eq!(later.unix_ms(), 1_700_000_002_000);
/// assert_eq!(later.saturating_sub(Duration::from_secs(2)), now);
/// assert_eq!(later.saturating_duration_since(now), Duration::from_secs(2));
/// assert_eq!(now.saturating_duration_since(later), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The reading `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_ms(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> u64 {
        self.0
    }

    /// This reading moved `by` later, stopping at the largest reading
    /// rather than wrapping.
    pub fn saturating_add(self, by: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(by)))
    }

    /// This reading moved `by` earlier, stopping at the epoch.
    pub fn saturating_sub(self, by: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_ms(by)))
    }

    /// How long after `earlier` this reading is; zero when it is not after
    /// it (clocks may step back).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturating, like [`Timestamp::saturating_add`].
    fn add(self, by: Duration) -> Timestamp {
        self.saturating_add(by)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms since the Unix epoch", self.0)
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_saturates_instead_of_wrapping() {
        let near_end = Timestamp::from_unix_ms(u64::MAX - 1);
        assert_eq!(
            near_end + Duration::from_millis(5),
            Timestamp::from_unix_ms(u64::MAX)
        );
        assert_eq!(
            Timestamp::EPOCH + Duration::from_secs(u64::MAX),
            Timestamp::from_unix_ms(u64::MAX)
        );
    }

    #[test]
    fn sub_millisecond_durations_round_down() {
        let t = Timestamp::from_unix_ms(10);
        assert_eq!(
            t + Duration::from_micros(1_999),
            Timestamp::from_unix_ms(11)
        );
    }
}
