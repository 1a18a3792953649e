//! Bots: accounts that programs speak through, with a token instead of a password.
//!
//! - [`api`]: the HTTP API at `/api/v1`, authenticated with `Authorization: Bearer <token>`;
//! - [`webhook`]: the calls a bot gets when it is mentioned or sent a direct message;
//! - [`admin`]: the admin page and the `confab bot …` commands.
//!
//! A token is `cfb_` and 43 random base64url characters, kept only as its SHA-256, like a browser
//! session's; the prefix tells it from an embedding app's JWT on the socket. A bot's webhook secret is
//! shown with its token, once.

pub mod admin;
pub mod api;
pub mod webhook;

use super::backplane::SessionSignal;
use super::hub::{now_ms, Hub};
use super::identity::{new_token, token_hash};
use super::names::name_key;
use super::store::bots::NewBot;
use super::store::{BotStore, IdentityError, RoomStore, StoreError, User};
use crate::protocol::{validate_name, NameError};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What tells a bot token from any other bearer token.
pub const TOKEN_PREFIX: &str = "cfb_";

/// Settings of bots and their webhooks.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// `CONFAB_WEBHOOK_ALLOW_PRIVATE`: webhooks may call loopback, link-local and private addresses
    /// (tests, and bots on the same private network). Off, such a URL is refused when saved and when
    /// called, whatever its name resolves to then.
    pub allow_private: bool,
    /// `CONFAB_BOT_RATE_PER_SECOND` and `CONFAB_BOT_RATE_BURST`: each bot's own limit on the API.
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    /// How long a webhook receiver may take to answer.
    pub timeout: Duration,
    /// The first retry's delay; each next one doubles it.
    pub retry_base: Duration,
    /// Calls in flight at once to one bot (of 64 per instance): 32 carry 50 calls a second to a receiver
    /// that takes half a second, and leave the other half to other bots when one hangs.
    pub per_bot: usize,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            per_second: NonZeroU32::new(5).unwrap(),
            burst: NonZeroU32::new(20).unwrap(),
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(2),
            per_bot: 32,
        }
    }
}

/// A bot just made or given a new token: the only time its token and secret are shown.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub token: String,
    pub secret: String,
}

/// Why a bot was not made or changed.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("{}", .0.message())]
    Name(NameError),
    #[error("the name belongs to someone else")]
    NameOwned,
    #[error("{0}")]
    Webhook(String),
    #[error("there is no such bot")]
    NoSuchBot,
    #[error("there is no room #{0} (a bot may be put in public and private rooms)")]
    NoSuchRoom(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bots' side of the server; cheap to clone.
#[derive(Clone)]
pub struct Bots {
    pub store: Arc<dyn BotStore>,
    rooms: Arc<dyn RoomStore>,
    hub: Hub,
    pub config: BotConfig,
    /// Each bot's API rate.
    limits: Arc<DefaultKeyedRateLimiter<Uuid>>,
}

impl Bots {
    pub fn new(
        store: Arc<dyn BotStore>,
        rooms: Arc<dyn RoomStore>,
        hub: Hub,
        config: BotConfig,
    ) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            store,
            rooms,
            hub,
            config,
            limits: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// Makes bot `name`, in `general` and every public room, called at `webhook` (may be empty).
    pub async fn create(
        &self,
        name: &str,
        webhook: &str,
        by: Uuid,
    ) -> Result<Credentials, BotError> {
        self.create_in(name, webhook, by, None).await
    }

    /// Makes bot `name` as [`Bots::create`] does, but in `general` and `rooms` only (by slug: public or
    /// private rooms, not direct ones) when they are given.
    pub async fn create_in(
        &self,
        name: &str,
        webhook: &str,
        by: Uuid,
        rooms: Option<&[String]>,
    ) -> Result<Credentials, BotError> {
        let name = validate_name(name).map_err(BotError::Name)?;
        let webhook = self.check_webhook(webhook).await?;
        let rooms = match rooms {
            None => self.rooms.public_rooms(usize::MAX).await?,
            Some(slugs) => {
                let mut rooms = Vec::new();
                for slug in slugs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    if slug == crate::protocol::GENERAL_ROOM {
                        continue;
                    }
                    match self.rooms.room(slug).await? {
                        Some(room) if room.kind != crate::protocol::RoomKind::Direct => {
                            rooms.push(room)
                        }
                        _ => return Err(BotError::NoSuchRoom(slug.to_owned())),
                    }
                }
                rooms
            }
        };
        let (token, secret) = (new_bot_token(), new_token());
        let bot = NewBot {
            id: Uuid::new_v4(),
            name_key: name_key(&name),
            name,
            token_hash: token_hash(&token),
            secret: secret.clone(),
            webhook,
            created_by: by,
        };
        let at = now_ms();
        self.store
            .create_bot(&bot, at)
            .await
            .map_err(|err| match err {
                IdentityError::NameOwned => BotError::NameOwned,
                IdentityError::NoSuchUser => BotError::NoSuchBot,
                IdentityError::Store(err) => BotError::Store(err),
            })?;
        for room in rooms {
            self.rooms.add_member(&room.slug, bot.id, at).await?;
        }
        self.refresh().await?;
        tracing::info!(bot = %bot.name, "bot created");
        let user = User {
            id: bot.id,
            name: bot.name,
            kind: crate::protocol::UserKind::Bot,
            admin: false,
            banned: false,
        };
        Ok(Credentials {
            user,
            token,
            secret,
        })
    }

    /// A new token and secret for bot `id`; the old token stops working, and its sockets close.
    pub async fn rotate(&self, id: Uuid) -> Result<(String, String), BotError> {
        let (token, secret) = (new_bot_token(), new_token());
        if !self
            .store
            .set_bot_token(id, Some((&token_hash(&token), &secret)))
            .await?
        {
            return Err(BotError::NoSuchBot);
        }
        self.hub.signal_session(id, SessionSignal::Ended).await;
        Ok((token, secret))
    }

    /// Revokes bot `id`'s token: the API refuses it from now on, and its open sockets close at once.
    pub async fn revoke(&self, id: Uuid) -> Result<(), BotError> {
        if !self.store.set_bot_token(id, None).await? {
            return Err(BotError::NoSuchBot);
        }
        self.hub.signal_session(id, SessionSignal::Ended).await;
        self.refresh().await?;
        tracing::info!(bot = %id, "bot token revoked");
        Ok(())
    }

    /// Points bot `id`'s webhook at `url` (empty: no calls).
    pub async fn set_webhook(&self, id: Uuid, url: &str) -> Result<(), BotError> {
        let url = self.check_webhook(url).await?;
        if !self.store.set_webhook(id, &url).await? {
            return Err(BotError::NoSuchBot);
        }
        self.refresh().await?;
        Ok(())
    }

    /// The bot a bearer token speaks for; `None` for a token that is not a bot's, or revoked, alike.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, StoreError> {
        if !is_bot_token(token) {
            return Ok(None);
        }
        self.store.bot_by_token(&token_hash(token)).await
    }

    /// Counts one API message of `bot`; refused with how long until one is allowed.
    pub fn may_post(&self, bot: Uuid) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        self.limits
            .check_key(&bot)
            .map_err(|denied| denied.wait_time_from(now))
    }

    /// Reloads which bots messages may call.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.hub.callees().set(self.store.callable_bots().await?);
        Ok(())
    }

    /// A webhook URL fit to save: empty, or http(s) with a host that (unless private addresses are
    /// allowed) resolves to public addresses only.
    async fn check_webhook(&self, url: &str) -> Result<String, BotError> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(String::new());
        }
        webhook::check_url(url, self.config.allow_private)
            .await
            .map_err(BotError::Webhook)?;
        Ok(url.to_owned())
    }
}

fn new_bot_token() -> String {
    format!("{TOKEN_PREFIX}{}", new_token())
}

/// Whether `token` has the shape of a bot token (only those are looked up).
pub fn is_bot_token(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}
