//! Sessions of a room that another relay instance owns (shared PostgreSQL
//! storage): each is relayed, frame for frame, over a WebSocket of its own
//! to the owner, which serves it like any client (it checks the token
//! again). The owner's fan-out therefore reaches every instance's sessions,
//! and the room keeps one writer.
//!
//! The room's task here is a hub: it starts one link per joining session
//! and routes the session's frames to it. If the owner cannot be reached,
//! the hub unloads, so the next join claims the room again: once the dead
//! owner's lease has expired this instance (or another) takes it over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use sync_core::protocol::{self, ErrorCode, Hello, Message};
use sync_core::room::{ConnectionId, Room};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::peer::Peer;
use crate::room_host::{JoinReply, RoomMsg, Rooms, unregister, wall_clock};
use crate::storage::Backend;

/// Longest wait for the owner to accept a link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames from one session queued for its link. A session keeps at most
/// `MAX_PUSH_WINDOW` pushes unanswered; beyond this bound the owner does
/// not keep up, and the session is closed (it reconnects).
const LINK_QUEUE: usize = 256;
/// Shortest silence after which the owner counts as gone (see
/// [`owner_silence_limit`]).
const MIN_OWNER_SILENCE: Duration = Duration::from_secs(1);

/// How long a link waits to hear anything from the owner before it takes
/// the owner for gone: the lease's lifetime. An owner that is stopped
/// (a paused VM, a frozen process, a partition that drops packets without
/// a reset) keeps its TCP connections open, so only silence tells; and one
/// that cannot answer a ping for a whole lease's lifetime cannot renew its
/// lease either, so the room is about to be claimed again anyway. Without
/// this, forwarded clients waited for their own dead-link timeout (45 s).
fn owner_silence_limit(lease_ttl: Option<Duration>) -> Duration {
    lease_ttl
        .unwrap_or(Duration::from_secs(5))
        .max(MIN_OWNER_SILENCE)
}

/// Serves the room's sessions through the owner at `address` until idle,
/// shut down, or the owner is unreachable.
pub(crate) async fn serve(
    name: Arc<str>,
    generation: u64,
    mut inbox: mpsc::Receiver<RoomMsg>,
    rooms: Arc<Rooms>,
    address: String,
) {
    let (dead_tx, mut dead) = mpsc::channel::<()>(1);
    let mut links: HashMap<ConnectionId, mpsc::Sender<Bytes>> = HashMap::new();
    let unload_after = rooms.config.room_unload_after;
    let mut idle_since = Some(Instant::now());
    let silence_limit = owner_silence_limit(rooms.store.lease_ttl());
    loop {
        links.retain(|_, tx| !tx.is_closed());
        if links.is_empty() {
            idle_since.get_or_insert_with(Instant::now);
        } else {
            idle_since = None;
        }
        let idle = idle_since.map(|since| tokio::time::Instant::from_std(since + unload_after));
        tokio::select! {
            _ = dead.recv() => {
                tracing::info!(room = ?name, %address, "the room's owner is unreachable; claiming again on next join");
                break;
            }
            () = sleep_until(idle), if idle.is_some() => {
                if links.is_empty() {
                    break;
                }
            }
            msg = inbox.recv() => match msg {
                None | Some(RoomMsg::Shutdown) => break,
                Some(RoomMsg::Join { session, hello, peer, reply, .. }) => {
                    let (tx, frames) = mpsc::channel(LINK_QUEUE);
                    links.insert(session, tx);
                    tokio::spawn(link(
                        Owner {
                            address: address.clone(),
                            silence_limit,
                            metrics: rooms.metrics.clone(),
                        },
                        hello,
                        peer,
                        reply,
                        frames,
                        dead_tx.clone(),
                    ));
                }
                Some(RoomMsg::Frame { session, frame, .. }) => {
                    let full = links.get(&session).is_some_and(|tx| tx.try_send(frame).is_err());
                    if full {
                        // Dropping the sender closes the session.
                        links.remove(&session);
                    }
                }
                Some(RoomMsg::Leave { session }) => {
                    links.remove(&session);
                }
                Some(RoomMsg::Stats { reply }) => {
                    // From the shared storage; the sessions are the owner's.
                    let (store, config, room) = (rooms.store.clone(), rooms.config.room, name.clone());
                    tokio::spawn(async move {
                        if let Ok((snapshot, entries)) = store.load(room).await {
                            if let Ok(room) = Room::restore(config, snapshot, entries) {
                                let _ = reply.send(room.stats(wall_clock()));
                            }
                        }
                    });
                }
            }
        }
    }
    drop(links);
    unregister(&name, generation, &mut inbox, &rooms).await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

const LOST: &str = "lost the connection to the relay instance serving this room; reconnect";

/// Where the room's owner is, and how long it may stay silent.
struct Owner {
    address: String,
    silence_limit: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

/// One session's link to the owner: sends the `Hello`, then relays frames
/// both ways until either side ends or the owner falls silent (pinged a
/// few times per silence limit; any message it sends counts).
async fn link(
    owner: Owner,
    hello: Box<Hello>,
    peer: Peer,
    reply: oneshot::Sender<JoinReply>,
    mut frames: mpsc::Receiver<Bytes>,
    dead: mpsc::Sender<()>,
) {
    let Owner {
        address,
        silence_limit,
        metrics,
    } = owner;
    let hello = protocol::encode(&Message::Hello(*hello));
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(address.as_str()).await?;
        ws.send(WsMessage::Binary(hello.into())).await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(ws)
    })
    .await;
    let ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            tracing::info!(%address, %error, "cannot reach the room's owner");
            let _ = dead.try_send(());
            let _ = reply.send(JoinReply::Retry);
            return;
        }
        Err(_) => {
            tracing::info!(%address, "the room's owner did not answer in time");
            let _ = dead.try_send(());
            let _ = reply.send(JoinReply::Retry);
            return;
        }
    };
    if reply.send(JoinReply::Joined).is_err() {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let mut heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(silence_limit / 3);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                let sent = heard.elapsed() < silence_limit
                    && matches!(
                        tokio::time::timeout(silence_limit, sink.send(WsMessage::Ping(Default::default()))).await,
                        Ok(Ok(()))
                    );
                if !sent {
                    tracing::info!(%address, ?silence_limit, "the room's owner fell silent");
                    metrics.error("OwnerSilent");
                    let _ = dead.try_send(());
                    return peer.kill(ErrorCode::Internal, LOST.into());
                }
            }
            frame = frames.recv() => match frame {
                Some(frame) => {
                    // Bounded: a stopped owner's full socket must not
                    // hold the link (and its silence check) forever.
                    let sent = tokio::time::timeout(silence_limit, sink.send(WsMessage::Binary(frame))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        let _ = dead.try_send(());
                        return peer.kill(ErrorCode::Internal, LOST.into());
                    }
                }
                None => {
                    // The session ended, or this instance stops forwarding.
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, sink.close()).await;
                    return peer.error_and_close(
                        ErrorCode::GoingAway,
                        "this relay instance stopped serving the room; reconnect".into(),
                    );
                }
            },
            msg = stream.next() => {
                if let Some(Ok(_)) = msg {
                    heard = tokio::time::Instant::now();
                }
                match msg {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        if peer.send(bytes.to_vec()).is_err() {
                            let _ = tokio::time::timeout(CONNECT_TIMEOUT, sink.close()).await;
                            return peer.kill(
                                ErrorCode::SlowConsumer,
                                "the client did not keep up; resume from the cursor".into(),
                            );
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let (code, reason) = frame
                            .map_or((1000, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        return peer.close_with(code, reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return peer.kill(ErrorCode::Internal, LOST.into()),
                }
            }
        }
    }
}
