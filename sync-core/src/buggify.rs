//! Fault switches for the simulation's self-test (cargo feature `buggify`,
//! off by default and never in normal builds).
//!
//! Each switch breaks one rule the core promises, on the current thread
//! only, so that `tests/simulation.rs` can prove it notices: a simulation
//! that passes with a rule broken guards nothing. Without the feature,
//! [`on`] is a constant `false` and every hook compiles away.

/// One broken rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// The room sends `Ack` before queuing the persist of what it acknowledges.
    AckBeforePersist,
    /// The session pushes a local operation before its persist is durable.
    PushBeforePersist,
    /// The room refuses about one operation in seven as `Stale`.
    SpuriousRefusals,
    /// Merging a put ignores the fields it unsets.
    IgnoreUnsets,
    /// Compaction leaves some operations out of the snapshot.
    CompactionDropsOps,
    /// The session stores its cursor in a batch of its own, ahead of the
    /// state that cursor covers.
    CursorBeforeState,
}

impl Switch {
    /// Every switch.
    pub const ALL: [Switch; 6] = [
        Switch::AckBeforePersist,
        Switch::PushBeforePersist,
        Switch::SpuriousRefusals,
        Switch::IgnoreUnsets,
        Switch::CompactionDropsOps,
        Switch::CursorBeforeState,
    ];

    #[cfg(feature = "buggify")]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(feature = "buggify")]
std::thread_local! {
    static ON: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Turns on exactly `switches` for the current thread (none: all off).
#[cfg(feature = "buggify")]
pub fn set(switches: &[Switch]) {
    ON.with(|on| on.set(switches.iter().fold(0, |bits, s| bits | s.bit())));
}

/// Whether `switch` is on for the current thread.
#[cfg(feature = "buggify")]
pub fn on(switch: Switch) -> bool {
    ON.with(|on| on.get() & switch.bit() != 0)
}

/// Whether `switch` is on: never, without the `buggify` feature.
#[cfg(not(feature = "buggify"))]
#[inline(always)]
pub(crate) fn on(_switch: Switch) -> bool {
    false
}

/// A deterministic one-in-`n` choice from `key`, so a replayed seed breaks
/// the same operations.
pub(crate) fn one_in(n: u64, key: u64) -> bool {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % n == 0
}
