//! The embedded default: SQLite in WAL mode with `synchronous=FULL`.
//!
//! Durability: a batch is acknowledged only after its transaction commits, and with `synchronous=FULL` a
//! commit is on disk (fsync of the WAL) before it returns, so neither a process crash nor a power cut
//! loses an acknowledged message. The hub's writer commits a whole batch in one transaction (group commit),
//! so the fsync is paid once per batch, not once per message.

use super::{
    event_from_row, kind_name, seq_param, Appended, MessageStore, NewEvent, StoreError,
    EVENT_COLUMNS,
};
use crate::protocol::ChatEvent;
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::Duration;

pub struct SqliteStore {
    pool: SqlitePool,
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
        // WAL lets readers (history, catch-up) run beside the one writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("src/server/store/migrations/sqlite")
            .run(&pool)
            .await?;
        Ok(Self { pool })
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
impl MessageStore for SqliteStore {
    async fn append(
        &self,
        room: &str,
        events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        // IMMEDIATE takes the write lock up front. A deferred transaction would start as a reader and fail
        // with SQLITE_BUSY_SNAPSHOT (which busy_timeout does not retry) if another connection of the pool
        // (a session's name being saved) wrote in between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut last: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE room = ?")
                .bind(room)
                .fetch_one(&mut *tx)
                .await?;
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            let id = event.id.to_string();
            let existing = sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE room = ? AND id = ?"
            ))
            .bind(room)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                appended.push(Appended {
                    event: event_from_row(room, &row)?,
                    fresh: false,
                });
                continue;
            }
            last += 1;
            sqlx::query("INSERT INTO events (room, seq, id, at, kind, name, text) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(room)
                .bind(last)
                .bind(&id)
                .bind(at)
                .bind(kind_name(event.kind))
                .bind(&event.name)
                .bind(&event.text)
                .execute(&mut *tx)
                .await?;
            let event = event.placed(room, last as u64, at);
            appended.push(Appended { event, fresh: true });
        }
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        self.query_events(&sql, room, after, limit).await
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

    async fn session_name(&self, token: &str) -> Result<Option<String>, StoreError> {
        let name: Option<Option<String>> =
            sqlx::query_scalar("SELECT name FROM sessions WHERE token = ?")
                .bind(token)
                .fetch_optional(&self.pool)
                .await?;
        Ok(name.flatten())
    }

    async fn set_session_name(
        &self,
        token: &str,
        name: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (token, name, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (token) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
        )
        .bind(token)
        .bind(name)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn close(&self) {
        // Checkpoint the WAL into the main file so the database is one self-contained file at rest.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_message as message;
    use super::*;

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
    async fn sessions_remember_and_forget_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        assert_eq!(store.session_name("t").await.unwrap(), None);
        store.set_session_name("t", Some("Ann"), 1).await.unwrap();
        assert_eq!(
            store.session_name("t").await.unwrap().as_deref(),
            Some("Ann")
        );
        store.set_session_name("t", None, 2).await.unwrap();
        assert_eq!(store.session_name("t").await.unwrap(), None);
    }
}
