//! What instances share beyond the store: who is present (and so which names are taken), typing signals,
//! and news of events other instances stored.
//!
//! Embedded (SQLite or memory), there is one instance and [`Local`] has nothing to share. With PostgreSQL,
//! [`Postgres`] keeps presence in tables, carries typing and "new events" over LISTEN/NOTIFY, and watches
//! for instances that stopped heart-beating, so their users stop holding names after a bounded time.
//!
//! Presence is two-level: `server::presence` counts this instance's connections per name (so a reload or a
//! second tab makes no noise), and only its transitions (first connection here, last connection here gone)
//! reach the backplane.

use super::hub::Hub;
use super::store::{StoreError, EVENTS_CHANNEL};
use crate::protocol::ServerFrame;
use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::PgPool;
use std::time::Duration;

/// The answer to [`Backplane::arrive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Nobody had the name: announce the join.
    New,
    /// The same browser holds it through another instance: say nothing.
    Present,
    /// Another browser holds it.
    Taken,
}

#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// This instance's first connection of `name` for browser `session`.
    async fn arrive(&self, room: &str, name: &str, session: &str) -> Result<Arrival, StoreError>;

    /// This instance's last connection of `name` is gone; true when no instance holds it any more, so
    /// the leave line is due.
    async fn depart(&self, room: &str, name: &str, session: &str) -> Result<bool, StoreError>;

    /// Everyone present in `room`, given who is present here.
    async fn online(&self, room: &str, here: Vec<String>) -> Result<Vec<String>, StoreError>;

    /// Tells other instances that `name` is typing (this instance has told its own clients).
    async fn typing(&self, room: &str, name: &str);

    /// Starts background work (listening, heart-beating) that feeds `hub`.
    fn start(&self, hub: Hub) {
        let _ = hub;
    }
}

/// One instance: the local presence registry is the whole truth.
pub struct Local;

#[async_trait]
impl Backplane for Local {
    async fn arrive(&self, _: &str, _: &str, _: &str) -> Result<Arrival, StoreError> {
        Ok(Arrival::New)
    }

    async fn depart(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn online(&self, _: &str, here: Vec<String>) -> Result<Vec<String>, StoreError> {
        Ok(here)
    }

    async fn typing(&self, _: &str, _: &str) {}
}

/// The channel for "<room> <instance> <name>" typing signals.
const TYPING_CHANNEL: &str = "confab_typing";

/// Several instances sharing one PostgreSQL database.
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    /// This instance's id in `instances` and `presence`; new on every start.
    instance: String,
    /// How long after its last heartbeat an instance (and everyone connected through it) counts as gone.
    ttl: Duration,
}

impl Postgres {
    /// Registers this instance. `ttl` bounds how long a dead instance's users keep their names.
    pub async fn register(pool: PgPool, ttl: Duration) -> Result<Self, StoreError> {
        let instance = uuid::Uuid::new_v4().to_string();
        sqlx::query("INSERT INTO instances (id) VALUES ($1)")
            .bind(&instance)
            .execute(&pool)
            .await?;
        tracing::info!(%instance, "registered with PostgreSQL");
        Ok(Self {
            pool,
            instance,
            ttl,
        })
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Serialises presence changes of one name across instances, for the rest of the transaction.
    async fn lock_name(
        tx: &mut sqlx::PgConnection,
        room: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(room)
            .bind(name)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Whether any live instance still holds `name`.
    async fn held(
        &self,
        tx: &mut sqlx::PgConnection,
        room: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE p.room = $1 AND p.name = $2 AND i.seen_at > now() - make_interval(secs => $3))",
        )
        .bind(room)
        .bind(name)
        .bind(self.ttl_secs())
        .fetch_one(tx)
        .await?;
        Ok(held)
    }

    /// Refreshes this instance's heartbeat, then forgets instances whose heartbeat stopped, announcing
    /// the leave of every name nobody else holds.
    async fn heartbeat(&self, hub: &Hub) -> Result<(), StoreError> {
        let revived: bool = sqlx::query_scalar(
            "INSERT INTO instances (id) VALUES ($1) \
             ON CONFLICT (id) DO UPDATE SET seen_at = now() RETURNING (xmax = 0)",
        )
        .bind(&self.instance)
        .fetch_one(&self.pool)
        .await?;
        if revived {
            // Another instance took us for dead (we stalled past the TTL) and dropped our presence: put
            // back who is connected here.
            tracing::warn!("this instance was taken for dead; registering its users again");
            for room in hub.rooms() {
                if let Some(presence) = hub.presence(room) {
                    for (name, session) in presence.holders() {
                        self.arrive(room, &name, &session).await?;
                    }
                }
            }
        }

        let gone: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT p.room, p.name FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE i.seen_at <= now() - make_interval(secs => $1)",
        )
        .bind(self.ttl_secs())
        .fetch_all(&self.pool)
        .await?;
        for (room, name) in gone {
            let mut tx = self.pool.begin().await?;
            Self::lock_name(&mut tx, &room, &name).await?;
            let dropped = sqlx::query(
                "DELETE FROM presence p USING instances i WHERE i.id = p.instance \
                 AND p.room = $1 AND p.name = $2 AND i.seen_at <= now() - make_interval(secs => $3)",
            )
            .bind(&room)
            .bind(&name)
            .bind(self.ttl_secs())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let leave = dropped > 0 && !self.held(&mut tx, &room, &name).await?;
            tx.commit().await?;
            if leave {
                tracing::info!(%room, %name, "the instance holding this name stopped; announcing the leave");
                hub.announce_leave(&room, name).await;
            }
        }
        sqlx::query(
            "DELETE FROM instances WHERE seen_at <= now() - make_interval(secs => $1) \
             AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.instance = instances.id)",
        )
        .bind(self.ttl_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([EVENTS_CHANNEL, TYPING_CHANNEL])
            .await?;
        Ok(listener)
    }

    fn on_notification(&self, hub: &Hub, note: &PgNotification) -> Option<Stored> {
        let payload = note.payload();
        match note.channel() {
            EVENTS_CHANNEL => {
                let mut parts = payload.splitn(3, ' ');
                let room = parts.next()?.to_owned();
                let first = parts.next()?.parse().ok()?;
                let last = parts.next()?.parse().ok()?;
                Some(Stored { room, first, last })
            }
            TYPING_CHANNEL => {
                let mut parts = payload.splitn(3, ' ');
                let (room, instance, name) = (parts.next()?, parts.next()?, parts.next()?);
                if instance != self.instance {
                    hub.broadcast_ephemeral(
                        room,
                        &ServerFrame::Typing {
                            name: name.to_owned(),
                        },
                    );
                }
                None
            }
            _ => None,
        }
    }
}

/// "Events `first..=last` of `room` are stored", from any instance.
struct Stored {
    room: String,
    first: u64,
    last: u64,
}

#[async_trait]
impl Backplane for Postgres {
    async fn arrive(&self, room: &str, name: &str, session: &str) -> Result<Arrival, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_name(&mut tx, room, name).await?;
        // Every holder of the name, and whether its instance is alive. A dead instance's rows still
        // count for the same browser (its user was never announced as gone), not for anyone else.
        let holders: Vec<(String, bool)> = sqlx::query_as(
            "SELECT p.session, i.seen_at > now() - make_interval(secs => $3) \
             FROM presence p JOIN instances i ON i.id = p.instance WHERE p.room = $1 AND p.name = $2",
        )
        .bind(room)
        .bind(name)
        .bind(self.ttl_secs())
        .fetch_all(&mut *tx)
        .await?;
        if holders.iter().any(|(s, alive)| *alive && s != session) {
            return Ok(Arrival::Taken);
        }
        // Rows of other browsers on dead instances are history now.
        sqlx::query("DELETE FROM presence WHERE room = $1 AND name = $2 AND session <> $3")
            .bind(room)
            .bind(name)
            .bind(session)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO presence (room, name, instance, session) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room, name, instance) DO UPDATE SET session = excluded.session",
        )
        .bind(room)
        .bind(name)
        .bind(&self.instance)
        .bind(session)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let here_before = holders.iter().any(|(s, _)| s == session);
        Ok(if here_before {
            Arrival::Present
        } else {
            Arrival::New
        })
    }

    async fn depart(&self, room: &str, name: &str, session: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_name(&mut tx, room, name).await?;
        sqlx::query(
            "DELETE FROM presence WHERE room = $1 AND name = $2 AND instance = $3 AND session = $4",
        )
        .bind(room)
        .bind(name)
        .bind(&self.instance)
        .bind(session)
        .execute(&mut *tx)
        .await?;
        let gone = !self.held(&mut tx, room, name).await?;
        if gone {
            // Also rows left by dead instances: the leave is announced here, not again by a heartbeat.
            sqlx::query("DELETE FROM presence WHERE room = $1 AND name = $2")
                .bind(room)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn online(&self, room: &str, here: Vec<String>) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT p.name FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE p.room = $1 AND i.seen_at > now() - make_interval(secs => $2)",
        )
        .bind(room)
        .bind(self.ttl_secs())
        .fetch_all(&self.pool)
        .await?;
        names.extend(here);
        names.sort_unstable_by_key(|n| n.to_lowercase());
        names.dedup();
        Ok(names)
    }

    async fn typing(&self, room: &str, name: &str) {
        let pool = self.pool.clone();
        let payload = format!("{room} {} {name}", self.instance);
        // Fire and forget: a typing hint is not worth holding up the connection for.
        tokio::spawn(async move {
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(TYPING_CHANNEL)
                .bind(payload)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %err, "typing notification failed");
            }
        });
    }

    fn start(&self, hub: Hub) {
        tokio::spawn(self.clone().run_listener(hub.clone()));
        tokio::spawn(self.clone().run_heartbeat(hub));
    }
}

impl Postgres {
    /// Receives notifications for as long as the pool is open. A dropped LISTEN connection (a restart,
    /// `pg_terminate_backend`, a network cut) loses the notifications sent meanwhile, so after every
    /// (re)connect the hub catches up from the store by sequence number.
    async fn run_listener(self, hub: Hub) {
        let mut retry = Duration::from_millis(100);
        while !self.pool.is_closed() {
            let mut listener = match self.listen().await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot LISTEN; retrying in {retry:?}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            retry = Duration::from_millis(100);
            hub.catch_up_all().await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(note)) => {
                        if let Some(stored) = self.on_notification(&hub, &note) {
                            hub.stored_elsewhere(&stored.room, stored.first, stored.last)
                                .await;
                        }
                    }
                    // Lost and already re-established (eager reconnect): fill what was missed.
                    Ok(None) => {
                        tracing::warn!(
                            "LISTEN connection was lost and re-established; catching up"
                        );
                        hub.catch_up_all().await;
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "LISTEN connection failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    /// Heart-beats a few times per TTL. Each beat also catches up from the store, a safety net for a
    /// notification lost in a way the listener could not see.
    async fn run_heartbeat(self, hub: Hub) {
        let mut every = tokio::time::interval(self.ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.pool.is_closed() {
                return;
            }
            if let Err(err) = self.heartbeat(&hub).await {
                tracing::warn!(error = %err, "heartbeat failed");
            }
            hub.catch_up_all().await;
        }
    }
}
