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
//!
//! The backplane reports to an [`Inbox`] (the hub implements it), so it depends on nothing of the hub's.

use super::presence::{Presence, Seat};
use super::store::{StoreError, EVENTS_CHANNEL};
use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// News for the connections of one browser session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSignal {
    /// The session ended (signed out, or ended from another device): close the socket.
    Ended,
    /// Who the session acts for changed (a guest kept their name): read it again and say so.
    Changed,
    /// The user's rooms changed (invited, joined, a DM opened elsewhere): read them again.
    Rooms,
    /// The user read further somewhere (another tab or device): read the marks again.
    Read,
}

impl SessionSignal {
    fn as_str(self) -> &'static str {
        match self {
            SessionSignal::Ended => "ended",
            SessionSignal::Changed => "changed",
            SessionSignal::Rooms => "rooms",
            SessionSignal::Read => "read",
        }
    }
}

/// What a backplane reports, to the hub of its instance.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Another instance stored events `first..=last` of `room`.
    async fn stored_elsewhere(&self, room: &str, first: u64, last: u64);
    /// Notifications may have been missed: broadcast whatever the store has that was not broadcast.
    async fn catch_up_all(&self);
    /// Someone on another instance is typing.
    fn typing_elsewhere(&self, room: &str, name: &str);
    /// A session's connections here must hear of a change made on another instance.
    fn session_signal(&self, session: Uuid, signal: SessionSignal);
    /// `user` was removed from `room` on another instance: their connections here stop hearing it.
    fn evicted_elsewhere(&self, room: &str, user: Uuid);
    /// The instance holding `seat` stopped and nobody else holds it: announce the leave.
    async fn gone_elsewhere(&self, room: &str, seat: Seat);
    /// Every seat held on this instance, per room (to register them again after a stall).
    fn seats_here(&self) -> Vec<(String, Seat)>;
}

/// The answer to [`Backplane::arrive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Nobody had the name: announce the join.
    New,
    /// The same browser holds it through another instance: say nothing.
    Present,
    /// Another user holds it.
    Taken,
}

#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// This instance's first connection of `seat.user` under `seat.key`.
    async fn arrive(&self, room: &str, seat: &Seat) -> Result<Arrival, StoreError>;

    /// This instance's last connection of `user` under `key` is gone; true when no instance holds it
    /// any more, so the leave line is due.
    async fn depart(&self, room: &str, key: &str, user: Uuid) -> Result<bool, StoreError>;

    /// The first `limit` names present in `room` on any instance, sorted as people read them, and how
    /// many are present in all; `here` is who is present on this instance.
    async fn online(
        &self,
        room: &str,
        here: &Presence,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StoreError>;

    /// Who holds the name with this key on another instance (this instance has looked at its own).
    async fn holder(&self, room: &str, key: &str) -> Result<Option<Uuid>, StoreError>;

    /// Tells other instances that `name` is typing (this instance has told its own clients).
    async fn typing(&self, room: &str, name: &str);

    /// Tells other instances' connections of `session` (this instance has told its own).
    async fn signal_session(&self, session: Uuid, signal: SessionSignal);

    /// Tells other instances that `user` is out of `room` (this instance has evicted them here).
    async fn evict(&self, room: &str, user: Uuid);

    /// Starts background work (listening, heart-beating) that reports to `inbox`.
    fn start(&self, inbox: Arc<dyn Inbox>) {
        let _ = inbox;
    }
}

/// One instance: the local presence registry is the whole truth.
pub struct Local;

#[async_trait]
impl Backplane for Local {
    async fn arrive(&self, _: &str, _: &Seat) -> Result<Arrival, StoreError> {
        Ok(Arrival::New)
    }

    async fn depart(&self, _: &str, _: &str, _: Uuid) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn online(
        &self,
        _: &str,
        here: &Presence,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        Ok(here.online_first(limit))
    }

    async fn holder(&self, _: &str, _: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(None)
    }

    async fn typing(&self, _: &str, _: &str) {}

    async fn signal_session(&self, _: Uuid, _: SessionSignal) {}

    async fn evict(&self, _: &str, _: Uuid) {}
}

/// The channel for typing signals, as JSON (see [`Typing`]).
const TYPING_CHANNEL: &str = "confab_typing";
/// The channel for "<instance> <session> <ended|changed|rooms>" session signals.
const SESSIONS_CHANNEL: &str = "confab_sessions";
/// The channel for evictions from a room, as JSON (see [`Eviction`]).
const EVICTIONS_CHANNEL: &str = "confab_evictions";

/// "`user` is out of `room`", between instances. JSON, so no room slug can break the payload apart.
#[derive(serde::Serialize, serde::Deserialize)]
struct Eviction {
    room: String,
    instance: String,
    user: Uuid,
}

/// A typing signal between instances. JSON, so no room or name can break the payload apart.
#[derive(serde::Serialize, serde::Deserialize)]
struct Typing {
    room: String,
    instance: String,
    name: String,
}

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
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(room)
            .bind(key)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Whether any live instance still holds the name with this key.
    async fn held(
        &self,
        tx: &mut sqlx::PgConnection,
        room: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE p.room = $1 AND p.name_key = $2 AND i.seen_at > now() - make_interval(secs => $3))",
        )
        .bind(room)
        .bind(key)
        .bind(self.ttl_secs())
        .fetch_one(tx)
        .await?;
        Ok(held)
    }

    /// Refreshes this instance's heartbeat, then forgets instances whose heartbeat stopped, announcing
    /// the leave of every name nobody else holds.
    async fn heartbeat(&self, inbox: &dyn Inbox) -> Result<(), StoreError> {
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
            for (room, seat) in inbox.seats_here() {
                self.arrive(&room, &seat).await?;
            }
        }

        let gone: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT p.room, p.name_key, p.name, p.holder, p.holder_kind FROM presence p \
             JOIN instances i ON i.id = p.instance WHERE i.seen_at <= now() - make_interval(secs => $1)",
        )
        .bind(self.ttl_secs())
        .fetch_all(&self.pool)
        .await?;
        for (room, key, name, holder, kind) in gone {
            let mut tx = self.pool.begin().await?;
            Self::lock_name(&mut tx, &room, &key).await?;
            let dropped = sqlx::query(
                "DELETE FROM presence p USING instances i WHERE i.id = p.instance \
                 AND p.room = $1 AND p.name_key = $2 AND i.seen_at <= now() - make_interval(secs => $3)",
            )
            .bind(&room)
            .bind(&key)
            .bind(self.ttl_secs())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let leave = dropped > 0 && !self.held(&mut tx, &room, &key).await?;
            tx.commit().await?;
            if leave {
                tracing::info!(%room, %name, "the instance holding this name stopped; announcing the leave");
                let seat = Seat {
                    key,
                    name,
                    user: Uuid::try_parse(&holder).unwrap_or_default(),
                    kind: crate::server::store::identity::kind_from_column(&kind),
                };
                inbox.gone_elsewhere(&room, seat).await;
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
            .listen_all([
                EVENTS_CHANNEL,
                TYPING_CHANNEL,
                SESSIONS_CHANNEL,
                EVICTIONS_CHANNEL,
            ])
            .await?;
        Ok(listener)
    }

    fn on_notification(&self, inbox: &dyn Inbox, note: &PgNotification) -> Option<Stored> {
        let payload = note.payload();
        match note.channel() {
            EVENTS_CHANNEL => {
                // "<room> <first> <last>", read from the right: the numbers never hold a space, so no
                // room slug, whatever it holds, can shift them.
                let mut parts = payload.rsplitn(3, ' ');
                let last = parts.next()?.parse().ok()?;
                let first = parts.next()?.parse().ok()?;
                let room = parts.next()?.to_owned();
                Some(Stored { room, first, last })
            }
            EVICTIONS_CHANNEL => {
                let eviction: Eviction = serde_json::from_str(payload).ok()?;
                if eviction.instance != self.instance {
                    inbox.evicted_elsewhere(&eviction.room, eviction.user);
                }
                None
            }
            TYPING_CHANNEL => {
                let typing: Typing = serde_json::from_str(payload).ok()?;
                if typing.instance != self.instance {
                    inbox.typing_elsewhere(&typing.room, &typing.name);
                }
                None
            }
            SESSIONS_CHANNEL => {
                let mut parts = payload.splitn(3, ' ');
                let (instance, session, signal) = (parts.next()?, parts.next()?, parts.next()?);
                let signal = match signal {
                    "ended" => SessionSignal::Ended,
                    "changed" => SessionSignal::Changed,
                    "rooms" => SessionSignal::Rooms,
                    "read" => SessionSignal::Read,
                    _ => return None,
                };
                if instance != self.instance {
                    inbox.session_signal(Uuid::try_parse(session).ok()?, signal);
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
    async fn arrive(&self, room: &str, seat: &Seat) -> Result<Arrival, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_name(&mut tx, room, &seat.key).await?;
        let holder = seat.user.to_string();
        // Every holder of the name, and whether its instance is alive. A dead instance's rows still
        // count for the same user (they were never announced as gone), not for anyone else.
        let holders: Vec<(String, bool)> = sqlx::query_as(
            "SELECT p.holder, i.seen_at > now() - make_interval(secs => $3) \
             FROM presence p JOIN instances i ON i.id = p.instance WHERE p.room = $1 AND p.name_key = $2",
        )
        .bind(room)
        .bind(&seat.key)
        .bind(self.ttl_secs())
        .fetch_all(&mut *tx)
        .await?;
        if holders.iter().any(|(h, alive)| *alive && *h != holder) {
            return Ok(Arrival::Taken);
        }
        // Rows of other users on dead instances are history now.
        sqlx::query("DELETE FROM presence WHERE room = $1 AND name_key = $2 AND holder <> $3")
            .bind(room)
            .bind(&seat.key)
            .bind(&holder)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO presence (room, name_key, name, instance, holder, holder_kind) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room, name_key, instance) \
             DO UPDATE SET holder = excluded.holder, name = excluded.name, holder_kind = excluded.holder_kind",
        )
        .bind(room)
        .bind(&seat.key)
        .bind(&seat.name)
        .bind(&self.instance)
        .bind(&holder)
        .bind(seat.kind.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let here_before = holders.iter().any(|(h, _)| *h == holder);
        Ok(if here_before {
            Arrival::Present
        } else {
            Arrival::New
        })
    }

    async fn depart(&self, room: &str, key: &str, user: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_name(&mut tx, room, key).await?;
        sqlx::query(
            "DELETE FROM presence WHERE room = $1 AND name_key = $2 AND instance = $3 AND holder = $4",
        )
        .bind(room)
        .bind(key)
        .bind(&self.instance)
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
        let gone = !self.held(&mut tx, room, key).await?;
        if gone {
            // Also rows left by dead instances: the leave is announced here, not again by a heartbeat.
            sqlx::query("DELETE FROM presence WHERE room = $1 AND name_key = $2")
                .bind(room)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn online(
        &self,
        room: &str,
        here: &Presence,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        let mut names: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT p.name_key, p.name FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE p.room = $1 AND i.seen_at > now() - make_interval(secs => $2)",
        )
        .bind(room)
        .bind(self.ttl_secs())
        .fetch_all(&self.pool)
        .await?;
        // The local seats come with their keys: no name is normalised again per connection.
        names.extend(here.online_keyed());
        names.sort_unstable();
        names.dedup_by(|a, b| a.0 == b.0);
        let total = names.len();
        names.truncate(limit);
        Ok((super::presence::names_of(names), total))
    }

    async fn holder(&self, room: &str, key: &str) -> Result<Option<Uuid>, StoreError> {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT p.holder FROM presence p JOIN instances i ON i.id = p.instance \
             WHERE p.room = $1 AND p.name_key = $2 AND i.seen_at > now() - make_interval(secs => $3) \
             LIMIT 1",
        )
        .bind(room)
        .bind(key)
        .bind(self.ttl_secs())
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.and_then(|h| Uuid::try_parse(&h).ok()))
    }

    async fn typing(&self, room: &str, name: &str) {
        let pool = self.pool.clone();
        let payload = serde_json::to_string(&Typing {
            room: room.to_owned(),
            instance: self.instance.clone(),
            name: name.to_owned(),
        })
        .expect("typing signals serialise");
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

    async fn signal_session(&self, session: Uuid, signal: SessionSignal) {
        let payload = format!("{} {session} {}", self.instance, signal.as_str());
        // Awaited: a sign-out must reach the other instances before it is reported done.
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SESSIONS_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::error!(error = %err, "telling other instances of a session change failed");
        }
    }

    async fn evict(&self, room: &str, user: Uuid) {
        let payload = serde_json::to_string(&Eviction {
            room: room.to_owned(),
            instance: self.instance.clone(),
            user,
        })
        .expect("evictions serialise");
        // Awaited: the removal is done only once every instance has stopped the stream.
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVICTIONS_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::error!(error = %err, "telling other instances of a removal failed");
        }
    }

    fn start(&self, inbox: Arc<dyn Inbox>) {
        tokio::spawn(self.clone().run_listener(inbox.clone()));
        tokio::spawn(self.clone().run_heartbeat(inbox));
    }
}

impl Postgres {
    /// Receives notifications for as long as the pool is open. A dropped LISTEN connection (a restart,
    /// `pg_terminate_backend`, a network cut) loses the notifications sent meanwhile, so after every
    /// (re)connect the hub catches up from the store by sequence number.
    async fn run_listener(self, hub: Arc<dyn Inbox>) {
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
                        if let Some(stored) = self.on_notification(hub.as_ref(), &note) {
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
    async fn run_heartbeat(self, hub: Arc<dyn Inbox>) {
        let mut every = tokio::time::interval(self.ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.pool.is_closed() {
                return;
            }
            if let Err(err) = self.heartbeat(hub.as_ref()).await {
                tracing::warn!(error = %err, "heartbeat failed");
            }
            hub.catch_up_all().await;
        }
    }
}
