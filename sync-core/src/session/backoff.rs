//! Reconnect delays: exponential backoff with "equal jitter".

use crate::rng::SplitMix64;

/// How long to wait between reconnection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial_ms: u64,
    /// Ceiling of any delay.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The delay before attempt number `attempt` (0 for the first retry).
    ///
    /// The ceiling doubles each attempt up to `max_ms`; the delay is drawn
    /// uniformly from its upper half, so clients that lost the relay at the
    /// same moment spread out but none retries immediately.
    pub(crate) fn delay(&self, attempt: u32, rng: &mut SplitMix64) -> u64 {
        let ceiling = self
            .initial_ms
            .saturating_mul(1u64 << attempt.min(32))
            .min(self.max_ms)
            .max(1);
        let half = ceiling / 2;
        half + rng.up_to(ceiling - half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_jitter() {
        let backoff = Backoff::default();
        let mut rng = SplitMix64::new(7);
        for attempt in 0..40 {
            let ceiling = (500u64 << attempt.min(32)).min(30_000);
            let d = backoff.delay(attempt, &mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d}");
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|_| backoff.delay(10, &mut rng)).collect();
        assert!(spread.len() > 40, "jitter must spread retries");
    }
}
