//! Time for the host loop: `Date.now()`, `setTimeout`, and an unclamped
//! macrotask to yield to (`src/timer.js`).

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

impl Timer for JsTimer {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(js_sys::Date::now() as u64)
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
