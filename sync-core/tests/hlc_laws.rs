//! The hybrid logical clock's laws, for any sequence of wall-clock readings
//! (including ones that go backwards or past the 48-bit range) and from any
//! starting point (including a counter about to overflow, via
//! `Clock::resume`):
//!
//! * `tick` is strictly increasing, and is exactly the HLC rule: the wall
//!   clock when it is ahead, else the successor of the last reading (moving to
//!   the next millisecond when the counter is full), `Exhausted` at the top;
//! * `observe` never lowers the clock, refuses stamps beyond the drift bound
//!   leaving the clock untouched, and orders later ticks after what it saw.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use proptest::prelude::*;
use sync_core::Timestamp;
use sync_core::hlc::MAX_WALL_MS;
use sync_core::{Clock, ClockError, Hlc};

const MAX_COUNTER: u16 = u16::MAX;

fn config() -> ProptestConfig {
    common::proptest_config(512)
}

fn top() -> Hlc {
    Hlc::new(MAX_WALL_MS, MAX_COUNTER).expect("in range")
}

/// The reading right after `hlc`, as the HLC rule defines it.
fn successor(hlc: Hlc) -> Option<Hlc> {
    if hlc.counter() < MAX_COUNTER {
        Hlc::new(hlc.wall_ms(), hlc.counter() + 1)
    } else {
        Hlc::new(hlc.wall_ms() + 1, 0)
    }
}

/// Where a clock starts: fresh, anywhere, with a nearly full counter, or
/// close to the end of the 48-bit range.
fn start() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        Just(Hlc::ZERO),
        (0u64..10_000, any::<u16>()).prop_map(|(w, c)| Hlc::new(w, c).expect("in range")),
        (0u64..10_000, 0u16..4).prop_map(|(w, c)| Hlc::new(w, MAX_COUNTER - c).expect("in range")),
        (0u64..3, 0u16..4)
            .prop_map(|(w, c)| { Hlc::new(MAX_WALL_MS - w, MAX_COUNTER - c).expect("in range") }),
    ]
}

/// A wall-clock reading: near the start, small, huge, or past the range.
fn now() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..10_010,
        1 => Just(0u64),
        1 => (MAX_WALL_MS - 3)..=(MAX_WALL_MS + 3),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn nows() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(now(), 1..64)
}

/// The drift bound: none, small, the default, or unbounded.
fn drift() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..2_000, Just(60_000), Just(u64::MAX)]
}

/// A remote reading anywhere in the range.
fn remote() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        (0u64..12_000, any::<u16>()).prop_map(|(w, c)| Hlc::new(w, c).expect("in range")),
        (0..=MAX_WALL_MS, any::<u16>()).prop_map(|(w, c)| Hlc::new(w, c).expect("in range")),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Every tick is strictly greater than everything before it, whatever
    /// the wall clock does; at the very top the clock refuses and stays put.
    #[test]
    fn tick_is_strictly_increasing(start in start(), nows in nows()) {
        let mut clock = Clock::resume(start, 60_000);
        let mut last = start;
        for now in nows {
            let before = clock.clone();
            match clock.tick(at(now)) {
                Ok(hlc) => {
                    prop_assert!(hlc > last, "tick({now}) gave {hlc} after {last}");
                    prop_assert_eq!(clock.last(), hlc);
                    last = hlc;
                }
                Err(ClockError::Exhausted) => {
                    prop_assert_eq!(last, top());
                    prop_assert_eq!(&clock, &before);
                }
                Err(e) => prop_assert!(false, "tick failed: {}", e),
            }
        }
    }

    /// Each tick is exactly the HLC rule: the larger of the wall clock
    /// (counter 0) and the successor of the last reading.
    #[test]
    fn tick_follows_the_hlc_rule(start in start(), nows in nows()) {
        let mut clock = Clock::resume(start, 60_000);
        for now in nows {
            let last = clock.last();
            let wall = Hlc::new(now.min(MAX_WALL_MS), 0).expect("in range");
            let expected = match successor(last) {
                Some(next) => Ok(next.max(wall)),
                None if wall > last => Ok(wall),
                None => Err(ClockError::Exhausted),
            };
            prop_assert_eq!(clock.tick(at(now)), expected, "from {} at {}", last, now);
        }
    }

    /// When the wall clock is within range, a tick never reads earlier than it.
    #[test]
    fn tick_is_never_behind_the_wall_clock(start in start(), now in 0..=MAX_WALL_MS) {
        let mut clock = Clock::resume(start, 60_000);
        if let Ok(hlc) = clock.tick(at(now)) {
            prop_assert!(hlc.wall_ms() >= now);
        } else {
            prop_assert_eq!(start, top());
        }
    }

    /// Observing never lowers the clock: it becomes the larger of the two.
    #[test]
    fn observe_never_lowers_the_clock(
        start in start(),
        remote in remote(),
        now in now(),
        drift in drift(),
    ) {
        let mut clock = Clock::resume(start, drift);
        if clock.observe(remote, at(now)).is_ok() {
            prop_assert_eq!(clock.last(), start.max(remote));
        } else {
            prop_assert_eq!(clock.last(), start);
        }
    }

    /// A stamp further ahead than the drift bound is refused with the
    /// numbers that explain it, and the clock is exactly as before; anything
    /// within the bound is accepted.
    #[test]
    fn observe_refuses_exactly_the_stamps_beyond_the_drift_bound(
        start in start(),
        remote in remote(),
        now in now(),
        drift in drift(),
    ) {
        let mut clock = Clock::resume(start, drift);
        let before = clock.clone();
        let beyond = u128::from(remote.wall_ms()) > u128::from(now) + u128::from(drift);
        let checked = clock.check_drift(remote, at(now));
        match clock.observe(remote, at(now)) {
            Ok(()) => prop_assert!(!beyond, "accepted {} at {} with drift {}", remote, now, drift),
            Err(e) => {
                prop_assert!(beyond, "refused {} at {} with drift {}", remote, now, drift);
                prop_assert_eq!(
                    &e,
                    &ClockError::DriftExceeded {
                        remote_wall_ms: remote.wall_ms(),
                        local_wall_ms: now,
                        ahead_ms: remote.wall_ms() - now,
                        max_drift_ms: drift,
                    }
                );
                prop_assert_eq!(&clock, &before, "a refused stamp changed the clock");
                prop_assert_eq!(checked, Err(e));
            }
        }
    }

    /// After observing a stamp, the next tick orders after it (unless the
    /// range is used up).
    #[test]
    fn tick_after_observe_is_after_the_remote_stamp(
        start in start(),
        remote in remote(),
        now in now(),
        later in now(),
    ) {
        let mut clock = Clock::resume(start, u64::MAX);
        clock.observe(remote, at(now)).expect("no drift bound");
        match clock.tick(at(later)) {
            Ok(hlc) => {
                prop_assert!(hlc > remote);
                prop_assert!(hlc > start);
            }
            Err(e) => {
                prop_assert_eq!(e, ClockError::Exhausted);
                prop_assert_eq!(start.max(remote), top());
            }
        }
    }

    /// Interleaved ticks and observations stay strictly increasing and
    /// after every accepted remote stamp.
    #[test]
    fn ticks_and_observations_interleave_monotonically(
        steps in prop::collection::vec((now(), prop::option::of(remote())), 1..48),
        drift in drift(),
    ) {
        let mut clock = Clock::new(drift);
        let mut floor = Hlc::ZERO;
        for (now, remote) in steps {
            if let Some(remote) = remote {
                if clock.observe(remote, at(now)).is_ok() {
                    floor = floor.max(remote);
                }
            } else if let Ok(hlc) = clock.tick(at(now)) {
                prop_assert!(hlc > floor);
                floor = hlc;
            }
            prop_assert!(clock.last() >= floor);
        }
    }

    /// Readings order as (milliseconds, counter) and round-trip their parts.
    #[test]
    fn readings_order_by_wall_then_counter(
        a in (0..=MAX_WALL_MS, any::<u16>()),
        b in (0..=MAX_WALL_MS, any::<u16>()),
    ) {
        let (ha, hb) = (Hlc::new(a.0, a.1).unwrap(), Hlc::new(b.0, b.1).unwrap());
        prop_assert_eq!(ha.cmp(&hb), a.cmp(&b));
        prop_assert_eq!((ha.wall_ms(), ha.counter()), a);
        prop_assert_eq!(Hlc::from_u64(ha.as_u64()), ha);
    }
}

#[test]
fn counter_overflow_moves_to_the_next_millisecond() {
    let full = Hlc::new(1_000, MAX_COUNTER).unwrap();
    let mut clock = Clock::resume(full, 60_000);
    assert_eq!(clock.tick(at(1_000)), Ok(Hlc::new(1_001, 0).unwrap()));
    assert_eq!(clock.tick(at(0)), Ok(Hlc::new(1_001, 1).unwrap()));
}

#[test]
fn the_top_of_the_range_is_exhausted_not_wrapped() {
    let almost = Hlc::new(MAX_WALL_MS, MAX_COUNTER - 1).unwrap();
    let mut clock = Clock::resume(almost, 60_000);
    assert_eq!(clock.tick(at(u64::MAX)), Ok(top()));
    for now in [0, MAX_WALL_MS, u64::MAX] {
        assert_eq!(clock.tick(at(now)), Err(ClockError::Exhausted));
        assert_eq!(clock.last(), top());
    }
}

#[test]
fn wall_clock_past_the_range_is_clamped() {
    let mut clock = Clock::default();
    assert_eq!(
        clock.tick(at(u64::MAX)),
        Ok(Hlc::new(MAX_WALL_MS, 0).unwrap())
    );
    assert_eq!(
        clock.tick(at(u64::MAX)),
        Ok(Hlc::new(MAX_WALL_MS, 1).unwrap())
    );
    assert!(Hlc::new(MAX_WALL_MS + 1, 0).is_none());
}

#[test]
fn drift_bound_edges() {
    let mut clock = Clock::new(1_000);
    let at_bound = Hlc::new(11_000, MAX_COUNTER).unwrap();
    let past_bound = Hlc::new(11_001, 0).unwrap();
    assert_eq!(clock.observe(at_bound, at(10_000)), Ok(()));
    assert!(matches!(
        clock.observe(past_bound, at(10_000)),
        Err(ClockError::DriftExceeded {
            ahead_ms: 1_001,
            ..
        })
    ));
    assert_eq!(clock.last(), at_bound);
    // A zero bound still accepts the present.
    let mut strict = Clock::new(0);
    assert_eq!(strict.observe(Hlc::new(5, 9).unwrap(), at(5)), Ok(()));
    assert!(strict.observe(Hlc::new(6, 0).unwrap(), at(5)).is_err());
    // A wall clock at the end of u64 does not overflow the bound.
    assert_eq!(Clock::new(u64::MAX).observe(top(), at(u64::MAX)), Ok(()));
}

/// The host clock reading `ms` milliseconds after the epoch.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}
