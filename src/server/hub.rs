//! The in-memory pub/sub hub: one writer task and one broadcast channel per room.
//!
//! A publish goes to the room's writer task, which stores a batch (the store stamps the sequence numbers),
//! serialises each event **once**, and broadcasts the bytes. Every connection clones the same cheap
//! `Utf8Bytes` handle, so fan-out costs no serialisation per recipient.
//!
//! Broadcast order is sequence order, each event once: a room's [`Feed`] remembers the last sequence
//! number it broadcast. With one instance, the writer's events always come next. With several (PostgreSQL),
//! events stored by other instances arrive as notifications; the feed reads them from the store, and fills
//! any gap before an event of its own from the store too.

use super::backplane::{Backplane, Inbox, SessionSignal};
use super::presence::{PendingLeave, Presence, Seat};
use super::store::{Appended, EventStore, NewEvent, StoreError};
use crate::protocol::{ChatEvent, EventKind, ServerFrame};
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// One serialised frame, ready to write to any socket.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The event's sequence number, or [`EPHEMERAL`] for frames that are not stored (typing).
    pub seq: u64,
    pub json: Utf8Bytes,
    /// When it was broadcast, for the delivery-lag metric.
    pub at: std::time::Instant,
}

/// The `seq` of a frame that is not a stored event and takes no part in ordering or catch-up.
pub const EPHEMERAL: u64 = 0;

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no room named {0:?}")]
    NoSuchRoom(String),
    #[error("the room's writer has stopped")]
    WriterGone,
    #[error("store failed: {0}")]
    Store(Arc<StoreError>),
}

/// A cheap-to-clone handle to the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    backplane: Arc<dyn Backplane>,
    /// Flips to true when the server starts shutting down; sessions then close their sockets.
    closing: watch::Sender<bool>,
    /// Connections whose session is still running; shutdown waits for them to say goodbye.
    sessions: watch::Sender<usize>,
    rooms: HashMap<String, Room>,
    /// The connections of each browser session, reached by [`Hub::signal_session`]. A std Mutex: each
    /// use is a map lookup and never awaits.
    signals: std::sync::Mutex<HashMap<uuid::Uuid, broadcast::Sender<SessionSignal>>>,
}

struct Room {
    feed: Arc<Feed>,
    writer: mpsc::Sender<Append>,
    presence: Presence,
}

/// A room's live broadcast, in sequence order.
struct Feed {
    room: String,
    live: broadcast::Sender<Frame>,
    /// The last sequence number broadcast; `None` until the first. The lock is held while a gap is read
    /// from the store, so nothing overtakes it.
    delivered: tokio::sync::Mutex<Option<u64>>,
}

/// How many events one catch-up read takes from the store.
const CATCH_UP_PAGE: usize = 500;

impl Feed {
    fn send(&self, event: &ChatEvent) {
        // No receivers is fine: nobody is connected.
        let _ = self.live.send(Frame {
            seq: event.seq,
            json: ServerFrame::encode_event(event).into(),
            at: std::time::Instant::now(),
        });
    }

    /// Broadcasts events this instance stored (ascending), after whatever other instances stored first.
    async fn deliver(&self, store: &dyn EventStore, events: &[&ChatEvent]) {
        let mut delivered = self.delivered.lock().await;
        for event in events {
            let next = delivered.map_or(event.seq, |d| d + 1);
            if event.seq < next {
                continue; // a notification got here first
            }
            if event.seq > next {
                self.fill(store, &mut delivered, event.seq - 1).await;
                if *delivered != Some(event.seq - 1) {
                    // The store could not fill the gap now; the next catch-up will, in order.
                    return;
                }
            }
            self.send(event);
            *delivered = Some(event.seq);
        }
    }

    /// Broadcasts what the store has after `delivered`, up to `upto`.
    async fn fill(&self, store: &dyn EventStore, delivered: &mut Option<u64>, upto: u64) {
        let Some(mut after) = *delivered else { return };
        while after < upto {
            let events = match store.since(&self.room, after, CATCH_UP_PAGE).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!(room = %self.room, error = %err, "catching up from the store failed");
                    return;
                }
            };
            let full = events.len() == CATCH_UP_PAGE;
            for event in events.iter().take_while(|e| e.seq <= upto) {
                self.send(event);
                after = event.seq;
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
}

struct Append {
    event: NewEvent,
    stored: oneshot::Sender<Result<Appended, Arc<StoreError>>>,
}

/// How many appends the writer stores in one call to the store (its group commit).
const MAX_BATCH: usize = 256;

impl Hub {
    /// Starts a writer task for each room; needs a Tokio runtime. `live_capacity` is how many frames a
    /// slow connection may fall behind before it must catch up from the store.
    pub fn new(
        store: Arc<dyn EventStore>,
        backplane: Arc<dyn Backplane>,
        rooms: &[&str],
        live_capacity: usize,
    ) -> Self {
        let rooms = rooms
            .iter()
            .map(|&name| {
                let (live, _) = broadcast::channel(live_capacity);
                let feed = Arc::new(Feed {
                    room: name.to_owned(),
                    live,
                    delivered: tokio::sync::Mutex::new(None),
                });
                // Bounded so a burst of senders waits for the store instead of queueing without limit.
                let (writer, appends) = mpsc::channel(MAX_BATCH * 4);
                tokio::spawn(run_writer(store.clone(), feed.clone(), appends));
                (
                    name.to_owned(),
                    Room {
                        feed,
                        writer,
                        presence: Presence::default(),
                    },
                )
            })
            .collect();
        let hub = Self {
            inner: Arc::new(Inner {
                store,
                backplane,
                closing: watch::Sender::new(false),
                sessions: watch::Sender::new(0),
                rooms,
                signals: std::sync::Mutex::default(),
            }),
        };
        hub.inner.backplane.start(Arc::new(hub.clone()));
        hub
    }

    pub fn backplane(&self) -> &dyn Backplane {
        self.inner.backplane.as_ref()
    }

    /// The grace period after a seat's last connection here is over: unless they came back, give the
    /// name up everywhere and, when no instance holds it any more, announce the leave.
    pub async fn depart(&self, room: &str, seat: Seat, ticket: PendingLeave) {
        let Some(presence) = self.presence(room) else {
            return;
        };
        if !presence.expire(&seat.key, ticket) {
            return;
        }
        // A database outage must not leave the name held for ever: try again for about a minute.
        let mut wait = std::time::Duration::from_millis(500);
        for _ in 0..8 {
            match self.backplane().depart(room, &seat.key, seat.user).await {
                Ok(true) => return self.announce_leave(room, seat).await,
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

    /// Says "<name> has left the chat." in `room`.
    pub async fn announce_leave(&self, room: &str, seat: Seat) {
        if let Err(err) = self.publish(room, seat.event(EventKind::Leave)).await {
            tracing::error!(error = %err, "announcing a leave failed");
        }
    }

    /// The connections of browser session `id` from now on: they hear when it ends or changes.
    pub fn watch_session(&self, id: uuid::Uuid) -> SessionWatch {
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

    /// Tells every connection of session `id`, on every instance, that it ended or changed.
    pub async fn signal_session(&self, id: uuid::Uuid, signal: SessionSignal) {
        self.signal_here(id, signal);
        self.backplane().signal_session(id, signal).await;
    }

    fn signal_here(&self, id: uuid::Uuid, signal: SessionSignal) {
        if let Some(sender) = self.signals().get(&id) {
            let _ = sender.send(signal);
        }
    }

    fn signals(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, broadcast::Sender<SessionSignal>>> {
        self.inner
            .signals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    pub fn has_room(&self, room: &str) -> bool {
        self.inner.rooms.contains_key(room)
    }

    /// Live frames of a room from now on. Subscribe *before* reading history, then skip frames whose `seq`
    /// the history already covered: that way nothing falls between the two.
    pub fn subscribe(&self, room: &str) -> Option<broadcast::Receiver<Frame>> {
        self.inner.rooms.get(room).map(|r| r.feed.live.subscribe())
    }

    /// Who is in `room`.
    pub fn presence(&self, room: &str) -> Option<&Presence> {
        self.inner.rooms.get(room).map(|r| &r.presence)
    }

    /// Sends a frame that is not stored (typing) to everyone in `room` now.
    pub fn broadcast_ephemeral(&self, room: &str, frame: &ServerFrame) {
        if let Some(room) = self.inner.rooms.get(room) {
            let _ = room.feed.live.send(Frame {
                seq: EPHEMERAL,
                json: frame.encode().into(),
                at: std::time::Instant::now(),
            });
        }
    }

    /// Stores an event and broadcasts it; returns it as stored, with its sequence number. An id the room
    /// already has is not stored or broadcast again: the stored event comes back with `fresh: false`.
    pub async fn publish(&self, room: &str, event: NewEvent) -> Result<Appended, PublishError> {
        self.submit(room, event).await?.await.1
    }

    /// Queues an event for the room's writer and returns at once (waiting only while the writer's queue
    /// is full); the [`Receipt`] resolves once it is stored and broadcast. A connection can so have
    /// several messages in flight, and the writer commits them together instead of one per round trip.
    pub async fn submit(&self, room: &str, event: NewEvent) -> Result<Receipt, PublishError> {
        let writer = &self
            .inner
            .rooms
            .get(room)
            .ok_or_else(|| PublishError::NoSuchRoom(room.to_owned()))?
            .writer;
        let id = event.id;
        let (stored, reply) = oneshot::channel();
        writer
            .send(Append { event, stored })
            .await
            .map_err(|_| PublishError::WriterGone)?;
        Ok(Receipt { id, reply })
    }
}

/// One connection's view of its browser session's signals; see [`Hub::watch_session`].
pub struct SessionWatch {
    hub: Hub,
    id: uuid::Uuid,
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
        if let Some(room) = self.inner.rooms.get(room) {
            room.feed.stored(self.store(), first, last).await;
        }
    }

    async fn catch_up_all(&self) {
        for room in self.inner.rooms.values() {
            room.feed.catch_up(self.store()).await;
        }
    }

    fn typing_elsewhere(&self, room: &str, name: &str) {
        self.broadcast_ephemeral(
            room,
            &ServerFrame::Typing {
                name: name.to_owned(),
            },
        );
    }

    fn session_signal(&self, session: uuid::Uuid, signal: SessionSignal) {
        self.signal_here(session, signal);
    }

    async fn gone_elsewhere(&self, room: &str, seat: Seat) {
        self.announce_leave(room, seat).await;
    }

    fn seats_here(&self) -> Vec<(String, Seat)> {
        self.inner
            .rooms
            .iter()
            .flat_map(|(name, room)| {
                room.presence
                    .seats()
                    .into_iter()
                    .map(move |seat| (name.clone(), seat))
            })
            .collect()
    }
}

impl Seat {
    /// A join or leave line for this seat, with a fresh id.
    pub fn event(&self, kind: EventKind) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::new_v4(),
            kind,
            name: self.name.clone(),
            user_id: self.user,
            user_kind: self.kind,
            text: String::new(),
            target: None,
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
    id: uuid::Uuid,
    reply: oneshot::Receiver<Result<Appended, Arc<StoreError>>>,
}

impl Future for Receipt {
    type Output = (uuid::Uuid, Result<Appended, PublishError>);

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

async fn run_writer(
    store: Arc<dyn EventStore>,
    feed: Arc<Feed>,
    mut appends: mpsc::Receiver<Append>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while appends.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = std::time::Instant::now();
        let (events, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|a| (a.event, a.stored)).unzip();
        let result = store.append(&feed.room, events, now_ms()).await;
        metrics::histogram!(super::metrics::STORE_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(stored) => {
                let fresh: Vec<&ChatEvent> = stored
                    .iter()
                    .filter(|a| a.fresh)
                    .map(|a| &a.event)
                    .collect();
                feed.deliver(store.as_ref(), &fresh).await;
                metrics::histogram!(super::metrics::FANOUT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                for (appended, reply) in stored.into_iter().zip(replies) {
                    let _ = reply.send(Ok(appended));
                }
            }
            Err(err) => {
                tracing::error!(room = %feed.room, error = %err, "storing a batch failed");
                let err = Arc::new(err);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
