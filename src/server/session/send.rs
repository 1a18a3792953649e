//! `send`: a message into the room, stored before anyone sees it, acknowledged in the order sent. A text
//! that starts with `/` is a slash command (see [`Slash`]): `/me` posts an action, the others do what
//! their frames do, and an unknown one is refused without posting anything.

use super::limits::Hold;
use super::rooms::Use;
use super::{End, Session, MAX_IN_FLIGHT};
use crate::protocol::{validate_text, ErrorCode, EventKind, ServerFrame, Slash, SLASH_HELP};
use crate::server::hub::PublishError;
use crate::server::socket::Transport;
use crate::server::store::{Appended, NewEvent};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const TOO_FAST: &str =
    "You are sending messages too fast; this one waits its turn and is sent again by itself.";

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_send(&mut self, room: &str, id: Uuid, raw: &str) -> Result<(), End> {
        // Only what the message needs, not the whole identity, is copied per message.
        let Some((user_id, user_kind, name)) = self
            .me
            .as_ref()
            .map(|me| (me.identity.user_id, me.identity.kind, me.seat.name.clone()))
        else {
            return self
                .send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name before sending.",
                    Some(id),
                )
                .await;
        };
        if self.ctx.config.access == crate::protocol::Access::Members
            && user_kind == crate::protocol::UserKind::Guest
        {
            return self
                .send_error(ErrorCode::MembersOnly, super::MEMBERS_ONLY, Some(id))
                .await;
        }
        let text = match validate_text(raw) {
            Ok(text) => text,
            Err(err) => return self.send_error(err.code(), err.message(), Some(id)).await,
        };
        let (kind, text) = match Slash::parse(&text) {
            Slash::Text(text) => (EventKind::Message, text.to_owned()),
            Slash::Me(action) => match validate_text(action) {
                Ok(action) => (EventKind::Action, action),
                Err(err) => {
                    let message = format!("/me needs an action: {}", err.message());
                    return self.send_error(err.code(), &message, Some(id)).await;
                }
            },
            command => return self.on_command(room, id, command).await,
        };
        let Some(room) = self.room_for(room, Use::Post, Some(id)).await? else {
            return Ok(());
        };
        // An earlier message was refused for its rate: this one may not overtake it.
        if let Some(hold) = self.hold.filter(|hold| hold.blocks(id)) {
            return self.too_fast(id, hold.retry_after()).await;
        }
        if let Err(wait) = self.ctx.limits.check(user_id, self.ip) {
            let now = Instant::now();
            let hold = match self.hold {
                // The held message itself, again too early: it stays the one to wait for.
                Some(hold) if hold.id == id => Hold {
                    retry_at: now + wait,
                    ..hold
                },
                _ => Hold {
                    id,
                    retry_at: now + wait,
                    since: now,
                },
            };
            self.hold = Some(hold);
            return self.too_fast(id, wait).await;
        }
        self.hold = None;
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((id, stored)) = self.in_flight.next().await {
                self.on_stored(id, stored).await?;
            }
        }
        let event = NewEvent {
            id,
            kind,
            name,
            user_id,
            user_kind,
            text,
            target: None,
            call: Vec::new(),
        };
        match self.hub.submit(&room, event).await {
            Ok(receipt) => {
                self.in_flight.push_back(receipt);
                Ok(())
            }
            Err(err) => self.on_publish_error(err, Some(id)).await,
        }
    }

    /// A slash command that posts nothing: it does what its frame does, and answers as that frame does.
    async fn on_command(&mut self, room: &str, id: Uuid, command: Slash<'_>) -> Result<(), End> {
        match command {
            Slash::Topic(topic) => {
                self.on_update_room(room, None, Some(topic.to_owned()), None)
                    .await
            }
            Slash::Invite("") => {
                self.send_error(
                    ErrorCode::NameBlank,
                    "/invite needs a name: /invite Ann",
                    Some(id),
                )
                .await
            }
            Slash::Invite(name) => self.on_invite(room, name).await,
            Slash::Leave => self.on_leave_room(room).await,
            Slash::Help => {
                self.send_frame(&ServerFrame::Command {
                    id,
                    reply: SLASH_HELP.to_owned(),
                })
                .await
            }
            Slash::Unknown(name) => {
                let message = format!(
                    "There is no command /{name}; nothing was posted. /help lists the commands, and \
                     // starts a message with /."
                );
                self.send_error(ErrorCode::UnknownCommand, &message, Some(id))
                    .await
            }
            Slash::Text(_) | Slash::Me(_) => Ok(()),
        }
    }

    async fn too_fast(&mut self, id: Uuid, wait: Duration) -> Result<(), End> {
        let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        self.send_frame(&ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: TOO_FAST.to_owned(),
            id: Some(id),
            retry_after_ms: Some(retry_after_ms),
        })
        .await
    }

    /// A message this connection sent was stored (or not): acknowledge it.
    pub(super) async fn on_stored(
        &mut self,
        id: Uuid,
        stored: Result<Appended, PublishError>,
    ) -> Result<(), End> {
        match stored {
            Ok(appended) => {
                if appended.fresh {
                    metrics::counter!(crate::server::metrics::MESSAGES_IN).increment(1);
                }
                self.send_frame(&ServerFrame::Ack {
                    id,
                    seq: appended.event.seq,
                })
                .await
            }
            Err(err) => self.on_publish_error(err, Some(id)).await,
        }
    }
}
