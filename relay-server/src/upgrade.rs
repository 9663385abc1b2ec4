//! The WebSocket upgrade (RFC 6455 section 4.2), answered here so the relay
//! owns the tokio-tungstenite stream each session runs on.
//!
//! axum's `WebSocketUpgrade` hands out its own `WebSocket`, which sends
//! every message as one frame: tungstenite then formats the whole message
//! into the connection's write buffer, and that buffer keeps its largest
//! size for as long as the connection lasts (326 KiB per session after a
//! 264 KB sync). With the stream itself the relay sends large messages as
//! fragments ([`crate::connection`]), so the write buffer stays small
//! whatever the message size.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The server side of an upgraded connection.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A request that asked for a WebSocket and may be answered with one.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug)]
pub(crate) struct NotUpgrade(&'static str, StatusCode);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (self.1, format!("{}\n", self.0)).into_response()
    }
}

impl Upgrade {
    /// Checks that `request` is a version-13 WebSocket upgrade.
    pub(crate) fn from_request(mut request: Request) -> Result<Upgrade, NotUpgrade> {
        let headers = request.headers();
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgrade(
                "Connection header did not include 'upgrade'",
                StatusCode::BAD_REQUEST,
            ));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade(
                "Upgrade header did not include 'websocket'",
                StatusCode::BAD_REQUEST,
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotUpgrade(
                "Sec-WebSocket-Version must be 13",
                StatusCode::BAD_REQUEST,
            ));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotUpgrade(
                "Sec-WebSocket-Key header missing",
                StatusCode::BAD_REQUEST,
            ))?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(NotUpgrade(
                "this connection cannot be upgraded",
                StatusCode::UPGRADE_REQUIRED,
            ))?;
        Ok(Upgrade { key, on_upgrade })
    }

    /// Answers `101 Switching Protocols` and runs `serve` on the socket
    /// once hyper hands the connection over.
    pub(crate) fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            serve(socket).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        response
    }
}

/// Whether the comma-separated header `name` holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_headers_are_checked() {
        let request = |headers: &[(&str, &str)]| {
            let mut builder = axum::http::Request::builder().uri("/v1/sync");
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            builder.body(axum::body::Body::empty()).unwrap()
        };
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // Everything right but no connection to take over (not from hyper).
        let err = Upgrade::from_request(request(&good)).err().unwrap();
        assert_eq!(err.1, StatusCode::UPGRADE_REQUIRED);
        for skip in 0..good.len() {
            let partial: Vec<_> = good
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            let err = Upgrade::from_request(request(&partial)).err().unwrap();
            assert_eq!(err.1, StatusCode::BAD_REQUEST, "without {:?}", good[skip]);
        }
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
