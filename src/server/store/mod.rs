//! Where events live, and (in [`identity`], a trait of its own) who the people behind them are. The event
//! store is the one authority on order: it gives each event of a room its sequence number, and live fan-out
//! and history replay both use those numbers.

pub mod bots;
pub mod identity;
mod memory;
mod postgres;
pub mod rooms;
mod sqlite;

pub use bots::BotStore;
pub use identity::{IdentityError, IdentityStore, NewGuest, SessionInfo, SessionRecord, User};
pub use memory::MemoryStore;
pub use postgres::{PgStore, EVENTS_CHANNEL};
pub use rooms::{Room, RoomError, RoomStore};
pub use sqlite::SqliteStore;

use crate::protocol::{ChatEvent, EventKind, UserKind};
use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

/// An event before the store has placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub kind: EventKind,
    /// The author's name as shown, and who they are.
    pub name: String,
    pub user_id: Uuid,
    pub user_kind: UserKind,
    pub text: String,
    /// For a `delete`: the message it deletes.
    pub target: Option<Uuid>,
    /// Bots whose webhooks this message calls (mentioned, or in its direct room); the store keeps a call
    /// for each one in the room, in the same transaction as the message. Filled in by the hub.
    pub call: Vec<Uuid>,
}

impl NewEvent {
    /// The event as stored: in `room`, at position `seq`, stamped `at`.
    pub fn placed(self, room: &str, seq: u64, at: i64) -> ChatEvent {
        ChatEvent {
            seq,
            id: self.id,
            room: room.to_owned(),
            at,
            kind: self.kind,
            name: self.name,
            user_id: self.user_id,
            user_kind: self.user_kind,
            text: self.text,
            target: self.target,
        }
    }
}

/// The result of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub event: ChatEvent,
    /// False when the room already had an event with this id: the stored one is returned, nothing new was
    /// written, and nothing must be broadcast.
    pub fresh: bool,
}

/// Storage failures; the detail is logged, clients see only [`crate::protocol::ErrorCode::Unavailable`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What the server needs from storage. Appends for one room come from one writer task at a time, which is
/// what makes the sequence numbers a total order.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores a batch in order, durably, stamping each new event with the room's next sequence number and
    /// `at`. An id the room already has is not stored again (see [`Appended::fresh`]).
    async fn append(
        &self,
        room: &str,
        events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError>;

    /// Up to `limit` events with `seq > after`, oldest first.
    async fn since(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError>;

    /// Up to `limit` messages (and actions) with `seq > after` that `reader` did not write, oldest first:
    /// what is unread for them. Nothing else is read, so a guest who joins during a join storm does not
    /// read back through hundreds of join lines to count nothing.
    async fn unread_since(
        &self,
        room: &str,
        after: u64,
        reader: Uuid,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError>;

    /// The newest `limit` events with `seq < before`, oldest first. `before = u64::MAX` gives the latest.
    async fn before(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError>;

    /// The event of `room` with this id, if the store has it.
    async fn find(&self, room: &str, id: Uuid) -> Result<Option<ChatEvent>, StoreError>;

    /// Deletes message `id` from the history: it keeps its place (and sequence number) as a `deleted`
    /// event with no text. Returns whether there was such a message.
    async fn redact(&self, room: &str, id: Uuid) -> Result<bool, StoreError>;

    /// The room's newest sequence number (0 for a room with no events).
    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self
            .before(room, u64::MAX, 1)
            .await?
            .last()
            .map_or(0, |e| e.seq))
    }

    /// Flushes and closes; called once on shutdown.
    async fn close(&self) {}
}

/// Columns of an event row, in the order [`event_from_row`] reads them.
const EVENT_COLUMNS: &str = "seq, id, at, kind, name, user_id, user_kind, text, target";

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Message => "message",
        EventKind::Action => "action",
        EventKind::Join => "join",
        EventKind::Leave => "leave",
        EventKind::Delete => "delete",
        EventKind::Deleted => "deleted",
        // Never stored by this version; kept as such if a newer one wrote it.
        EventKind::Unknown => "unknown",
    }
}

/// Numbers a batch of events after `last`, in order, for either SQL backend. An event whose id is in
/// `known` (stored earlier: a client's retry) or earlier in this batch comes back as not fresh, with the
/// event as first stored; only the fresh ones are to be inserted.
fn place(
    room: &str,
    events: Vec<NewEvent>,
    mut known: HashMap<Uuid, ChatEvent>,
    last: &mut i64,
    at: i64,
) -> Vec<Appended> {
    let mut appended = Vec::with_capacity(events.len());
    for event in events {
        if let Some(stored) = known.get(&event.id) {
            appended.push(Appended {
                event: stored.clone(),
                fresh: false,
            });
            continue;
        }
        *last += 1;
        let event = event.placed(room, *last as u64, at);
        known.insert(event.id, event.clone());
        appended.push(Appended { event, fresh: true });
    }
    appended
}

/// Reads an event row (see [`EVENT_COLUMNS`]) of either SQL backend.
fn event_from_row<'r, R>(room: &str, row: &'r R) -> Result<ChatEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Option<&'r str>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt = |what: &str| StoreError::Corrupt(format!("{what} in room {room}"));
    let kind = match row.try_get::<&str, _>("kind")? {
        "message" => EventKind::Message,
        "action" => EventKind::Action,
        "join" => EventKind::Join,
        "leave" => EventKind::Leave,
        "delete" => EventKind::Delete,
        "deleted" => EventKind::Deleted,
        // A kind a newer version wrote (a rolling deploy): passed on, and shown as nothing.
        _ => EventKind::Unknown,
    };
    let user_id: &str = row.try_get("user_id")?;
    Ok(ChatEvent {
        seq: u64::try_from(row.try_get::<i64, _>("seq")?).map_err(|_| corrupt("negative seq"))?,
        id: Uuid::from_str(row.try_get::<&str, _>("id")?).map_err(|_| corrupt("bad uuid"))?,
        room: room.to_owned(),
        at: row.try_get("at")?,
        kind,
        name: row.try_get("name")?,
        user_id: Uuid::from_str(user_id).unwrap_or_default(),
        user_kind: identity::kind_from_column(row.try_get::<&str, _>("user_kind")?),
        text: row.try_get("text")?,
        target: row
            .try_get::<Option<&str>, _>("target")?
            .and_then(|t| Uuid::from_str(t).ok()),
    })
}

/// The room's newest sequence number, from the (room, seq) index alone; `$1` the room.
const HEAD: &str = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE room = $1";

/// What is unread for a reader (see [`EventStore::unread_since`]): `$1` the room, `$2` after, `$3` the
/// reader, `$4` the limit. Shared by the SQL stores.
fn unread_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE room = $1 AND seq > $2 \
         AND kind IN ('message', 'action') AND user_id <> $3 ORDER BY seq LIMIT $4"
    )
}

/// `UPDATE` that turns a message into its tombstone; `$1` the room, `$2` the id. Shared by the SQL stores.
const REDACT: &str =
    "UPDATE events SET kind = 'deleted', text = '' WHERE room = $1 AND id = $2 AND kind IN ('message', 'action')";

/// A message from "Ann" with a fresh id, for the stores' tests.
#[cfg(test)]
pub(super) fn test_message(text: &str) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        kind: EventKind::Message,
        name: "Ann".into(),
        user_id: Uuid::nil(),
        user_kind: UserKind::Guest,
        text: text.into(),
        target: None,
        call: Vec::new(),
    }
}

/// The migrations of `backend` (`sqlite` or `postgres`) before `version`, in a directory of their own:
/// for a database as the previous schema wrote it.
#[cfg(test)]
pub(crate) fn migrations_before(backend: &str, version: &str) -> tempfile::TempDir {
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/server/store/migrations")
        .join(backend);
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < version {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    old
}

/// Users as schema 0006 held them, for the upgrade tests of 0007: `$1` a guest Ann, `$2` a banned
/// guest Cy, `$3` a member Dee.
#[cfg(test)]
pub(crate) const USERS_OF_0006: &str =
    "INSERT INTO users (id, name, name_key, kind, created_at, banned) \
     VALUES ($1, 'Ann', 'ann', 'guest', 1, FALSE), ($2, 'Cy', 'cy', 'guest', 1, TRUE), \
     ($3, 'Dee', 'dee', 'member', 1, FALSE)";

/// A join storm's history in `general` as schema 0007 held it, for the upgrade tests of 0008: joins by
/// many, and a message now and then, one of them `reader`'s own. One `INSERT`, with its values written
/// in (all made here).
#[cfg(test)]
pub(crate) fn storm_of_0007(reader: Uuid, other: Uuid) -> String {
    let rows: Vec<String> = (1..=300_i64)
        .map(|seq| {
            let (kind, text, user) = match seq % 100 {
                0 => ("message", format!("said at {seq}"), other),
                50 => ("message", format!("mine at {seq}"), reader),
                _ => ("join", String::new(), Uuid::new_v4()),
            };
            let id = Uuid::new_v4();
            format!("('general', {seq}, '{id}', {seq}, '{kind}', 'Someone', '{text}', '{user}')")
        })
        .collect();
    format!(
        "INSERT INTO events (room, seq, id, at, kind, name, text, user_id) VALUES {}",
        rows.join(", ")
    )
}

/// After the upgrade to 0008, `reader`'s unread in [`storm_of_0007`] after seq 120 is others' messages
/// alone.
#[cfg(test)]
pub(crate) async fn check_unread_of_0007(store: &impl EventStore, reader: Uuid) {
    let unread = store
        .unread_since("general", 120, reader, 10)
        .await
        .unwrap();
    assert_eq!(
        unread.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["said at 200", "said at 300"],
        "others' messages after the mark, and nothing else"
    );
}

/// After the upgrade to 0007, every user of [`USERS_OF_0006`] is kept and who owns a name is as before.
#[cfg(test)]
pub(crate) async fn check_users_of_0006(store: &impl IdentityStore, [ann, cy, dee]: [Uuid; 3]) {
    assert_eq!(store.user(ann).await.unwrap().unwrap().name, "Ann");
    assert!(
        store.owner_of("ann").await.unwrap().is_none(),
        "a guest owns no name"
    );
    let banned = store
        .owner_of("cy")
        .await
        .unwrap()
        .expect("a banned name stays locked");
    assert_eq!((banned.id, banned.banned), (cy, true));
    assert_eq!(store.owner_of("dee").await.unwrap().unwrap().id, dee);
}
