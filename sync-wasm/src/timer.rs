//! Time for the host loop: `Date.now()` and `setTimeout`.

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use sync_client::platform::Timer;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: f64) -> JsValue;
}

/// Wall-clock time from `Date.now()`, sleeping with `setTimeout` (which
/// exists in browsers, workers and Node alike).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsTimer;

impl Timer for JsTimer {
    fn now_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }

    fn sleep_until(&self, at_ms: u64) -> LocalBoxFuture<'static, ()> {
        async move {
            // Timers may fire early (clamping, clock adjustments): the loop
            // needs `now_ms() >= at_ms` when this resolves, so check again.
            loop {
                let now = js_sys::Date::now() as u64;
                if now >= at_ms {
                    return;
                }
                sleep_ms((at_ms - now) as f64).await;
            }
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
