//! `send`: a message into the room, stored before anyone sees it, acknowledged in the order sent.

use super::limits::Hold;
use super::rooms::Use;
use super::{End, Session, MAX_IN_FLIGHT};
use crate::protocol::{validate_text, ErrorCode, EventKind, ServerFrame};
use crate::server::hub::PublishError;
use crate::server::store::{Appended, NewEvent};
use axum::extract::ws::Message;
use futures_util::{Sink, Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const TOO_FAST: &str =
    "You are sending messages too fast; this one waits its turn and is sent again by itself.";

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
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
            kind: EventKind::Message,
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
