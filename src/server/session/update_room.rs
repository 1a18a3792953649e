//! `update_room`: its owner (or an admin) renames a room, changes its topic, or archives it. The slug
//! stays, so links keep working; everyone in the room hears the change as a `room` frame.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::{validate_room_name, validate_topic, ErrorCode, RoomKind, GENERAL_ROOM};
use crate::server::backplane::SessionSignal;
use crate::server::rooms::{Seen, NO_SUCH_ROOM};
use crate::server::socket::Transport;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_update_room(
        &mut self,
        room: &str,
        name: Option<String>,
        topic: Option<String>,
        archived: Option<bool>,
    ) -> Result<(), End> {
        let Some(me) = self.poster("changing a room").await? else {
            return Ok(());
        };
        if room == GENERAL_ROOM {
            return self
                .send_error(ErrorCode::NotAllowed, "#general stays as it is.", None)
                .await;
        }
        // Read, not post: an archived room's owner may bring it back.
        let Some(slug) = self.room_for(room, Use::Read, None).await? else {
            return Ok(());
        };
        let mut stored = match self.ctx.rooms.store.room(&slug).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                return self
                    .send_error(ErrorCode::NotFound, NO_SUCH_ROOM, None)
                    .await
            }
            Err(err) => {
                tracing::error!(error = %err, "reading a room failed");
                return self.send_unavailable(None).await;
            }
        };
        if stored.kind == RoomKind::Direct {
            return self
                .send_error(
                    ErrorCode::NotAllowed,
                    "A direct conversation is named by its people.",
                    None,
                )
                .await;
        }
        if stored.created_by != me.identity.user_id && !me.identity.admin {
            return self
                .send_error(
                    ErrorCode::NotAllowed,
                    "Only the room's owner or an admin can change it.",
                    None,
                )
                .await;
        }
        if let Some(name) = &name {
            match validate_room_name(name) {
                Ok((name, _)) => stored.name = name,
                Err(err) => return self.send_error(err.code(), err.message(), None).await,
            }
        }
        if let Some(topic) = &topic {
            match validate_topic(topic) {
                Ok(topic) => stored.topic = topic,
                Err(err) => return self.send_error(err.code(), err.message(), None).await,
            }
        }
        if let Some(archived) = archived {
            stored.archived = archived;
        }
        let members = match self.ctx.rooms.store.update_room(&stored).await {
            Ok(_) => self.ctx.rooms.store.members(&stored.slug).await,
            Err(err) => Err(err),
        };
        let members = match members {
            Ok(members) => members,
            Err(err) => {
                tracing::error!(error = %err, "changing a room failed");
                return self.send_unavailable(None).await;
            }
        };
        tracing::info!(room = %stored.slug, archived = stored.archived, "room changed");
        // The answer, at once; a member's own connection then counts it as told.
        let member = members.iter().any(|m| m.id == me.identity.user_id);
        let seen = Seen {
            room: stored,
            member,
        };
        if member {
            self.hear(&seen, Some(0));
        }
        self.send_room(&seen).await?;
        // Every member's connections, here and elsewhere, read their rooms again and see the change.
        for member in members {
            self.hub
                .signal_session(member.id, SessionSignal::Rooms)
                .await;
        }
        Ok(())
    }
}
