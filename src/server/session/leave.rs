//! `leave`: a guest gives up their name and this browser forgets it; a member signs this browser out.

use super::{End, Session};
use crate::protocol::{ServerFrame, UserKind};
use crate::server::backplane::SessionSignal;
use crate::server::socket::Transport;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_leave(&mut self) -> Result<(), End> {
        let member = self
            .me
            .as_ref()
            .is_some_and(|me| me.identity.kind != UserKind::Guest);
        match (member, self.browser) {
            (true, Some(session)) => {
                // A member's name stays theirs: leaving is signing this browser out, in every tab.
                if let Err(err) = self.ctx.identity.end_session(session).await {
                    tracing::error!(error = %err, "ending a session failed");
                    return self.send_unavailable(None).await;
                }
                self.release_seat(true);
                self.send_frame(&ServerFrame::Left).await?;
                self.hub.signal_session(session, SessionSignal::Ended).await;
                self.sync_rooms(false).await
            }
            _ => {
                self.release_seat(true);
                self.forget_guest().await;
                if let Some(session) = self.browser {
                    // The browser's other tabs follow.
                    self.hub
                        .signal_session(session, SessionSignal::Changed)
                        .await;
                }
                self.send_frame(&ServerFrame::Left).await?;
                self.sync_rooms(false).await
            }
        }
    }
}
