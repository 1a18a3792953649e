//! Who may see which room: the one place the rule lives, for the socket, the pages and the API.
//!
//! `general` is everyone's and is not stored. A public room may be read by anyone and joined by anyone;
//! a private or direct room exists only for its members: to everyone else it answers exactly as a room
//! that does not exist.

use super::store::{EventStore, Room, RoomStore, StoreError};
use crate::protocol::{
    mentions, EventKind, Notify, RoomInfo, RoomKind, GENERAL_ROOM, RESUME_LIMIT,
};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The answer about a room one may not see, the same as about one that does not exist.
pub const NO_SUCH_ROOM: &str = "There is no such room.";

/// Why someone may not post in room `slug` (not a member, or it is archived), for the socket and the
/// form alike; `None` when they may.
pub fn post_refusal(slug: &str, member: bool, archived: bool) -> Option<String> {
    if !member {
        Some(format!("Join #{slug} to post in it."))
    } else if archived {
        Some(format!("#{slug} is archived: nobody posts in it any more."))
    } else {
        None
    }
}

/// A room as one user may see it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub room: Room,
    pub member: bool,
}

/// The rooms, their members, and the rule of who sees what; cheap to clone.
#[derive(Clone)]
pub struct Directory {
    pub store: Arc<dyn RoomStore>,
    events: Arc<dyn EventStore>,
    /// Rooms a user may create: a burst of 5, then one a minute.
    creations: Arc<DefaultKeyedRateLimiter<Uuid>>,
}

impl Directory {
    pub fn new(store: Arc<dyn RoomStore>, events: Arc<dyn EventStore>) -> Self {
        let quota =
            Quota::per_minute(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(5).unwrap());
        Self {
            store,
            events,
            creations: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// `users` have just come into `room`: they have read it up to its head, so what follows is unread
    /// for them and the history from before they came is not. One write for all of them.
    pub async fn start_reading(&self, room: &str, users: &[Uuid]) -> Result<(), StoreError> {
        let head = self.events.head(room).await?;
        self.store.mark_read_all(room, users, head).await
    }

    /// `general`, which everyone is in.
    pub fn general() -> Room {
        Room {
            slug: GENERAL_ROOM.to_owned(),
            name: GENERAL_ROOM.to_owned(),
            topic: String::new(),
            kind: RoomKind::Public,
            created_by: Uuid::nil(),
            created_at: 0,
            archived: false,
        }
    }

    /// Room `slug` as `user` (or a reader, with `None`) may see it; `None` for a room that does not
    /// exist and for one they may not see alike.
    pub async fn visible(
        &self,
        slug: &str,
        user: Option<Uuid>,
    ) -> Result<Option<Seen>, StoreError> {
        if slug == GENERAL_ROOM {
            return Ok(Some(Seen {
                room: Self::general(),
                member: user.is_some(),
            }));
        }
        let Some(room) = self.store.room(slug).await? else {
            return Ok(None);
        };
        let member = match user {
            Some(user) => self.store.is_member(slug, user).await?,
            None => false,
        };
        Ok((member || room.kind == RoomKind::Public).then_some(Seen { room, member }))
    }

    /// The rooms `user` is in: `general` first, then the others by slug.
    pub async fn rooms_of(&self, user: Option<Uuid>) -> Result<Vec<Room>, StoreError> {
        let mut rooms = vec![Self::general()];
        if let Some(user) = user {
            rooms.extend(self.store.rooms_of(user).await?);
        }
        Ok(rooms)
    }

    /// What a connection is told of a room, with what `reader` (id and name) has not read there yet.
    pub async fn info(
        &self,
        seen: &Seen,
        reader: Option<(Uuid, &str)>,
    ) -> Result<RoomInfo, StoreError> {
        let room = &seen.room;
        let head = self.events.head(&room.slug).await?;
        let (last_read, unread, mentions) = match reader {
            Some((user, name)) => self.unread(&room.slug, head, user, name).await?,
            None => (head, 0, 0),
        };
        let notify = match reader {
            Some((user, _)) => self.store.notify(user, &room.slug).await?,
            None => Notify::default(),
        };
        // The people of a room with a fixed or closed membership, for its people list; a public room
        // may be large, and its presence says who is there.
        let members = if matches!(room.kind, RoomKind::Direct | RoomKind::Private) {
            let members = self.store.members(&room.slug).await?;
            members.into_iter().map(|user| user.name).collect()
        } else {
            Vec::new()
        };
        Ok(RoomInfo {
            slug: room.slug.clone(),
            name: room.name.clone(),
            topic: room.topic.clone(),
            kind: room.kind,
            members,
            member: seen.member,
            archived: room.archived,
            head,
            last_read,
            unread,
            mentions,
            notify,
            manage: reader.is_some_and(|(user, _)| user == room.created_by),
        })
    }

    /// Where `user` read up to in `room`, and how many messages by others (and mentions of `name`) came
    /// after, counted up to [`RESUME_LIMIT`]. Someone who never read a room has nothing unread in it
    /// (a new guest is not greeted with the whole history as unread).
    async fn unread(
        &self,
        room: &str,
        head: u64,
        user: Uuid,
        name: &str,
    ) -> Result<(u64, u32, u32), StoreError> {
        let Some(mark) = self.store.read_mark(user, room).await? else {
            return Ok((head, 0, 0));
        };
        if mark >= head {
            return Ok((mark, 0, 0));
        }
        let theirs = self
            .events
            .unread_since(room, mark, user, RESUME_LIMIT)
            .await?;
        let (mut unread, mut mentioned) = (0, 0);
        for event in &theirs {
            unread += 1;
            if mentions(&event.text, name) {
                mentioned += 1;
            }
        }
        Ok((mark, unread, mentioned))
    }

    /// Counts one room created by `user`; refused with how long until one would be allowed.
    pub fn may_create(&self, user: Uuid) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        self.creations
            .check_key(&user)
            .map_err(|denied| denied.wait_time_from(now))
    }
}

/// Who deletes a message, and whether they may delete anyone's.
pub struct Deleter<'a> {
    pub user: Uuid,
    pub name: &'a str,
    pub kind: crate::protocol::UserKind,
    pub admin: bool,
}

/// How a delete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Gone from the history, and everyone was told.
    Done,
    /// No such message in the room (or it was deleted already).
    NoSuchMessage,
    /// Someone else's, and the deleter is not an admin.
    NotYours,
}

/// Deletes message `id` of `room`, for the socket and the API alike: its author may, and so may an admin.
/// It keeps its place as a tombstone, and a `delete` event tells every connection.
pub async fn delete_message(
    hub: &super::hub::Hub,
    room: &str,
    id: Uuid,
    by: Deleter<'_>,
) -> Result<Deleted, super::hub::PublishError> {
    use super::hub::PublishError;
    let store_failed = |err: StoreError| PublishError::Store(Arc::new(err));
    let found = hub.store().find(room, id).await.map_err(store_failed)?;
    let Some(message) = found.filter(crate::protocol::ChatEvent::is_message) else {
        return Ok(Deleted::NoSuchMessage);
    };
    if message.user_id != by.user && !by.admin {
        return Ok(Deleted::NotYours);
    }
    if !hub.store().redact(room, id).await.map_err(store_failed)? {
        // Deleted meanwhile (by its author and an admin at once): the first delete tells everyone.
        return Ok(Deleted::Done);
    }
    // Frames made before the deletion still hold the text; other instances drop theirs when the
    // `delete` event reaches them.
    hub.forget_recent(room);
    let event = super::store::NewEvent {
        id: Uuid::new_v4(),
        kind: EventKind::Delete,
        name: by.name.to_owned(),
        user_id: by.user,
        user_kind: by.kind,
        text: String::new(),
        target: Some(id),
        call: Vec::new(),
    };
    // If this fails the message is gone from the history already; pages loaded from now on do not show it.
    hub.publish(room, event).await?;
    tracing::info!(by = %by.name, admin = by.admin, "a message was deleted");
    Ok(Deleted::Done)
}
