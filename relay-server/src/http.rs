//! HTTP routes on the relay's one port: the WebSocket endpoint, health,
//! Prometheus metrics, and the admin-only room statistics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sync_core::room::RoomStats;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connection::{self, valid_room_name};
use crate::room_host::RoomMsg;
use crate::server::{App, Health};
use crate::upgrade::Upgrade;

/// The relay's routes.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/v1/sync", get(sync))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/rooms/{room}/stats", get(stats))
        .with_state(app)
}

/// `/`: the WebSocket endpoint too, or a hint for browsers and curl.
async fn root(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    match Upgrade::from_request(request) {
        Ok(upgrade) => accept(app, addr, upgrade),
        Err(_) => text(
            StatusCode::OK,
            "concord-relay: connect a WebSocket to /v1/sync; see /healthz and /metrics\n",
        ),
    }
}

/// `/v1/sync`: the WebSocket endpoint.
async fn sync(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    match Upgrade::from_request(request) {
        Ok(upgrade) => accept(app, addr, upgrade),
        Err(refusal) => refusal.into_response(),
    }
}

/// tungstenite's read buffer per connection, and the most one socket read
/// takes. tungstenite allocates it at the upgrade and zero-fills this much
/// before each read, so every session keeps all of it resident, idle or
/// not, and every read pays for the fill: about two reads per frame a
/// session sends (its frame, then the read that finds the socket empty),
/// and a receiver sends an `Applied` of a few bytes per delivery. 1 KiB
/// holds those and most pushes in one read; a larger frame still arrives
/// whole, in more reads (the buffer grows to the frame's length once its
/// header is read, bounded by `max_frame_bytes`), which costs little next
/// to handling the operations it carries.
const READ_BUFFER_BYTES: usize = 1024;

/// Outgoing frames are gathered up to this many bytes before tungstenite
/// writes them to the socket (a flush writes whatever is gathered). A
/// threshold, not an allocation: the write buffer grows to what is queued,
/// and keeps that capacity; messages larger than
/// [`crate::connection::FRAGMENT_BYTES`] go out in fragments, so it holds
/// at most about this plus one fragment.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

fn accept(app: Arc<App>, addr: SocketAddr, upgrade: Upgrade) -> Response {
    if app.health() != Health::Ready {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is starting or shutting down; retry shortly\n",
        );
    }
    let max = app.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max.saturating_add(128 * 1024));
    upgrade.accept(config, move |socket| connection::serve(socket, app, addr))
}

/// `/healthz`: 200 `ok` when serving, 503 while starting or shutting down.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.health() {
        Health::Ready => text(StatusCode::OK, "ok\n"),
        Health::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Health::ShuttingDown => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// `/metrics`: Prometheus text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut response = app.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// One session in the stats JSON.
#[derive(Serialize)]
struct ClientJson {
    session: u64,
    replica: String,
    cursor: u64,
    lag_ops: u64,
    lag_ms: u64,
    read_only: bool,
}

/// The stats JSON.
#[derive(Serialize)]
struct StatsJson<'a> {
    room: &'a str,
    head: u64,
    log_len: usize,
    compacted_through: u64,
    snapshot_bytes: usize,
    compactions: u64,
    last_compaction_at_ms: Option<u64>,
    clients: Vec<ClientJson>,
}

/// `/v1/rooms/{room}/stats`: the room's state as JSON; admin token required.
async fn stats(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(app.config.admin_token.as_deref(), &headers) {
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "admin token required: Authorization: Bearer <admin_token>\n",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if !valid_room_name(&room) {
        return text(StatusCode::BAD_REQUEST, "invalid room name\n");
    }
    let Some(handle) = app.rooms().and_then(|rooms| rooms.get(&room)) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not serving\n");
    };
    let (reply, answer) = oneshot::channel();
    let asked = handle.tx.send(RoomMsg::Stats { reply }).await.is_ok();
    let stats: Option<RoomStats> = if asked {
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let Some(stats) = stats else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the room is unavailable (see the relay's log)\n",
        );
    };
    // Rooms exist from first use: one with nothing stored and nobody
    // connected is no room at all (a typo, most likely).
    if stats.head == 0 && stats.snapshot_bytes == 0 && stats.members.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            "no such room: nothing stored and nobody connected\n",
        );
    }
    let body = StatsJson {
        room: &room,
        head: stats.head,
        log_len: stats.log_len,
        compacted_through: stats.compacted_through,
        snapshot_bytes: stats.snapshot_bytes,
        compactions: stats.compactions,
        last_compaction_at_ms: stats.last_compaction_at,
        clients: stats
            .members
            .iter()
            .map(|m| ClientJson {
                session: m.connection,
                replica: m.replica.to_string(),
                cursor: m.cursor,
                lag_ops: m.lag_ops,
                lag_ms: m.lag_ms,
                read_only: m.read_only,
            })
            .collect(),
    };
    match serde_json::to_string_pretty(&body) {
        Ok(json) => {
            let mut response = (StatusCode::OK, json).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode stats\n"),
    }
}

/// Whether the request carries the admin token (compared in constant time).
fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(Some("s3cret"), &headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(authorized(Some("s3cret"), &headers));
        assert!(!authorized(Some("s3cre"), &headers));
        assert!(!authorized(None, &headers));
    }
}
