//! `create_room`: a public or private room, its creator its owner and first member.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::{
    validate_room_name, validate_topic, Access, ErrorCode, EventKind, RoomKind, ServerFrame,
    UserKind, GENERAL_ROOM,
};
use crate::server::backplane::SessionSignal;
use crate::server::hub::now_ms;
use crate::server::rooms::Seen;
use crate::server::socket::Transport;
use crate::server::store::{Room, RoomError};

const TOO_MANY_ROOMS: &str = "You are creating rooms too fast; try again in a minute.";

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_create_room(
        &mut self,
        raw_name: &str,
        raw_topic: &str,
        private: bool,
    ) -> Result<(), End> {
        let Some(me) = self.poster("creating a room").await? else {
            return Ok(());
        };
        let checked = validate_room_name(raw_name)
            .and_then(|(name, slug)| Ok((name, slug, validate_topic(raw_topic)?)));
        let (name, slug, topic) = match checked {
            Ok(checked) => checked,
            Err(err) => return self.send_error(err.code(), err.message(), None).await,
        };
        if let Err(wait) = self.ctx.rooms.may_create(me.identity.user_id) {
            let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            return self
                .send_frame(&ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    message: TOO_MANY_ROOMS.to_owned(),
                    id: None,
                    retry_after_ms: Some(retry_after_ms),
                })
                .await;
        }
        // A private room's slug gets a random tail: two private rooms may share a name, and creating a
        // public room can never reveal that a private one of that name exists.
        let slug = if private {
            format!("{slug}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            slug
        };
        let taken = format!("There is a room named #{slug} already; pick another name.");
        if slug == GENERAL_ROOM {
            return self.send_error(ErrorCode::RoomTaken, &taken, None).await;
        }
        let room = Room {
            slug,
            name,
            topic,
            kind: if private {
                RoomKind::Private
            } else {
                RoomKind::Public
            },
            created_by: me.identity.user_id,
            created_at: now_ms(),
            archived: false,
        };
        let store = &self.ctx.rooms.store;
        match store
            .create_room(&room, &[me.identity.user_id], now_ms())
            .await
        {
            Ok(()) => {}
            Err(RoomError::Taken) => {
                return self.send_error(ErrorCode::RoomTaken, &taken, None).await
            }
            Err(RoomError::Store(err)) => {
                tracing::error!(error = %err, "creating a room failed");
                return self.send_unavailable(None).await;
            }
        }
        tracing::info!(room = %room.slug, private, "room created");
        let seen = Seen { room, member: true };
        self.enter(&seen).await
    }

    /// This connection hears `seen` (a room the user just came into) from its first event on, says
    /// "<name> has joined #room." there, tells the client, and tells the user's other connections.
    pub(super) async fn enter(&mut self, seen: &Seen) -> Result<(), End> {
        let Some(me) = self.me.clone() else {
            return Ok(());
        };
        let head = match self.hub.store().head(&seen.room.slug).await {
            Ok(head) => head,
            Err(err) => {
                tracing::error!(error = %err, "reading a room's head failed");
                return self.send_unavailable(None).await;
            }
        };
        let slug = self.hear(seen, Some(head));
        if seen.room.kind != RoomKind::Direct {
            let line = me.seat.event(EventKind::Join);
            if let Err(err) = self.hub.publish(&slug, line).await {
                tracing::error!(error = %err, "announcing a room join failed");
            }
        }
        let user = me.identity.user_id;
        self.start_reading(user, &slug).await;
        self.send_room(seen).await?;
        self.hub.signal_session(user, SessionSignal::Rooms).await;
        Ok(())
    }

    /// Sends what the client should know of `seen`, as a `room` frame.
    pub(super) async fn send_room(&mut self, seen: &Seen) -> Result<(), End> {
        match self.room_info(seen).await {
            Ok(info) => self.send_frame(&ServerFrame::Room(info)).await,
            Err(err) => {
                tracing::error!(error = %err, "reading a room failed");
                self.send_unavailable(None).await
            }
        }
    }

    /// Who may start something new (a room, a conversation): a joined user, and not a guest where
    /// only members may post. `None` after saying why not.
    pub(super) async fn poster(&mut self, doing: &str) -> Result<Option<super::Me>, End> {
        let Some(me) = self.me.clone() else {
            let message = format!("Join the chat with a name before {doing}.");
            self.send_error(ErrorCode::NotJoined, &message, None)
                .await?;
            return Ok(None);
        };
        if self.ctx.config.access == Access::Members && me.identity.kind == UserKind::Guest {
            self.send_error(ErrorCode::MembersOnly, super::MEMBERS_ONLY, None)
                .await?;
            return Ok(None);
        }
        Ok(Some(me))
    }

    /// The room `slug`, which the user must be in, read in full from the store (its owner, its kind).
    /// A direct room's members are fixed: it is refused with `direct`.
    pub(super) async fn managed_room(
        &mut self,
        slug: &str,
        direct: &str,
    ) -> Result<Option<Room>, End> {
        let Some(slug) = self.room_for(slug, Use::Post, None).await? else {
            return Ok(None);
        };
        match self.ctx.rooms.store.room(&slug).await {
            Ok(Some(room)) if room.kind == RoomKind::Direct => {
                self.send_error(ErrorCode::NotAllowed, direct, None).await?;
                Ok(None)
            }
            Ok(Some(room)) => Ok(Some(room)),
            Ok(None) => {
                self.send_error(
                    ErrorCode::NotFound,
                    crate::server::rooms::NO_SUCH_ROOM,
                    None,
                )
                .await?;
                Ok(None)
            }
            Err(err) => {
                tracing::error!(error = %err, "reading a room failed");
                self.send_unavailable(None).await?;
                Ok(None)
            }
        }
    }
}
