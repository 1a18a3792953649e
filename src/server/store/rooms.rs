//! Which rooms exist and who is in them: a trait of its own beside the event store and the identity store.
//! Events only name their room by slug; what a room is, and who may see it, lives here.
//!
//! `general` is not stored: everyone is in it, and it is public (see `server::rooms`).

use super::{StoreError, User};
use crate::protocol::{Notify, RoomKind};
use async_trait::async_trait;
use uuid::Uuid;

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub slug: String,
    /// As shown; empty for a direct room, which is named by its members.
    pub name: String,
    pub topic: String,
    pub kind: RoomKind,
    /// Its owner: they (and admins) manage it.
    pub created_by: Uuid,
    pub created_at: i64,
    pub archived: bool,
}

/// Why a room could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// A room with this slug exists.
    #[error("a room with this slug exists")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RoomError {
    fn from(err: sqlx::Error) -> Self {
        RoomError::Store(StoreError::Database(err))
    }
}

#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Creates `room` with these members (its creator among them), all or nothing. `Taken` when its
    /// slug exists.
    async fn create_room(&self, room: &Room, members: &[Uuid], at: i64) -> Result<(), RoomError>;

    /// The room with this slug.
    async fn room(&self, slug: &str) -> Result<Option<Room>, StoreError>;

    async fn is_member(&self, slug: &str, user: Uuid) -> Result<bool, StoreError>;

    /// Adds `user` to the room; false when they were in it already.
    async fn add_member(&self, slug: &str, user: Uuid, at: i64) -> Result<bool, StoreError>;

    /// Takes `user` out of the room; false when they were not in it.
    async fn remove_member(&self, slug: &str, user: Uuid) -> Result<bool, StoreError>;

    /// The rooms `user` is a member of, by slug.
    async fn rooms_of(&self, user: Uuid) -> Result<Vec<Room>, StoreError>;

    /// The room's members, by name.
    async fn members(&self, slug: &str) -> Result<Vec<User>, StoreError>;

    /// Public rooms that are not archived, by slug, at most `limit`.
    async fn public_rooms(&self, limit: usize) -> Result<Vec<Room>, StoreError>;

    /// Replaces the room's name, topic and archived flag; false when there is no such room.
    async fn update_room(&self, room: &Room) -> Result<bool, StoreError>;

    /// Each of `users` has read `room` up to `seq` (a mark never moves back), in one transaction.
    async fn mark_read_all(&self, room: &str, users: &[Uuid], seq: u64) -> Result<(), StoreError>;

    /// `user` has read `room` up to `seq` (a mark never moves back).
    async fn mark_read(&self, user: Uuid, room: &str, seq: u64) -> Result<(), StoreError> {
        self.mark_read_all(room, std::slice::from_ref(&user), seq)
            .await
    }

    /// How far `user` has read `room`, if they ever said.
    async fn read_mark(&self, user: Uuid, room: &str) -> Result<Option<u64>, StoreError>;

    /// What of `room` notifies `user`.
    async fn set_notify(&self, user: Uuid, room: &str, level: Notify) -> Result<(), StoreError>;

    /// What of `room` notifies `user` ([`Notify::Mentions`] unless they said otherwise).
    async fn notify(&self, user: Uuid, room: &str) -> Result<Notify, StoreError>;
}

/// What a `directory.kind` column holds.
pub(super) fn room_kind_from_column(kind: &str) -> RoomKind {
    match kind {
        "public" => RoomKind::Public,
        "private" => RoomKind::Private,
        "direct" => RoomKind::Direct,
        _ => RoomKind::Other,
    }
}

/// The slug of the direct room between exactly these users: the same for the same set in any order, so
/// opening a DM is one lookup by primary key. `dm.` cannot begin a room's slug made from a name (names'
/// slugs hold no dot).
pub fn direct_slug(members: &[Uuid]) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<Uuid> = members.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut hash = Sha256::new();
    for id in ids {
        hash.update(id.as_bytes());
    }
    let digest = hash.finalize();
    let mut slug = String::from("dm.");
    for byte in &digest[..12] {
        slug.push_str(&format!("{byte:02x}"));
    }
    slug
}

/// Implements [`RoomStore`] for a SQL store with `pool` (reads) and `writer` (writes) fields, in SQL both backends read.
macro_rules! sql_room_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::server::store::RoomStore for $store {
            async fn create_room(
                &self,
                room: &$crate::server::store::Room,
                members: &[uuid::Uuid],
                at: i64,
            ) -> Result<(), $crate::server::store::RoomError> {
                let mut tx = self.writer.begin().await?;
                let created = sqlx::query(
                    "INSERT INTO directory (slug, name, topic, kind, created_by, created_at, archived) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (slug) DO NOTHING",
                )
                .bind(&room.slug)
                .bind(&room.name)
                .bind(&room.topic)
                .bind(room.kind.as_str())
                .bind(room.created_by.to_string())
                .bind(room.created_at)
                .bind(room.archived)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if created == 0 {
                    return Err($crate::server::store::RoomError::Taken);
                }
                for member in members {
                    sqlx::query(
                        "INSERT INTO memberships (room, user_id, joined_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(&room.slug)
                    .bind(member.to_string())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn room(
                &self,
                slug: &str,
            ) -> Result<Option<$crate::server::store::Room>, $crate::server::store::StoreError>
            {
                let row = sqlx::query(
                    "SELECT slug, name, topic, kind, created_by, created_at, archived \
                     FROM directory WHERE slug = $1",
                )
                .bind(slug)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::room_from_row).transpose()
            }

            async fn is_member(
                &self,
                slug: &str,
                user: uuid::Uuid,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let found: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM memberships WHERE room = $1 AND user_id = $2",
                )
                .bind(slug)
                .bind(user.to_string())
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }

            async fn add_member(
                &self,
                slug: &str,
                user: uuid::Uuid,
                at: i64,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let added = sqlx::query(
                    "INSERT INTO memberships (room, user_id, joined_at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(slug)
                .bind(user.to_string())
                .bind(at)
                .execute(&self.writer)
                .await?
                .rows_affected();
                Ok(added > 0)
            }

            async fn remove_member(
                &self,
                slug: &str,
                user: uuid::Uuid,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let removed = sqlx::query("DELETE FROM memberships WHERE room = $1 AND user_id = $2")
                    .bind(slug)
                    .bind(user.to_string())
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                Ok(removed > 0)
            }

            async fn rooms_of(
                &self,
                user: uuid::Uuid,
            ) -> Result<Vec<$crate::server::store::Room>, $crate::server::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT d.slug, d.name, d.topic, d.kind, d.created_by, d.created_at, d.archived \
                     FROM memberships m JOIN directory d ON d.slug = m.room \
                     WHERE m.user_id = $1 ORDER BY d.slug",
                )
                .bind(user.to_string())
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::room_from_row).collect()
            }

            async fn members(
                &self,
                slug: &str,
            ) -> Result<Vec<$crate::server::store::User>, $crate::server::store::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM memberships m JOIN users u ON u.id = m.user_id \
                     WHERE m.room = $1 ORDER BY u.name",
                    $crate::server::store::identity::USER_COLUMNS
                ))
                .bind(slug)
                .fetch_all(&self.pool)
                .await?;
                let mut users = Vec::with_capacity(rows.len());
                for row in &rows {
                    users.extend($crate::server::store::identity::user_from_row(row)?);
                }
                Ok(users)
            }

            async fn public_rooms(
                &self,
                limit: usize,
            ) -> Result<Vec<$crate::server::store::Room>, $crate::server::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT slug, name, topic, kind, created_by, created_at, archived \
                     FROM directory WHERE kind = 'public' AND NOT archived ORDER BY slug LIMIT $1",
                )
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::room_from_row).collect()
            }

            async fn update_room(
                &self,
                room: &$crate::server::store::Room,
            ) -> Result<bool, $crate::server::store::StoreError> {
                let updated = sqlx::query(
                    "UPDATE directory SET name = $2, topic = $3, archived = $4 WHERE slug = $1",
                )
                .bind(&room.slug)
                .bind(&room.name)
                .bind(&room.topic)
                .bind(room.archived)
                .execute(&self.writer)
                .await?
                .rows_affected();
                Ok(updated > 0)
            }

            async fn set_notify(
                &self,
                user: uuid::Uuid,
                room: &str,
                level: $crate::protocol::Notify,
            ) -> Result<(), $crate::server::store::StoreError> {
                sqlx::query(
                    "INSERT INTO notify_levels (user_id, room, level) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, room) DO UPDATE SET level = excluded.level",
                )
                .bind(user.to_string())
                .bind(room)
                .bind(level.as_str())
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn notify(
                &self,
                user: uuid::Uuid,
                room: &str,
            ) -> Result<$crate::protocol::Notify, $crate::server::store::StoreError> {
                let level: Option<String> = sqlx::query_scalar(
                    "SELECT level FROM notify_levels WHERE user_id = $1 AND room = $2",
                )
                .bind(user.to_string())
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
                Ok(level.map_or_else(Default::default, |l| {
                    $crate::protocol::Notify::from_column(&l)
                }))
            }

            async fn mark_read_all(
                &self,
                room: &str,
                users: &[uuid::Uuid],
                seq: u64,
            ) -> Result<(), $crate::server::store::StoreError> {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                let mut tx = self.writer.begin().await?;
                for user in users {
                    sqlx::query(
                        "INSERT INTO read_marks (user_id, room, seq) VALUES ($1, $2, $3) \
                         ON CONFLICT (user_id, room) DO UPDATE SET seq = excluded.seq \
                         WHERE read_marks.seq < excluded.seq",
                    )
                    .bind(user.to_string())
                    .bind(room)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn read_mark(
                &self,
                user: uuid::Uuid,
                room: &str,
            ) -> Result<Option<u64>, $crate::server::store::StoreError> {
                let seq: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM read_marks WHERE user_id = $1 AND room = $2",
                )
                .bind(user.to_string())
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
                Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
            }
        }

        impl $store {
            fn room_from_row<R>(
                row: &R,
            ) -> Result<$crate::server::store::Room, $crate::server::store::StoreError>
            where
                R: sqlx::Row,
                for<'r> &'r str: sqlx::ColumnIndex<R>,
                for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
                for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
                for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            {
                let created_by: String = row.try_get("created_by")?;
                Ok($crate::server::store::Room {
                    slug: row.try_get("slug")?,
                    name: row.try_get("name")?,
                    topic: row.try_get("topic")?,
                    kind: $crate::server::store::rooms::room_kind_from_column(
                        &row.try_get::<String, _>("kind")?,
                    ),
                    created_by: uuid::Uuid::try_parse(&created_by).unwrap_or_default(),
                    created_at: row.try_get("created_at")?,
                    archived: row.try_get("archived")?,
                })
            }
        }
    };
}

pub(super) use sql_room_store;

/// What every room store must do, run against each backend by its tests.
#[cfg(test)]
pub(crate) async fn check_contract<T: RoomStore + super::IdentityStore + super::EventStore>(
    store: &T,
) {
    let (ann, bo) = (Uuid::new_v4(), Uuid::new_v4());
    store.create_guest(ann, "Ann", "ann", 1).await.unwrap();
    store.create_guest(bo, "Bo", "bo", 1).await.unwrap();
    let room = |slug: &str, kind| Room {
        slug: slug.into(),
        name: slug.to_uppercase(),
        topic: "a topic".into(),
        kind,
        created_by: ann,
        created_at: 5,
        archived: false,
    };
    let design = room("design", RoomKind::Public);
    store.create_room(&design, &[ann], 5).await.unwrap();
    assert_eq!(store.room("design").await.unwrap(), Some(design.clone()));
    assert!(store.room("nope").await.unwrap().is_none());
    // A slug is one room's: a second create changes nothing, members included.
    let again = Room {
        name: "Other".into(),
        ..design.clone()
    };
    assert!(matches!(
        store.create_room(&again, &[bo], 6).await,
        Err(RoomError::Taken)
    ));
    assert_eq!(store.room("design").await.unwrap().unwrap().name, "DESIGN");
    assert!(!store.is_member("design", bo).await.unwrap());

    store
        .create_room(&room("secret-1a2b", RoomKind::Private), &[ann, bo], 7)
        .await
        .unwrap();
    store
        .create_room(&room("zz-direct", RoomKind::Direct), &[ann, bo], 7)
        .await
        .unwrap();
    let slugs = |rooms: Vec<Room>| rooms.into_iter().map(|r| r.slug).collect::<Vec<_>>();
    assert_eq!(
        slugs(store.rooms_of(ann).await.unwrap()),
        ["design", "secret-1a2b", "zz-direct"]
    );
    assert_eq!(
        slugs(store.rooms_of(bo).await.unwrap()),
        ["secret-1a2b", "zz-direct"]
    );
    assert_eq!(slugs(store.public_rooms(10).await.unwrap()), ["design"]);
    assert_eq!(
        store.room("zz-direct").await.unwrap().unwrap().kind,
        RoomKind::Direct
    );

    assert!(store.add_member("design", bo, 8).await.unwrap());
    assert!(!store.add_member("design", bo, 9).await.unwrap(), "once");
    let names: Vec<String> = store
        .members("design")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Ann", "Bo"]);
    assert!(store.remove_member("design", bo).await.unwrap());
    assert!(!store.remove_member("design", bo).await.unwrap());
    assert!(!store.is_member("design", bo).await.unwrap());
    assert!(store.is_member("design", ann).await.unwrap());

    // An update changes what it names and nothing else.
    let renamed = Room {
        name: "Design crit".into(),
        topic: String::new(),
        archived: true,
        ..design.clone()
    };
    assert!(store.update_room(&renamed).await.unwrap());
    assert_eq!(store.room("design").await.unwrap(), Some(renamed));
    assert!(
        slugs(store.public_rooms(10).await.unwrap()).is_empty(),
        "archived"
    );
    assert!(!store
        .update_room(&room("nope", RoomKind::Public))
        .await
        .unwrap());

    // Read marks only move forward, per user and room.
    assert_eq!(store.read_mark(ann, "general").await.unwrap(), None);
    store.mark_read(ann, "general", 7).await.unwrap();
    store.mark_read(ann, "general", 5).await.unwrap();
    store.mark_read(ann, "design", 2).await.unwrap();
    assert_eq!(store.read_mark(ann, "general").await.unwrap(), Some(7));
    assert_eq!(store.read_mark(ann, "design").await.unwrap(), Some(2));
    assert_eq!(store.read_mark(bo, "general").await.unwrap(), None);
    // Several at once, each moving forward only.
    store.mark_read_all("general", &[ann, bo], 6).await.unwrap();
    assert_eq!(store.read_mark(ann, "general").await.unwrap(), Some(7));
    assert_eq!(store.read_mark(bo, "general").await.unwrap(), Some(6));
    store.mark_read_all("general", &[], 9).await.unwrap();

    assert_eq!(store.notify(ann, "design").await.unwrap(), Notify::Mentions);
    store
        .set_notify(ann, "design", Notify::Nothing)
        .await
        .unwrap();
    store
        .set_notify(ann, "design", Notify::Everything)
        .await
        .unwrap();
    assert_eq!(
        store.notify(ann, "design").await.unwrap(),
        Notify::Everything
    );
    assert_eq!(store.notify(bo, "design").await.unwrap(), Notify::Mentions);

    // What is unread for Bo: messages and actions by others after his mark, nothing else.
    use crate::protocol::EventKind;
    let event = |kind, user_id, text: &str| super::NewEvent {
        kind,
        user_id,
        ..super::test_message(text)
    };
    let lines = vec![
        event(EventKind::Message, ann, "one"),
        event(EventKind::Join, ann, ""),
        event(EventKind::Message, bo, "his own"),
        event(EventKind::Action, ann, "waves"),
        event(EventKind::Leave, ann, ""),
        event(EventKind::Message, ann, "three"),
    ];
    assert_eq!(store.head("design").await.unwrap(), 0, "no events yet");
    store.append("design", lines, 9).await.unwrap();
    assert_eq!(store.head("design").await.unwrap(), 6);
    let texts = |events: Vec<crate::protocol::ChatEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.text).collect()
    };
    let unread = store.unread_since("design", 0, bo, 10).await.unwrap();
    assert_eq!(texts(unread), ["one", "waves", "three"]);
    let unread = store.unread_since("design", 1, bo, 1).await.unwrap();
    assert_eq!(
        texts(unread),
        ["waves"],
        "after the mark, at most the limit"
    );
    let unread = store.unread_since("design", 6, bo, 10).await.unwrap();
    assert!(unread.is_empty());
    let theirs = store.unread_since("design", 0, ann, 10).await.unwrap();
    assert_eq!(texts(theirs), ["his own"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_rooms_slug_is_its_member_set() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(direct_slug(&[a, b]), direct_slug(&[b, a]));
        assert_eq!(direct_slug(&[a, b, a]), direct_slug(&[a, b]));
        assert_ne!(direct_slug(&[a, b]), direct_slug(&[a, c]));
        assert_ne!(direct_slug(&[a, b]), direct_slug(&[a, b, c]));
        assert!(direct_slug(&[a]).starts_with("dm."));
        assert_eq!(direct_slug(&[a]).len(), 3 + 24);
    }
}
