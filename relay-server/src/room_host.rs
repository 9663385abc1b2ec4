//! One tokio task per loaded room, owning its [`Room`] state machine, and
//! the registry that finds or starts them.
//!
//! The task drains its bounded inbox and feeds each message to the room;
//! then, if it may submit another write, it processes the room's outputs.
//! The room itself holds back every frame queued behind a persist until the
//! task reports that persist durable (`RoomInput::Persisted`), so the task
//! only sends what the room releases. All persists of one drain go to the
//! store as one request (the store merges requests from every room into
//! one transaction); when it commits, the task reports each of its persists
//! and polls again, which releases the frames that waited for them.
//!
//! At most [`MAX_COMMITS_IN_FLIGHT`] request is outstanding. While it is,
//! the task keeps *handling* input but does not poll the room: the room
//! queues acknowledgements and appends, and builds deliveries only when
//! polled, so everything that arrived during a commit becomes one request and
//! one `Deliver` per session as soon as the commit completes. Reading never
//! waits for the disk (a slow fsync would otherwise cap the messages a room
//! takes per commit at its inbox size), and frames per session follow
//! commits, not arrivals. Input handled but not yet polled is bounded
//! ([`MAX_UNPOLLED`], [`MAX_UNPOLLED_BYTES`]); beyond it the inbox waits and
//! readers feel the backpressure.
//!
//! A push handled during a commit makes the task promise the writer a
//! follow-up request ([`crate::write_queue`]): the writer then waits for it
//! before starting its next group, so those operations are durable one
//! commit after the one under way, not two.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use sync_core::protocol::{self, ErrorCode, Hello};
use sync_core::room::{
    Compacted, CompactionError, CompactionJob, ConnectionId, Room, RoomInput, RoomOutput,
    RoomPersist, RoomStats,
};
use sync_core::{PersistId, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::storage::{Backend, Claim, Fence, Storage};
use crate::store::Commit;
use crate::write_queue::FollowUp;

/// Persist requests a room may have outstanding before it stops polling
/// the room (it still handles input, up to [`MAX_UNPOLLED`]). One: a second
/// request queued behind the first would be built a commit before the
/// writer takes it, while a follow-up promised to the writer is built at the
/// last moment (see [`crate::write_queue`]).
pub(crate) const MAX_COMMITS_IN_FLIGHT: usize = 1;
/// Inbox messages handled without polling the room before it stops reading.
const MAX_UNPOLLED: usize = 1024;
/// Frame bytes handled without polling the room before it stops reading.
const MAX_UNPOLLED_BYTES: usize = 8 * 1024 * 1024;
/// Capacity of a room's inbox.
const INBOX: usize = 64;
/// Most inbox messages handled before the outputs are processed.
const DRAIN_BATCH: usize = 256;
/// Push arrival times remembered per session, for the ack latency metric.
const MAX_PUSH_TIMES: usize = 64;

/// The wall clock: `now` for the room.
pub(crate) fn wall_clock() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(Timestamp::EPOCH, |d| {
            Timestamp::from_unix_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
}

/// What connections and the HTTP API ask of a room.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    /// A verified session joins.
    Join {
        /// The connection's id.
        session: ConnectionId,
        /// Its hello, boxed: joins are rare, and every inbox slot is as
        /// large as the largest message (a room's inbox allocates its
        /// first 32 slots when it is created).
        hello: Box<Hello>,
        /// Whether its token grants only reading.
        read_only: bool,
        /// Where to send its frames.
        peer: Peer,
        /// The answer.
        reply: oneshot::Sender<JoinReply>,
    },
    /// A frame from a joined session.
    Frame {
        /// The connection.
        session: ConnectionId,
        /// The frame.
        frame: Bytes,
        /// Whether it is a push (for the ack latency metric).
        push: bool,
        /// When it arrived.
        at: Instant,
    },
    /// The connection is gone.
    Leave {
        /// The connection.
        session: ConnectionId,
    },
    /// Report the room's statistics.
    Stats {
        /// The answer.
        reply: oneshot::Sender<RoomStats>,
    },
    /// Finish in-flight writes, close every session with GoingAway, stop.
    Shutdown,
}

/// The answer to a join.
#[derive(Debug)]
pub(crate) enum JoinReply {
    /// The session is in; the room's frames follow on its queue.
    Joined,
    /// This room task is stopping; look the room up again.
    Retry,
    /// Refused; send this error and close.
    Refused {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, in words.
        message: String,
    },
}

/// A way to reach one room's task.
#[derive(Clone, Debug)]
pub(crate) struct RoomHandle {
    /// Its inbox.
    pub(crate) tx: mpsc::Sender<RoomMsg>,
    generation: u64,
}

/// The loaded rooms, by name.
#[derive(Debug)]
pub(crate) struct Rooms {
    map: Mutex<HashMap<Arc<str>, RoomHandle>>,
    next_generation: AtomicU64,
    closing: AtomicBool,
    /// Every room task holds a clone; shutdown waits until all are gone.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_stopped: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// Where room tasks run: their own runtime in the relay, so that a room
    /// woken by a finished commit does not wait behind the socket tasks.
    tasks: tokio::runtime::Handle,
    pub(crate) store: Storage,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<Config>,
}

impl Rooms {
    /// An empty registry whose room tasks run on `tasks`.
    pub(crate) fn new(
        store: Storage,
        metrics: Arc<Metrics>,
        config: Arc<Config>,
        tasks: tokio::runtime::Handle,
    ) -> Arc<Rooms> {
        let (alive, all_stopped) = mpsc::channel(1);
        Arc::new(Rooms {
            tasks,
            map: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            alive: Mutex::new(Some(alive)),
            all_stopped: tokio::sync::Mutex::new(all_stopped),
            store,
            metrics,
            config,
        })
    }

    /// The room's task, started (and the room loaded) if needed. `None`
    /// once the relay is shutting down.
    pub(crate) fn get(self: &Arc<Self>, name: &str) -> Option<RoomHandle> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = map.get(name).filter(|h| !h.tx.is_closed()) {
            return Some(handle.clone());
        }
        let alive = self
            .alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::channel(INBOX);
        let handle = RoomHandle { tx, generation };
        let name: Arc<str> = name.into();
        map.insert(name.clone(), handle.clone());
        self.metrics.rooms_loaded.inc();
        self.tasks
            .spawn(run(name, generation, inbox, self.clone(), alive));
        Some(handle)
    }

    /// Forgets a room task, unless a newer one took its name.
    pub(crate) fn remove(&self, name: &str, generation: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(name).is_some_and(|h| h.generation == generation) {
            map.remove(name);
        }
    }

    /// Stops every room: in-flight writes finish, sessions are closed with
    /// GoingAway (1001). Returns when every room task has ended.
    pub(crate) async fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let handles: Vec<RoomHandle> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for handle in handles {
            tokio::spawn(async move {
                let _ = handle.tx.send(RoomMsg::Shutdown).await;
            });
        }
        drop(self.alive.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut stopped = self.all_stopped.lock().await;
        while stopped.recv().await.is_some() {}
    }
}

/// One joined session.
#[derive(Debug)]
struct Member {
    peer: Peer,
    pushes: VecDeque<Instant>,
}

/// A store request in flight and the room's persists it carries.
struct InFlight {
    commit: Commit,
    ids: Vec<PersistId>,
}

/// The state of one room task.
struct Host {
    name: Arc<str>,
    generation: u64,
    /// The fence of this instance's lease on the room.
    fence: Fence,
    /// Renews the lease (shared storage only); says why once it is lost.
    lease: Option<LeaseKeeper>,
    room: Room,
    inbox: mpsc::Receiver<RoomMsg>,
    rooms: Arc<Rooms>,
    sessions: HashMap<ConnectionId, Member>,
    commits: VecDeque<InFlight>,
    timer: Option<tokio::time::Instant>,
    compaction: Option<JoinHandle<Result<Compacted, CompactionError>>>,
    idle_since: Option<Instant>,
    /// Sessions cut off by the host, for which the room must hear `Leave`.
    leaves: Vec<ConnectionId>,
    stopping: bool,
    /// Messages handled since the room was last polled, and their frame bytes.
    unpolled: usize,
    unpolled_bytes: usize,
    /// Whether a push was among them (it owes the store a write).
    unpolled_pushes: bool,
}

/// The room task: load, then serve until unloaded or shut down.
async fn run(
    name: Arc<str>,
    generation: u64,
    mut inbox: mpsc::Receiver<RoomMsg>,
    rooms: Arc<Rooms>,
    _alive: mpsc::Sender<()>,
) {
    let started = Instant::now();
    let fence = match rooms.store.claim(name.clone()).await {
        Ok(Claim::Owned(fence)) => fence,
        Ok(Claim::Elsewhere { address }) => {
            tracing::debug!(room = ?name, %address, "room owned by another instance; forwarding");
            return crate::forward::serve(name, generation, inbox, rooms, address).await;
        }
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(room = ?name, %error, "cannot claim the room; its sessions are refused for now");
            rooms.metrics.error("RoomClaimFailure");
            return serve_unavailable(&name, generation, &mut inbox, &rooms, &error).await;
        }
    };
    let lease = rooms
        .store
        .lease_ttl()
        .map(|ttl| LeaseKeeper::start(rooms.store.clone(), name.clone(), fence, ttl));
    let loaded = match rooms.store.load(name.clone()).await {
        Ok((snapshot, entries)) => {
            let count = entries.len();
            Room::restore(rooms.config.room, snapshot, entries)
                .map_err(|e| e.to_string())
                .map(|room| (room, count))
        }
        Err(e) => Err(e.to_string()),
    };
    match loaded {
        Ok((room, entries)) => {
            tracing::info!(
                room = ?name,
                head = room.head(),
                log_entries = entries,
                took_ms = started.elapsed().as_millis() as u64,
                "room loaded"
            );
            let host = Host {
                name,
                generation,
                fence,
                lease,
                room,
                inbox,
                rooms,
                sessions: HashMap::new(),
                commits: VecDeque::new(),
                timer: None,
                compaction: None,
                idle_since: Some(Instant::now()),
                leaves: Vec::new(),
                stopping: false,
                unpolled: 0,
                unpolled_bytes: 0,
                unpolled_pushes: false,
            };
            host.serve().await;
        }
        Err(error) => {
            tracing::error!(
                room = ?name,
                %error,
                "room cannot be loaded; its sessions are refused (other rooms are unaffected)"
            );
            rooms.metrics.error("RoomLoadFailure");
            if rooms.store.lease_ttl().is_some() {
                // Shared storage: most likely unreachable for a moment.
                drop(lease);
                rooms.store.release(name.clone(), fence).await;
                return serve_unavailable(&name, generation, &mut inbox, &rooms, &error).await;
            }
            serve_failed(&name, generation, &mut inbox, &rooms, &error).await;
        }
    }
}

/// A room that failed to load refuses joins until nobody has tried for a
/// while, then unloads (so a repaired database is read again).
async fn serve_failed(
    name: &Arc<str>,
    generation: u64,
    inbox: &mut mpsc::Receiver<RoomMsg>,
    rooms: &Arc<Rooms>,
    error: &str,
) {
    let unload_after = rooms.config.room_unload_after;
    loop {
        let msg = tokio::time::timeout(unload_after, inbox.recv()).await;
        match msg {
            Ok(Some(RoomMsg::Join { reply, .. })) => {
                let _ = reply.send(JoinReply::Refused {
                    code: ErrorCode::Internal,
                    message: format!("the relay cannot load this room: {error}"),
                });
            }
            Ok(Some(RoomMsg::Shutdown)) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    unregister(name, generation, inbox, rooms).await;
}

/// Shared storage could not be reached: refuse joins for a second (the
/// clients retry), then unload so the next join claims again.
async fn serve_unavailable(
    name: &Arc<str>,
    generation: u64,
    inbox: &mut mpsc::Receiver<RoomMsg>,
    rooms: &Arc<Rooms>,
    error: &str,
) {
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, inbox.recv()).await {
        match msg {
            RoomMsg::Join { reply, .. } => {
                let _ = reply.send(JoinReply::Refused {
                    code: ErrorCode::Internal,
                    message: format!("the relay cannot reach this room's storage: {error}"),
                });
            }
            RoomMsg::Shutdown => break,
            _ => {}
        }
    }
    unregister(name, generation, inbox, rooms).await;
}

/// Renews a room's lease in the background (every third of its lifetime)
/// and reports once it is lost: taken by another instance, or not renewed
/// for a whole lifetime (storage unreachable). Stops when dropped.
struct LeaseKeeper {
    task: JoinHandle<()>,
    lost: oneshot::Receiver<String>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    fn start(store: Storage, room: Arc<str>, fence: Fence, ttl: Duration) -> LeaseKeeper {
        let (tx, lost) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                let asked = Instant::now();
                match store.renew(room.clone(), fence).await {
                    Ok(true) => renewed = asked,
                    Ok(false) => {
                        let _ = tx.send("another relay instance took over the room".to_owned());
                        return;
                    }
                    Err(error) if renewed.elapsed() >= ttl => {
                        let _ = tx.send(format!(
                            "the room's lease could not be renewed for {ttl:?}: {error}"
                        ));
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(room = ?room, %error, "lease renewal failed; retrying")
                    }
                }
            }
        });
        LeaseKeeper { task, lost }
    }
}

/// Waits until the lease is lost (for ever without one).
async fn lease_lost(lease: &mut Option<LeaseKeeper>) -> String {
    match lease {
        Some(keeper) => match (&mut keeper.lost).await {
            Ok(reason) => reason,
            Err(_) => "the lease keeper stopped".to_owned(),
        },
        None => std::future::pending().await,
    }
}

/// Removes the room from the registry and answers what is still queued.
pub(crate) async fn unregister(
    name: &str,
    generation: u64,
    inbox: &mut mpsc::Receiver<RoomMsg>,
    rooms: &Rooms,
) {
    rooms.remove(name, generation);
    inbox.close();
    while let Some(msg) = inbox.recv().await {
        if let RoomMsg::Join { reply, .. } = msg {
            let _ = reply.send(JoinReply::Retry);
        }
    }
    rooms.metrics.rooms_loaded.dec();
}

impl Host {
    async fn serve(mut self) {
        let unload_after = self.rooms.config.room_unload_after;
        loop {
            if self.stopping && self.commits.is_empty() {
                if self.unpolled > 0 {
                    // Input handled while commits were in flight still
                    // owes its writes and acknowledgements.
                    self.drain(None, None);
                    continue;
                }
                return self.finish_shutdown().await;
            }
            if self.sessions.is_empty() {
                self.idle_since.get_or_insert_with(Instant::now);
            }
            let reading = self.may_take_input();
            let idle_deadline = self
                .idle_since
                .filter(|_| self.sessions.is_empty() && !self.stopping)
                .map(|since| tokio::time::Instant::from_std(since + unload_after));
            tokio::select! {
                biased;
                result = next_commit(&mut self.commits), if !self.commits.is_empty() => {
                    let Some(done) = self.commits.pop_front() else {
                        continue;
                    };
                    if let Err(error) = result {
                        return self.fail(error, done.ids).await;
                    }
                    let durable_at = Instant::now();
                    let now = wall_clock();
                    for id in done.ids {
                        self.room.handle(now, RoomInput::Persisted(id));
                    }
                    // What arrived during the commit becomes the next
                    // request, which the writer may be waiting for; the
                    // drain submits it before releasing the frames the
                    // commit freed. That includes what is still queued in
                    // the inbox: on a busy machine this task wakes late,
                    // and a push left queued would wait for the whole
                    // next commit before its own.
                    self.take_queued();
                    let follow_up = done.commit.follow_up;
                    self.drain(Some(&follow_up), Some(durable_at));
                    Backend::settle(&self.rooms.store, &follow_up);
                }
                reason = lease_lost(&mut self.lease), if self.lease.is_some() => {
                    return self.lose(reason).await;
                }
                result = join_compaction(&mut self.compaction), if self.compaction.is_some() => {
                    self.compaction = None;
                    self.on_compacted(result);
                }
                msg = self.inbox.recv(), if reading => {
                    let Some(msg) = msg else {
                        // Every handle is gone, the registry's included.
                        return self.finish_shutdown().await;
                    };
                    self.on_msg(msg);
                    self.take_queued();
                    self.drain_if_allowed();
                }
                () = sleep_until(self.timer), if self.timer.is_some() => {
                    self.timer = None;
                    self.room.handle(wall_clock(), RoomInput::Timeout);
                    self.unpolled += 1;
                    self.drain_if_allowed();
                }
                () = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    if self.sessions.is_empty()
                        && self.commits.is_empty()
                        && self.unpolled == 0
                        && self.compaction.is_none()
                    {
                        tracing::debug!(room = ?self.name, "unloading idle room");
                        return self.unload().await;
                    }
                    self.idle_since = Some(Instant::now());
                }
            }
        }
    }

    /// Handles what is already queued in the inbox, without waiting, up to
    /// [`DRAIN_BATCH`] messages and the bounds on unpolled input (checked
    /// per message: a batch of large frames stops early).
    fn take_queued(&mut self) {
        for _ in 1..DRAIN_BATCH {
            if !self.may_take_input() {
                break;
            }
            match self.inbox.try_recv() {
                Ok(msg) => self.on_msg(msg),
                Err(_) => break,
            }
        }
    }

    /// Whether the room takes more input now: not while stopping, nor while
    /// the input not yet polled is at its bound.
    fn may_take_input(&self) -> bool {
        !self.stopping && self.unpolled < MAX_UNPOLLED && self.unpolled_bytes < MAX_UNPOLLED_BYTES
    }

    fn on_msg(&mut self, msg: RoomMsg) {
        let now = wall_clock();
        self.unpolled += 1;
        if let RoomMsg::Frame { frame, push, .. } = &msg {
            self.unpolled_bytes += frame.len();
            self.unpolled_pushes |= *push;
        }
        match msg {
            RoomMsg::Join {
                session,
                hello,
                read_only,
                peer,
                reply,
            } => {
                let limit = self.rooms.config.max_connections_per_room;
                if self.stopping {
                    let _ = reply.send(JoinReply::Refused {
                        code: ErrorCode::GoingAway,
                        message: "the relay is shutting down; reconnect later".into(),
                    });
                    return;
                }
                if self.sessions.len() >= limit {
                    let _ = reply.send(JoinReply::Refused {
                        code: ErrorCode::TooManyConnections,
                        message: format!("this room has its limit of {limit} sessions"),
                    });
                    return;
                }
                tracing::debug!(
                    room = ?self.name,
                    session,
                    replica = %hello.replica,
                    cursor = hello.cursor,
                    read_only,
                    agent = ?hello.agent,
                    "session joins"
                );
                self.sessions.insert(
                    session,
                    Member {
                        peer,
                        pushes: VecDeque::new(),
                    },
                );
                self.idle_since = None;
                self.rooms.metrics.sessions_joined.inc();
                self.room.handle(
                    now,
                    RoomInput::Join {
                        connection: session,
                        hello: *hello,
                        read_only,
                    },
                );
                if reply.send(JoinReply::Joined).is_err() {
                    // The connection gave up waiting.
                    self.leave(now, session);
                }
            }
            RoomMsg::Frame {
                session,
                frame,
                push,
                at,
            } => {
                let Some(member) = self.sessions.get_mut(&session) else {
                    return;
                };
                if push && member.pushes.len() < MAX_PUSH_TIMES {
                    member.pushes.push_back(at);
                }
                self.room.handle(
                    now,
                    RoomInput::Frame {
                        connection: session,
                        frame: &frame,
                    },
                );
            }
            RoomMsg::Leave { session } => self.leave(now, session),
            RoomMsg::Stats { reply } => {
                let _ = reply.send(self.room.stats(now));
            }
            RoomMsg::Shutdown => self.stopping = true,
        }
    }

    fn leave(&mut self, now: Timestamp, session: ConnectionId) {
        if self.sessions.remove(&session).is_some() {
            self.rooms.metrics.sessions_joined.dec();
            self.room.handle(
                now,
                RoomInput::Leave {
                    connection: session,
                },
            );
        }
    }

    /// Polls the room unless [`MAX_COMMITS_IN_FLIGHT`] requests are
    /// outstanding; then the input waits for the next commit to complete,
    /// and if it holds pushes the writer is told a follow-up is coming.
    fn drain_if_allowed(&mut self) {
        if self.commits.len() < MAX_COMMITS_IN_FLIGHT {
            self.drain(None, None);
        } else if self.unpolled_pushes {
            if let Some(in_flight) = self.commits.front() {
                in_flight.commit.follow_up.promise();
            }
        }
    }

    /// Processes the room's outputs: its persists go to the store as one
    /// request, which settles `follow_up` (the completed request it
    /// follows) if given; then the frames the room released go out. With
    /// `durable_at`, when the commit that released them was seen complete,
    /// the `Deliver`s among them are timed (`concord_fanout_seconds`,
    /// `concord_send_seconds`).
    fn drain(&mut self, mut follow_up: Option<&FollowUp>, durable_at: Option<Instant>) {
        self.unpolled = 0;
        self.unpolled_bytes = 0;
        self.unpolled_pushes = false;
        loop {
            let mut persists: Vec<RoomPersist> = Vec::new();
            let mut ids: Vec<PersistId> = Vec::new();
            let mut released: Vec<RoomOutput> = Vec::new();
            while let Some(out) = self.room.poll() {
                match out {
                    RoomOutput::Timeout(_) => {} // re-read below
                    RoomOutput::Compact(job) => self.start_compaction(job),
                    RoomOutput::Persist { id, batch } => {
                        ids.push(id);
                        persists.push(batch);
                    }
                    out => released.push(out),
                }
            }
            if !persists.is_empty() {
                let commit = self.rooms.store.submit(
                    self.name.clone(),
                    self.fence,
                    persists,
                    follow_up.take(),
                );
                self.commits.push_back(InFlight { commit, ids });
            }
            self.rooms
                .metrics
                .ops_out
                .fetch_add(self.room.take_ops_delivered(), Ordering::Relaxed);
            for out in released {
                self.release(out, durable_at);
            }
            // The room reports a timeout only when it changes; asking keeps
            // the timer armed even if a wakeup found nothing due (the wall
            // clock stepped back, say).
            self.timer = self.room.next_timeout().map(deadline);
            if self.leaves.is_empty() {
                return;
            }
            let now = wall_clock();
            for session in std::mem::take(&mut self.leaves) {
                self.room.handle(
                    now,
                    RoomInput::Leave {
                        connection: session,
                    },
                );
            }
        }
    }

    fn release(&mut self, out: RoomOutput, durable_at: Option<Instant>) {
        match out {
            RoomOutput::Transmit {
                connection: session,
                frame,
            } => {
                let Some(member) = self.sessions.get_mut(&session) else {
                    return;
                };
                let kind = protocol::peek_kind(&frame);
                if kind == Some(protocol::MessageKind::Ack) {
                    if let Some(at) = member.pushes.pop_front() {
                        self.rooms.metrics.ack_latency.observe(at.elapsed());
                    }
                }
                let queued = durable_at
                    .filter(|_| kind == Some(protocol::MessageKind::Deliver))
                    .map(|durable_at| {
                        let now = Instant::now();
                        self.rooms.metrics.fanout_latency.observe(now - durable_at);
                        now
                    });
                if member.peer.send_timed(frame, queued).is_err() {
                    tracing::info!(
                        room = ?self.name,
                        session,
                        "outbound queue full: cutting off a slow consumer (it resumes from its cursor)"
                    );
                    member.peer.kill(
                        ErrorCode::SlowConsumer,
                        "the client did not keep up; resume from the cursor".into(),
                    );
                    self.sessions.remove(&session);
                    self.rooms.metrics.sessions_joined.dec();
                    self.leaves.push(session);
                }
            }
            RoomOutput::Close {
                connection: session,
                code,
                reason,
            } => {
                if let Some(member) = self.sessions.remove(&session) {
                    tracing::debug!(room = ?self.name, session, code = code.as_u16(), %reason, "room closes session");
                    self.rooms.metrics.sessions_joined.dec();
                    member.peer.close(code, reason);
                }
            }
            RoomOutput::Persist { .. } | RoomOutput::Compact(_) | RoomOutput::Timeout(_) => {}
        }
    }

    fn start_compaction(&mut self, job: CompactionJob) {
        tracing::debug!(
            room = ?self.name,
            through = job.through(),
            entries = job.entry_count(),
            "compaction starts"
        );
        self.compaction = Some(tokio::task::spawn_blocking(move || job.run()));
    }

    fn on_compacted(&mut self, result: Result<Compacted, String>) {
        match result {
            Ok(done) => {
                tracing::info!(
                    room = ?self.name,
                    through = done.through(),
                    snapshot_bytes = done.snapshot_len(),
                    tombstones_collected = done.tombstones_collected(),
                    "compaction done"
                );
                self.rooms
                    .metrics
                    .compactions
                    .fetch_add(1, Ordering::Relaxed);
                self.room.handle(wall_clock(), RoomInput::Compacted(done));
                // Like any input: polled now only if a commit slot is free,
                // so the bound on requests in flight holds.
                self.unpolled += 1;
                self.drain_if_allowed();
            }
            Err(error) => {
                // The room may try again later; the log keeps everything meanwhile.
                tracing::error!(room = ?self.name, %error, "compaction failed");
                self.room.handle(wall_clock(), RoomInput::CompactionFailed);
                self.rooms
                    .metrics
                    .compaction_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.rooms.metrics.error("CompactionFailure");
            }
        }
    }

    /// A write failed: the room's memory is ahead of its storage. Close
    /// every session and unload, so the next use reloads from disk.
    async fn fail(mut self, error: String, ids: Vec<PersistId>) {
        tracing::error!(
            room = ?self.name,
            %error,
            "storage write failed; closing the room's sessions, it reloads from disk on next use"
        );
        self.rooms.metrics.error("StoreFailure");
        // The room drops whatever waited for the failed writes; the task
        // unloads it below, so the next use reloads from disk.
        let now = wall_clock();
        for id in ids {
            self.room.handle(now, RoomInput::PersistFailed(id));
        }
        for (_, member) in self.sessions.drain() {
            self.rooms.metrics.sessions_joined.dec();
            member.peer.kill(
                ErrorCode::Internal,
                "the relay could not store data; reconnect later".into(),
            );
        }
        for in_flight in self.commits.drain(..) {
            let _ = in_flight.commit.durable.await;
        }
        self.unload().await;
    }

    /// The lease is gone: another instance serves the room now (or will).
    /// Whatever this one still writes is refused by the fence, so its
    /// sessions must go, and reconnect to the new owner.
    async fn lose(mut self, reason: String) {
        tracing::warn!(room = ?self.name, %reason, "lost the room's lease; closing its sessions here");
        self.rooms.metrics.error("LeaseLost");
        for (_, member) in self.sessions.drain() {
            self.rooms.metrics.sessions_joined.dec();
            member.peer.kill(
                ErrorCode::Internal,
                "this room moved to another relay instance; reconnect".into(),
            );
        }
        for in_flight in self.commits.drain(..) {
            let _ = in_flight.commit.durable.await;
        }
        self.lease = None;
        self.unload().await;
    }

    /// Leaves the registry and gives the lease up, so any instance may
    /// claim the room at once.
    async fn unload(mut self) {
        let lease = self.lease.take();
        let Host {
            name,
            generation,
            fence,
            mut inbox,
            rooms,
            ..
        } = self;
        unregister(&name, generation, &mut inbox, &rooms).await;
        if lease.is_some() {
            drop(lease);
            rooms.store.release(name, fence).await;
        }
    }

    /// Everything durable is sent; say goodbye to every session.
    async fn finish_shutdown(mut self) {
        for (_, member) in self.sessions.drain() {
            self.rooms.metrics.sessions_joined.dec();
            member.peer.error_and_close(
                ErrorCode::GoingAway,
                "the relay is shutting down; reconnect later".into(),
            );
        }
        self.unload().await;
    }
}

/// Waits for the oldest outstanding commit.
async fn next_commit(commits: &mut VecDeque<InFlight>) -> Result<(), String> {
    match commits.front_mut() {
        Some(in_flight) => match (&mut in_flight.commit.durable).await {
            Ok(result) => result,
            Err(_) => Err("the storage writer stopped".into()),
        },
        None => std::future::pending().await,
    }
}

/// Waits for the running compaction job.
async fn join_compaction(
    job: &mut Option<JoinHandle<Result<Compacted, CompactionError>>>,
) -> Result<Compacted, String> {
    match job {
        Some(handle) => match handle.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("compaction task failed: {e}")),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The instant of room time `at`.
fn deadline(at: Timestamp) -> tokio::time::Instant {
    let wait = at.saturating_duration_since(wall_clock());
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeOptions};
    use crate::peer::Outbound;
    use crate::store::{DB_FILE, Store};
    use sync_core::protocol::Message;
    use sync_core::{Change, Clock, Op, OpId, ReplicaId, Value};

    /// A push of operation `seq` of `replica`, stamped now.
    fn push(replica: ReplicaId, clock: &mut Clock, seq: u64) -> RoomMsg {
        let op = Op {
            id: OpId { replica, seq },
            hlc: clock.tick(wall_clock()).unwrap(),
            change: Change::Put {
                collection: "c".into(),
                id: format!("d{seq}"),
                fields: vec![("f".into(), Some(Value::Int(1)))],
            },
        };
        let frame = protocol::encode(&Message::Push { ops: vec![op] });
        RoomMsg::Frame {
            session: 1,
            frame: frame.into(),
            push: true,
            at: Instant::now(),
        }
    }

    /// Session 1 of `replica` joining room "r".
    fn join(replica: ReplicaId, peer: Peer, reply: oneshot::Sender<JoinReply>) -> RoomMsg {
        let hello = Hello {
            replica,
            room: "r".into(),
            token: Vec::new(),
            cursor: 0,
            own_seq: 0,
            settled_seq: 0,
            agent: "test".into(),
            versions: vec![protocol::PROTOCOL_VERSION],
            snapshot_formats: vec![sync_core::snapshot::SNAPSHOT_FORMAT],
        };
        RoomMsg::Join {
            session: 1,
            hello: Box::new(hello),
            read_only: false,
            peer,
            reply,
        }
    }

    /// A registry of rooms stored in SQLite under `dir`, with default
    /// settings, its room tasks on `runtime`; and its metrics.
    fn rooms_in(
        dir: &std::path::Path,
        runtime: tokio::runtime::Handle,
    ) -> (Arc<Rooms>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let store = Store::open(dir, metrics.clone()).unwrap();
        let config = Arc::new(Config::resolve(ServeOptions::default()).unwrap());
        let rooms = Rooms::new(Storage::Sqlite(store), metrics.clone(), config, runtime);
        (rooms, metrics)
    }

    /// Waits up to 20 s, without a runtime, for `poll` to give a value.
    fn wait_for<T>(mut poll: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = poll() {
                return value;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Room tasks run on the runtime the registry was given, not on the
    /// caller's: the relay gives them their own, so that a room woken by a
    /// finished commit does not queue behind the socket tasks.
    #[test]
    fn room_tasks_run_on_the_runtime_they_were_given() {
        let room_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The caller's runtime: current, but nothing ever drives it.
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _current = caller.enter();
        let dir = tempfile::tempdir().unwrap();
        let (rooms, _) = rooms_in(dir.path(), room_runtime.handle().clone());
        let room = rooms.get("r").unwrap();

        let replica = ReplicaId(7);
        let (peer, mut frames) = Peer::new(64, 1 << 20);
        let (reply, mut joined) = oneshot::channel();
        room.tx.blocking_send(join(replica, peer, reply)).unwrap();
        let reply = wait_for(|| joined.try_recv().ok());
        assert!(matches!(reply, JoinReply::Joined));
        let mut clock = Clock::new(sync_core::hlc::DEFAULT_MAX_DRIFT_MS);
        room.tx.blocking_send(push(replica, &mut clock, 1)).unwrap();
        wait_for(|| match frames.try_recv() {
            Ok(Outbound::Frame(frame, _)) => matches!(
                protocol::decode(&frame, usize::MAX),
                Ok(Message::Ack { through_seq: 1, .. })
            )
            .then_some(()),
            Ok(_) => panic!("the room closed the session"),
            Err(_) => None,
        });
        drop(rooms);
        room_runtime.shutdown_timeout(Duration::from_secs(2));
    }

    /// Lets the room task (on this test's single thread) run until idle.
    async fn let_run() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A push still queued in the inbox when a commit completes goes into
    /// the follow-up request: on a busy machine the room task wakes late,
    /// and otherwise the push waited for the next commit before its own.
    #[tokio::test(flavor = "current_thread")]
    async fn a_push_queued_when_a_commit_completes_joins_the_follow_up() {
        let dir = tempfile::tempdir().unwrap();
        let (rooms, metrics) = rooms_in(dir.path(), tokio::runtime::Handle::current());
        let room = rooms.get("r").unwrap();

        let replica = ReplicaId(7);
        let (peer, mut frames) = Peer::new(64, 1 << 20);
        let (reply, joined) = oneshot::channel();
        room.tx.send(join(replica, peer, reply)).await.unwrap();
        assert!(matches!(joined.await.unwrap(), JoinReply::Joined));

        // Hold SQLite's write lock: the writer's first commit waits for it.
        let lock = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut clock = Clock::new(sync_core::hlc::DEFAULT_MAX_DRIFT_MS);
        room.tx.send(push(replica, &mut clock, 1)).await.unwrap();
        let_run().await; // submitted: commit 1 waits for the lock
        room.tx.send(push(replica, &mut clock, 2)).await.unwrap();
        let_run().await; // handled during commit 1: promised as its follow-up
        room.tx.send(push(replica, &mut clock, 3)).await.unwrap();
        // Push 3 stays queued: this thread does not let the room run until
        // commit 1 is complete and the writer gave up waiting for it.
        lock.execute_batch("COMMIT").unwrap();
        wait_for(|| (metrics.commits.load(Ordering::Relaxed) >= 1).then_some(()));
        std::thread::sleep(Duration::from_millis(50));

        let started = Instant::now();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), frames.recv())
                .await
                .unwrap()
                .unwrap();
            let Outbound::Frame(frame, _) = frame else {
                panic!("the room closed the session");
            };
            if let Ok(Message::Ack { through_seq: 3, .. }) = protocol::decode(&frame, usize::MAX) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20));
        }
        // Commit 1 (push 1), then pushes 2 and 3 together, not one each.
        assert_eq!(metrics.commits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn inbox_messages_stay_small() {
        // A room's inbox allocates its first 32 slots when the room loads,
        // each as large as the largest message (152 bytes with the join's
        // Hello inline): keep rare, large payloads boxed.
        let size = std::mem::size_of::<RoomMsg>();
        assert!(size <= 64, "RoomMsg is {size} bytes");
    }
}
