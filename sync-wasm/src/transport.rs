//! The relay link over the platform's `WebSocket` (browsers; Node 22+, or
//! Node 20 with `--experimental-websocket`).

use std::cell::RefCell;
use std::rc::Rc;

use futures::FutureExt;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use sync_client::platform::{Incoming, Link, LinkSender, Transport, TransportError};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// Opens relay connections with `new WebSocket(url)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WebSocketTransport;

/// The socket and the handlers attached to it. Dropping it detaches the
/// handlers (so the browser never calls a freed closure) and closes the
/// socket if it is still open.
struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(JsValue)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _on_error: Closure<dyn FnMut(JsValue)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        if self.ws.ready_state() <= WebSocket::OPEN {
            let _ = self.ws.close_with_code_and_reason(1000, "closed");
        }
    }
}

impl Transport for WebSocketTransport {
    fn connect(&self, url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        let url = url.to_owned();
        async move { connect(&url).await }.boxed_local()
    }
}

async fn connect(url: &str) -> Result<Link, TransportError> {
    let has_websocket =
        js_sys::Reflect::has(&js_sys::global(), &JsValue::from_str("WebSocket")).unwrap_or(false);
    if !has_websocket {
        return Err(TransportError::new(
            "this JavaScript runtime has no WebSocket (Node 20 needs --experimental-websocket; Node 22+ has it)",
        ));
    }
    let ws = WebSocket::new(url).map_err(|e| TransportError::new(js_message(&e)))?;
    ws.set_binary_type(BinaryType::Arraybuffer);

    let (tx, rx) = mpsc::unbounded::<Incoming>();
    let (open_tx, open_rx) = oneshot::channel::<()>();
    let open_tx = Rc::new(RefCell::new(Some(open_tx)));

    let on_open = Closure::<dyn FnMut(JsValue)>::new({
        let open_tx = open_tx.clone();
        move |_| {
            if let Some(tx) = open_tx.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
        let tx = tx.clone();
        move |event: MessageEvent| {
            // The relay speaks binary frames only; a text frame is a
            // protocol error the session reports when it fails to decode.
            let data = event.data();
            let bytes = match data.dyn_into::<js_sys::ArrayBuffer>() {
                Ok(buffer) => js_sys::Uint8Array::new(&buffer).to_vec(),
                Err(other) => other.as_string().unwrap_or_default().into_bytes(),
            };
            let _ = tx.unbounded_send(Incoming::Frame(bytes));
        }
    });
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new({
        let tx = tx.clone();
        let open_tx = open_tx.clone();
        move |event: CloseEvent| {
            // Failing before `open` drops the sender: connect reports it.
            open_tx.borrow_mut().take();
            let code = event.code();
            let _ = tx.unbounded_send(Incoming::Closed {
                code: (code != 1005 && code != 1006).then_some(code),
                reason: if event.reason().is_empty() {
                    format!("connection closed ({code})")
                } else {
                    event.reason()
                },
            });
            tx.close_channel();
        }
    });
    // An error is always followed by a close event, which carries the
    // news; the handler only keeps the runtime from logging it as unhandled.
    let on_error = Closure::<dyn FnMut(JsValue)>::new(|_| {});
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let socket = Rc::new(Socket {
        ws,
        _on_open: on_open,
        _on_message: on_message,
        _on_close: on_close,
        _on_error: on_error,
    });

    if open_rx.await.is_err() {
        return Err(TransportError::new(format!("could not connect to {url}")));
    }
    // The stream keeps the socket alive as long as the loop reads it.
    let keep = socket.clone();
    let incoming = rx
        .map(move |item| {
            let _ = &keep;
            item
        })
        .boxed_local();
    Ok(Link {
        sender: Box::new(Sender { socket }),
        incoming,
    })
}

struct Sender {
    socket: Rc<Socket>,
}

impl LinkSender for Sender {
    fn send(&mut self, frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>> {
        let result = self
            .socket
            .ws
            .send_with_u8_array(&frame)
            .map_err(|e| TransportError::new(js_message(&e)));
        futures::future::ready(result).boxed_local()
    }

    fn close(&mut self, code: u16, reason: String) -> LocalBoxFuture<'_, ()> {
        let _ = self.socket.ws.close_with_code_and_reason(code, &reason);
        futures::future::ready(()).boxed_local()
    }
}

/// A readable message from a thrown JavaScript value.
pub(crate) fn js_message(value: &JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}
