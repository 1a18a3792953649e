//! `auth`: a native client signs its connection in with a token signed by the embedding app.

use super::{End, Session, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID};
use crate::protocol::{ErrorCode, ServerFrame, Via};
use crate::server::identity::token::TokenError;
use crate::server::socket::Transport;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::SinkExt;

impl<S> Session<'_, S>
where
    S: Transport,
{
    pub(super) async fn on_auth(&mut self, token: &str) -> Result<(), End> {
        let user = match self.ctx.accounts.token_user(token).await {
            Ok(user) => user,
            Err(err) => {
                self.refuse_token(&err).await;
                return Err(End::Closed);
            }
        };
        if let Some(me) = &self.me {
            if me.identity.user_id == user.id {
                let identity = me.identity.clone();
                return self.send_frame(&ServerFrame::Joined(identity)).await;
            }
            let message = format!(
                "This connection already joined as {}; connect again to sign in as someone else.",
                me.seat.name
            );
            return self
                .send_error(ErrorCode::AlreadyJoined, &message, None)
                .await;
        }
        self.seat_user(user, Via::Token).await?;
        self.sync_rooms(false).await
    }

    /// Says why a token was refused, then closes with the code that tells expired from invalid.
    pub(super) async fn refuse_token(&mut self, err: &TokenError) {
        let (code, close, reason) = match err {
            TokenError::Expired => (
                ErrorCode::TokenExpired,
                CLOSE_TOKEN_EXPIRED,
                "token expired",
            ),
            TokenError::Invalid(_) => (
                ErrorCode::TokenInvalid,
                CLOSE_TOKEN_INVALID,
                "token invalid",
            ),
        };
        tracing::info!(?code, "refused a sign-in token");
        let _ = self.send_error(code, &err.message(), None).await;
        let close = CloseFrame {
            code: close,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }
}
