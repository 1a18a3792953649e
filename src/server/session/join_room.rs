//! `join_room` and `leave_room`: coming into a public room, and going out of a room.

use super::{End, Session};
use crate::protocol::{ErrorCode, EventKind, GENERAL_ROOM};
use crate::server::hub::now_ms;
use crate::server::rooms::NO_SUCH_ROOM;
use crate::server::socket::Transport;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_join_room(&mut self, room: &str) -> Result<(), End> {
        let Some(me) = self.me.clone() else {
            return self
                .send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name before joining a room.",
                    None,
                )
                .await;
        };
        let seen = match self
            .ctx
            .rooms
            .visible(room, Some(me.identity.user_id))
            .await
        {
            Ok(seen) => seen,
            Err(err) => {
                tracing::error!(error = %err, "reading a room failed");
                return self.send_unavailable(None).await;
            }
        };
        let Some(mut seen) = seen else {
            return self
                .send_error(ErrorCode::NotFound, NO_SUCH_ROOM, None)
                .await;
        };
        if seen.member {
            // Already in it (another tab joined first): the same answer, and no second join line.
            return self.send_room(&seen).await;
        }
        if seen.room.archived {
            let message = format!("#{} is archived: nobody joins it any more.", seen.room.slug);
            return self.send_error(ErrorCode::NotAllowed, &message, None).await;
        }
        let store = &self.ctx.rooms.store;
        if let Err(err) = store
            .add_member(&seen.room.slug, me.identity.user_id, now_ms())
            .await
        {
            tracing::error!(error = %err, "joining a room failed");
            return self.send_unavailable(None).await;
        }
        seen.member = true;
        self.enter(&seen).await
    }

    pub(super) async fn on_leave_room(&mut self, room: &str) -> Result<(), End> {
        let Some(me) = self.me.clone() else {
            return self
                .send_error(ErrorCode::NotFound, NO_SUCH_ROOM, None)
                .await;
        };
        if room == GENERAL_ROOM {
            return self
                .send_error(ErrorCode::NotAllowed, "Everyone is in #general.", None)
                .await;
        }
        let direct = "A direct conversation cannot be left.";
        let Some(room) = self.managed_room(room, direct).await? else {
            return Ok(());
        };
        let user = me.identity.user_id;
        match self.ctx.rooms.store.remove_member(&room.slug, user).await {
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, "leaving a room failed");
                return self.send_unavailable(None).await;
            }
        }
        // Every connection of the user stops hearing it, here and on other instances, before the others
        // read the leave line.
        self.hub.evict(&room.slug, user).await;
        let line = me.seat.event(EventKind::Leave);
        if let Err(err) = self.hub.publish(&room.slug, line).await {
            tracing::error!(error = %err, "announcing a room leave failed");
        }
        Ok(())
    }
}
