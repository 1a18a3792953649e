//! `delete`: a message disappears for everyone, live and from the history. Its author may delete it, and
//! so may an admin.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::ErrorCode;
use crate::server::rooms::{delete_message, Deleted, Deleter};
use crate::server::socket::Transport;
use uuid::Uuid;

impl<S> Session<'_, S>
where
    S: Transport,
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
        let by = Deleter {
            user: me.identity.user_id,
            name: &me.seat.name,
            kind: me.identity.kind,
            admin: me.identity.admin,
        };
        match delete_message(self.hub, &room, id, by).await {
            Ok(Deleted::Done) => Ok(()),
            Ok(Deleted::NoSuchMessage) => {
                self.send_error(ErrorCode::NotFound, "There is no such message.", None)
                    .await
            }
            Ok(Deleted::NotYours) => {
                self.send_error(
                    ErrorCode::NotAllowed,
                    "Only its author or an admin can delete a message.",
                    None,
                )
                .await
            }
            Err(err) => {
                tracing::error!(error = %err, "deleting a message failed");
                self.send_unavailable(None).await
            }
        }
    }
}
