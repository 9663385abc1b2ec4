//! Hybrid logical clock (Kulkarni et al., 2014) packed into 64 bits.
//!
//! The upper 48 bits hold wall-clock milliseconds, the lower 16 a logical
//! counter that orders events within one millisecond. The core never reads a
//! clock: every call takes the host's `now` as a [`Timestamp`].

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// Number of bits of the logical counter.
const COUNTER_BITS: u32 = 16;
/// Largest counter value before the clock borrows the next millisecond.
const MAX_COUNTER: u64 = (1 << COUNTER_BITS) - 1;
/// Largest wall-clock value a stamp can carry (2^48 - 1 ms, about year 10889).
pub const MAX_WALL_MS: u64 = (1 << 48) - 1;

/// Default bound on how far a remote stamp may run ahead of the local wall clock.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

/// One hybrid logical clock reading: 48 bits of milliseconds, 16 bits of counter.
///
/// Ordered as the packed integer, so a later millisecond always wins and the
/// counter orders events inside one millisecond.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(u64);

impl Hlc {
    /// The smallest reading; no real event carries it.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a reading from its parts, or `None` when a part is out of range.
    pub fn new(wall_ms: u64, counter: u16) -> Option<Hlc> {
        (wall_ms <= MAX_WALL_MS).then_some(Hlc((wall_ms << COUNTER_BITS) | u64::from(counter)))
    }

    /// Reinterprets a packed 64-bit value (as carried on the wire).
    pub const fn from_u64(packed: u64) -> Hlc {
        Hlc(packed)
    }

    /// The packed 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub const fn wall_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// Logical counter within the millisecond.
    pub const fn counter(self) -> u16 {
        // Truncation is the point: the low 16 bits are the counter.
        (self.0 & MAX_COUNTER) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.counter())
    }
}

/// Why the clock refused to produce or accept a reading. The clock is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// A remote stamp is further ahead of the local wall clock than allowed.
    #[error(
        "remote clock reading {remote_wall_ms} ms is {ahead_ms} ms ahead of the local wall clock \
         ({local_wall_ms} ms), more than the allowed {max_drift_ms} ms; check the sender's clock"
    )]
    DriftExceeded {
        /// Wall milliseconds of the refused stamp.
        remote_wall_ms: u64,
        /// The host's `now` when it was refused.
        local_wall_ms: u64,
        /// How far ahead the remote stamp was.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// The 48-bit millisecond range is used up (wall time past year 10889).
    #[error("the hybrid logical clock has exhausted its 48-bit millisecond range")]
    Exhausted,
}

/// A hybrid logical clock: hands out strictly increasing [`Hlc`] readings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    last: Hlc,
    max_drift_ms: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(DEFAULT_MAX_DRIFT_MS)
    }
}

impl Clock {
    /// A fresh clock that refuses remote stamps more than `max_drift_ms` ahead.
    pub fn new(max_drift_ms: u64) -> Clock {
        Clock {
            last: Hlc::ZERO,
            max_drift_ms,
        }
    }

    /// A clock that resumes after `last` (for example, restored from storage).
    pub fn resume(last: Hlc, max_drift_ms: u64) -> Clock {
        Clock { last, max_drift_ms }
    }

    /// The latest reading handed out or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The configured drift bound in milliseconds.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// A reading for a local event, strictly greater than every earlier one.
    ///
    /// When the wall clock stands still or goes backwards the counter
    /// advances; when the counter is full the clock moves to the next
    /// millisecond instead of wrapping.
    pub fn tick(&mut self, now: Timestamp) -> Result<Hlc, ClockError> {
        let wall = now.unix_ms().min(MAX_WALL_MS);
        let next = if wall > self.last.wall_ms() {
            Hlc(wall << COUNTER_BITS)
        } else {
            successor(self.last)?
        };
        self.last = next;
        Ok(next)
    }

    /// Takes a remote reading into account so later ticks order after it.
    ///
    /// Refuses (and leaves the clock untouched) a reading whose wall time is
    /// more than the drift bound ahead of `now`.
    pub fn observe(&mut self, remote: Hlc, now: Timestamp) -> Result<(), ClockError> {
        self.check_drift(remote, now)?;
        self.last = self.last.max(remote);
        Ok(())
    }

    /// Checks a remote reading against the drift bound without observing it.
    pub fn check_drift(&self, remote: Hlc, now: Timestamp) -> Result<(), ClockError> {
        let now_ms = now.unix_ms();
        let limit = now_ms.saturating_add(self.max_drift_ms);
        if remote.wall_ms() > limit {
            return Err(ClockError::DriftExceeded {
                remote_wall_ms: remote.wall_ms(),
                local_wall_ms: now_ms,
                ahead_ms: remote.wall_ms() - now_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }
}

/// The smallest reading after `hlc`, borrowing a millisecond when the counter is full.
fn successor(hlc: Hlc) -> Result<Hlc, ClockError> {
    if u64::from(hlc.counter()) < MAX_COUNTER {
        Ok(Hlc(hlc.0 + 1))
    } else if hlc.wall_ms() < MAX_WALL_MS {
        Ok(Hlc((hlc.wall_ms() + 1) << COUNTER_BITS))
    } else {
        Err(ClockError::Exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_follows_wall_clock() {
        let mut clock = Clock::default();
        assert_eq!(
            clock.tick(Timestamp::from_unix_ms(1_000)).unwrap(),
            Hlc::new(1_000, 0).unwrap()
        );
        assert_eq!(
            clock.tick(Timestamp::from_unix_ms(1_000)).unwrap(),
            Hlc::new(1_000, 1).unwrap()
        );
        assert_eq!(
            clock.tick(Timestamp::from_unix_ms(2_000)).unwrap(),
            Hlc::new(2_000, 0).unwrap()
        );
    }

    #[test]
    fn tick_is_monotonic_when_wall_clock_goes_back() {
        let mut clock = Clock::default();
        let a = clock.tick(Timestamp::from_unix_ms(5_000)).unwrap();
        let b = clock.tick(Timestamp::from_unix_ms(4_000)).unwrap();
        assert!(b > a);
        assert_eq!(b, Hlc::new(5_000, 1).unwrap());
    }

    #[test]
    fn counter_overflow_borrows_next_millisecond() {
        let mut clock = Clock::resume(Hlc::new(7, u16::MAX).unwrap(), DEFAULT_MAX_DRIFT_MS);
        assert_eq!(
            clock.tick(Timestamp::from_unix_ms(7)).unwrap(),
            Hlc::new(8, 0).unwrap()
        );
    }

    #[test]
    fn exhausted_range_is_an_error_not_a_wrap() {
        let top = Hlc::new(MAX_WALL_MS, u16::MAX).unwrap();
        let mut clock = Clock::resume(top, DEFAULT_MAX_DRIFT_MS);
        assert_eq!(
            clock.tick(Timestamp::from_unix_ms(0)),
            Err(ClockError::Exhausted)
        );
        assert_eq!(clock.last(), top);
    }

    #[test]
    fn observe_refuses_far_future_and_keeps_state() {
        let mut clock = Clock::new(1_000);
        clock.tick(Timestamp::from_unix_ms(10_000)).unwrap();
        let before = clock.clone();
        let far = Hlc::new(11_001, 0).unwrap();
        assert!(matches!(
            clock.observe(far, Timestamp::from_unix_ms(10_000)),
            Err(ClockError::DriftExceeded {
                ahead_ms: 1_001,
                ..
            })
        ));
        assert_eq!(clock, before);
        let near = Hlc::new(11_000, 3).unwrap();
        clock
            .observe(near, Timestamp::from_unix_ms(10_000))
            .unwrap();
        assert!(clock.tick(Timestamp::from_unix_ms(10_000)).unwrap() > near);
    }

    #[test]
    fn parts_round_trip() {
        let hlc = Hlc::new(123_456, 789).unwrap();
        assert_eq!((hlc.wall_ms(), hlc.counter()), (123_456, 789));
        assert_eq!(Hlc::from_u64(hlc.as_u64()), hlc);
        assert!(Hlc::new(MAX_WALL_MS + 1, 0).is_none());
    }
}
