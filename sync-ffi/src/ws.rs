//! [`WsTransport`]: WebSocket connections to a relay, with tokio-tungstenite
//! over tokio's TCP and rustls (ring) for `wss://`.
//!
//! The futures and streams it returns need a tokio runtime with IO and time
//! enabled (a current-thread runtime inside a `LocalSet` is how the native
//! host loop runs them); they are not `Send` and need not be.
//!
//! What arrives maps onto [`Incoming`]:
//!
//! - a binary message → [`Incoming::Frame`];
//! - a close frame → [`Incoming::Closed`] with the peer's code and reason;
//! - a read error, or the connection ending without a close frame →
//!   `Incoming::Closed { code: None, .. }` with the error as the reason;
//! - pings are answered by tungstenite itself, pongs are dropped;
//! - a **text** message is a protocol violation (Concord speaks binary
//!   frames only): the transport ends the stream with
//!   `Incoming::Closed { code: None, reason }` saying so, rather than hand
//!   the session bytes that were never meant for it. The host loop then
//!   drops the link, which closes the socket.
//!
//! After [`Incoming::Closed`] the stream ends.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sync_client::platform::{Incoming, Link, LinkSender, Transport, TransportError};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// Default for [`WsOptions::connect_timeout`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`WsOptions::max_message_size`]: 16 MiB, well above the
/// protocol's 1 MiB batches.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Longest close reason a close frame can carry (125 bytes minus the code).
const MAX_CLOSE_REASON: usize = 123;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Settings for [`WsTransport`].
///
/// ```
/// # fn demo(ca_pem: &[u8]) -> Result<(), sync_client::platform::TransportError> {
/// use std::time::Duration;
/// let options = sync_ffi::WsOptions::default()
///     .connect_timeout(Duration::from_secs(5))
///     .add_root_certificates(ca_pem)?; // a self-hosted relay's CA
/// let transport = sync_ffi::WsTransport::new(options)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WsOptions {
    connect_timeout: Duration,
    max_message_size: usize,
    webpki_roots: bool,
    native_roots: bool,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for WsOptions {
    /// A 10 s connect timeout, 16 MiB messages, and both the bundled
    /// Mozilla roots (webpki-roots) and the operating system's roots trusted.
    fn default() -> WsOptions {
        WsOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            webpki_roots: true,
            native_roots: true,
            extra_roots: Vec::new(),
        }
    }
}

impl WsOptions {
    /// How long a connect may take in all — DNS, TCP, TLS and the WebSocket
    /// upgrade — before it fails.
    pub fn connect_timeout(mut self, timeout: Duration) -> WsOptions {
        self.connect_timeout = timeout;
        self
    }

    /// The largest incoming message (and frame) accepted; a larger one
    /// closes the connection with an error.
    pub fn max_message_size(mut self, bytes: usize) -> WsOptions {
        self.max_message_size = bytes;
        self
    }

    /// Whether to trust the Mozilla root certificates bundled with the SDK
    /// (default: yes).
    pub fn webpki_roots(mut self, trust: bool) -> WsOptions {
        self.webpki_roots = trust;
        self
    }

    /// Whether to trust the operating system's root certificates (default:
    /// yes). They are read at the first `wss://` connect, not when the
    /// database opens. Where the system has none to read, this adds nothing.
    pub fn native_roots(mut self, trust: bool) -> WsOptions {
        self.native_roots = trust;
        self
    }

    /// Also trusts these CA certificates — for a self-hosted relay with its
    /// own CA or a self-signed certificate. `certificates` is either PEM
    /// (one or more `CERTIFICATE` blocks) or one DER certificate.
    pub fn add_root_certificates(
        mut self,
        certificates: &[u8],
    ) -> Result<WsOptions, TransportError> {
        let bad = |e: &dyn std::fmt::Display| {
            TransportError::new(format!("cannot read the CA certificates given: {e}"))
        };
        if certificates.trim_ascii_start().starts_with(b"-----BEGIN") {
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(certificates) {
                self.extra_roots.push(cert.map_err(|e| bad(&e))?);
                found += 1;
            }
            if found == 0 {
                return Err(bad(&"no CERTIFICATE block in the PEM"));
            }
        } else {
            self.extra_roots
                .push(CertificateDer::from(certificates.to_vec()));
        }
        Ok(self)
    }
}

/// Opens WebSocket connections (`ws://`, `wss://`) to a relay: implements
/// [`Transport`]. Sets `TCP_NODELAY` (frames are small and latency
/// matters), verifies `wss://` servers against the roots of its
/// [`WsOptions`], and bounds the whole connect by its timeout. Cheap to
/// clone.
#[derive(Clone)]
pub struct WsTransport {
    inner: Arc<Config>,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

struct Config {
    connect_timeout: Duration,
    websocket: WebSocketConfig,
    roots: Roots,
    /// Built at the first `wss://` connect, on a blocking thread rather than
    /// the loop's: reading the operating system's roots (145 files here,
    /// about 18 M instructions) would otherwise cost every open, including
    /// databases that never connect or use `ws://`. Kept once built; a
    /// failure is not kept, so the next connect tries again.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

/// The roots a `wss://` connection trusts, as the options gave them.
struct Roots {
    webpki: bool,
    native: bool,
    /// Checked when the transport is made, so a bad CA fails there.
    extra: RootCertStore,
}

impl Config {
    /// The TLS configuration, built on first use and kept.
    async fn tls(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        if let Some(tls) = self.tls.get() {
            return Ok(tls.clone());
        }
        let config = self.clone();
        let built = tokio::task::spawn_blocking(move || config.build_tls())
            .await
            .map_err(|e| TransportError::new(format!("building the TLS configuration: {e}")))?
            .map_err(TransportError::new)?;
        Ok(self.tls.get_or_init(|| built).clone())
    }

    fn build_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = self.roots.extra.clone();
        if self.roots.webpki {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if self.roots.native {
            // Unreadable system certificates are skipped, not fatal.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        if roots.is_empty() {
            return Err(
                "no root certificates to trust: the operating system has none \
                 readable; enable webpki roots or add your CA"
                    .to_owned(),
            );
        }
        // ring builds with a C compiler alone, on every target we ship to.
        // rustls 0.23.48 deprecates its ring provider for lacking
        // post-quantum key exchange (aws-lc-rs has it); classical key
        // exchange is what self-hosted relays speak today.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("configuring TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(tls))
    }
}

impl WsTransport {
    /// A transport with these options. Fails when the extra roots given are
    /// not certificates, or when no root at all is left to trust. The
    /// operating system's roots are read at the first `wss://` connect,
    /// which fails if they were the only roots asked for and none is
    /// readable.
    pub fn new(options: WsOptions) -> Result<WsTransport, TransportError> {
        let mut extra = RootCertStore::empty();
        for cert in options.extra_roots {
            extra.add(cert).map_err(|e| {
                TransportError::new(format!("cannot trust the CA certificate given: {e}"))
            })?;
        }
        if !options.webpki_roots && !options.native_roots && extra.is_empty() {
            return Err(TransportError::new(
                "no root certificates to trust: enable webpki or native roots, or add your CA",
            ));
        }
        let websocket = WebSocketConfig::default()
            .max_message_size(Some(options.max_message_size))
            .max_frame_size(Some(options.max_message_size));
        Ok(WsTransport {
            inner: Arc::new(Config {
                connect_timeout: options.connect_timeout,
                websocket,
                roots: Roots {
                    webpki: options.webpki_roots,
                    native: options.native_roots,
                    extra,
                },
                tls: OnceLock::new(),
            }),
        })
    }
}

impl Transport for WsTransport {
    fn connect(&self, url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        let config = self.inner.clone();
        let url = url.to_owned();
        Box::pin(async move {
            let timeout = config.connect_timeout;
            match tokio::time::timeout(timeout, connect(&config, &url)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::new(format!(
                    "connecting to {url} timed out after {timeout:?}"
                ))),
            }
        })
    }
}

async fn connect(config: &Arc<Config>, url: &str) -> Result<Link, TransportError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| TransportError::new(format!("{what} {url}: {e}"));
    let request = url
        .into_client_request()
        .map_err(|e| fail("bad relay URL", &e))?;
    let uri = request.uri();
    let (port, tls) = match uri.scheme_str() {
        Some("ws") => (80, false),
        Some("wss") => (443, true),
        _ => return Err(fail("bad relay URL", &"the scheme must be ws or wss")),
    };
    let port = uri.port_u16().unwrap_or(port);
    let host = uri
        .host()
        .ok_or_else(|| fail("bad relay URL", &"no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connector = if tls {
        Some(Connector::Rustls(config.tls().await?))
    } else {
        None
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail("cannot reach", &e))?;
    tcp.set_nodelay(true)
        .map_err(|e| fail("setting TCP_NODELAY for", &e))?;
    let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(config.websocket),
        connector,
    )
    .await
    .map_err(|e| handshake_error(url, &e))?;
    let (sink, stream) = socket.split();
    Ok(Link {
        sender: Box::new(WsSender { sink }),
        incoming: incoming(stream).boxed_local(),
    })
}

/// A handshake failure, with certificate problems called out as such.
fn handshake_error(url: &str, e: &tungstenite::Error) -> TransportError {
    let tls = match e {
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(tls)) => Some(&**tls),
        _ => None,
    };
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => TransportError::new(format!(
            "certificate error connecting to {url}: the relay's certificate is not trusted \
             ({cert:?}); for a self-hosted relay, add its CA with \
             WsOptions::add_root_certificates"
        )),
        Some(tls) => TransportError::new(format!("TLS error connecting to {url}: {tls}")),
        None => TransportError::new(format!("WebSocket handshake with {url} failed: {e}")),
    }
}

/// The stream of what arrives, ending after the first [`Incoming::Closed`].
fn incoming(stream: SplitStream<Socket>) -> impl futures::Stream<Item = Incoming> + 'static {
    futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        loop {
            let closed = |code, reason: String| Some((Incoming::Closed { code, reason }, None));
            match stream.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return Some((Incoming::Frame(bytes.into()), Some(stream)));
                }
                Some(Ok(Message::Text(_))) => {
                    return closed(
                        None,
                        "protocol error: the relay sent a text message; Concord speaks binary \
                         frames only"
                            .into(),
                    );
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return closed(Some(frame.code.into()), frame.reason.as_str().to_owned());
                }
                Some(Ok(Message::Close(None))) => {
                    return closed(None, "the relay closed without a close code".into());
                }
                // Pings are answered by tungstenite; nothing else to report.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return closed(None, e.to_string()),
                None => return closed(None, "the connection ended".into()),
            }
        }
    })
}

/// The sending half of a connection.
struct WsSender {
    sink: SplitSink<Socket, Message>,
}

impl LinkSender for WsSender {
    fn send(&mut self, frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.sink
                .send(Message::Binary(frame.into()))
                .await
                .map_err(|e| TransportError::new(format!("sending: {e}")))
        })
    }

    fn close(&mut self, code: u16, reason: String) -> LocalBoxFuture<'_, ()> {
        Box::pin(async move {
            let frame = CloseFrame {
                code: code.into(),
                reason: truncate(reason, MAX_CLOSE_REASON).into(),
            };
            // Already closed or broken: nothing more to do either way.
            let _ = self.sink.send(Message::Close(Some(frame))).await;
        })
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = truncate(long, MAX_CLOSE_REASON);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate("short".into(), MAX_CLOSE_REASON), "short");
    }

    #[test]
    fn root_certificates_must_parse() {
        let err = WsOptions::default()
            .add_root_certificates(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n")
            .unwrap_err();
        assert!(err.message.contains("no CERTIFICATE"), "{err}");
        let options = WsOptions::default()
            .add_root_certificates(b"not der")
            .unwrap();
        let err = WsTransport::new(options).unwrap_err();
        assert!(err.message.contains("CA certificate"), "{err}");
        let none = WsOptions::default().webpki_roots(false).native_roots(false);
        assert!(WsTransport::new(none).is_err());
    }

    /// Opening a database makes a transport: reading the system's roots
    /// waits for the first `wss://` connect, and happens once.
    #[test]
    fn roots_are_read_at_the_first_tls_connect_only() {
        let transport = WsTransport::new(WsOptions::default()).unwrap();
        assert!(transport.inner.tls.get().is_none(), "built at new()");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = runtime.block_on(transport.inner.tls()).unwrap();
        let again = runtime.block_on(transport.inner.tls()).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "built twice");
    }
}
