//! The in-memory pub/sub hub: rooms made on first use, each with a writer task while it is busy, and one
//! queue per connection that every room it is in delivers to.
//!
//! A publish goes to the room's writer task, which stores a batch (the store stamps the sequence numbers),
//! serialises and frames each event **once**, and pushes the same cheap handle to that WebSocket frame
//! onto the queue ([`Mailbox`]) of every connection subscribed to the room. So fan-out costs no
//! serialisation per recipient, and a connection in many rooms still has one queue and one task.
//!
//! Broadcast order is sequence order, each event once: a room remembers the last sequence number it
//! broadcast. With one instance, the writer's events always come next. With several (PostgreSQL), events
//! stored by other instances arrive as notifications; the room reads them from the store, and fills any gap
//! before an event of its own from the store too.
//!
//! Rooms are lazy: a room exists here while a connection is subscribed to it or its writer is busy. A
//! writer stops after [`HubConfig::writer_idle`] without appends, and a room nobody is subscribed to is
//! dropped then, so a server with 10,000 rooms holds memory for the ones in use.

use super::backplane::{Backplane, Inbox, SessionSignal};
use super::presence::{PendingLeave, Presence, Seat};
use super::socket::{event_wire, frame_wire};
use super::store::{Appended, EventStore, NewEvent, StoreError};
use crate::protocol::{ChatEvent, EventKind, ServerFrame, GENERAL_ROOM};
use axum::body::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use uuid::Uuid;

/// One serialised frame of a room, ready to write to any socket. Made once per broadcast and shared by
/// every recipient, so a queued delivery is one pointer: a join storm leaves each of thousands of queues
/// holding hundreds of frames, and a slot of 8 bytes rather than 72 is what keeps that small.
pub type Frame = Arc<Framed>;

#[derive(Debug)]
pub struct Framed {
    pub room: Arc<str>,
    /// The event's sequence number, or [`EPHEMERAL`] for frames that are not stored (typing).
    pub seq: u64,
    /// The whole WebSocket frame, header and JSON, as every recipient's socket writes it.
    pub wire: Bytes,
    /// When it was broadcast, for the delivery-lag metric.
    pub at: std::time::Instant,
    /// What the connection's writer does with it: a room's broadcast, or one of the session's own
    /// entries (see [`Queue`] for how the two are ordered).
    pub kind: Kind,
}

/// What a queued entry asks of the connection's writer ([`crate::server::writer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame of `room` for everyone subscribed to it: `seq` is its event's, or [`EPHEMERAL`].
    Broadcast,
    /// Frames for this connection alone (replies, history pages): `wire` holds `seq` of them.
    Own,
    /// The session is about to replay `room`'s history: its broadcasts wait until the anchor.
    Hold,
    /// `room` is written up to `seq`: its broadcasts after that go out, a gap is caught up.
    Anchor,
    /// `room` is no longer heard: its broadcasts are dropped.
    Forget,
    /// The close frame, in `wire`: the last thing written.
    Close,
    /// The session has sent what a connection starts with: broadcasts may follow from now on.
    Live,
}

impl Framed {
    /// An entry of this connection's own, for its writer.
    pub fn own(kind: Kind, room: Arc<str>, seq: u64, wire: Bytes) -> Frame {
        Arc::new(Self {
            room,
            seq,
            wire,
            at: std::time::Instant::now(),
            kind,
        })
    }

    /// An entry of this connection's own that is about no room: `frames` whole frames joined in `wire`
    /// ([`Kind::Own`], [`Kind::Close`]), or none ([`Kind::Live`]).
    pub fn unroomed(kind: Kind, frames: u64, wire: Bytes) -> Frame {
        Self::own(kind, Arc::from(""), frames, wire)
    }
}

/// The `seq` of a frame that is not a stored event and takes no part in ordering or catch-up.
pub const EPHEMERAL: u64 = 0;

/// Settings of the hub that tests may shorten.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// How many frames a connection may fall behind before it must catch up.
    pub live_capacity: usize,
    /// How many of its newest frames a busy room keeps, shared by every connection that fell behind:
    /// they catch up from these, and only read the store when they fell further behind than that.
    pub recent_frames: usize,
    /// How long a room's writer waits for an append before it stops (it starts again on the next).
    pub writer_idle: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            live_capacity: 1_024,
            recent_frames: 16_384,
            writer_idle: Duration::from_secs(30),
        }
    }
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the room's writer has stopped")]
    WriterGone,
    #[error("store failed: {0}")]
    Store(Arc<StoreError>),
}

/// A connection's queue: frames of every room it is subscribed to, in each room's order, and the
/// session's own entries in theirs; its writer task drains it ([`crate::server::writer`]), the
/// session's entries first.
///
/// A locked `VecDeque` and a [`Notify`](tokio::sync::Notify) rather than a channel: a push is a lock, a
/// push_back and, only when the queue was empty, a wake-up; the writer takes a whole batch under one
/// lock. In a join storm a room pushes to thousands of queues per event, and the bounded channel's
/// semaphore and block list were a tenth of the server's time.
pub struct Mailbox {
    id: u64,
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue stops being empty, when a room lagged, or when the session ended.
    ready: tokio::sync::Notify,
    /// Wakes the session when a room was taken away or the writer ended.
    told: tokio::sync::Notify,
    capacity: usize,
    /// Set when a broadcast did not fit; the writer then catches up the rooms in `lagged`.
    trouble: AtomicBool,
    /// Rooms with frames that did not fit: the writer catches them up.
    lagged: Mutex<HashSet<Arc<str>>>,
    /// Set when a room was taken away; the session then reads `gone`.
    evicted: AtomicBool,
    /// Rooms this connection was taken out of (its user was removed).
    gone: Mutex<Vec<Arc<str>>>,
    /// The writer has ended (the socket failed): the session ends too.
    writer_ended: AtomicBool,
}

#[derive(Default)]
struct Queue {
    /// The rooms' broadcasts, at most the mailbox's capacity.
    frames: VecDeque<Frame>,
    /// The session's own entries ([`Framed::own`]). They go out ahead of the broadcasts queued before
    /// them, as replies written by the session itself did: a reply (`joined` in a join storm) must not
    /// wait behind a thousand broadcasts. What must not overtake a room's broadcasts is ordered by the
    /// room's cursor instead: a replay is bracketed by [`Kind::Hold`] and [`Kind::Anchor`], and a
    /// room's broadcasts after [`Kind::Forget`] are dropped.
    own: VecDeque<Frame>,
    /// The writer has ended: nothing more is queued.
    closed: bool,
    /// The session has ended: the writer writes what is queued, then ends.
    finished: bool,
}

/// How many of the session's own entries may wait unwritten: a client that sends and never reads would
/// otherwise grow the queue without end. Past this the session ends the connection.
const OWN_SLACK: usize = 4_096;

/// The session queued more than a client that reads ever leaves unread.
#[derive(Debug)]
pub struct NotReading;

impl Mailbox {
    #[cfg(test)]
    fn push(&self, frame: Frame) {
        self.push_all(std::slice::from_ref(&frame));
    }

    /// Queues `frames`, one room's in its order, under one lock and with at most one wake-up: a room
    /// delivers a stored batch to each connection at once. In a join storm that is one lock per
    /// connection per batch of a few hundred join lines, not one per line.
    pub(crate) fn push_all(&self, frames: &[Frame]) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return; // the connection is ending; it unsubscribes on its way out
        }
        let fits = frames
            .len()
            .min(self.capacity.saturating_sub(queue.frames.len()));
        let was_empty = queue.frames.is_empty();
        queue.frames.extend(frames[..fits].iter().cloned());
        drop(queue);
        // What did not fit is caught up from the window or the store; typing is not kept anywhere.
        if let Some(lost) = frames[fits..].iter().find(|f| f.seq != EPHEMERAL) {
            lock(&self.lagged).insert(lost.room.clone());
            self.trouble.store(true, Ordering::Release);
        }
        // A full queue's writer is awake already.
        if was_empty && fits > 0 {
            self.ready.notify_one();
        }
    }

    /// Queues one of the session's own entries ([`Framed::own`]) after the session's others. It is
    /// never dropped for want of room, but frames ([`Kind::Own`]) past [`OWN_SLACK`] unwritten are
    /// refused: they belong to a client that stopped reading.
    pub fn push_own(&self, entry: Frame) -> Result<(), NotReading> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Ok(()); // the writer ended; the session hears of it and ends too
        }
        if entry.kind == Kind::Own && queue.own.len() >= OWN_SLACK {
            return Err(NotReading);
        }
        let was_empty = queue.own.is_empty();
        queue.own.push_back(entry);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The session has ended: the writer writes what is queued, then ends.
    pub fn finish(&self) {
        lock(&self.queue).finished = true;
        self.ready.notify_one();
    }

    /// The rooms to catch up from the store, if any lagged since last asked. One atomic load when
    /// none did, so the writer asks after every batch.
    pub fn take_lagged(&self) -> Option<Vec<Arc<str>>> {
        // Read before the swap: a swap writes, and would take the line from the cores that push.
        if !self.trouble.load(Ordering::Relaxed) || !self.trouble.swap(false, Ordering::Acquire) {
            return None;
        }
        Some(lock(&self.lagged).drain().collect())
    }

    /// The rooms this connection was taken out of since last asked.
    pub fn take_gone(&self) -> Vec<Arc<str>> {
        if !self.evicted.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.gone))
    }

    /// Whether the writer has ended (its socket failed).
    pub fn writer_ended(&self) -> bool {
        self.writer_ended.load(Ordering::Acquire)
    }

    /// Resolves when the session has something to look at: a room taken away, or the writer ended.
    pub async fn told(&self) {
        self.told.notified().await;
    }

    /// Takes the connection out of `room` and tells its session.
    fn evict(&self, room: Arc<str>) {
        lock(&self.gone).push(room);
        self.evicted.store(true, Ordering::Release);
        self.told.notify_one();
    }
}

/// A std Mutex, poison ignored: every critical section here is a few map operations and never awaits.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer's end of its connection's [`Mailbox`].
pub struct Deliveries {
    mailbox: Arc<Mailbox>,
}

impl Deliveries {
    /// Waits until entries are queued, then takes all of them: the session's into `own` and (once
    /// `live`) the broadcasts into `frames`, both empty, which trade places with the queue's, so nothing
    /// is copied and each keeps its room for the next time. Or returns with none taken when a room
    /// lagged (see [`Mailbox::take_lagged`]). False once the session has ended and everything it queued
    /// was taken. Cancel-safe: entries are taken only in the poll that returns.
    pub async fn recv(
        &mut self,
        own: &mut VecDeque<Frame>,
        frames: &mut VecDeque<Frame>,
        live: bool,
    ) -> bool {
        debug_assert!(own.is_empty() && frames.is_empty());
        loop {
            {
                let mut queue = lock(&self.mailbox.queue);
                let broadcasts = live && !queue.frames.is_empty();
                if broadcasts || !queue.own.is_empty() {
                    std::mem::swap(&mut queue.own, own);
                    if live {
                        std::mem::swap(&mut queue.frames, frames);
                    }
                    return true;
                }
                if queue.finished {
                    return false;
                }
            }
            if live && self.mailbox.trouble.load(Ordering::Acquire) {
                return true;
            }
            // A push between the check above and this wait leaves a permit, so no wake-up is lost.
            self.mailbox.ready.notified().await;
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        let mut queue = lock(&self.mailbox.queue);
        queue.closed = true;
        queue.frames = VecDeque::new();
        queue.own = VecDeque::new();
        drop(queue);
        self.mailbox.writer_ended.store(true, Ordering::Release);
        self.mailbox.told.notify_one();
    }
}

/// A cheap-to-clone handle to the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    backplane: Arc<dyn Backplane>,
    config: HubConfig,
    /// Flips to true when the server starts shutting down; sessions then close their sockets.
    closing: watch::Sender<bool>,
    /// Connections whose session is still running; shutdown waits for them to say goodbye.
    sessions: watch::Sender<usize>,
    /// The rooms in use here. Lock order: this map, then a room's writer or subscribers.
    rooms: Arc<Mutex<HashMap<Arc<str>, Arc<Room>>>>,
    /// Who holds which name in the chat (names are chat-wide, and seated through `general`).
    presence: Presence,
    next_mailbox: AtomicU64,
    /// The connections of each browser session, reached by [`Hub::signal_session`]. A std Mutex: each
    /// use is a map lookup and never awaits.
    signals: Mutex<HashMap<Uuid, broadcast::Sender<SessionSignal>>>,
    /// Which bots a message calls.
    callees: Arc<super::callees::Callees>,
    /// Where the rooms' writers run.
    writers: WriterThread,
}

/// A thread of its own for the rooms' writers, apart from the runtime the connections run on.
///
/// A writer's append is a few round trips to the store (SQLite's connection thread, or PostgreSQL), and
/// after each one the writer waits for a turn to run again. On the connections' runtime that turn came
/// after every session the last broadcast woke: at 10,000 clients an append took 165 ms there, where
/// its fsync takes one, and the next message's broadcast waited behind the last one's. Here the writers
/// have the thread to themselves (4.7 ms per append in the same run), and what they wake, the sessions,
/// runs on the other runtime.
struct WriterThread {
    runtime: tokio::runtime::Handle,
    /// Dropped with the hub, which ends the thread (and any writer still on it).
    _stop: oneshot::Sender<()>,
}

impl WriterThread {
    fn start() -> Self {
        // Time for the writers' idle stop, I/O for a store's connections made there (PostgreSQL).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the rooms' writers need a runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("confab-writers".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .expect("the rooms' writers need a thread");
        Self {
            runtime: handle,
            _stop: stop,
        }
    }
}

type Rooms = Arc<Mutex<HashMap<Arc<str>, Arc<Room>>>>;

struct Subscriber {
    /// Whom the connection speaks for (nil for a reader), so removing a user reaches their connections.
    user: Uuid,
    mailbox: Arc<Mailbox>,
}

/// A room in use here.
struct Room {
    slug: Arc<str>,
    /// By mailbox id: a connection subscribes and leaves in O(1), however many share the room (a
    /// join storm into `general` would otherwise scan every subscriber per connection).
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    /// The writer's queue while it runs; `None` once it stopped for idleness.
    writer: Mutex<Option<mpsc::Sender<Queued>>>,
    /// The last sequence number broadcast; `None` until the first. The lock is held while a gap is read
    /// from the store, so nothing overtakes it.
    delivered: tokio::sync::Mutex<Option<u64>>,
    /// The newest frames broadcast, consecutive in `seq`, at most [`HubConfig::recent_frames`]. A join
    /// storm overflows thousands of queues at once; each would otherwise read and encode the same
    /// events from the store again. Emptied when the writer stops, so an idle room keeps none.
    recent: Mutex<VecDeque<Frame>>,
    recent_limit: usize,
}

/// How many events one catch-up read takes from the store.
const CATCH_UP_PAGE: usize = 500;

impl Room {
    fn fan_out(&self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        for subscriber in lock(&self.subscribers).values() {
            subscriber.mailbox.push_all(frames);
        }
    }

    /// The frame of `event`, kept in the window of recent frames; the caller fans it out.
    fn frame(&self, event: &ChatEvent) -> Frame {
        let frame = Arc::new(Framed {
            room: self.slug.clone(),
            seq: event.seq,
            wire: event_wire(event),
            at: std::time::Instant::now(),
            kind: Kind::Broadcast,
        });
        if self.recent_limit > 0 {
            let mut recent = lock(&self.recent);
            // Only consecutive frames, so "the window starts at n" means it holds everything from n on.
            // A deletion rewrote one of the stored events these frames were made from: the window must
            // never show a deleted message to anyone who did not see it live.
            let gap = recent.back().is_some_and(|last| last.seq + 1 != frame.seq);
            if gap || event.kind == EventKind::Delete {
                recent.clear();
            }
            if recent.len() == self.recent_limit {
                recent.pop_front();
            }
            recent.push_back(frame.clone());
        }
        frame
    }

    /// Up to `limit` frames after `after`, from the window of recent frames; `None` when the window does
    /// not reach back to `after + 1` (the store must answer).
    fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<Frame>> {
        let recent = lock(&self.recent);
        let first = recent.front()?.seq;
        if first > after + 1 {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        Some(recent.iter().skip(skip).take(limit).cloned().collect())
    }

    /// The newest `count` frames, if the window holds that many or reaches back to the room's first event.
    fn recent_page(&self, count: usize) -> Option<Vec<Frame>> {
        let newest = lock(&self.recent).back()?.seq;
        self.recent_after(newest.saturating_sub(count as u64), count)
    }

    /// The writer stopped: nobody is catching up on a busy stream, so the window's memory goes.
    fn forget_recent(&self) {
        *lock(&self.recent) = VecDeque::new();
    }

    /// Broadcasts events this instance stored (ascending), after whatever other instances stored first.
    async fn deliver(&self, store: &dyn EventStore, events: &[&ChatEvent]) {
        let mut delivered = self.delivered.lock().await;
        // Consecutive frames go out together (see `Mailbox::push_all`).
        let mut frames = Vec::with_capacity(events.len());
        for event in events {
            let next = delivered.map_or(event.seq, |d| d + 1);
            if event.seq < next {
                continue; // a notification got here first
            }
            if event.seq > next {
                self.fan_out(&std::mem::take(&mut frames));
                self.fill(store, &mut delivered, event.seq - 1).await;
                if *delivered != Some(event.seq - 1) {
                    // The store could not fill the gap now; the next catch-up will, in order.
                    return;
                }
            }
            frames.push(self.frame(event));
            *delivered = Some(event.seq);
        }
        self.fan_out(&frames);
    }

    /// Broadcasts what the store has after `delivered`, up to `upto`.
    async fn fill(&self, store: &dyn EventStore, delivered: &mut Option<u64>, upto: u64) {
        let Some(mut after) = *delivered else { return };
        while after < upto {
            let events = match store.since(&self.slug, after, CATCH_UP_PAGE).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!(room = %self.slug, error = %err, "catching up from the store failed");
                    return;
                }
            };
            let full = events.len() == CATCH_UP_PAGE;
            let frames: Vec<Frame> = events
                .iter()
                .take_while(|e| e.seq <= upto)
                .map(|event| self.frame(event))
                .collect();
            self.fan_out(&frames);
            if let Some(last) = frames.last() {
                after = last.seq;
                *delivered = Some(after);
            }
            if !full {
                return;
            }
        }
    }

    /// Events `first..=last` were stored, perhaps by another instance.
    async fn stored(&self, store: &dyn EventStore, first: u64, last: u64) {
        let mut delivered = self.delivered.lock().await;
        if delivered.is_none() {
            *delivered = Some(first.saturating_sub(1));
        }
        self.fill(store, &mut delivered, last).await;
    }

    /// Broadcasts everything stored since the last broadcast.
    async fn catch_up(&self, store: &dyn EventStore) {
        let mut delivered = self.delivered.lock().await;
        self.fill(store, &mut delivered, u64::MAX).await;
    }

    fn unused(&self) -> bool {
        lock(&self.writer).is_none() && lock(&self.subscribers).is_empty()
    }
}

struct Append {
    event: NewEvent,
    stored: oneshot::Sender<Result<Appended, Arc<StoreError>>>,
}

/// An append as the writer's queue holds it. Boxed: the queue allocates its slots 32 at a time, and a
/// room that hears one join line and then nothing must not hold 32 appends' worth (4.6 KiB) for it; in
/// 10,000 new rooms those blocks, freed when the writers stopped, left the heap too fragmented to shrink.
type Queued = Box<Append>;

/// How many appends the writer stores in one call to the store (its group commit).
const MAX_BATCH: usize = 256;

impl Hub {
    /// The hub over `store`, with the thread its rooms' writers run on; needs a Tokio runtime for the rest.
    pub fn new(
        store: Arc<dyn EventStore>,
        backplane: Arc<dyn Backplane>,
        config: HubConfig,
    ) -> Self {
        let hub = Self {
            inner: Arc::new(Inner {
                store,
                backplane,
                config,
                closing: watch::Sender::new(false),
                sessions: watch::Sender::new(0),
                rooms: Rooms::default(),
                presence: Presence::default(),
                next_mailbox: AtomicU64::new(1),
                signals: Mutex::default(),
                callees: Arc::default(),
                writers: WriterThread::start(),
            }),
        };
        hub.inner.backplane.start(Arc::new(hub.clone()));
        hub
    }

    pub fn backplane(&self) -> &dyn Backplane {
        self.inner.backplane.as_ref()
    }

    /// Which bots messages call; the webhook sender waits on it.
    pub fn callees(&self) -> &Arc<super::callees::Callees> {
        &self.inner.callees
    }

    /// Who holds which name in the chat.
    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// How many rooms this instance holds in memory now (those with a subscriber or a running writer).
    pub fn rooms_in_memory(&self) -> usize {
        lock(&self.inner.rooms).len()
    }

    /// The grace period after a seat's last connection here is over: unless they came back, give the
    /// name up everywhere and, when no instance holds it any more, announce the leave.
    pub async fn depart(&self, seat: Seat, ticket: PendingLeave) {
        let presence = self.presence();
        if !presence.expire(&seat.key, ticket) {
            return;
        }
        // A database outage must not leave the name held for ever: try again for about a minute.
        let mut wait = Duration::from_millis(500);
        for _ in 0..8 {
            match self
                .backplane()
                .depart(GENERAL_ROOM, &seat.key, seat.user)
                .await
            {
                Ok(true) => return self.announce_leave(seat).await,
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(error = %err, name = %seat.name, "giving up a name failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    if presence.holds(&seat.key) {
                        return; // they came back meanwhile, here
                    }
                }
            }
        }
        tracing::error!(name = %seat.name, "could not give up a name; it frees when this instance stops");
    }

    /// Says "<name> has left the chat." in `general`.
    pub async fn announce_leave(&self, seat: Seat) {
        if let Err(err) = self
            .publish(GENERAL_ROOM, seat.event(EventKind::Leave))
            .await
        {
            tracing::error!(error = %err, "announcing a leave failed");
        }
    }

    /// The connections of browser session (or user) `id` from now on: they hear when it ends or changes.
    pub fn watch_session(&self, id: Uuid) -> SessionWatch {
        let mut signals = self.signals();
        let receiver = signals
            .entry(id)
            .or_insert_with(|| broadcast::channel(4).0)
            .subscribe();
        SessionWatch {
            hub: self.clone(),
            id,
            receiver,
        }
    }

    /// Tells every connection of session (or user) `id`, on every instance, that it ended or changed.
    pub async fn signal_session(&self, id: Uuid, signal: SessionSignal) {
        self.signal_here(id, signal);
        self.backplane().signal_session(id, signal).await;
    }

    fn signal_here(&self, id: Uuid, signal: SessionSignal) {
        if let Some(sender) = self.signals().get(&id) {
            let _ = sender.send(signal);
        }
    }

    fn signals(&self) -> MutexGuard<'_, HashMap<Uuid, broadcast::Sender<SessionSignal>>> {
        lock(&self.inner.signals)
    }

    pub fn store(&self) -> &dyn EventStore {
        self.inner.store.as_ref()
    }

    /// Tells every session to close its socket with "server restarting", so clients reconnect at once.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Counts a session as running until the guard drops.
    pub fn session_started(&self) -> SessionGuard {
        self.inner.sessions.send_modify(|n| *n += 1);
        SessionGuard(self.clone())
    }

    /// Resolves once no session runs: after [`Hub::begin_shutdown`], once every socket got its close
    /// frame. (Upgraded sockets are no longer the HTTP server's, so its graceful shutdown does not wait.)
    pub async fn sessions_ended(&self) {
        let mut sessions = self.inner.sessions.subscribe();
        let _ = sessions.wait_for(|n| *n == 0).await;
    }

    /// Flushes and closes the store; the hub must not publish afterwards.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }

    /// How many broadcasts a connection's queue holds.
    pub fn live_capacity(&self) -> usize {
        self.inner.config.live_capacity.max(1)
    }

    /// A new connection's queue, and its receiving end.
    pub fn mailbox(&self) -> (Arc<Mailbox>, Deliveries) {
        let mailbox = Arc::new(Mailbox {
            id: self.inner.next_mailbox.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            ready: tokio::sync::Notify::new(),
            told: tokio::sync::Notify::new(),
            capacity: self.live_capacity(),
            trouble: AtomicBool::new(false),
            lagged: Mutex::default(),
            evicted: AtomicBool::new(false),
            gone: Mutex::default(),
            writer_ended: AtomicBool::new(false),
        });
        let deliveries = Deliveries {
            mailbox: mailbox.clone(),
        };
        (mailbox, deliveries)
    }

    /// The room in use, made now if it was not. Takes the map's lock: the caller holds it.
    fn room_in(
        rooms: &mut HashMap<Arc<str>, Arc<Room>>,
        slug: &str,
        config: &HubConfig,
    ) -> Arc<Room> {
        if let Some(room) = rooms.get(slug) {
            return room.clone();
        }
        let slug: Arc<str> = Arc::from(slug);
        let room = Arc::new(Room {
            slug: slug.clone(),
            subscribers: Mutex::default(),
            writer: Mutex::new(None),
            delivered: tokio::sync::Mutex::new(None),
            recent: Mutex::default(),
            recent_limit: config.recent_frames,
        });
        rooms.insert(slug, room.clone());
        room
    }

    /// Live frames of `room` go to `mailbox` from now on, for `user` (nil for a reader). Subscribe
    /// *before* reading history, then skip frames whose `seq` the history already covered: that way
    /// nothing falls between the two. `first`, if given, is queued for the connection's writer ahead
    /// of every frame of the room ([`Kind::Hold`] or [`Kind::Anchor`] at a sequence number). Returns the
    /// room's slug as frames carry it: the writer finds a room's cursor by that pointer.
    pub fn subscribe(
        &self,
        room: &str,
        user: Uuid,
        mailbox: &Arc<Mailbox>,
        first: Option<(Kind, u64)>,
    ) -> Arc<str> {
        let mut rooms = lock(&self.inner.rooms);
        let room = Self::room_in(&mut rooms, room, &self.inner.config);
        if let Some((kind, seq)) = first {
            // Before the subscription, under the map's lock: no broadcast of the room can come first.
            let _ = mailbox.push_own(Framed::own(kind, room.slug.clone(), seq, Bytes::new()));
        }
        let subscriber = Subscriber {
            user,
            mailbox: mailbox.clone(),
        };
        lock(&room.subscribers).insert(mailbox.id, subscriber);
        room.slug.clone()
    }

    /// `mailbox` hears nothing more of `room`.
    pub fn unsubscribe(&self, room: &str, mailbox: &Mailbox) {
        let mut rooms = lock(&self.inner.rooms);
        let Some(entry) = rooms.get(room).cloned() else {
            return;
        };
        lock(&entry.subscribers).remove(&mailbox.id);
        if entry.unused() {
            rooms.remove(room);
        }
    }

    /// Takes every connection of `user` here out of `room` at once (they were removed from it): nothing
    /// more of it reaches them, and each connection is told.
    pub fn evict_here(&self, room: &str, user: Uuid) {
        let rooms = lock(&self.inner.rooms);
        let Some(entry) = rooms.get(room) else { return };
        let mut subscribers = lock(&entry.subscribers);
        subscribers.retain(|_, s| {
            if s.user != user {
                return true;
            }
            s.mailbox.evict(entry.slug.clone());
            false
        });
    }

    /// [`Hub::evict_here`] on every instance.
    pub async fn evict(&self, room: &str, user: Uuid) {
        self.evict_here(room, user);
        self.backplane().evict(room, user).await;
    }

    /// Frames of `room` after `after` (at most `limit`) for a connection that fell behind, from the room's
    /// window of recent frames; `None` when it fell further behind than the window reaches, or the room
    /// keeps none, and the store must answer.
    pub fn recent_after(&self, room: &str, after: u64, limit: usize) -> Option<Vec<Frame>> {
        self.room(room)?.recent_after(after, limit)
    }

    /// The newest `count` frames of `room`, from its window of recent frames, as its history would give
    /// them; `None` when the window does not hold them (the store must answer).
    pub fn recent_page(&self, room: &str, count: usize) -> Option<Vec<Frame>> {
        self.room(room)?.recent_page(count)
    }

    /// A stored event of `room` was rewritten (a message deleted): its window of recent frames is
    /// dropped, so nobody catches up on or opens with the old text.
    pub fn forget_recent(&self, room: &str) {
        if let Some(entry) = self.room(room) {
            entry.forget_recent();
        }
    }

    /// The room, if it is in memory here (taken out of the map's lock at once).
    fn room(&self, slug: &str) -> Option<Arc<Room>> {
        lock(&self.inner.rooms).get(slug).cloned()
    }

    /// Sends a frame that is not stored (typing) to everyone in `room` here now.
    pub fn broadcast_ephemeral(&self, room: &str, frame: &ServerFrame) {
        let Some(entry) = self.room(room) else {
            return;
        };
        entry.fan_out(&[Arc::new(Framed {
            room: entry.slug.clone(),
            seq: EPHEMERAL,
            wire: frame_wire(frame),
            at: std::time::Instant::now(),
            kind: Kind::Broadcast,
        })]);
    }

    /// Stores an event and broadcasts it; returns it as stored, with its sequence number. An id the room
    /// already has is not stored or broadcast again: the stored event comes back with `fresh: false`.
    pub async fn publish(&self, room: &str, event: NewEvent) -> Result<Appended, PublishError> {
        self.submit(room, event).await?.await.1
    }

    /// The room's writer queue, starting the writer if it is not running.
    fn writer(&self, slug: &str) -> mpsc::Sender<Queued> {
        let mut rooms = lock(&self.inner.rooms);
        let room = Self::room_in(&mut rooms, slug, &self.inner.config);
        let mut writer = lock(&room.writer);
        if let Some(queue) = writer.as_ref() {
            return queue.clone();
        }
        // Bounded so a burst of senders waits for the store instead of queueing without limit.
        let (queue, appends) = mpsc::channel(MAX_BATCH * 4);
        *writer = Some(queue.clone());
        self.inner.writers.runtime.spawn(run_writer(
            self.inner.store.clone(),
            self.inner.callees.clone(),
            self.inner.rooms.clone(),
            room.clone(),
            appends,
            self.inner.config.writer_idle,
        ));
        queue
    }

    /// Queues an event for the room's writer and returns at once (waiting only while the writer's queue
    /// is full); the [`Receipt`] resolves once it is stored and broadcast. A connection can so have
    /// several messages in flight, and the writer commits them together instead of one per round trip.
    pub async fn submit(&self, room: &str, mut event: NewEvent) -> Result<Receipt, PublishError> {
        let id = event.id;
        // People's messages call bots; bots' do not, so two bots can never call each other in a loop.
        let person = event.user_kind != crate::protocol::UserKind::Bot;
        if person && matches!(event.kind, EventKind::Message | EventKind::Action) {
            event.call = self.inner.callees.for_message(room, &event.text);
        }
        let (stored, reply) = oneshot::channel();
        let mut append = Box::new(Append { event, stored });
        // A writer that stopped for idleness just as this was queued refuses it; the next one takes it.
        for _ in 0..3 {
            match self.writer(room).send(append).await {
                Ok(()) => return Ok(Receipt { id, reply }),
                Err(mpsc::error::SendError(refused)) => append = refused,
            }
        }
        Err(PublishError::WriterGone)
    }
}

/// One connection's view of its browser session's signals; see [`Hub::watch_session`].
pub struct SessionWatch {
    hub: Hub,
    id: Uuid,
    pub receiver: broadcast::Receiver<SessionSignal>,
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        let mut signals = self.hub.signals();
        // This receiver still counts while it is being dropped.
        if signals
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            signals.remove(&self.id);
        }
    }
}

#[async_trait::async_trait]
impl Inbox for Hub {
    async fn stored_elsewhere(&self, room: &str, first: u64, last: u64) {
        // A room nobody here is subscribed to has nobody to tell.
        if let Some(entry) = self.room(room) {
            entry.stored(self.store(), first, last).await;
        }
    }

    async fn catch_up_all(&self) {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).values().cloned().collect();
        for room in rooms {
            room.catch_up(self.store()).await;
        }
    }

    fn typing_elsewhere(&self, room: &str, name: &str) {
        self.broadcast_ephemeral(
            room,
            &ServerFrame::Typing {
                room: room.to_owned(),
                name: name.to_owned(),
            },
        );
    }

    fn session_signal(&self, session: Uuid, signal: SessionSignal) {
        self.signal_here(session, signal);
    }

    fn evicted_elsewhere(&self, room: &str, user: Uuid) {
        self.evict_here(room, user);
    }

    async fn gone_elsewhere(&self, _room: &str, seat: Seat) {
        self.announce_leave(seat).await;
    }

    fn seats_here(&self) -> Vec<(String, Seat)> {
        let seats = self.presence().seats().into_iter();
        seats.map(|seat| (GENERAL_ROOM.to_owned(), seat)).collect()
    }
}

impl Seat {
    /// A join or leave line for this seat, with a fresh id.
    pub fn event(&self, kind: EventKind) -> NewEvent {
        NewEvent {
            id: Uuid::new_v4(),
            kind,
            name: self.name.clone(),
            user_id: self.user,
            user_kind: self.kind,
            text: String::new(),
            target: None,
            call: Vec::new(),
        }
    }
}

/// Held by a running session; see [`Hub::session_started`].
pub struct SessionGuard(Hub);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.inner.sessions.send_modify(|n| *n -= 1);
    }
}

/// Resolves to the id of a submitted event and what became of it.
pub struct Receipt {
    id: Uuid,
    reply: oneshot::Receiver<Result<Appended, Arc<StoreError>>>,
}

impl Future for Receipt {
    type Output = (Uuid, Result<Appended, PublishError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        Pin::new(&mut self.reply).poll(cx).map(|reply| {
            let result = match reply {
                Ok(Ok(appended)) => Ok(appended),
                Ok(Err(err)) => Err(PublishError::Store(err)),
                Err(_) => Err(PublishError::WriterGone),
            };
            (id, result)
        })
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp Confab stores.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A room's writer: stores batches in order and broadcasts them, until it has been idle for `idle`.
async fn run_writer(
    store: Arc<dyn EventStore>,
    callees: Arc<super::callees::Callees>,
    rooms: Rooms,
    room: Arc<Room>,
    mut appends: mpsc::Receiver<Queued>,
    idle: Duration,
) {
    // Grown as batches need: a room that hears one message a minute must not hold room for 256.
    let mut batch = Vec::new();
    let mut retiring = false;
    loop {
        let received = if retiring {
            appends.recv_many(&mut batch, MAX_BATCH).await
        } else {
            match tokio::time::timeout(idle, appends.recv_many(&mut batch, MAX_BATCH)).await {
                Ok(received) => received,
                Err(_) => {
                    retiring = retire(&rooms, &room, &mut appends);
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
        let calls = batch.iter().any(|a| !a.event.call.is_empty());
        // Boxed while it runs: the storing and broadcasting hold kilobytes of state, and an idle writer
        // waiting for its next append should not.
        if Box::pin(store_batch(store.as_ref(), &room, &mut batch)).await && calls {
            callees.ring();
        }
    }
}

/// Stops taking appends if none are waiting: the room forgets this writer (the next append starts
/// another), and a room nobody is subscribed to is dropped. Appends already sent are still stored: the
/// writer drains its closed queue before it ends.
fn retire(rooms: &Rooms, room: &Arc<Room>, appends: &mut mpsc::Receiver<Queued>) -> bool {
    let mut rooms = lock(rooms);
    {
        let mut writer = lock(&room.writer);
        if !appends.is_empty() {
            return false;
        }
        *writer = None;
    }
    appends.close();
    room.forget_recent();
    let ours = rooms
        .get(&room.slug)
        .is_some_and(|entry| Arc::ptr_eq(entry, room));
    if ours && room.unused() {
        rooms.remove(&room.slug);
    }
    true
}

/// Stores and broadcasts a batch; whether it was stored.
async fn store_batch(store: &dyn EventStore, room: &Room, batch: &mut Vec<Queued>) -> bool {
    let started = std::time::Instant::now();
    let (events, replies): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .map(|append| {
            let Append { event, stored } = *append;
            (event, stored)
        })
        .unzip();
    let result = store.append(&room.slug, events, now_ms()).await;
    metrics::histogram!(super::metrics::STORE_SECONDS).record(started.elapsed().as_secs_f64());
    match result {
        Ok(stored) => {
            let fresh: Vec<&ChatEvent> = stored
                .iter()
                .filter(|a| a.fresh)
                .map(|a| &a.event)
                .collect();
            room.deliver(store, &fresh).await;
            metrics::histogram!(super::metrics::FANOUT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            for (appended, reply) in stored.into_iter().zip(replies) {
                let _ = reply.send(Ok(appended));
            }
            true
        }
        Err(err) => {
            tracing::error!(room = %room.slug, error = %err, "storing a batch failed");
            let err = Arc::new(err);
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(room: &Arc<str>, seq: u64) -> Frame {
        Arc::new(Framed {
            room: room.clone(),
            seq,
            wire: crate::server::socket::text_frame(b"{}"),
            at: std::time::Instant::now(),
            kind: Kind::Broadcast,
        })
    }

    fn hub(live_capacity: usize) -> Hub {
        let store = Arc::new(super::super::store::MemoryStore::new(10));
        let config = HubConfig {
            live_capacity,
            ..HubConfig::default()
        };
        Hub::new(store, Arc::new(super::super::backplane::Local), config)
    }

    #[tokio::test]
    async fn a_full_queue_marks_its_room_lagged_and_a_batch_takes_what_is_queued_in_order() {
        let (mailbox, mut deliveries) = hub(2).mailbox();
        let room: Arc<str> = Arc::from("general");
        for seq in 1..=3 {
            mailbox.push(frame(&room, seq));
        }
        // A typing frame that does not fit is dropped without trouble; it is not stored anywhere.
        mailbox.push(frame(&room, EPHEMERAL));
        let (mut own, mut batch) = (VecDeque::new(), VecDeque::new());
        deliveries.recv(&mut own, &mut batch, true).await;
        let seqs: Vec<u64> = batch.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [1, 2]);
        let lagged = mailbox.take_lagged().expect("the third did not fit");
        assert_eq!(lagged, std::slice::from_ref(&room));
        assert!(mailbox.take_lagged().is_none(), "told once");
        // Room again: the next push is queued and wakes the waiting connection.
        batch.clear();
        let waiting = tokio::spawn(async move {
            let (mut own, mut batch) = (VecDeque::new(), VecDeque::new());
            deliveries.recv(&mut own, &mut batch, true).await;
            batch.iter().map(|f| f.seq).collect::<Vec<_>>()
        });
        tokio::task::yield_now().await;
        mailbox.push(frame(&room, 4));
        assert_eq!(waiting.await.unwrap(), [4]);
    }

    #[tokio::test]
    async fn a_batch_is_queued_as_far_as_it_fits_and_the_rest_is_caught_up() {
        let (mailbox, mut deliveries) = hub(3).mailbox();
        let room: Arc<str> = Arc::from("general");
        mailbox.push(frame(&room, 1));
        let batch: Vec<Frame> = (2..=5).map(|seq| frame(&room, seq)).collect();
        mailbox.push_all(&batch);
        let (mut own, mut taken) = (VecDeque::new(), VecDeque::new());
        deliveries.recv(&mut own, &mut taken, true).await;
        let seqs: Vec<u64> = taken.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "what fits, in order");
        let lagged = mailbox.take_lagged().expect("4 and 5 did not fit");
        assert_eq!(lagged, std::slice::from_ref(&room));
        // Typing that does not fit is dropped without trouble.
        let typing: Vec<Frame> = (0..4).map(|_| frame(&room, EPHEMERAL)).collect();
        mailbox.push_all(&typing);
        assert!(mailbox.take_lagged().is_none());
    }

    #[tokio::test]
    async fn an_eviction_tells_an_idle_session_and_its_writer_ends_when_the_session_does() {
        let hub = hub(8);
        let user = Uuid::new_v4();
        let (mailbox, mut deliveries) = hub.mailbox();
        hub.subscribe("design", user, &mailbox, None);
        hub.evict_here("design", user);
        tokio::time::timeout(Duration::from_secs(5), mailbox.told())
            .await
            .expect("the session is told");
        assert_eq!(mailbox.take_gone(), [Arc::<str>::from("design")]);
        assert!(mailbox.take_gone().is_empty(), "told once");
        // Gone from the room: nothing of it is queued any more.
        hub.broadcast_ephemeral(
            "design",
            &ServerFrame::Typing {
                room: "design".into(),
                name: "Ann".into(),
            },
        );
        assert!(lock(&mailbox.queue).frames.is_empty());
        // The session's own entries are written before its writer ends.
        let own = Framed::unroomed(Kind::Own, 1, Bytes::from_static(b"bye"));
        mailbox.push_own(own).unwrap();
        mailbox.finish();
        let (mut own, mut batch) = (VecDeque::new(), VecDeque::new());
        assert!(deliveries.recv(&mut own, &mut batch, true).await);
        assert_eq!(&own[0].wire[..], b"bye");
        own.clear();
        assert!(
            !deliveries.recv(&mut own, &mut batch, true).await,
            "then it ends"
        );
        drop(deliveries);
        assert!(mailbox.writer_ended());
    }

    #[test]
    fn the_sessions_own_entries_are_never_dropped_but_are_bounded() {
        let (mailbox, _deliveries) = hub(2).mailbox();
        let room: Arc<str> = Arc::from("general");
        for seq in 1..=2 {
            mailbox.push(frame(&room, seq));
        }
        // The queue is full of broadcasts; a reply still goes in, up to the slack.
        for _ in 0..OWN_SLACK {
            let own = Framed::own(Kind::Own, room.clone(), 1, Bytes::from_static(b"x"));
            assert!(mailbox.push_own(own).is_ok());
        }
        let own = Framed::own(Kind::Own, room, 1, Bytes::from_static(b"x"));
        assert!(mailbox.push_own(own).is_err(), "a client that never reads");
    }
}
