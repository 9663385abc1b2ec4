//! Time for the host loop: `Date.now()`, `setTimeout`, and an unclamped
//! macrotask to yield to (`src/timer.js`).

use std::cell::Cell;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use sync_client::Timestamp;
use sync_client::platform::Timer;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: f64) -> JsValue;
}

#[wasm_bindgen(module = "/src/timer.js")]
extern "C" {
    /// A Promise resolved on a later macrotask (see timer.js for which).
    #[wasm_bindgen(js_name = yieldNow)]
    fn yield_now_promise() -> js_sys::Promise;
}

/// Wall-clock time from `Date.now()`, sleeping with `setTimeout` (which
/// exists in browsers, workers and Node alike).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsTimer;

thread_local! {
    /// The clock reading shared by the rest of the current task (see `now`).
    static READING: Cell<Option<u64>> = const { Cell::new(None) };
}

impl Timer for JsTimer {
    /// `Date.now()`, read once for the code that runs until the microtasks
    /// queued so far have run: each put asks for the time, and a crossing
    /// into JavaScript per put of 100,000 made in one loop cost 3% of their
    /// CPU. A reading is at most as old as the task that took it; writes
    /// that share it are still ordered by the clock's logical counter.
    fn now(&self) -> Timestamp {
        let ms = READING.get().unwrap_or_else(|| {
            let ms = js_sys::Date::now() as u64;
            READING.set(Some(ms));
            wasm_bindgen_futures::spawn_local(async { READING.set(None) });
            ms
        });
        Timestamp::from_unix_ms(ms)
    }

    fn sleep_until(&self, at: Timestamp) -> LocalBoxFuture<'static, ()> {
        async move {
            // Timers may fire early (clamping, clock adjustments): the loop
            // needs `now() >= at` when this resolves, so check again.
            loop {
                let now = JsTimer.now();
                if now >= at {
                    return;
                }
                sleep_ms(at.saturating_duration_since(now).as_millis() as f64).await;
            }
        }
        .boxed_local()
    }

    /// A macrotask, so input and rendering run between the slices of a
    /// large load or snapshot (a microtask would not let them), but not
    /// `setTimeout(0)`, whose 4 ms clamp each of those yields would pay.
    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        async {
            let _ = wasm_bindgen_futures::JsFuture::from(yield_now_promise()).await;
        }
        .boxed_local()
    }
}

/// Resolves after `ms` milliseconds (or 0: on the next macrotask).
pub(crate) async fn sleep_ms(ms: f64) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        set_timeout(&resolve, ms);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
