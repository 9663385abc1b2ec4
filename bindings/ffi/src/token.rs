//! Token refresh through foreign code, contained: the provider runs on a
//! thread of its own, a panic or exception becomes an error, and a provider
//! that does not answer in time is given up on (its thread is left to end
//! by itself), so the database's loop never waits on foreign code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use crate::error::TokenError;

/// How long a provider may take before the attempt counts as failed.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);

/// Hands out fresh room tokens from the app's backend. Called when the
/// relay refuses the current token as expired or invalid, and shortly
/// before it expires; at most every few seconds.
///
/// Called on a thread of the SDK's own, never the caller's: it may block
/// (a network call to the backend) for up to 30 seconds.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// A new token for the room, or why there is none.
    fn fetch_token(&self) -> Result<String, TokenError>;
}

type Reply = Arc<Mutex<Option<oneshot::Sender<Result<String, String>>>>>;

/// Sends `result` if nothing was sent yet (the first of answer and timeout wins).
fn reply(to: &Reply, result: Result<String, String>) {
    let sender = to.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(sender) = sender {
        let _ = sender.send(result);
    }
}

/// The Rust API's token source over a foreign provider.
pub(crate) fn token_source(provider: Arc<dyn TokenProvider>) -> sync_ffi::TokenSource {
    Arc::new(move || {
        let (tx, rx) = oneshot::channel();
        let to: Reply = Arc::new(Mutex::new(Some(tx)));
        let provider = provider.clone();
        let answer = to.clone();
        let asked = std::thread::Builder::new()
            .name("concord-token".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    provider.fetch_token()
                }));
                let result = match result {
                    Ok(Ok(token)) => Ok(token),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the token provider panicked".to_owned()),
                };
                reply(&answer, result);
            });
        if let Err(e) = asked {
            reply(&to, Err(format!("cannot start the token thread: {e}")));
        } else {
            let timeout = to.clone();
            let watchdog = std::thread::Builder::new()
                .name("concord-token-timeout".into())
                .spawn(move || {
                    std::thread::sleep(PROVIDER_TIMEOUT);
                    reply(
                        &timeout,
                        Err(format!(
                            "the token provider did not answer within {} s",
                            PROVIDER_TIMEOUT.as_secs()
                        )),
                    );
                });
            if let Err(e) = watchdog {
                reply(&to, Err(format!("cannot start the token thread: {e}")));
            }
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the token provider stopped".to_owned()))
        })
    })
}
