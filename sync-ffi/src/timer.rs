//! [`TokioTimer`]: wall-clock time and sleeping on tokio's timer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::LocalBoxFuture;
use sync_client::Timestamp;
use sync_client::platform::Timer;

/// Longest single tokio sleep. A far-off deadline is slept towards in
/// steps of this, re-reading the wall clock after each, so that a wall
/// clock that jumps (set by hand, or NTP) or a machine that was suspended
/// (tokio's monotonic clock may stop while it is) delays a wake-up by at
/// most this much, and no deadline overflows tokio's clock.
const MAX_STEP: Duration = Duration::from_secs(60);

/// Wall-clock time from [`SystemTime`] and sleeping with tokio's timer:
/// implements [`Timer`].
///
/// The futures of [`Timer::sleep_until`] must be polled inside a tokio
/// runtime with time enabled (the native host loop's current-thread
/// runtime); a deadline already past resolves at once without one.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTimer;

impl TokioTimer {
    /// A timer.
    pub fn new() -> TokioTimer {
        TokioTimer
    }
}

/// The system's wall clock; the epoch if the clock is before 1970.
fn wall_clock() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(Timestamp::EPOCH, |d| {
            Timestamp::from_unix_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
}

impl Timer for TokioTimer {
    fn now(&self) -> Timestamp {
        wall_clock()
    }

    fn sleep_until(&self, at: Timestamp) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let left = at.saturating_duration_since(wall_clock());
                if left.is_zero() {
                    return;
                }
                let step = left.min(MAX_STEP);
                tokio::time::sleep(step).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn now_is_wall_clock_milliseconds() {
        let now = TokioTimer.now().unix_ms();
        // After 2020-01-01 and before 2200.
        assert!(now > 1_577_836_800_000 && now < 7_258_118_400_000, "{now}");
    }

    #[test]
    fn sleeps_until_the_deadline() {
        let timer = TokioTimer::new();
        let start = std::time::Instant::now();
        let at = timer.now() + Duration::from_millis(50);
        runtime().block_on(timer.sleep_until(at));
        assert!(timer.now() >= at);
        assert!(start.elapsed() >= Duration::from_millis(45));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn past_deadlines_resolve_at_once() {
        let timer = TokioTimer::new();
        // No runtime needed for a deadline already past.
        futures::executor::block_on(timer.sleep_until(Timestamp::EPOCH));
        futures::executor::block_on(timer.sleep_until(timer.now()));
    }

    #[test]
    fn far_deadlines_do_not_overflow() {
        let timer = TokioTimer::new();
        let rt = runtime();
        rt.block_on(async {
            let far = timer.sleep_until(Timestamp::from_unix_ms(u64::MAX));
            let result = tokio::time::timeout(Duration::from_millis(20), far).await;
            assert!(result.is_err(), "u64::MAX is not reached");
        });
    }

    #[test]
    fn works_on_a_current_thread_runtime_in_a_local_set() {
        let timer = TokioTimer::new();
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        let at = timer.now() + Duration::from_millis(10);
        let fired = local.block_on(&rt, async move {
            tokio::task::spawn_local(timer.sleep_until(at))
                .await
                .is_ok()
        });
        assert!(fired);
        assert!(timer.now() >= at);
    }
}
