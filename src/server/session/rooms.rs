//! The rooms a connection hears: `general` and the user's rooms, kept in step with the store when they
//! change; `open` (a room's history) and `browse` (the public rooms).

use super::history::{read_start, Replay};
use super::{End, Heard, Session, Start};
use crate::protocol::{
    ErrorCode, Notify, RoomInfo, RoomKind, ServerFrame, GENERAL_ROOM, HISTORY_PAGE, PRESENCE_NAMES,
};
use crate::server::hub::Kind;
use crate::server::rooms::{post_refusal, Seen, NO_SUCH_ROOM};
use crate::server::socket::{event_wire, Transport};
use crate::server::store::StoreError;
use axum::body::Bytes;
use std::collections::HashSet;
use std::sync::Arc;

/// What of a room its `room` frame shows that can change, hashed.
fn fingerprint(room: &crate::server::store::Room) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    (&room.name, &room.topic, room.archived).hash(&mut hash);
    hash.finish()
}

/// How many public rooms `browse` lists.
const DIRECTORY_LIMIT: usize = 500;

/// What a frame about a room may do with it.
pub(super) enum Use {
    /// Read it: its history, its presence.
    Read,
    /// Post in it: the user must be a member, and it must not be archived.
    Post,
}

impl<S> Session<'_, S>
where
    S: Transport,
{
    /// Every connection hears `general`, joined or not; its broadcasts wait for its history.
    pub(super) fn hear_general(&mut self) {
        let hold = Some((Kind::Hold, 0));
        let slug = self
            .hub
            .subscribe(GENERAL_ROOM, uuid::Uuid::nil(), &self.mailbox, hold);
        self.rooms.insert(
            slug,
            Heard {
                member: false,
                archived: false,
                anchored: false,
                read: 0,
                shown: fingerprint(&crate::server::rooms::Directory::general()),
                notify: Notify::default(),
            },
        );
    }

    /// Subscribes to room `seen` (again, if already: its user may have changed). A room not heard yet
    /// is anchored at `head`; with none, its broadcasts wait until [`Session::anchor`].
    pub(super) fn hear(&mut self, seen: &Seen, head: Option<u64>) -> Arc<str> {
        let user = self.user_id().unwrap_or_default();
        let slug = seen.room.slug.as_str();
        // A room new to the writer starts there, ahead of its broadcasts.
        let first = (!self.rooms.contains_key(slug))
            .then_some(head.map_or((Kind::Hold, 0), |head| (Kind::Anchor, head)));
        let slug = self.hub.subscribe(slug, user, &self.mailbox, first);
        let heard = self.rooms.entry(slug.clone()).or_insert(Heard {
            member: seen.member,
            archived: seen.room.archived,
            anchored: head.is_some(),
            read: 0,
            shown: fingerprint(&seen.room),
            notify: Notify::default(),
        });
        heard.member = seen.member;
        heard.archived = seen.room.archived;
        heard.shown = fingerprint(&seen.room);
        slug
    }

    /// Whether the user is (still) a member of `room`, read after subscribing to it: a removal that
    /// commits before this read is seen here, and one after it evicts the subscription.
    async fn still_member(&mut self, room: &str) -> bool {
        let Some(user) = self.user_id() else {
            return false;
        };
        self.ctx
            .rooms
            .store
            .is_member(room, user)
            .await
            .unwrap_or(false)
    }

    /// What the client is told of `seen`, with what this user has not read there.
    pub(super) async fn room_info(&mut self, seen: &Seen) -> Result<RoomInfo, StoreError> {
        let reader = self
            .me
            .as_ref()
            .map(|me| (me.identity.user_id, me.seat.name.clone()));
        let reader = reader.as_ref().map(|(id, name)| (*id, name.as_str()));
        let info = self.ctx.rooms.info(seen, reader).await?;
        if let Some(heard) = self.rooms.get_mut(seen.room.slug.as_str()) {
            heard.read = heard.read.max(info.last_read);
            heard.notify = info.notify;
        }
        Ok(info)
    }

    /// Stops hearing `room`.
    fn stop_hearing(&mut self, room: &str) {
        if let Some((slug, _)) = self.rooms.remove_entry(room) {
            self.tell_writer(Kind::Forget, slug, 0);
        }
        self.hub.unsubscribe(room, &self.mailbox);
    }

    /// On the way out: every room forgets this connection.
    pub(super) fn unsubscribe_all(&mut self) {
        for room in std::mem::take(&mut self.rooms).into_keys() {
            self.hub.unsubscribe(&room, &self.mailbox);
        }
    }

    /// Reads the user's rooms and hears exactly those (plus public rooms being read). First, the whole
    /// list goes out as a `rooms` frame; later, each change as `room` or `room_gone`.
    pub(super) async fn sync_rooms(&mut self, first: bool) -> Result<(), End> {
        let user = self.user_id();
        let wanted = match self.ctx.rooms.rooms_of(user).await {
            Ok(rooms) => rooms,
            Err(err) => return self.store_failed(err, first).await,
        };
        // Subscribed first, then confirmed: a removal that lands between the read above and the
        // subscription is either seen by the second read or evicts the subscription itself.
        let mut heard = Vec::with_capacity(wanted.len());
        for room in wanted {
            let seen = Seen {
                member: user.is_some(),
                room,
            };
            let before = self.rooms.get(seen.room.slug.as_str()).copied();
            let slug = self.hear(&seen, None);
            heard.push((seen, slug, before));
        }
        if heard
            .iter()
            .any(|(_, slug, before)| before.is_none() && **slug != *GENERAL_ROOM)
        {
            let confirmed = match self.ctx.rooms.rooms_of(user).await {
                Ok(rooms) => rooms,
                Err(err) => return self.store_failed(err, first).await,
            };
            let confirmed: HashSet<&str> = confirmed.iter().map(|r| r.slug.as_str()).collect();
            let (kept, lost): (Vec<_>, Vec<_>) = heard
                .into_iter()
                .partition(|(_, slug, _)| confirmed.contains(&**slug));
            // Rooms heard before fall to the `room_gone` below; new ones were never announced.
            for (_, slug, _) in lost.iter().filter(|(_, _, before)| before.is_none()) {
                self.stop_hearing(slug);
            }
            heard = kept;
        }
        let mut listed = Vec::with_capacity(heard.len());
        let mut keep: HashSet<String> = HashSet::with_capacity(heard.len());
        for (seen, slug, before) in heard {
            keep.insert(seen.room.slug.clone());
            let known = before.is_some_and(|heard| {
                heard.member == seen.member && heard.shown == fingerprint(&seen.room)
            });
            let notify_before = before.map(|heard| heard.notify);
            // Subscribed before the head is read: frames up to the head are history, later ones live.
            let info = match self.room_info(&seen).await {
                Ok(info) => info,
                Err(err) => return self.store_failed(err, first).await,
            };
            // Only a room not anchored yet is anchored at its head: one anchored already may have
            // frames queued below the head that are still to be written.
            if self.rooms.get(&slug).is_some_and(|h| !h.anchored) {
                self.anchor(&slug, info.head);
            }
            let known = known && notify_before == Some(info.notify);
            if first {
                listed.push(info);
            } else if !known {
                self.send_frame(&ServerFrame::Room(info)).await?;
            }
        }
        let dropped: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|(slug, heard)| !keep.contains(&***slug) && heard.member)
            .map(|(slug, _)| slug.clone())
            .collect();
        for slug in dropped {
            self.stop_hearing(&slug);
            self.send_frame(&ServerFrame::RoomGone {
                room: slug.to_string(),
            })
            .await?;
        }
        if first {
            self.send_frame(&ServerFrame::Rooms { rooms: listed })
                .await?;
        }
        Ok(())
    }

    async fn store_failed(&mut self, err: StoreError, starting: bool) -> Result<(), End> {
        tracing::error!(error = %err, "reading rooms failed");
        if starting {
            return Err(self.close_unavailable().await);
        }
        self.send_unavailable(None).await
    }

    /// Room `slug` for `usage`, heard from now on if it was not: `None` (after the answer was sent) when
    /// the user may not. A room they may not see gets `not_found`, as one that does not exist.
    pub(super) async fn room_for(
        &mut self,
        slug: &str,
        usage: Use,
        id: Option<uuid::Uuid>,
    ) -> Result<Option<Arc<str>>, End> {
        let heard = self.rooms.get_key_value(slug).map(|(k, h)| (k.clone(), *h));
        let (slug, heard) = match heard {
            Some((slug, heard)) if heard.member || matches!(usage, Use::Read) => (slug, heard),
            _ => {
                // Not heard yet (or only read): ask the store, which knows of invitations this
                // connection has not heard of yet.
                let seen = match self.ctx.rooms.visible(slug, self.user_id()).await {
                    Ok(seen) => seen,
                    Err(err) => {
                        tracing::error!(error = %err, "reading a room failed");
                        self.send_unavailable(id).await?;
                        return Ok(None);
                    }
                };
                let Some(seen) = seen else {
                    self.send_error(ErrorCode::NotFound, NO_SUCH_ROOM, id)
                        .await?;
                    return Ok(None);
                };
                let head = match self.hub.store().head(&seen.room.slug).await {
                    Ok(head) => head,
                    Err(err) => {
                        tracing::error!(error = %err, "reading a room's head failed");
                        self.send_unavailable(id).await?;
                        return Ok(None);
                    }
                };
                let slug = self.hear(&seen, Some(head));
                if seen.room.kind != RoomKind::Public && !self.still_member(&slug).await {
                    self.stop_hearing(&slug);
                    self.send_error(ErrorCode::NotFound, NO_SUCH_ROOM, id)
                        .await?;
                    return Ok(None);
                }
                (slug.clone(), self.rooms[&slug])
            }
        };
        if let Use::Post = usage {
            if self.me.is_none() {
                self.send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name before sending.",
                    id,
                )
                .await?;
                return Ok(None);
            }
            if let Some(message) = post_refusal(&slug, heard.member, heard.archived) {
                self.send_error(ErrorCode::NotAllowed, &message, id).await?;
                return Ok(None);
            }
        }
        Ok(Some(slug))
    }

    /// `open`: the history of `room` from `start` (events one by one after a cursor, or a reset with the
    /// recent page), then who of it is online. `asked` is an `open` frame (a tab switching rooms), which
    /// always gets its recent page as a `reset` and its presence, `general` too.
    pub(super) async fn open(&mut self, room: &str, start: Start, asked: bool) -> Result<(), End> {
        let Some(slug) = self.room_for(room, Use::Read, None).await? else {
            return Ok(());
        };
        let fresh_page = matches!(start, Start::Recent) && (asked || &*slug != GENERAL_ROOM);
        // The room's broadcasts wait while its history is read and queued, then follow it.
        self.tell_writer(Kind::Hold, slug.clone(), 0);
        // A busy room's newest page is in memory already, encoded: every tab opened in a join storm
        // would otherwise read and encode the same fifty events from the store again.
        let cached = match start {
            Start::Recent if !fresh_page => self.hub.recent_page(&slug, HISTORY_PAGE),
            _ => None,
        };
        let replay = match cached {
            Some(frames) => {
                let last = frames.last().map(|f| f.seq);
                self.send_replay(frames.iter().map(|f| f.wire.clone()))?;
                self.anchor(&slug, last.unwrap_or(0));
                Ok(None)
            }
            None => read_start(self.hub.store(), &slug, start).await.map(Some),
        };
        match replay {
            Ok(None) => {}
            // `general` keeps the frames of a connection from before rooms: its recent page as events.
            Ok(Some(Replay::Events(events))) if !fresh_page => {
                // After a cursor, everything up to it is what the client has, even if nothing followed.
                let cursor = match start {
                    Start::After(after) => after,
                    Start::Recent => 0,
                };
                let last = events.last().map_or(cursor, |e| e.seq.max(cursor));
                self.send_replay(events.iter().map(event_wire))?;
                self.anchor(&slug, last);
            }
            Ok(Some(Replay::Events(events) | Replay::Reset(events))) => {
                let last = events.last().map_or(0, |e| e.seq);
                let complete = crate::protocol::reaches_first_event(&events);
                self.send_frame(&ServerFrame::Reset {
                    room: slug.to_string(),
                    events,
                    complete,
                })
                .await?;
                self.anchor(&slug, last);
            }
            Err(err) => {
                tracing::error!(error = %err, "reading history failed");
                return Err(self.close_unavailable().await);
            }
        }
        // At the start, `general` sends its presence after the identity, as it always has.
        if asked || &*slug != GENERAL_ROOM {
            self.send_room_presence(&slug).await?;
        }
        Ok(())
    }

    /// Sends events one frame each, joined in one entry of the queue.
    fn send_replay(&mut self, wires: impl Iterator<Item = Bytes>) -> Result<(), End> {
        let mut joined = Vec::new();
        let mut frames = 0;
        for wire in wires {
            joined.extend_from_slice(&wire);
            frames += 1;
        }
        if frames == 0 {
            return Ok(());
        }
        self.send_wires(joined.into(), frames)
    }

    /// Tells the writer `room` is written up to `seq` (or further, if it was): its broadcasts after that
    /// go out, and those that waited for it follow.
    fn anchor(&mut self, room: &Arc<str>, seq: u64) {
        match self.rooms.get_mut(room) {
            Some(heard) => {
                heard.anchored = true;
                self.tell_writer(Kind::Anchor, room.clone(), seq);
            }
            // Stopped hearing it meanwhile: the writer lets go of what it held.
            None => self.tell_writer(Kind::Forget, room.clone(), 0),
        }
    }

    /// Who of `room`'s members is online now (for a public room without members yet, nobody; for
    /// `general`, everyone online).
    pub(super) async fn send_room_presence(&mut self, room: &str) -> Result<(), End> {
        if room == GENERAL_ROOM {
            let (online, total) = self.online_everywhere(PRESENCE_NAMES).await;
            return self.send_frame(&presence(room, online, total)).await;
        }
        let members = match self.ctx.rooms.store.members(room).await {
            Ok(members) => members,
            Err(err) => {
                tracing::warn!(error = %err, "reading a room's members failed");
                Vec::new()
            }
        };
        // Who is online in the chat, on every instance; names are the chat's, so a name online is its
        // member's.
        let (everyone, _) = self.online_everywhere(usize::MAX).await;
        let everyone: HashSet<String> = everyone.into_iter().collect();
        let online: Vec<String> = members
            .into_iter()
            .filter(|user| everyone.contains(&user.name))
            .map(|user| user.name)
            .collect();
        let total = online.len();
        self.send_frame(&presence(room, online, total)).await
    }

    /// `browse`: the public rooms, each saying whether the user is in it.
    pub(super) async fn on_browse(&mut self) -> Result<(), End> {
        let rooms = match self.ctx.rooms.store.public_rooms(DIRECTORY_LIMIT).await {
            Ok(rooms) => rooms,
            Err(err) => {
                tracing::error!(error = %err, "listing rooms failed");
                return self.send_unavailable(None).await;
            }
        };
        let mut listed = Vec::with_capacity(rooms.len() + 1);
        for room in std::iter::once(crate::server::rooms::Directory::general()).chain(rooms) {
            let member = self
                .rooms
                .get(room.slug.as_str())
                .is_some_and(|heard| heard.member)
                || (room.slug == GENERAL_ROOM && self.me.is_some());
            let seen = Seen { room, member };
            match self.room_info(&seen).await {
                Ok(info) if info.kind == RoomKind::Public => listed.push(info),
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "listing rooms failed");
                    return self.send_unavailable(None).await;
                }
            }
        }
        self.send_frame(&ServerFrame::Directory { rooms: listed })
            .await
    }
}

/// The `presence` frame for `online` (in name order, as both callers have it) out of `total` online:
/// the first [`PRESENCE_NAMES`] are listed, the rest counted.
fn presence(room: &str, mut online: Vec<String>, total: usize) -> ServerFrame {
    online.truncate(PRESENCE_NAMES);
    let more = total.saturating_sub(online.len());
    ServerFrame::Presence {
        room: room.to_owned(),
        online,
        more: u32::try_from(more).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod presence_tests {
    use super::presence;
    use crate::protocol::{ServerFrame, PRESENCE_NAMES};

    #[test]
    fn a_crowd_is_listed_in_part_and_counted_in_full() {
        let crowd: Vec<String> = (0..PRESENCE_NAMES + 37)
            .map(|n| format!("Person {n:04}"))
            .collect();
        let ServerFrame::Presence { online, more, .. } =
            presence("general", crowd, PRESENCE_NAMES + 37)
        else {
            unreachable!()
        };
        assert_eq!((online.len(), more), (PRESENCE_NAMES, 37));
        assert_eq!(
            (online[0].as_str(), online[PRESENCE_NAMES - 1].as_str()),
            ("Person 0000", "Person 0099"),
            "the first names, in order"
        );
        let ServerFrame::Presence { online, more, .. } =
            presence("design", vec!["Ann".into(), "bo".into()], 2)
        else {
            unreachable!()
        };
        assert_eq!((online, more), (vec!["Ann".to_owned(), "bo".to_owned()], 0));
    }
}
