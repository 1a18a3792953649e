//! `read` and `notify`: how far the user has read a room, and what of it notifies them, kept on the
//! server, so every tab and device agrees; reading in one clears the badge in the others.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::{ErrorCode, Notify, ServerFrame};
use crate::server::backplane::SessionSignal;
use crate::server::socket::Transport;
use std::sync::Arc;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_read(&mut self, room: &str, seq: u64) -> Result<(), End> {
        let Some(user) = self.user_id() else {
            return self
                .send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name to keep your place.",
                    None,
                )
                .await;
        };
        let Some(room) = self.room_for(room, Use::Read, None).await? else {
            return Ok(());
        };
        // A mark past the room's newest event means only "all of it".
        let head = match self.hub.store().head(&room).await {
            Ok(head) => head,
            Err(err) => {
                tracing::error!(error = %err, "reading a room's head failed");
                return self.send_unavailable(None).await;
            }
        };
        let seq = seq.min(head);
        let Some(heard) = self.rooms.get_mut(&room) else {
            return Ok(());
        };
        if seq <= heard.read {
            return Ok(()); // nothing new: no write, no noise for the other tabs
        }
        heard.read = seq;
        if let Err(err) = self.ctx.rooms.store.mark_read(user, &room, seq).await {
            tracing::error!(error = %err, "keeping a read mark failed");
            return self.send_unavailable(None).await;
        }
        self.hub.signal_session(user, SessionSignal::Read).await;
        Ok(())
    }

    /// `notify`: what of a room notifies the user, kept for every device; the answer (and the other
    /// tabs' news) is the room's `room` frame.
    pub(super) async fn on_notify(&mut self, room: &str, level: Notify) -> Result<(), End> {
        let Some(user) = self.user_id() else {
            return self
                .send_error(
                    ErrorCode::NotJoined,
                    "Join the chat with a name to choose what notifies you.",
                    None,
                )
                .await;
        };
        let Some(room) = self.room_for(room, Use::Read, None).await? else {
            return Ok(());
        };
        if level == Notify::Other {
            return self
                .send_error(
                    ErrorCode::BadFrame,
                    "Unknown notification level: use everything, mentions or nothing.",
                    None,
                )
                .await;
        }
        if let Err(err) = self.ctx.rooms.store.set_notify(user, &room, level).await {
            tracing::error!(error = %err, "keeping a notification level failed");
            return self.send_unavailable(None).await;
        }
        // Every connection of the user (this one too) reads its rooms again and is told of the change.
        self.hub.signal_session(user, SessionSignal::Rooms).await;
        Ok(())
    }

    /// `user` has just come into `room`: they have read it up to its head, so what follows is unread
    /// (and the history from before they came is not). Best effort: without it, nothing counts as unread.
    pub(super) async fn start_reading(&mut self, user: uuid::Uuid, room: &str) {
        if let Err(err) = self.ctx.rooms.start_reading(room, &[user]).await {
            tracing::warn!(error = %err, "starting a read mark failed");
        }
    }

    /// Another tab or device read further: tell this client, room by room, so its badges clear.
    pub(super) async fn reread(&mut self) -> Result<(), End> {
        let Some(user) = self.user_id() else {
            return Ok(());
        };
        let rooms: Vec<(Arc<str>, u64)> = self
            .rooms
            .iter()
            .map(|(slug, heard)| (slug.clone(), heard.read))
            .collect();
        for (room, shown) in rooms {
            let mark = match self.ctx.rooms.store.read_mark(user, &room).await {
                Ok(mark) => mark.unwrap_or(0),
                Err(err) => {
                    tracing::warn!(error = %err, "reading a read mark failed");
                    return Ok(());
                }
            };
            if mark > shown {
                if let Some(heard) = self.rooms.get_mut(&room) {
                    heard.read = mark;
                }
                self.send_frame(&ServerFrame::Read {
                    room: room.to_string(),
                    seq: mark,
                })
                .await?;
            }
        }
        Ok(())
    }
}
