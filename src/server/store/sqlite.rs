//! The embedded default: SQLite in WAL mode with `synchronous=FULL`.
//!
//! Durability: a batch is acknowledged only after its transaction commits, and with `synchronous=FULL` a
//! commit is on disk (fsync of the WAL) before it returns, so neither a process crash nor a power cut
//! loses an acknowledged message. The hub's writer commits a whole batch in one transaction (group commit),
//! so the fsync is paid once per batch, not once per message.

use super::{
    event_from_row, kind_name, place, seq_param, Appended, EventStore, NewEvent, StoreError,
    EVENT_COLUMNS,
};
use crate::protocol::ChatEvent;
use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// The start of the lookup of a batch's ids among the stored events. Without statistics, SQLite's planner
/// prefers the primary key's `room = ?` to the `(room, id)` index and reads every event of the room, so
/// each append took longer as the history grew (24 ms per batch at 160,000 events); `INDEXED BY` keeps
/// it a few index seeks.
const KNOWN_IDS: &str =
    "SELECT seq, id, at, kind, name, user_id, user_kind, text, target FROM events \
     INDEXED BY events_room_id WHERE room = ";

/// Rows per statement: ten parameters each stays well under SQLite's 32,766.
const MAX_ROWS_PER_STATEMENT: usize = 1_000;

pub struct SqliteStore {
    /// Reads, several at once beside the writer (WAL).
    pool: SqlitePool,
    /// Every write, on one connection. SQLite has one writer at a time; writers on several connections
    /// would wait for each other in SQLite's busy handler, which sleeps (1 ms, 2 ms, 5 ms… up to 100 ms)
    /// and so let a webhook's bookkeeping or a read mark hold up a room's commit by far longer than the
    /// commit takes. One connection queues them in this process instead, in order.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it to the current schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // A COMMIT that fails on a full disk (or an I/O error) is rolled back by SQLite itself; sqlx's
        // own rollback then fails, and it goes on counting the connection as inside a transaction,
        // refusing every later BEGIN on it. Such a connection is closed instead of reused, so the
        // store recovers as soon as the disk has room again.
        // A connection to a local file does not drop the way a network one does: no ping (a round trip
        // to the connection's worker thread) before every query.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("src/server/store/migrations/sqlite")
            .run(&writer)
            .await?;
        // WAL lets readers (history, catch-up) run beside the one writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let store = Self { pool, writer };
        store.carry_over_legacy_sessions().await?;
        store.fill_name_keys().await?;
        Ok(store)
    }

    /// Sessions from before accounts (migration 0002) keyed the raw token; keep each one that had joined,
    /// under the hash of its token and bound to the guest made from its name, so an upgrade signs nobody
    /// out. Runs once: the legacy table is dropped after.
    async fn carry_over_legacy_sessions(&self) -> Result<(), StoreError> {
        let legacy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'legacy_sessions')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !legacy {
            return Ok(());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT token, name, updated_at FROM legacy_sessions WHERE name IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (token, name, at) in rows {
            sqlx::query(
                "INSERT INTO sessions (id, token_hash, user_id, via, created_at, last_seen_at) \
                 SELECT $1, $2, id, 'guest', $3, $3 FROM users WHERE name = $4 AND kind = 'guest' LIMIT 1",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(crate::server::identity::token_hash(&token))
            .bind(at)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DROP TABLE legacy_sessions")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
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

/// The writer's connection while an append's transaction may be open on it: closed when dropped,
/// unless released. The transaction is SQL of the append's own (so that it can share a round trip with
/// the statements around it), which sqlx does not count, so its pool cannot tell that one was left
/// open by an append cancelled half-way.
struct Open(Option<PoolConnection<Sqlite>>);

impl Open {
    fn conn(&mut self) -> &mut SqliteConnection {
        self.0.as_deref_mut().expect("held until released")
    }

    /// The transaction has ended: the connection goes back to the pool.
    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Stores a batch in one transaction, in as few round trips to the connection's thread as it takes:
/// one to begin, read the room's head and find which of the batch's ids it holds already, and one to
/// insert the new events and commit. Each round trip wakes that thread and then the caller; on a
/// busy machine every wake-up can wait for a core, and the room's next messages wait behind the
/// commit. (It took five: begin, head, ids, insert, commit.)
async fn append_on(
    conn: &mut SqliteConnection,
    room: &str,
    events: Vec<NewEvent>,
    wanted: Vec<(Uuid, Uuid, Vec<Uuid>)>,
    at: i64,
) -> Result<Vec<Appended>, StoreError> {
    // IMMEDIATE takes the write lock up front. A deferred transaction would start as a reader and fail
    // with SQLITE_BUSY_SNAPSHOT (which busy_timeout does not retry) if another process on the file
    // (`confab bot create` beside the server) wrote in between.
    let mut first = QueryBuilder::<Sqlite>::new(
        "BEGIN IMMEDIATE; SELECT COALESCE(MAX(seq), 0) FROM events WHERE room = ",
    );
    first.push_bind(room);
    let mut chunks = events.chunks(MAX_ROWS_PER_STATEMENT);
    if let Some(ids) = chunks.next() {
        first.push("; ");
        push_known(&mut first, room, ids);
    }
    let rows = first.build().fetch_all(&mut *conn).await?;
    // The head's one row comes first, then the events already stored.
    let (head, stored) = rows
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("the room's head read no row".into()))?;
    let mut last: i64 = head.try_get(0)?;
    let mut known = HashMap::new();
    let mut keep = |row: &SqliteRow| -> Result<(), StoreError> {
        let event = event_from_row(room, row)?;
        known.insert(event.id, event);
        Ok(())
    };
    stored.iter().try_for_each(&mut keep)?;
    // Batches of more than a statement's rows (not the rooms' writers', which stop at 256).
    for ids in chunks {
        let mut select = QueryBuilder::<Sqlite>::new("");
        push_known(&mut select, room, ids);
        select
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .try_for_each(&mut keep)?;
    }
    let appended = place(room, events, known, &mut last, at);
    let fresh: Vec<&ChatEvent> = appended
        .iter()
        .filter(|a| a.fresh)
        .map(|a| &a.event)
        .collect();
    let calls = super::bots::calls(wanted, &appended);
    let mut inserts = fresh.chunks(MAX_ROWS_PER_STATEMENT).peekable();
    let mut committed = false;
    while let Some(rows) = inserts.next() {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (room, seq, id, at, kind, name, user_id, user_kind, text, target) ",
        );
        insert.push_values(rows, |mut row, event| {
            row.push_bind(room)
                .push_bind(seq_param(event.seq))
                .push_bind(event.id.to_string())
                .push_bind(event.at)
                .push_bind(kind_name(event.kind))
                .push_bind(event.name.as_str())
                .push_bind(event.user_id.to_string())
                .push_bind(event.user_kind.as_str())
                .push_bind(event.text.as_str())
                .push_bind(event.target.map(|t| t.to_string()));
        });
        if inserts.peek().is_none() && calls.is_empty() {
            insert.push("; COMMIT");
            committed = true;
        }
        insert.build().execute(&mut *conn).await?;
    }
    super::bots::write_calls::<Sqlite>(&mut *conn, room, &calls, at).await?;
    if !committed {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    Ok(appended)
}

/// The lookup of which of `ids` the room holds already.
fn push_known(query: &mut QueryBuilder<'_, Sqlite>, room: &str, ids: &[NewEvent]) {
    query
        .push(KNOWN_IDS)
        .push_bind(room.to_owned())
        .push(" AND id IN (");
    let mut list = query.separated(", ");
    for event in ids {
        list.push_bind(event.id.to_string());
    }
    list.push_unseparated(")");
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        room: &str,
        mut events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        let wanted = super::bots::take_calls(&mut events);
        let mut open = Open(Some(self.writer.acquire().await?));
        let outcome = append_on(open.conn(), room, events, wanted, at).await;
        if outcome.is_err() && sqlx::query("ROLLBACK").execute(open.conn()).await.is_err() {
            // Whether a transaction is still open is unknown: the connection is closed, not reused.
            return outcome;
        }
        open.release();
        outcome
    }

    async fn since(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"
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
            "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?) \
             ORDER BY seq"
        );
        self.query_events(&sql, room, before, limit).await
    }

    async fn find(&self, room: &str, id: Uuid) -> Result<Option<ChatEvent>, StoreError> {
        let row = sqlx::query(&format!("{KNOWN_IDS} ? AND id = ?"))
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
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn close(&self) {
        // Checkpoint the WAL into the main file so the database is one self-contained file at rest.
        self.pool.close().await;
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await;
        self.writer.close().await;
    }
}

super::identity::sql_identity_store!(SqliteStore);
super::rooms::sql_room_store!(SqliteStore);
super::bots::sql_bot_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::super::test_message as message;
    use super::*;

    /// A new store in a directory of its own, removed when the directory is dropped.
    async fn fresh(file: &str) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join(file)).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_connection_left_counted_inside_a_failed_transaction_is_not_reused() {
        let (_dir, store) = fresh("confab.db").await;
        // What a COMMIT that fails on a full disk leaves behind on the writer's connection: SQLite has
        // ended the transaction itself, so sqlx's rollback on drop fails and it still counts one.
        let mut tx = store.writer.begin().await.unwrap();
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        drop(tx);
        for n in 0..8 {
            let appended = store
                .append("general", vec![message(&format!("after {n}"))], n)
                .await
                .expect("the store recovers");
            assert_eq!(appended[0].event.seq, n as u64 + 1);
        }
    }

    #[tokio::test]
    async fn a_batch_the_database_refuses_leaves_nothing_and_the_next_one_is_stored() {
        let (_dir, store) = fresh("confab.db").await;
        store
            .append("general", vec![message("first")], 1)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.text = 'refused' \
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let refused = store
            .append("general", vec![message("kept out"), message("refused")], 2)
            .await;
        assert!(refused.is_err(), "the batch fails as a whole");
        sqlx::query("DROP TRIGGER refuse")
            .execute(&store.writer)
            .await
            .unwrap();
        let next = store
            .append("general", vec![message("second")], 3)
            .await
            .expect("the store goes on");
        assert_eq!(next[0].event.seq, 2, "nothing of the refused batch stayed");
        let stored = store.since("general", 0, 10).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(
            (stored[0].text.as_str(), stored[1].text.as_str()),
            ("first", "second")
        );
    }

    /// Polls `future` `polls` times, then drops it, as a cancelled caller would.
    async fn cancel_after<F: std::future::Future>(future: F, polls: usize) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut left = polls;
        std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
            std::task::Poll::Pending if left == 0 => std::task::Poll::Ready(None),
            std::task::Poll::Pending => {
                left -= 1;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await
    }

    #[tokio::test]
    async fn an_append_dropped_half_way_leaves_no_transaction_open() {
        let (_dir, store) = fresh("confab.db").await;
        let mut seq = 0;
        let mut cancelled = 0;
        // Dropped after 1, 2, 3… polls: at every point of its round trips in turn.
        for polls in 1..200 {
            let batch = vec![message(&format!("maybe {polls}"))];
            match cancel_after(store.append("general", batch, polls as i64), polls).await {
                Some(done) => {
                    seq = done.unwrap()[0].event.seq;
                }
                None => cancelled += 1,
            }
            let next = store
                .append("general", vec![message(&format!("after {polls}"))], 0)
                .await
                .expect("the next append is not refused");
            assert!(next[0].event.seq > seq, "sequence numbers go on");
            seq = next[0].event.seq;
            if cancelled > 0 && polls > 40 {
                break;
            }
        }
        assert!(cancelled > 0, "some appends were dropped half-way");
    }

    #[tokio::test]
    async fn events_survive_reopening_and_ids_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let repeat = message("once");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            let batch = store
                .append(
                    "general",
                    vec![message("a"), repeat.clone(), repeat.clone()],
                    7,
                )
                .await
                .unwrap();
            assert_eq!(
                batch
                    .iter()
                    .map(|a| (a.event.seq, a.fresh))
                    .collect::<Vec<_>>(),
                [(1, true), (2, true), (2, false)]
            );
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let again = store
            .append("general", vec![repeat.clone(), message("b")], 8)
            .await
            .unwrap();
        assert_eq!(
            again
                .iter()
                .map(|a| (a.event.seq, a.fresh))
                .collect::<Vec<_>>(),
            [(2, false), (3, true)]
        );
        assert_eq!(
            again[0].event.at, 7,
            "the duplicate returns the original event"
        );

        let texts = |events: Vec<ChatEvent>| events.into_iter().map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(
            texts(store.since("general", 1, 10).await.unwrap()),
            ["once", "b"]
        );
        assert_eq!(
            texts(store.before("general", u64::MAX, 2).await.unwrap()),
            ["once", "b"]
        );
        assert_eq!(
            texts(store.before("general", 3, 10).await.unwrap()),
            ["a", "once"]
        );
        assert!(store.since("other", 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_statement_is_stored_whole_and_in_order() {
        let (_dir, store) = fresh("big.db").await;
        let count = MAX_ROWS_PER_STATEMENT * 2 + 7;
        let batch: Vec<NewEvent> = (0..count).map(|i| message(&format!("m{i}"))).collect();
        let retry = batch[MAX_ROWS_PER_STATEMENT + 3].clone();
        let appended = store.append("general", batch, 1).await.unwrap();
        assert_eq!(appended.len(), count);
        assert!(appended.iter().all(|a| a.fresh));
        let stored = store.since("general", 0, usize::MAX).await.unwrap();
        assert_eq!(stored.len(), count);
        for (i, event) in stored.iter().enumerate() {
            assert_eq!(
                (event.seq, event.text.as_str()),
                (i as u64 + 1, format!("m{i}").as_str())
            );
        }
        // A retry of a message from the second statement's rows is found, not stored again.
        let again = store.append("general", vec![retry], 2).await.unwrap();
        assert_eq!(
            (again[0].event.seq, again[0].fresh),
            (MAX_ROWS_PER_STATEMENT as u64 + 4, false)
        );
    }

    #[tokio::test]
    async fn a_retried_id_is_looked_up_by_index_not_by_reading_the_room() {
        let (_dir, store) = fresh("plan.db").await;
        assert!(
            KNOWN_IDS.starts_with(&format!("SELECT {EVENT_COLUMNS} ")),
            "rows are read by event_from_row"
        );
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!(
            "EXPLAIN QUERY PLAN {KNOWN_IDS} ? AND id IN (?, ?)"
        ))
        .bind("general")
        .bind("a")
        .bind("b")
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let detail = &plan[0].3;
        assert!(
            detail.contains("events_room_id (room=? AND id=?)"),
            "plan: {detail}"
        );
    }

    #[tokio::test]
    async fn a_names_owner_is_found_by_index_not_by_reading_every_user() {
        let (_dir, store) = fresh("plan.db").await;
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT u.id FROM users u WHERE {}",
            super::super::identity::OWNER_OF
        );
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&sql)
            .bind("ann")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let detail = &plan[0].3;
        assert!(
            detail.contains("users_by_name_key (name_key=?)"),
            "plan: {detail}"
        );
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;
    use crate::server::store::IdentityStore;

    /// A database as the schema before accounts wrote it: events with names only, and sessions keyed
    /// by the raw (client-chosen) token.
    async fn before_accounts(path: &Path) {
        let old = tempfile::tempdir().unwrap();
        std::fs::write(
            old.path().join("0001_events_and_sessions.sql"),
            include_str!("migrations/sqlite/0001_events_and_sessions.sql"),
        )
        .unwrap();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let rows = [
            (1, "join", "Ann", ""),
            (2, "message", "Ann", "hello from before"),
            (3, "join", "Bo", ""),
            (4, "message", "Bo", "hi Ann"),
            (5, "message", "Ann", "bye"),
        ];
        for (seq, kind, name, text) in rows {
            sqlx::query("INSERT INTO events (room, seq, id, at, kind, name, text) VALUES ('general', ?, ?, ?, ?, ?, ?)")
                .bind(seq)
                .bind(Uuid::new_v4().to_string())
                .bind(1_000 * seq)
                .bind(kind)
                .bind(name)
                .bind(text)
                .execute(&pool)
                .await
                .unwrap();
        }
        for (token, name) in [
            ("11111111-1111-4111-8111-111111111111", Some("Ann")),
            ("22222222-2222-4222-8222-222222222222", None),
        ] {
            sqlx::query("INSERT INTO sessions (token, name, updated_at) VALUES (?, ?, 9)")
                .bind(token)
                .bind(name)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }

    /// A new database at `path` with the `count` migrations before `version` applied, as a release from
    /// before that migration left it.
    async fn schema_before(path: &Path, version: &str, count: usize) -> SqlitePool {
        let old = super::super::migrations_before("sqlite", version);
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        assert_eq!(migrator.iter().count(), count);
        migrator.run(&pool).await.unwrap();
        pool
    }

    #[tokio::test]
    async fn a_database_of_schema_0006_keeps_its_users_and_finds_owners_by_the_new_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0006.db");
        let pool = schema_before(&path, "0007", 6).await;
        let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let mut insert = sqlx::query(super::super::USERS_OF_0006);
        for id in ids {
            insert = insert.bind(id.to_string());
        }
        insert.execute(&pool).await.unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        super::super::check_users_of_0006(&store, ids).await;
        let index: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'users_by_name_key'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(index, 1);
    }

    #[tokio::test]
    async fn a_database_of_schema_0007_counts_unread_through_what_was_said_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0007.db");
        let pool = schema_before(&path, "0008", 7).await;
        let (reader, other) = (Uuid::new_v4(), Uuid::new_v4());
        sqlx::query(&super::super::storm_of_0007(reader, other))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        super::super::check_unread_of_0007(&store, reader).await;
        // SQLite uses a partial index only for a query whose WHERE has the index's own terms.
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN QUERY PLAN {}",
            super::super::unread_sql()
        ))
        .bind("general")
        .bind(120_i64)
        .bind(reader.to_string())
        .bind(10_i64)
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX events_said")),
            "unread is read through the index of what was said: {plan:?}"
        );
    }

    #[tokio::test]
    async fn a_database_from_before_accounts_keeps_its_history_names_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        before_accounts(&path).await;

        let store = SqliteStore::open(&path).await.unwrap();
        let events = store.since("general", 0, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["", "hello from before", "", "hi Ann", "bye"],
            "every event survives, in order"
        );
        let ann = events[0].user_id;
        let bo = events[2].user_id;
        assert!(!ann.is_nil() && !bo.is_nil());
        assert_ne!(ann, bo);
        assert!(events
            .iter()
            .all(|e| e.user_id == if e.name == "Ann" { ann } else { bo }));

        // Ann's browser is still Ann: its session was carried over under the hash of its token.
        let session = store
            .session(&crate::server::identity::token_hash(
                "11111111-1111-4111-8111-111111111111",
            ))
            .await
            .unwrap()
            .expect("the joined session survives");
        let user = session.user.expect("acting for Ann");
        assert_eq!((user.id, user.name.as_str()), (ann, "Ann"));

        // The rooms schema came too: the old history is general's, and rooms work on the upgraded file.
        use crate::server::store::RoomStore;
        assert!(store.rooms_of(ann).await.unwrap().is_empty());
        assert_eq!(store.read_mark(ann, "general").await.unwrap(), None);
        store.mark_read(ann, "general", 4).await.unwrap();
        assert_eq!(store.read_mark(ann, "general").await.unwrap(), Some(4));
        let room = crate::server::store::Room {
            slug: "after".into(),
            name: "After".into(),
            topic: String::new(),
            kind: crate::protocol::RoomKind::Private,
            created_by: ann,
            created_at: 9,
            archived: false,
        };
        store.create_room(&room, &[ann, bo], 9).await.unwrap();
        assert_eq!(store.members("after").await.unwrap().len(), 2);
        assert_eq!(user.kind, crate::protocol::UserKind::Guest);
        // A session that had not joined is not kept; the raw tokens are gone.
        let legacy: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'legacy_sessions'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(legacy, 0);
        let unkeyed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name_key = ''")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(unkeyed, 0, "every name has its comparison key");
        store.close().await;

        // Opening again changes nothing.
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.since("general", 0, 100).await.unwrap(), events);
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(users, 2);
    }
}

#[cfg(test)]
mod identity_tests {
    #[tokio::test]
    async fn sqlite_keeps_the_identity_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(&dir.path().join("id.db"))
            .await
            .unwrap();
        super::super::identity::check_contract(&store).await;
    }

    #[tokio::test]
    async fn sqlite_keeps_the_room_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(&dir.path().join("rooms.db"))
            .await
            .unwrap();
        super::super::rooms::check_contract(&store).await;
    }

    #[tokio::test]
    async fn sqlite_keeps_the_bot_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(&dir.path().join("bots.db"))
            .await
            .unwrap();
        super::super::bots::check_contract(&store).await;
    }
}
