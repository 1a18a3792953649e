//! `delete`: a message disappears for everyone, live and from the history. Its author may delete it, and
//! so may an admin.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::{ErrorCode, EventKind};
use crate::server::store::NewEvent;
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use uuid::Uuid;

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    pub(super) async fn on_delete(&mut self, room: &str, id: Uuid) -> Result<(), End> {
        let Some(me) = self.me.clone() else {
            return self
                .send_error(ErrorCode::NotJoined, "Join the chat before deleting.", None)
                .await;
        };
        let Some(room) = self.room_for(room, Use::Post, None).await? else {
            return Ok(());
        };
        let found = match self.hub.store().find(&room, id).await {
            Ok(found) => found.filter(|e| e.kind == EventKind::Message),
            Err(err) => {
                tracing::error!(error = %err, "finding a message to delete failed");
                return self.send_unavailable(None).await;
            }
        };
        let Some(message) = found else {
            return self
                .send_error(ErrorCode::NotFound, "There is no such message.", None)
                .await;
        };
        if message.user_id != me.identity.user_id && !me.identity.admin {
            return self
                .send_error(
                    ErrorCode::NotAllowed,
                    "Only its author or an admin can delete a message.",
                    None,
                )
                .await;
        }
        match self.hub.store().redact(&room, id).await {
            Ok(true) => {}
            // Deleted meanwhile (by its author and an admin at once): the first delete tells everyone.
            Ok(false) => return Ok(()),
            Err(err) => {
                tracing::error!(error = %err, "deleting a message failed");
                return self.send_unavailable(None).await;
            }
        }
        let event = NewEvent {
            id: Uuid::new_v4(),
            kind: EventKind::Delete,
            name: me.seat.name.clone(),
            user_id: me.identity.user_id,
            user_kind: me.identity.kind,
            text: String::new(),
            target: Some(id),
        };
        if let Err(err) = self.hub.publish(&room, event).await {
            // The message is gone from the history already; pages loaded from now on do not show it.
            tracing::error!(error = %err, "announcing a delete failed");
            return self.send_unavailable(None).await;
        }
        tracing::info!(by = %me.seat.name, admin = me.identity.admin, "a message was deleted");
        Ok(())
    }
}
