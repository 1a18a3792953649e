//! Who people are: users (guests, members, bots) and the browser sessions that act for them.
//!
//! Split from the event store on purpose: events only carry a `user_id`, and nothing about how a user
//! proves who they are reaches the event log. The SQL backends implement both traits over one database.

use super::StoreError;
use crate::protocol::{UserKind, Via};
use async_trait::async_trait;
use uuid::Uuid;

/// A user as the rest of the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    /// The name as shown.
    pub name: String,
    pub kind: UserKind,
    pub admin: bool,
    /// Banned by an admin: no sessions, and the name stays locked.
    pub banned: bool,
}

/// A browser session found by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Stable for the session's life, also when its token is replaced at sign-in.
    pub id: Uuid,
    /// Who the session acts for; `None` until its browser joins or signs in.
    pub user: Option<User>,
    pub via: Via,
    /// The browser came in through an invite link (what `CONFAB_ACCESS=invite` asks of new people).
    pub admitted: bool,
}

/// One of a member's sessions, for their "active sessions" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: Uuid,
    /// The browser's own description of itself (its User-Agent), shortened.
    pub device: String,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// A guest to store: made from a typed name, when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGuest {
    pub id: Uuid,
    pub name: String,
    pub name_key: String,
    pub at: i64,
    /// The browser session that acts for the guest from now on, if the guest came from a browser.
    pub session: Option<Uuid>,
}

impl NewGuest {
    /// The guest as a user.
    pub fn user(&self) -> User {
        User {
            id: self.id,
            name: self.name.clone(),
            kind: UserKind::Guest,
            admin: false,
            banned: false,
        }
    }
}

/// Why an identity change was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A member or bot already has this name (compared by [`crate::server::identity::name_key`]).
    #[error("the name belongs to a member")]
    NameOwned,
    /// The user to change does not exist (or is not what the change needs, such as a guest).
    #[error("no such user")]
    NoSuchUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for IdentityError {
    fn from(err: sqlx::Error) -> Self {
        IdentityError::Store(StoreError::Database(err))
    }
}

/// What the server needs to know about users and sessions.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Records a new browser session under the hash of its token; it acts for nobody yet.
    async fn create_session(
        &self,
        id: Uuid,
        token_hash: &str,
        device: &str,
        at: i64,
    ) -> Result<(), StoreError>;

    /// The session whose token hashes to `token_hash`, with its user.
    async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// The session with this id (its token may have changed since the caller read it).
    async fn session_by_id(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError>;

    /// Notes that the session was used now (for the sessions list).
    async fn touch_session(&self, id: Uuid, at: i64) -> Result<(), StoreError>;

    /// Makes the session act for `user` (or, with `None`, for nobody: the browser left).
    async fn bind_session(
        &self,
        id: Uuid,
        user: Option<Uuid>,
        via: Via,
        at: i64,
    ) -> Result<(), StoreError>;

    /// Replaces the session's token (sign-in issues a new one, so a token seen before it is worthless).
    async fn rotate_session(&self, id: Uuid, token_hash: &str, at: i64) -> Result<(), StoreError>;

    /// Ends a session: its token is forgotten. Returns whether it existed.
    async fn end_session(&self, id: Uuid) -> Result<bool, StoreError>;

    /// The sessions acting for `user`, most recently used first.
    async fn sessions_of(&self, user: Uuid) -> Result<Vec<SessionInfo>, StoreError>;

    /// Stores new guests, and makes each one's browser session (if it has one) act for them, in one
    /// transaction: all are stored or none.
    async fn create_guests(&self, guests: &[NewGuest]) -> Result<(), StoreError>;

    /// A new guest named `name` (its key `name_key`), with no session.
    async fn create_guest(
        &self,
        id: Uuid,
        name: &str,
        name_key: &str,
        at: i64,
    ) -> Result<User, StoreError> {
        let guest = NewGuest {
            id,
            name: name.to_owned(),
            name_key: name_key.to_owned(),
            at,
            session: None,
        };
        self.create_guests(std::slice::from_ref(&guest)).await?;
        Ok(guest.user())
    }

    /// The member or bot that owns the name with this key, if any.
    async fn owner_of(&self, name_key: &str) -> Result<Option<User>, StoreError>;

    /// A member's password hash (PHC string), found by name key.
    async fn credentials(&self, name_key: &str) -> Result<Option<(User, String)>, StoreError>;

    /// Makes guest `user` a member with this password hash, keeping their id and so their history.
    /// They become an admin when `admin` is set, or when no admin exists yet (the first member).
    async fn make_member(
        &self,
        user: Uuid,
        name_key: &str,
        password_hash: &str,
        admin: bool,
        at: i64,
    ) -> Result<User, IdentityError>;

    /// Makes the member with this name key an admin (`CONFAB_ADMIN`); false when there is none.
    async fn grant_admin(&self, name_key: &str) -> Result<bool, StoreError>;

    /// The user with this id.
    async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError>;

    /// Makes member `id` an admin (or not); false when there is no such member.
    async fn set_admin(&self, id: Uuid, admin: bool) -> Result<bool, StoreError>;

    /// The member an embedding app knows as `external_id` (a token's `sub`), made on first sight and
    /// renamed (and made admin or not) as the app says. `NameOwned` when someone else has the name.
    async fn external_user(
        &self,
        external_id: &str,
        name: &str,
        name_key: &str,
        admin: bool,
        at: i64,
    ) -> Result<User, IdentityError>;

    /// Records an invite link (by the hash of its code) good for `uses` uses until `expires_at`.
    async fn create_invite(
        &self,
        code_hash: &str,
        created_by: Uuid,
        uses: u32,
        expires_at: i64,
        at: i64,
    ) -> Result<(), StoreError>;

    /// Spends one use of the invite, if it has one left and has not expired; whether it did.
    async fn use_invite(&self, code_hash: &str, now: i64) -> Result<bool, StoreError>;

    /// Marks a session as having come in through an invite.
    async fn admit_session(&self, id: Uuid) -> Result<(), StoreError>;

    /// Records a one-time sign-in link for member `user`, valid until `expires_at`.
    async fn create_signin_link(
        &self,
        token_hash: &str,
        user: Uuid,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Uses up a sign-in link: the member it signs in, if it is unused and unexpired.
    async fn use_signin_link(&self, token_hash: &str, now: i64)
        -> Result<Option<Uuid>, StoreError>;

    /// Bans user `id`: every session of theirs ends (their ids are returned, so their sockets can be
    /// closed), and their name stays locked. `None` when there is no such user.
    async fn ban(&self, id: Uuid) -> Result<Option<Vec<Uuid>>, StoreError>;
}

/// What a `users.kind` column holds.
pub(crate) fn kind_from_column(kind: &str) -> UserKind {
    match kind {
        "guest" => UserKind::Guest,
        "member" => UserKind::Member,
        "bot" => UserKind::Bot,
        _ => UserKind::Other,
    }
}

pub(super) fn via_name(via: Via) -> &'static str {
    match via {
        Via::Guest => "guest",
        Via::Password => "password",
        Via::Token => "token",
        Via::Other => "other",
    }
}

pub(super) fn via_from_column(via: &str) -> Via {
    match via {
        "guest" => Via::Guest,
        "password" => Via::Password,
        "token" => Via::Token,
        _ => Via::Other,
    }
}

/// The longest User-Agent kept for the sessions list.
pub const MAX_DEVICE_CHARS: usize = 200;

/// Reads a user from the columns `user_id, user_name, user_kind, user_admin` (nullable, for a LEFT JOIN).
pub(super) fn user_from_row<'r, R>(row: &'r R) -> Result<Option<User>, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(id) = row.try_get::<Option<String>, _>("user_id")? else {
        return Ok(None);
    };
    let id = Uuid::try_parse(&id).map_err(|_| StoreError::Corrupt(format!("user id {id:?}")))?;
    Ok(Some(User {
        id,
        name: row
            .try_get::<Option<String>, _>("user_name")?
            .unwrap_or_default(),
        kind: kind_from_column(
            &row.try_get::<Option<String>, _>("user_kind")?
                .unwrap_or_default(),
        ),
        admin: row
            .try_get::<Option<bool>, _>("user_admin")?
            .unwrap_or(false),
        banned: row
            .try_get::<Option<bool>, _>("user_banned")?
            .unwrap_or(false),
    }))
}

/// The user columns [`user_from_row`] reads, from `users AS u`.
/// Who owns the name with key `$1`: a member or bot, else a banned guest (whose name stays locked).
/// Asked on every join, so it must find its rows by the `users_by_name_key` index.
pub(super) const OWNER_OF: &str =
    "u.name_key = $1 AND (u.kind <> 'guest' OR u.banned) ORDER BY u.kind <> 'guest' DESC LIMIT 1";

pub(super) const USER_COLUMNS: &str =
    "u.id AS user_id, u.name AS user_name, u.kind AS user_kind, u.admin AS user_admin, \
     u.banned AS user_banned";

/// Implements [`IdentityStore`] for a SQL store with `pool` (reads) and `writer` (writes) fields. The SQL is written once, with `$N`
/// parameters that SQLite and PostgreSQL both read, so the two backends cannot drift apart.
macro_rules! sql_identity_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::server::store::IdentityStore for $store {
            async fn create_session(
                &self,
                id: uuid::Uuid,
                token_hash: &str,
                device: &str,
                at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                let device: String = device
                    .chars()
                    .take($crate::server::store::identity::MAX_DEVICE_CHARS)
                    .collect();
                sqlx::query(
                    "INSERT INTO sessions (id, token_hash, device, created_at, last_seen_at) \
                     VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(id.to_string())
                .bind(token_hash)
                .bind(device)
                .bind(at)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn session(
                &self,
                token_hash: &str,
            ) -> Result<
                Option<$crate::server::store::SessionRecord>,
                $crate::server::store::StoreError,
            > {
                self.session_where("s.token_hash = $1", token_hash.to_owned())
                    .await
            }

            async fn session_by_id(
                &self,
                id: uuid::Uuid,
            ) -> Result<
                Option<$crate::server::store::SessionRecord>,
                $crate::server::store::StoreError,
            > {
                self.session_where("s.id = $1", id.to_string()).await
            }

            async fn touch_session(
                &self,
                id: uuid::Uuid,
                at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id.to_string())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn bind_session(
                &self,
                id: uuid::Uuid,
                user: Option<uuid::Uuid>,
                via: $crate::protocol::Via,
                at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query(
                    "UPDATE sessions SET user_id = $1, via = $2, last_seen_at = $3 WHERE id = $4",
                )
                .bind(user.map(|u| u.to_string()))
                .bind($crate::server::store::identity::via_name(via))
                .bind(at)
                .bind(id.to_string())
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn rotate_session(
                &self,
                id: uuid::Uuid,
                token_hash: &str,
                at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query("UPDATE sessions SET token_hash = $1, last_seen_at = $2 WHERE id = $3")
                    .bind(token_hash)
                    .bind(at)
                    .bind(id.to_string())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn end_session(
                &self,
                id: uuid::Uuid,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let gone = sqlx::query("DELETE FROM sessions WHERE id = $1")
                    .bind(id.to_string())
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                Ok(gone > 0)
            }

            async fn sessions_of(
                &self,
                user: uuid::Uuid,
            ) -> Result<Vec<$crate::server::store::SessionInfo>, $crate::server::store::StoreError>
            {
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                    "SELECT id, device, created_at, last_seen_at FROM sessions WHERE user_id = $1 \
                     ORDER BY last_seen_at DESC",
                )
                .bind(user.to_string())
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id, device, created_at, last_seen_at)| {
                        Ok($crate::server::store::SessionInfo {
                            id: uuid::Uuid::try_parse(&id).map_err(|_| {
                                $crate::server::store::StoreError::Corrupt(format!(
                                    "session id {id:?}"
                                ))
                            })?,
                            device,
                            created_at,
                            last_seen_at,
                        })
                    })
                    .collect()
            }

            async fn create_guests(
                &self,
                guests: &[$crate::server::store::identity::NewGuest],
            ) -> Result<(), $crate::server::store::StoreError> {
                // One transaction, so one commit (one fsync on SQLite) for a whole group of arrivals.
                let mut tx = self.writer.begin().await?;
                for guest in guests {
                    sqlx::query(
                        "INSERT INTO users (id, name, name_key, kind, created_at) \
                         VALUES ($1, $2, $3, 'guest', $4)",
                    )
                    .bind(guest.id.to_string())
                    .bind(&guest.name)
                    .bind(&guest.name_key)
                    .bind(guest.at)
                    .execute(&mut *tx)
                    .await?;
                    if let Some(session) = guest.session {
                        sqlx::query(
                            "UPDATE sessions SET user_id = $1, via = $2, last_seen_at = $3 \
                             WHERE id = $4",
                        )
                        .bind(guest.id.to_string())
                        .bind($crate::server::store::identity::via_name(
                            $crate::protocol::Via::Guest,
                        ))
                        .bind(guest.at)
                        .bind(session.to_string())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn owner_of(
                &self,
                name_key: &str,
            ) -> Result<Option<$crate::server::store::User>, $crate::server::store::StoreError>
            {
                self.user_where($crate::server::store::identity::OWNER_OF, name_key)
                    .await
            }

            async fn credentials(
                &self,
                name_key: &str,
            ) -> Result<
                Option<($crate::server::store::User, String)>,
                $crate::server::store::StoreError,
            > {
                use sqlx::Row;
                let sql = format!(
                    "SELECT {}, u.password_hash FROM users u WHERE u.name_key = $1 \
                     AND u.kind = 'member' AND u.password_hash IS NOT NULL",
                    $crate::server::store::identity::USER_COLUMNS
                );
                let Some(row) = sqlx::query(&sql)
                    .bind(name_key)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                let hash: String = row.try_get("password_hash")?;
                Ok($crate::server::store::identity::user_from_row(&row)?.map(|user| (user, hash)))
            }

            async fn make_member(
                &self,
                user: uuid::Uuid,
                name_key: &str,
                password_hash: &str,
                admin: bool,
                _at: i64,
            ) -> Result<$crate::server::store::User, $crate::server::store::IdentityError> {
                // One statement: the first member becomes the admin even when two claim at once.
                let updated = sqlx::query(
                    "UPDATE users SET kind = 'member', name_key = $1, password_hash = $2, \
                     admin = ($3 OR NOT EXISTS (SELECT 1 FROM users WHERE admin = TRUE)) \
                     WHERE id = $4 AND kind = 'guest' AND NOT banned",
                )
                .bind(name_key)
                .bind(password_hash)
                .bind(admin)
                .bind(user.to_string())
                .execute(&self.writer)
                .await;
                match updated {
                    Ok(done) if done.rows_affected() == 1 => {}
                    Ok(_) => return Err($crate::server::store::IdentityError::NoSuchUser),
                    Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                        return Err($crate::server::store::IdentityError::NameOwned)
                    }
                    Err(err) => return Err(err.into()),
                }
                self.user_where("u.id = $1", &user.to_string())
                    .await?
                    .ok_or($crate::server::store::IdentityError::NoSuchUser)
            }

            async fn grant_admin(
                &self,
                name_key: &str,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE users SET admin = TRUE WHERE name_key = $1 AND kind = 'member'",
                )
                .bind(name_key)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn user(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::server::store::User>, $crate::server::store::StoreError>
            {
                self.user_where("u.id = $1", &id.to_string()).await
            }

            async fn set_admin(
                &self,
                id: uuid::Uuid,
                admin: bool,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE users SET admin = $1 WHERE id = $2 AND kind = 'member' AND NOT banned",
                )
                .bind(admin)
                .bind(id.to_string())
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn external_user(
                &self,
                external_id: &str,
                name: &str,
                name_key: &str,
                admin: bool,
                at: i64,
            ) -> Result<$crate::server::store::User, $crate::server::store::IdentityError> {
                use $crate::server::store::IdentityError;
                let known = self.user_where("u.external_id = $1", external_id).await?;
                let written = match &known {
                    Some(user) => {
                        sqlx::query(
                            "UPDATE users SET name = $1, name_key = $2, admin = $3 WHERE id = $4",
                        )
                        .bind(name)
                        .bind(name_key)
                        .bind(admin && !user.banned)
                        .bind(user.id.to_string())
                        .execute(&self.writer)
                        .await
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO users (id, name, name_key, kind, admin, created_at, external_id) \
                             VALUES ($1, $2, $3, 'member', $4, $5, $6)",
                        )
                        .bind(uuid::Uuid::new_v4().to_string())
                        .bind(name)
                        .bind(name_key)
                        .bind(admin)
                        .bind(at)
                        .bind(external_id)
                        .execute(&self.writer)
                        .await
                    }
                };
                match written {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                        return Err(IdentityError::NameOwned)
                    }
                    Err(err) => return Err(err.into()),
                }
                self.user_where("u.external_id = $1", external_id)
                    .await?
                    .ok_or(IdentityError::NoSuchUser)
            }

            async fn create_invite(
                &self,
                code_hash: &str,
                created_by: uuid::Uuid,
                uses: u32,
                expires_at: i64,
                at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query(
                    "INSERT INTO invites (code_hash, created_by, uses_left, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(code_hash)
                .bind(created_by.to_string())
                .bind(i64::from(uses))
                .bind(expires_at)
                .bind(at)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn use_invite(
                &self,
                code_hash: &str,
                now: i64,
            ) -> Result<bool, $crate::server::store::StoreError> {
                // One statement: two browsers using the last use at once cannot both get it.
                let done = sqlx::query(
                    "UPDATE invites SET uses_left = uses_left - 1 \
                     WHERE code_hash = $1 AND uses_left > 0 AND expires_at > $2",
                )
                .bind(code_hash)
                .bind(now)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn admit_session(
                &self,
                id: uuid::Uuid,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query("UPDATE sessions SET admitted = TRUE WHERE id = $1")
                    .bind(id.to_string())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn create_signin_link(
                &self,
                token_hash: &str,
                user: uuid::Uuid,
                expires_at: i64,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query(
                    "INSERT INTO signin_links (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(token_hash)
                .bind(user.to_string())
                .bind(expires_at)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn use_signin_link(
                &self,
                token_hash: &str,
                now: i64,
            ) -> Result<Option<uuid::Uuid>, $crate::server::store::StoreError> {
                let user: Option<String> = sqlx::query_scalar(
                    "UPDATE signin_links SET used_at = $2 \
                     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING user_id",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.writer)
                .await?;
                Ok(user.and_then(|u| uuid::Uuid::try_parse(&u).ok()))
            }

            async fn ban(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<Vec<uuid::Uuid>>, $crate::server::store::StoreError> {
                let mut tx = self.writer.begin().await?;
                let banned =
                    sqlx::query("UPDATE users SET banned = TRUE, admin = FALSE WHERE id = $1")
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if banned == 0 {
                    return Ok(None);
                }
                let ended: Vec<String> =
                    sqlx::query_scalar("DELETE FROM sessions WHERE user_id = $1 RETURNING id")
                        .bind(id.to_string())
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(Some(
                    ended
                        .iter()
                        .filter_map(|id| uuid::Uuid::try_parse(id).ok())
                        .collect(),
                ))
            }
        }

        impl $store {
            /// The user that `condition` (and any ordering after it) on `users AS u` finds.
            async fn user_where(
                &self,
                condition: &str,
                value: &str,
            ) -> Result<Option<$crate::server::store::User>, $crate::server::store::StoreError>
            {
                let sql = format!(
                    "SELECT {} FROM users u WHERE {condition}",
                    $crate::server::store::identity::USER_COLUMNS
                );
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => $crate::server::store::identity::user_from_row(&row),
                    None => Ok(None),
                }
            }

            /// The session (with its user) that `condition` on `sessions AS s` finds.
            async fn session_where(
                &self,
                condition: &str,
                value: String,
            ) -> Result<
                Option<$crate::server::store::SessionRecord>,
                $crate::server::store::StoreError,
            > {
                use sqlx::Row;
                let sql = format!(
                    "SELECT s.id AS session_id, s.via, s.admitted, {} FROM sessions s \
                     LEFT JOIN users u ON u.id = s.user_id WHERE {condition}",
                    $crate::server::store::identity::USER_COLUMNS
                );
                let Some(row) = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                let id: String = row.try_get("session_id")?;
                let via: String = row.try_get("via")?;
                let admitted: bool = row.try_get("admitted")?;
                Ok(Some($crate::server::store::SessionRecord {
                    admitted,
                    id: uuid::Uuid::try_parse(&id).map_err(|_| {
                        $crate::server::store::StoreError::Corrupt(format!("session id {id:?}"))
                    })?,
                    user: $crate::server::store::identity::user_from_row(&row)?,
                    via: $crate::server::store::identity::via_from_column(&via),
                }))
            }

            /// What SQL migrations cannot do: fill in the name keys of users the migration made from
            /// earlier names (case folding needs Unicode tables).
            async fn fill_name_keys(&self) -> Result<(), $crate::server::store::StoreError> {
                let unkeyed: Vec<(String, String)> =
                    sqlx::query_as("SELECT id, name FROM users WHERE name_key = ''")
                        .fetch_all(&self.pool)
                        .await?;
                for (id, name) in unkeyed {
                    sqlx::query("UPDATE users SET name_key = $1 WHERE id = $2")
                        .bind($crate::server::names::name_key(&name))
                        .bind(id)
                        .execute(&self.writer)
                        .await?;
                }
                Ok(())
            }
        }
    };
}

pub(super) use sql_identity_store;

/// What every identity store must do, run against each backend by its tests.
#[cfg(test)]
pub(crate) async fn check_contract(store: &dyn IdentityStore) {
    use crate::server::names::name_key;
    let session = Uuid::new_v4();
    store
        .create_session(session, "hash-1", "Firefox on a phone", 10)
        .await
        .unwrap();
    let found = store.session("hash-1").await.unwrap().expect("created");
    assert_eq!((found.id, found.user.clone()), (session, None));
    assert!(store.session("hash-2").await.unwrap().is_none());

    let ann = Uuid::new_v4();
    let guest = store
        .create_guest(ann, "Ann", &name_key("Ann"), 11)
        .await
        .unwrap();
    assert_eq!(guest.kind, UserKind::Guest);
    store
        .bind_session(session, Some(ann), Via::Guest, 12)
        .await
        .unwrap();
    assert_eq!(
        store.session("hash-1").await.unwrap().unwrap().user,
        Some(guest.clone())
    );
    assert_eq!(
        store.owner_of(&name_key("ann")).await.unwrap(),
        None,
        "a guest owns no name"
    );

    // Guests stored as a group, each binding the browser session it came from (if any).
    let (cy_session, dee_session) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, hash) in [(cy_session, "hash-cy"), (dee_session, "hash-dee")] {
        store.create_session(id, hash, "", 20).await.unwrap();
    }
    let group: Vec<NewGuest> = [
        ("Cy", Some(cy_session)),
        ("Eve", None),
        ("Dee", Some(dee_session)),
    ]
    .into_iter()
    .map(|(name, session)| NewGuest {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        name_key: name_key(name),
        at: 21,
        session,
    })
    .collect();
    store.create_guests(&group).await.unwrap();
    for guest in &group {
        assert_eq!(store.user(guest.id).await.unwrap(), Some(guest.user()));
    }
    for (hash, guest) in [("hash-cy", &group[0]), ("hash-dee", &group[2])] {
        let bound = store.session(hash).await.unwrap().unwrap();
        assert_eq!((bound.user, bound.via), (Some(guest.user()), Via::Guest));
    }
    store.create_guests(&[]).await.unwrap();

    // Another guest may use the same name (not at once: presence sees to that) until it is kept.
    let other = Uuid::new_v4();
    store
        .create_guest(other, "ANN", &name_key("ANN"), 13)
        .await
        .unwrap();
    let member = store
        .make_member(ann, &name_key("Ann"), "$argon2id$fake", false, 14)
        .await
        .unwrap();
    assert_eq!(
        (member.id, member.kind, member.admin),
        (ann, UserKind::Member, true),
        "first member is admin"
    );
    assert!(matches!(
        store
            .make_member(other, &name_key("ANN"), "$argon2id$x", false, 15)
            .await,
        Err(IdentityError::NameOwned)
    ));
    assert!(
        matches!(
            store
                .make_member(ann, &name_key("Ann"), "$argon2id$x", false, 15)
                .await,
            Err(IdentityError::NoSuchUser)
        ),
        "a member cannot be made one twice"
    );
    assert_eq!(
        store
            .owner_of(&name_key("ＡＮＮ"))
            .await
            .unwrap()
            .map(|u| u.id),
        Some(ann)
    );
    let (user, hash) = store.credentials(&name_key("ann")).await.unwrap().unwrap();
    assert_eq!((user.id, hash.as_str()), (ann, "$argon2id$fake"));
    assert_eq!(store.credentials(&name_key("Nobody")).await.unwrap(), None);

    let bo = Uuid::new_v4();
    store
        .create_guest(bo, "Bo", &name_key("Bo"), 16)
        .await
        .unwrap();
    let bo_member = store
        .make_member(bo, &name_key("Bo"), "$argon2id$b", false, 17)
        .await
        .unwrap();
    assert!(!bo_member.admin, "only the first member is made admin");
    assert!(store.grant_admin(&name_key("bo")).await.unwrap());
    assert!(
        store
            .owner_of(&name_key("Bo"))
            .await
            .unwrap()
            .unwrap()
            .admin
    );
    assert!(!store.grant_admin(&name_key("Nobody")).await.unwrap());

    // A new token for the same session: the old one finds nothing.
    store.rotate_session(session, "hash-3", 18).await.unwrap();
    assert!(store.session("hash-1").await.unwrap().is_none());
    let rotated = store.session("hash-3").await.unwrap().unwrap();
    assert_eq!(rotated.id, session);
    assert_eq!(
        store.session_by_id(session).await.unwrap().unwrap().id,
        session
    );
    store
        .bind_session(session, Some(ann), Via::Password, 19)
        .await
        .unwrap();
    assert_eq!(
        store.session("hash-3").await.unwrap().unwrap().via,
        Via::Password
    );

    let second = Uuid::new_v4();
    store
        .create_session(second, "hash-4", "Chromium", 20)
        .await
        .unwrap();
    store
        .bind_session(second, Some(ann), Via::Password, 21)
        .await
        .unwrap();
    store.touch_session(session, 30).await.unwrap();
    let listed = store.sessions_of(ann).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [session, second],
        "most recent first"
    );
    assert_eq!(listed[0].device, "Firefox on a phone");
    assert!(store.sessions_of(bo).await.unwrap().is_empty());
    assert!(store.end_session(second).await.unwrap());
    assert!(!store.end_session(second).await.unwrap());
    assert!(store.session("hash-4").await.unwrap().is_none());
    assert_eq!(store.sessions_of(ann).await.unwrap().len(), 1);

    // Admins are made and unmade; only members can be.
    assert!(store.set_admin(ann, false).await.unwrap());
    assert!(!store.user(ann).await.unwrap().unwrap().admin);
    assert!(
        !store.set_admin(other, true).await.unwrap(),
        "a guest cannot be an admin"
    );
    assert_eq!(store.user(Uuid::new_v4()).await.unwrap(), None);

    // A ban ends every session of the user and locks the name, also a guest's.
    assert_eq!(store.ban(bo).await.unwrap(), Some(vec![]));
    let bo_now = store.user(bo).await.unwrap().unwrap();
    assert!(bo_now.banned && !bo_now.admin);
    assert_eq!(store.ban(ann).await.unwrap(), Some(vec![session]));
    assert!(store.session("hash-3").await.unwrap().is_none());
    let guest_ban = Uuid::new_v4();
    store
        .create_guest(guest_ban, "Cy", &name_key("Cy"), 40)
        .await
        .unwrap();
    store.ban(guest_ban).await.unwrap();
    let locked = store
        .owner_of(&name_key("cy"))
        .await
        .unwrap()
        .expect("a banned guest's name is locked");
    assert!(locked.banned);
    assert_eq!(store.ban(Uuid::new_v4()).await.unwrap(), None);

    // Invites: used up by their count, and dead after their expiry.
    let admin = Uuid::new_v4();
    store
        .create_invite("inv-1", admin, 2, 1_000, 60)
        .await
        .unwrap();
    assert!(store.use_invite("inv-1", 100).await.unwrap());
    assert!(store.use_invite("inv-1", 100).await.unwrap());
    assert!(
        !store.use_invite("inv-1", 100).await.unwrap(),
        "two uses only"
    );
    store
        .create_invite("inv-2", admin, 5, 1_000, 60)
        .await
        .unwrap();
    assert!(!store.use_invite("inv-2", 1_000).await.unwrap(), "expired");
    assert!(!store.use_invite("nope", 100).await.unwrap());
    let fresh = Uuid::new_v4();
    store.create_session(fresh, "hash-9", "", 60).await.unwrap();
    assert!(!store.session("hash-9").await.unwrap().unwrap().admitted);
    store.admit_session(fresh).await.unwrap();
    assert!(store.session("hash-9").await.unwrap().unwrap().admitted);

    // Sign-in links: once, and only in time.
    store
        .create_signin_link("link-1", other, 500)
        .await
        .unwrap();
    assert_eq!(
        store.use_signin_link("link-1", 100).await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store.use_signin_link("link-1", 101).await.unwrap(),
        None,
        "used once"
    );
    store
        .create_signin_link("link-2", other, 500)
        .await
        .unwrap();
    assert_eq!(
        store.use_signin_link("link-2", 500).await.unwrap(),
        None,
        "expired"
    );

    // Users an embedding app vouches for: made once, renamed as the app says, never taking a name.
    let ext = store
        .external_user("app-7", "Dee", &name_key("Dee"), true, 50)
        .await
        .unwrap();
    assert_eq!(
        (ext.kind, ext.admin, ext.name.as_str()),
        (UserKind::Member, true, "Dee")
    );
    let again = store
        .external_user("app-7", "Dee Dee", &name_key("Dee Dee"), false, 51)
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.name.as_str(), again.admin),
        (ext.id, "Dee Dee", false)
    );
    assert_eq!(
        store
            .owner_of(&name_key("dee dee"))
            .await
            .unwrap()
            .map(|u| u.id),
        Some(ext.id)
    );
    assert!(
        matches!(
            store
                .external_user("app-8", "ANN", &name_key("ANN"), false, 52)
                .await,
            Err(IdentityError::NameOwned)
        ),
        "a member's name is not an app user's to take"
    );
}
