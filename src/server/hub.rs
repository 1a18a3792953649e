//! The in-memory pub/sub hub: one writer task and one broadcast channel per room.
//!
//! A publish goes to the room's writer task, which stores a batch (the store stamps the sequence numbers),
//! serialises each event **once**, and broadcasts the bytes. Every connection clones the same cheap
//! `Utf8Bytes` handle, so fan-out costs no serialisation per recipient. Because one task per room both
//! stores and broadcasts, broadcast order is sequence order.

use super::presence::Presence;
use super::store::{Appended, MessageStore, NewEvent, StoreError};
use crate::protocol::ServerFrame;
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// One serialised frame, ready to write to any socket.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The event's sequence number, or [`EPHEMERAL`] for frames that are not stored (typing).
    pub seq: u64,
    pub json: Utf8Bytes,
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
    store: Arc<dyn MessageStore>,
    /// Flips to true when the server starts shutting down; sessions then close their sockets.
    closing: watch::Sender<bool>,
    rooms: HashMap<String, Room>,
}

struct Room {
    live: broadcast::Sender<Frame>,
    writer: mpsc::Sender<Append>,
    presence: Presence,
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
    pub fn new(store: Arc<dyn MessageStore>, rooms: &[&str], live_capacity: usize) -> Self {
        let rooms = rooms
            .iter()
            .map(|&name| {
                let (live, _) = broadcast::channel(live_capacity);
                // Bounded so a burst of senders waits for the store instead of queueing without limit.
                let (writer, appends) = mpsc::channel(MAX_BATCH * 4);
                tokio::spawn(run_writer(
                    name.to_owned(),
                    store.clone(),
                    live.clone(),
                    appends,
                ));
                (
                    name.to_owned(),
                    Room {
                        live,
                        writer,
                        presence: Presence::default(),
                    },
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                store,
                closing: watch::Sender::new(false),
                rooms,
            }),
        }
    }

    pub fn store(&self) -> &dyn MessageStore {
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
        self.inner.rooms.get(room).map(|r| r.live.subscribe())
    }

    /// Who is in `room`.
    pub fn presence(&self, room: &str) -> Option<&Presence> {
        self.inner.rooms.get(room).map(|r| &r.presence)
    }

    /// Sends a frame that is not stored (typing) to everyone in `room` now.
    pub fn broadcast_ephemeral(&self, room: &str, frame: &ServerFrame) {
        if let Some(room) = self.inner.rooms.get(room) {
            let _ = room.live.send(Frame {
                seq: EPHEMERAL,
                json: frame.encode().into(),
            });
        }
    }

    /// Stores an event and broadcasts it; returns it as stored, with its sequence number. An id the room
    /// already has is not stored or broadcast again: the stored event comes back with `fresh: false`.
    pub async fn publish(&self, room: &str, event: NewEvent) -> Result<Appended, PublishError> {
        let writer = &self
            .inner
            .rooms
            .get(room)
            .ok_or_else(|| PublishError::NoSuchRoom(room.to_owned()))?
            .writer;
        let (stored, reply) = oneshot::channel();
        writer
            .send(Append { event, stored })
            .await
            .map_err(|_| PublishError::WriterGone)?;
        match reply.await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(err)) => Err(PublishError::Store(err)),
            Err(_) => Err(PublishError::WriterGone),
        }
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp Confab stores.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn run_writer(
    room: String,
    store: Arc<dyn MessageStore>,
    live: broadcast::Sender<Frame>,
    mut appends: mpsc::Receiver<Append>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while appends.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = std::time::Instant::now();
        let (events, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|a| (a.event, a.stored)).unzip();
        let result = store.append(&room, events, now_ms()).await;
        metrics::histogram!(super::metrics::STORE_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(stored) => {
                for (appended, reply) in stored.into_iter().zip(replies) {
                    if appended.fresh {
                        let json = ServerFrame::encode_event(&appended.event);
                        // No receivers is fine: nobody is connected.
                        let _ = live.send(Frame {
                            seq: appended.event.seq,
                            json: json.into(),
                        });
                    }
                    let _ = reply.send(Ok(appended));
                }
                metrics::histogram!(super::metrics::FANOUT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            Err(err) => {
                tracing::error!(%room, error = %err, "storing a batch failed");
                let err = Arc::new(err);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
