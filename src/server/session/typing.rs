//! `typing`: "<name> is typing…" for the others, throttled.

use super::rooms::Use;
use super::{End, Session};
use crate::protocol::ServerFrame;
use crate::server::socket::Transport;
use std::time::Duration;
use tokio::time::Instant;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_typing(&mut self, room: &str) -> Result<(), End> {
        let Some(name) = self.me.as_ref().map(|me| me.seat.name.clone()) else {
            return Ok(());
        };
        // Browsers throttle too; this keeps a misbehaving client from turning typing into a flood.
        if self
            .last_typing
            .is_some_and(|at| at.elapsed() < Duration::from_millis(900))
        {
            return Ok(());
        }
        let Some(room) = self.room_for(room, Use::Post, None).await? else {
            return Ok(());
        };
        self.last_typing = Some(Instant::now());
        self.hub.backplane().typing(&room, &name).await;
        let frame = ServerFrame::Typing {
            room: room.to_string(),
            name,
        };
        self.hub.broadcast_ephemeral(&room, &frame);
        Ok(())
    }
}
