//! `WsTransport` against small tokio-tungstenite servers on loopback, run
//! the way the native host loop runs it: a current-thread runtime inside a
//! `LocalSet`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sync_client::platform::{Incoming, Link, Transport, TransportError};
use sync_ffi::{WsOptions, WsTransport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Every step of a test is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type ServerWs = WebSocketStream<Box<dyn Io>>;

/// What the test server does with its one connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Sends every binary message back.
    Echo,
    /// Closes with code 4001 after the first message.
    CloseAfterFirst,
    /// Sends a text message.
    Text,
    /// Pings, and reports the pong as a binary "pong seen".
    Ping,
    /// Sends a binary message of this many bytes.
    Big(usize),
}

/// Runs `f` on a current-thread runtime inside a `LocalSet`, as a local task.
fn local<F: Future + 'static>(f: F) -> F::Output
where
    F::Output: 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = tokio::task::LocalSet::new();
    set.block_on(&rt, async move {
        tokio::time::timeout(LIMIT, tokio::task::spawn_local(f))
            .await
            .expect("test timed out")
            .unwrap()
    })
}

/// Serves one WebSocket connection on a thread of its own; returns its address.
fn serve(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = tokio::time::timeout(LIMIT, async {
                let (tcp, _) = listener.accept().await.unwrap();
                let io: Box<dyn Io> = match tls {
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        match acceptor.accept(tcp).await {
                            Ok(tls) => Box::new(tls),
                            // The client refused our certificate.
                            Err(_) => return,
                        }
                    }
                    None => Box::new(tcp),
                };
                let ws = tokio_tungstenite::accept_async(io).await.unwrap();
                run(behaviour, ws).await;
            })
            .await;
        });
    });
    addr
}

async fn run(behaviour: Behaviour, mut ws: ServerWs) {
    match behaviour {
        Behaviour::Echo => {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(bytes) = msg {
                    ws.send(Message::Binary(bytes)).await.unwrap();
                }
            }
        }
        Behaviour::CloseAfterFirst => {
            let _ = ws.next().await;
            let frame = CloseFrame {
                code: 4001.into(),
                reason: "bye now".into(),
            };
            ws.send(Message::Close(Some(frame))).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
        Behaviour::Text => {
            ws.send(Message::text("hello")).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
        Behaviour::Ping => {
            ws.send(Message::Ping(b"are you there".to_vec().into()))
                .await
                .unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Pong(payload) = msg {
                    assert_eq!(&payload[..], b"are you there");
                    ws.send(Message::Binary(b"pong seen".to_vec().into()))
                        .await
                        .unwrap();
                }
            }
        }
        Behaviour::Big(n) => {
            ws.send(Message::Binary(vec![7; n].into())).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
}

fn plain() -> WsTransport {
    WsTransport::new(WsOptions::default()).unwrap()
}

async fn connect(transport: &WsTransport, url: &str) -> Link {
    transport.connect(url).await.unwrap()
}

#[test]
fn binary_frames_round_trip() {
    let addr = serve(Behaviour::Echo, None);
    local(async move {
        let mut link = connect(&plain(), &format!("ws://{addr}/room")).await;
        for frame in [vec![1, 2, 3], vec![], vec![0xff; 70_000]] {
            link.sender.send(frame.clone()).await.unwrap();
            assert_eq!(link.incoming.next().await, Some(Incoming::Frame(frame)));
        }
        // Our close comes back as the peer's close, code and reason intact.
        link.sender.close(1000, "done".into()).await;
        assert_eq!(
            link.incoming.next().await,
            Some(Incoming::Closed {
                code: Some(1000),
                reason: "done".into()
            })
        );
        assert_eq!(link.incoming.next().await, None, "nothing after Closed");
    });
}

#[test]
fn the_peers_close_code_and_reason_arrive() {
    let addr = serve(Behaviour::CloseAfterFirst, None);
    local(async move {
        let mut link = connect(&plain(), &format!("ws://{addr}")).await;
        link.sender.send(vec![1]).await.unwrap();
        assert_eq!(
            link.incoming.next().await,
            Some(Incoming::Closed {
                code: Some(4001),
                reason: "bye now".into()
            })
        );
        assert_eq!(link.incoming.next().await, None);
    });
}

#[test]
fn a_text_message_ends_the_link_as_a_protocol_error() {
    let addr = serve(Behaviour::Text, None);
    local(async move {
        let mut link = connect(&plain(), &format!("ws://{addr}")).await;
        match link.incoming.next().await {
            Some(Incoming::Closed { code: None, reason }) => {
                assert!(reason.contains("text message"), "{reason}");
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert_eq!(link.incoming.next().await, None);
    });
}

#[test]
fn pings_are_answered() {
    let addr = serve(Behaviour::Ping, None);
    local(async move {
        let mut link = connect(&plain(), &format!("ws://{addr}")).await;
        assert_eq!(
            link.incoming.next().await,
            Some(Incoming::Frame(b"pong seen".to_vec()))
        );
    });
}

#[test]
fn oversized_messages_close_the_link() {
    let addr = serve(Behaviour::Big(4096), None);
    local(async move {
        let transport = WsTransport::new(WsOptions::default().max_message_size(1024)).unwrap();
        let mut link = connect(&transport, &format!("ws://{addr}")).await;
        match link.incoming.next().await {
            Some(Incoming::Closed { code: None, reason }) => {
                assert!(reason.to_lowercase().contains("too long"), "{reason}");
            }
            other => panic!("expected Closed, got {other:?}"),
        }
    });
    // The same message under the default limit arrives.
    let addr = serve(Behaviour::Big(4096), None);
    local(async move {
        let mut link = connect(&plain(), &format!("ws://{addr}")).await;
        assert_eq!(
            link.incoming.next().await,
            Some(Incoming::Frame(vec![7; 4096]))
        );
    });
}

#[test]
fn connect_times_out_when_the_upgrade_never_comes() {
    // Accepted by the kernel's backlog, never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let err = local(async move {
        let transport =
            WsTransport::new(WsOptions::default().connect_timeout(Duration::from_millis(300)))
                .unwrap();
        let started = Instant::now();
        let err = transport
            .connect(&format!("ws://{addr}"))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(started.elapsed() < Duration::from_secs(5));
        err
    });
    assert!(err.message.contains("timed out"), "{err}");
    drop(silent);
}

#[test]
fn a_refused_connection_is_an_error() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let err = local(async move { plain().connect(&format!("ws://{addr}")).await.unwrap_err() });
    assert!(err.message.contains("cannot reach"), "{err}");
}

#[test]
fn bad_urls_are_errors() {
    local(async move {
        for url in ["http://127.0.0.1:1/", "not a url", "ws://"] {
            let err: TransportError = plain().connect(url).await.unwrap_err();
            assert!(
                err.message.contains(url) || err.message.contains("URL"),
                "{err}"
            );
        }
    });
}

/// A self-signed certificate for localhost and 127.0.0.1, and a TLS server
/// config presenting it.
fn self_signed() -> (String, Arc<rustls::ServerConfig>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    #[allow(deprecated)] // The ring provider; see the transport.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (cert_pem, Arc::new(config))
}

#[test]
fn wss_with_a_custom_root_round_trips() {
    let (ca_pem, config) = self_signed();
    for host in ["localhost", "127.0.0.1"] {
        let addr = serve(Behaviour::Echo, Some(config.clone()));
        let options = WsOptions::default()
            .webpki_roots(false)
            .native_roots(false)
            .add_root_certificates(ca_pem.as_bytes())
            .unwrap();
        let url = format!("wss://{host}:{}/room", addr.port());
        local(async move {
            let transport = WsTransport::new(options).unwrap();
            let mut link = connect(&transport, &url).await;
            link.sender.send(b"secret".to_vec()).await.unwrap();
            assert_eq!(
                link.incoming.next().await,
                Some(Incoming::Frame(b"secret".to_vec()))
            );
        });
    }
}

#[test]
fn wss_without_the_root_fails_with_a_certificate_error() {
    let (_, config) = self_signed();
    let addr = serve(Behaviour::Echo, Some(config));
    let err = local(async move {
        plain()
            .connect(&format!("wss://localhost:{}", addr.port()))
            .await
            .unwrap_err()
    });
    assert!(err.message.contains("certificate error"), "{err}");
    assert!(err.message.contains("add_root_certificates"), "{err}");
}
