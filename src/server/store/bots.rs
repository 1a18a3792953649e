//! Bots and the webhook calls still to make. A bot is a user of kind `bot` (so its name is its own, and its
//! events carry its id like anyone's); this store keeps what only bots have: the token hash, the webhook and
//! its secret, and the outbox of calls. The outbox is filled by [`super::EventStore::append`], in the
//! transaction that stores the message, so a restart never loses a call.

use super::{IdentityError, StoreError, User};
use async_trait::async_trait;
use uuid::Uuid;

/// A bot to store.
#[derive(Debug, Clone)]
pub struct NewBot {
    pub id: Uuid,
    pub name: String,
    pub name_key: String,
    pub token_hash: String,
    pub secret: String,
    /// Empty for a bot nobody calls.
    pub webhook: String,
    /// The admin who made it (nil from the command line).
    pub created_by: Uuid,
}

/// A bot as the admin page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bot {
    pub user: User,
    pub webhook: String,
    /// It has a live token (not revoked).
    pub active: bool,
    pub created_at: i64,
    /// Calls that failed for good, and the last one's reason.
    pub failed: u32,
    pub last_error: String,
}

/// A webhook call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The idempotency key, the same on every attempt.
    pub id: Uuid,
    pub bot: Uuid,
    pub room: String,
    pub message: Uuid,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of a claimed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// It was made (or is moot: its message was deleted).
    Done,
    /// It failed, and is tried again at `at`.
    Retry { at: i64, error: String },
    /// It failed for good; `error` is kept for the admin page.
    Failed { error: String },
    /// It was put back, due at `at`, without counting the attempt (its bot had enough calls in flight).
    Released { at: i64 },
}

/// A claimed call and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: Uuid,
    pub how: Settlement,
}

/// Where a bot's webhook goes, what it signs with, and the bot's name (for its replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
    pub name: String,
}

/// The id of the call to `bot` about `message`: derived, so every instance that might write it (and every
/// retry of the message) agrees on it.
pub fn delivery_id(bot: Uuid, message: Uuid) -> Uuid {
    derived_id(&[b"webhook", bot.as_bytes(), message.as_bytes()])
}

/// A version-8 uuid from the SHA-256 of `parts`: the same parts give the same id everywhere.
pub fn derived_id(parts: &[&[u8]]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[async_trait]
pub trait BotStore: Send + Sync + 'static {
    /// Stores a bot (a user of kind `bot`). Refused with [`IdentityError::NameOwned`] when a member or bot
    /// has the name.
    async fn create_bot(&self, bot: &NewBot, at: i64) -> Result<(), IdentityError>;

    /// The bot whose token hashes to `token_hash`, unless revoked or banned.
    async fn bot_by_token(&self, token_hash: &str) -> Result<Option<User>, StoreError>;

    /// Every bot, by name.
    async fn bots(&self) -> Result<Vec<Bot>, StoreError>;

    /// A new token and webhook secret for bot `id` (rotation); `None` revokes its token. Whether there is
    /// such a bot.
    async fn set_bot_token(
        &self,
        id: Uuid,
        token: Option<(&str, &str)>,
    ) -> Result<bool, StoreError>;

    /// Changes where the bot is called (empty: nowhere).
    async fn set_webhook(&self, id: Uuid, url: &str) -> Result<bool, StoreError>;

    /// The bots with a webhook and a live token, by id and name: who a message may call.
    async fn callable_bots(&self) -> Result<Vec<(Uuid, String)>, StoreError>;

    /// Every bot's token hash (`None` once revoked), to tell when one changed elsewhere.
    async fn bot_tokens(&self) -> Result<Vec<(Uuid, Option<String>)>, StoreError>;

    /// Bot `id`'s webhook, if it has one and a live token.
    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError>;

    /// Up to `limit` calls that are due at `now`, each leased until `lease_until` (so another instance
    /// does not make it meanwhile) and counted as an attempt.
    async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records what became of claimed calls, all in one transaction: the sender gathers outcomes for a
    /// moment before each record, so under load a commit carries many calls instead of one each.
    async fn settle_deliveries(&self, settled: &[Settled]) -> Result<(), StoreError>;
}

/// Implements [`BotStore`] for a SQL store with `pool` (reads) and `writer` (writes) fields, in SQL both SQLite and PostgreSQL read.
macro_rules! sql_bot_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::server::store::BotStore for $store {
            async fn create_bot(
                &self,
                bot: &$crate::server::store::bots::NewBot,
                at: i64,
            ) -> Result<(), $crate::server::store::IdentityError> {
                let mut tx = self.writer.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO users (id, name, name_key, kind, created_at) \
                     VALUES ($1, $2, $3, 'bot', $4)",
                )
                .bind(bot.id.to_string())
                .bind(&bot.name)
                .bind(&bot.name_key)
                .bind(at)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                        return Err($crate::server::store::IdentityError::NameOwned)
                    }
                    Err(err) => return Err(err.into()),
                }
                sqlx::query(
                    "INSERT INTO bots (user_id, token_hash, webhook_secret, webhook_url, created_by, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(bot.id.to_string())
                .bind(&bot.token_hash)
                .bind(&bot.secret)
                .bind(&bot.webhook)
                .bind(bot.created_by.to_string())
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn bot_by_token(
                &self,
                token_hash: &str,
            ) -> Result<Option<$crate::server::store::User>, $crate::server::store::StoreError>
            {
                self.user_where(
                    "u.id = (SELECT user_id FROM bots WHERE token_hash = $1) AND NOT u.banned",
                    token_hash,
                )
                .await
            }

            async fn bots(
                &self,
            ) -> Result<Vec<$crate::server::store::bots::Bot>, $crate::server::store::StoreError>
            {
                use sqlx::Row;
                let sql = format!(
                    "SELECT {}, b.webhook_url, b.token_hash IS NOT NULL AS active, b.created_at, \
                     (SELECT COUNT(*) FROM webhook_deliveries d \
                      WHERE d.bot_id = b.user_id AND d.state = 'failed') AS failed, \
                     COALESCE((SELECT d.last_error FROM webhook_deliveries d \
                      WHERE d.bot_id = b.user_id AND d.state = 'failed' \
                      ORDER BY d.created_at DESC LIMIT 1), '') AS last_error \
                     FROM bots b JOIN users u ON u.id = b.user_id ORDER BY u.name_key",
                    $crate::server::store::identity::USER_COLUMNS
                );
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                let mut bots = Vec::with_capacity(rows.len());
                for row in rows {
                    let Some(user) = $crate::server::store::identity::user_from_row(&row)? else {
                        continue;
                    };
                    bots.push($crate::server::store::bots::Bot {
                        user,
                        webhook: row.try_get("webhook_url")?,
                        active: row.try_get("active")?,
                        created_at: row.try_get("created_at")?,
                        failed: u32::try_from(row.try_get::<i64, _>("failed")?).unwrap_or(u32::MAX),
                        last_error: row.try_get("last_error")?,
                    });
                }
                Ok(bots)
            }

            async fn set_bot_token(
                &self,
                id: uuid::Uuid,
                token: Option<(&str, &str)>,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let done = match token {
                    Some((hash, secret)) => {
                        sqlx::query(
                            "UPDATE bots SET token_hash = $1, webhook_secret = $2 WHERE user_id = $3",
                        )
                        .bind(hash)
                        .bind(secret)
                        .bind(id.to_string())
                        .execute(&self.writer)
                        .await?
                    }
                    None => {
                        sqlx::query("UPDATE bots SET token_hash = NULL WHERE user_id = $1")
                            .bind(id.to_string())
                            .execute(&self.writer)
                            .await?
                    }
                };
                Ok(done.rows_affected() > 0)
            }

            async fn set_webhook(
                &self,
                id: uuid::Uuid,
                url: &str,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let done = sqlx::query("UPDATE bots SET webhook_url = $1 WHERE user_id = $2")
                    .bind(url)
                    .bind(id.to_string())
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn callable_bots(
                &self,
            ) -> Result<Vec<(uuid::Uuid, String)>, $crate::server::store::StoreError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT u.id, u.name FROM bots b JOIN users u ON u.id = b.user_id \
                     WHERE b.webhook_url <> '' AND b.token_hash IS NOT NULL AND NOT u.banned",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(id, name)| Some((uuid::Uuid::try_parse(&id).ok()?, name)))
                    .collect())
            }

            async fn bot_tokens(
                &self,
            ) -> Result<Vec<(uuid::Uuid, Option<String>)>, $crate::server::store::StoreError>
            {
                let rows: Vec<(String, Option<String>)> =
                    sqlx::query_as("SELECT user_id, token_hash FROM bots")
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(id, hash)| Some((uuid::Uuid::try_parse(&id).ok()?, hash)))
                    .collect())
            }

            async fn webhook(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::server::store::bots::Webhook>, $crate::server::store::StoreError>
            {
                let row: Option<(String, String, String)> = sqlx::query_as(
                    "SELECT b.webhook_url, b.webhook_secret, u.name FROM bots b \
                     JOIN users u ON u.id = b.user_id WHERE b.user_id = $1 AND b.webhook_url <> '' \
                     AND b.token_hash IS NOT NULL AND NOT u.banned",
                )
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(url, secret, name)| {
                    $crate::server::store::bots::Webhook { url, secret, name }
                }))
            }

            async fn claim_deliveries(
                &self,
                now: i64,
                lease_until: i64,
                limit: usize,
            ) -> Result<Vec<$crate::server::store::bots::Delivery>, $crate::server::store::StoreError>
            {
                // The outer `next_at <= $2` is checked again on the row as it is when updated, so of two
                // instances claiming at once only one gets each call.
                let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                    "UPDATE webhook_deliveries SET next_at = $1, attempts = attempts + 1 \
                     WHERE state = 'pending' AND next_at <= $2 AND id IN \
                     (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_at <= $2 \
                      ORDER BY next_at LIMIT $3) \
                     RETURNING id, bot_id, room, message_id, attempts",
                )
                .bind(lease_until)
                .bind(now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.writer)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(id, bot, room, message, attempts)| {
                        Some($crate::server::store::bots::Delivery {
                            id: uuid::Uuid::try_parse(&id).ok()?,
                            bot: uuid::Uuid::try_parse(&bot).ok()?,
                            room,
                            message: uuid::Uuid::try_parse(&message).ok()?,
                            attempts: u32::try_from(attempts - 1).unwrap_or(0),
                        })
                    })
                    .collect())
            }

            async fn settle_deliveries(
                &self,
                settled: &[$crate::server::store::bots::Settled],
            ) -> Result<(), $crate::server::store::StoreError> {
                use $crate::server::store::bots::Settlement;
                if settled.is_empty() {
                    return Ok(());
                }
                // One commit (one fsync) for them all; the statements are prepared once and cached.
                let mut tx = self.writer.begin().await?;
                for s in settled {
                    let id = s.id.to_string();
                    let query = match &s.how {
                        Settlement::Done => {
                            sqlx::query("UPDATE webhook_deliveries SET state = 'done' WHERE id = $1")
                                .bind(id)
                        }
                        Settlement::Retry { at, error } => sqlx::query(
                            "UPDATE webhook_deliveries SET next_at = $1, last_error = $2 WHERE id = $3",
                        )
                        .bind(*at)
                        .bind(error.as_str())
                        .bind(id),
                        Settlement::Failed { error } => sqlx::query(
                            "UPDATE webhook_deliveries SET state = 'failed', next_at = 0, last_error = $1 \
                             WHERE id = $2",
                        )
                        .bind(error.as_str())
                        .bind(id),
                        Settlement::Released { at } => sqlx::query(
                            "UPDATE webhook_deliveries SET next_at = $1, attempts = attempts - 1 \
                             WHERE id = $2 AND state = 'pending' AND attempts > 0",
                        )
                        .bind(*at)
                        .bind(id),
                    };
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(super) use sql_bot_store;

/// Takes the calls each event asks for, before the events are placed: (message, author, bots).
pub(super) fn take_calls(events: &mut [super::NewEvent]) -> Vec<(Uuid, Uuid, Vec<Uuid>)> {
    events
        .iter_mut()
        .map(|e| (e.id, e.user_id, std::mem::take(&mut e.call)))
        .collect()
}

/// The calls to write, as rows for `webhook_deliveries` (id, bot, message): those of `wanted` (from
/// [`take_calls`]) whose message is fresh in `appended` (in the same order), never a bot's call about its
/// own message.
pub(super) fn calls(
    wanted: Vec<(Uuid, Uuid, Vec<Uuid>)>,
    appended: &[super::Appended],
) -> Vec<(Uuid, Uuid, Uuid)> {
    let mut rows = Vec::new();
    for ((message, author, bots), appended) in wanted.into_iter().zip(appended) {
        if !appended.fresh {
            continue;
        }
        for bot in bots.into_iter().filter(|bot| *bot != author) {
            rows.push((delivery_id(bot, message), bot, message));
        }
    }
    rows
}

/// Writes the calls `rows` (see [`calls`]) of messages in `room`, inside the append's transaction: only
/// for bots that are in the room (everyone is in `general`), and once per id.
pub(super) async fn write_calls<DB>(
    conn: &mut DB::Connection,
    room: &str,
    rows: &[(Uuid, Uuid, Uuid)],
    at: i64,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for (id, bot, message) in rows {
        sqlx::query::<DB>(
            "INSERT INTO webhook_deliveries (id, bot_id, room, message_id, next_at, created_at) \
             SELECT $1, $2, $3, $4, $5, $5 \
             WHERE $3 = 'general' OR EXISTS \
             (SELECT 1 FROM memberships WHERE room = $3 AND user_id = $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(bot.to_string())
        .bind(room)
        .bind(message.to_string())
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What every bot store must do, run against each backend by its tests.
#[cfg(test)]
pub(crate) async fn check_contract<T: BotStore + super::EventStore + super::RoomStore>(store: &T) {
    use super::{NewEvent, Room};
    use crate::protocol::{EventKind, RoomKind, UserKind};
    let new_bot = |name: &str, webhook: &str| NewBot {
        id: Uuid::new_v4(),
        name: name.into(),
        name_key: name.to_lowercase(),
        token_hash: format!("hash-of-{name}"),
        secret: format!("secret-of-{name}"),
        webhook: webhook.into(),
        created_by: Uuid::nil(),
    };
    let dice = new_bot("dice", "http://127.0.0.1:1/hook");
    let quiet = new_bot("quiet", "");
    store.create_bot(&dice, 1).await.unwrap();
    store.create_bot(&quiet, 2).await.unwrap();
    assert!(matches!(
        store.create_bot(&new_bot("DICE", ""), 3).await,
        Err(IdentityError::NameOwned)
    ));
    let found = store.bot_by_token("hash-of-dice").await.unwrap().unwrap();
    assert_eq!((found.id, found.kind), (dice.id, UserKind::Bot));
    assert!(store
        .bot_by_token("hash-of-nobody")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.callable_bots().await.unwrap(),
        vec![(dice.id, "dice".to_owned())],
        "only bots with a webhook are called"
    );
    let hook = store.webhook(dice.id).await.unwrap().unwrap();
    assert_eq!(
        (hook.secret.as_str(), hook.name.as_str()),
        ("secret-of-dice", "dice")
    );

    // Calls are written with their message, only for bots in the room, once per message.
    let private = Room {
        slug: "hideout".into(),
        name: "Hideout".into(),
        topic: String::new(),
        kind: RoomKind::Private,
        created_by: Uuid::nil(),
        created_at: 1,
        archived: false,
    };
    store
        .create_room(&private, &[Uuid::nil()], 1)
        .await
        .unwrap();
    let mention = |text: &str| NewEvent {
        call: vec![dice.id],
        ..super::test_message(text)
    };
    let general = mention("@dice roll");
    let general_id = general.id;
    store
        .append("general", vec![general.clone()], 10)
        .await
        .unwrap();
    store.append("general", vec![general], 11).await.unwrap();
    store
        .append("hideout", vec![mention("@dice not here")], 12)
        .await
        .unwrap();
    let claimed = store.claim_deliveries(20, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let call = &claimed[0];
    assert_eq!(
        (
            call.id,
            call.bot,
            call.room.as_str(),
            call.message,
            call.attempts
        ),
        (
            delivery_id(dice.id, general_id),
            dice.id,
            "general",
            general_id,
            0
        )
    );
    // Leased: not claimed again until the lease ends, then counted as a second attempt. A call put
    // back is due again when said, its attempt not counted.
    assert!(store
        .claim_deliveries(500, 1_500, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .settle_deliveries(&[Settled {
            id: call.id,
            how: Settlement::Released { at: 400 },
        }])
        .await
        .unwrap();
    let back = store.claim_deliveries(400, 1_000, 10).await.unwrap();
    assert_eq!(back.iter().map(|c| c.attempts).collect::<Vec<_>>(), [0]);
    store
        .settle_deliveries(&[Settled {
            id: call.id,
            how: Settlement::Retry {
                at: 600,
                error: "answered 500".into(),
            },
        }])
        .await
        .unwrap();
    assert!(store
        .claim_deliveries(599, 2_000, 10)
        .await
        .unwrap()
        .is_empty());
    let again = store.claim_deliveries(600, 2_000, 10).await.unwrap();
    assert_eq!(again.iter().map(|c| c.attempts).collect::<Vec<_>>(), [1]);
    store
        .settle_deliveries(&[Settled {
            id: call.id,
            how: Settlement::Failed {
                error: "answered 404".into(),
            },
        }])
        .await
        .unwrap();
    let listed = store.bots().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|b| b.user.name.as_str()).collect();
    assert_eq!(names, ["dice", "quiet"]);
    assert_eq!(
        (listed[0].failed, listed[0].last_error.as_str()),
        (1, "answered 404")
    );
    assert!(store
        .claim_deliveries(10_000, 20_000, 10)
        .await
        .unwrap()
        .is_empty());

    // A message by a member-only kind that names nobody, and a bot's own message, call nobody.
    let own = NewEvent {
        user_id: dice.id,
        kind: EventKind::Message,
        ..mention("@dice talking to myself")
    };
    store.append("general", vec![own], 30).await.unwrap();
    assert!(store
        .claim_deliveries(10_000, 20_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Rotation replaces the token; revocation ends it and the bot's calls.
    assert!(store
        .set_bot_token(dice.id, Some(("new-hash", "new-secret")))
        .await
        .unwrap());
    assert!(store.bot_by_token("hash-of-dice").await.unwrap().is_none());
    assert_eq!(
        store.bot_by_token("new-hash").await.unwrap().map(|u| u.id),
        Some(dice.id)
    );
    assert!(store
        .bot_tokens()
        .await
        .unwrap()
        .contains(&(dice.id, Some("new-hash".to_owned()))));
    assert!(store.set_bot_token(dice.id, None).await.unwrap());
    assert!(store.bot_tokens().await.unwrap().contains(&(dice.id, None)));
    assert!(store.bot_by_token("new-hash").await.unwrap().is_none());
    assert!(store.webhook(dice.id).await.unwrap().is_none());
    assert!(store.callable_bots().await.unwrap().is_empty());
    assert!(!store.set_bot_token(Uuid::new_v4(), None).await.unwrap());
    assert!(store
        .set_webhook(quiet.id, "http://127.0.0.1:2/")
        .await
        .unwrap());
    assert_eq!(
        store.callable_bots().await.unwrap(),
        vec![(quiet.id, "quiet".to_owned())]
    );
    assert!(!listed[0].webhook.is_empty() && listed[0].active);

    // Several calls settle in one record, each as told.
    let calls: Vec<NewEvent> = (0..3)
        .map(|n| NewEvent {
            call: vec![quiet.id],
            ..super::test_message(&format!("@quiet {n}"))
        })
        .collect();
    store.append("general", calls, 40).await.unwrap();
    let claimed = store.claim_deliveries(50, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    let how = [
        Settlement::Done,
        Settlement::Retry {
            at: 60,
            error: "no answer".into(),
        },
        Settlement::Released { at: 70 },
    ];
    let settled: Vec<Settled> = claimed
        .iter()
        .zip(how)
        .map(|(call, how)| Settled { id: call.id, how })
        .collect();
    store.settle_deliveries(&settled).await.unwrap();
    store.settle_deliveries(&[]).await.unwrap();
    let due: Vec<(Uuid, u32)> = store
        .claim_deliveries(70, 2_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.attempts))
        .collect();
    assert_eq!(due.len(), 2, "the call made is not due again: {due:?}");
    assert!(due.contains(&(claimed[1].id, 1)), "retried: {due:?}");
    assert!(due.contains(&(claimed[2].id, 0)), "put back: {due:?}");
}
