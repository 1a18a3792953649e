//! PostgreSQL: shared, durable history for several Confab instances (`DATABASE_URL=postgres://…`).
//!
//! Order: every append locks its room's row in `rooms` until it commits, so appends to one room commit one
//! after another and take consecutive sequence numbers. A plain SEQUENCE would not do: it hands out numbers
//! at insert time, so 11 can commit before 10, and a client that resumes "after 11" would never see 10.
//! Here a reader that sees N can already see everything below N, and a rolled-back append leaves no gap.
//!
//! Fan-out: the append's transaction also sends `NOTIFY confab_events, '<room> <first> <last>'`. Postgres
//! delivers it on commit, in commit order, and it is a few bytes whatever the message size (NOTIFY payloads
//! are capped at 8,000 bytes; a 4,000-character message can be 16,000). Listeners read the rows themselves
//! (see `server::backplane`).

use super::{
    event_from_row, kind_name, place, seq_param, Appended, EventStore, NewEvent, StoreError,
    EVENT_COLUMNS,
};
use crate::protocol::ChatEvent;
use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// The channel that carries "new events in a room" between instances.
pub const EVENTS_CHANNEL: &str = "confab_events";

pub struct PgStore {
    pool: PgPool,
    /// The same pool: PostgreSQL takes writers on many connections at once. (The SQL the stores share
    /// writes through `writer`, which on SQLite is a connection of its own.)
    writer: PgPool,
}

impl PgStore {
    /// Connects and migrates. Migrations take a Postgres advisory lock, so instances starting together
    /// run them once.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Fail fast while the database is down, so clients hear "unavailable" instead of waiting.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        sqlx::migrate!("src/server/store/migrations/postgres")
            .run(&pool)
            .await?;
        let writer = pool.clone();
        let store = Self { pool, writer };
        store.fill_name_keys().await?;
        Ok(store)
    }

    /// The pool, shared with the backplane (notifications, presence).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn query_events(
        &self,
        sql: &str,
        room: &str,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(room)
            .bind(seq_param(seq))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| event_from_row(room, row)).collect()
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        room: &str,
        mut events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let wanted = super::bots::take_calls(&mut events);
        let mut tx = self.pool.begin().await?;
        // Creates the room on its first event, and in every case locks its row until commit: the lock is
        // what serialises appends across instances (see the module's comment).
        let mut last: i64 = sqlx::query_scalar(
            "INSERT INTO rooms (room) VALUES ($1) \
             ON CONFLICT (room) DO UPDATE SET last_seq = rooms.last_seq RETURNING last_seq",
        )
        .bind(room)
        .fetch_one(&mut *tx)
        .await?;

        // Ids already stored (a retry, perhaps through another instance). Read under the lock, so no
        // concurrent append can store one of them in between.
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room = $1 AND id = ANY($2)"
        ))
        .bind(room)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut known: HashMap<Uuid, ChatEvent> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let event = event_from_row(room, row)?;
            known.insert(event.id, event);
        }

        let first = last + 1;
        let appended = place(room, events, known, &mut last, at);
        let mut fresh = FreshRows::default();
        for event in appended.iter().filter(|a| a.fresh) {
            fresh.push(&event.event);
        }
        if !fresh.seq.is_empty() {
            sqlx::query(
                "INSERT INTO events (room, seq, id, at, kind, name, user_id, user_kind, text, target) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[])",
            )
            .bind(room)
            .bind(&fresh.seq)
            .bind(&fresh.id)
            .bind(&fresh.at)
            .bind(&fresh.kind)
            .bind(&fresh.name)
            .bind(&fresh.user_id)
            .bind(&fresh.user_kind)
            .bind(&fresh.text)
            .bind(&fresh.target)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE rooms SET last_seq = $2 WHERE room = $1")
                .bind(room)
                .bind(last)
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(format!("{room} {first} {last}"))
                .execute(&mut *tx)
                .await?;
        }
        let calls = super::bots::calls(wanted, &appended);
        super::bots::write_calls::<sqlx::Postgres>(&mut tx, room, &calls, at).await?;
        tx.commit().await?;
        Ok(appended)
    }

    async fn since(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        self.query_events(&sql, room, after, limit).await
    }

    async fn head(&self, room: &str) -> Result<u64, StoreError> {
        // From the (room, seq) index alone: no event row is read or decoded.
        let head: i64 = sqlx::query_scalar(super::HEAD)
            .bind(room)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(head).unwrap_or(0))
    }

    async fn unread_since(
        &self,
        room: &str,
        after: u64,
        reader: Uuid,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let sql = super::unread_sql();
        let rows = sqlx::query(&sql)
            .bind(room)
            .bind(seq_param(after))
            .bind(reader.to_string())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| event_from_row(room, row)).collect()
    }

    async fn before(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE room = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3) AS page ORDER BY seq"
        );
        self.query_events(&sql, room, before, limit).await
    }

    async fn find(&self, room: &str, id: Uuid) -> Result<Option<ChatEvent>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room = $1 AND id = $2"
        ))
        .bind(room)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| event_from_row(room, &row)).transpose()
    }

    async fn redact(&self, room: &str, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(super::REDACT)
            .bind(room)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

super::identity::sql_identity_store!(PgStore);
super::rooms::sql_room_store!(PgStore);
super::bots::sql_bot_store!(PgStore);

/// New events as columns, for one multi-row INSERT.
#[derive(Default)]
struct FreshRows {
    seq: Vec<i64>,
    id: Vec<String>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    name: Vec<String>,
    user_id: Vec<String>,
    user_kind: Vec<&'static str>,
    text: Vec<String>,
    target: Vec<Option<String>>,
}

impl FreshRows {
    fn push(&mut self, event: &ChatEvent) {
        self.seq.push(seq_param(event.seq));
        self.id.push(event.id.to_string());
        self.at.push(event.at);
        self.kind.push(kind_name(event.kind));
        self.name.push(event.name.clone());
        self.user_id.push(event.user_id.to_string());
        self.user_kind.push(event.user_kind.as_str());
        self.text.push(event.text.clone());
        self.target.push(event.target.map(|t| t.to_string()));
    }
}
