//! The WebSocket under the sessions: the RFC 6455 handshake, tungstenite's framing, and a write buffer of
//! Confab's own that does not outlive the batch it gathered.
//!
//! axum's `WebSocket` writes through tungstenite's buffer, and that buffer keeps the capacity of the
//! largest batch it ever held for the connection's whole life: after a catch-up or a join storm, about
//! 11 KiB sat on every idle connection, its largest single item. Here tungstenite is set to write each
//! frame straight through (so its own buffer holds one frame at a time) into [`Batched`], which gathers
//! a batch's frames for one system call at the flush, as before, and lets a large buffer go afterwards.
//!
//! The sessions still see axum's message types ([`Socket`] converts), so they stay generic over any
//! `Sink`/`Stream`.

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{self as ts, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A batch is written out once this much is gathered, even before its flush.
const WRITE_AT: usize = 8 * 1024;
/// A buffer that grew past this for a batch is given back after the batch is written; one frame of
/// ordinary chat fits, so steady traffic reuses its buffer.
const KEEP: usize = 1024;

/// An accepted WebSocket handshake (HTTP/1.1), waiting for the response to go out.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request to the socket's address is not a WebSocket handshake.
#[derive(Debug)]
pub struct NotWebSocket(StatusCode, &'static str);

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// Whether header `name` lists `token` (comma-separated, any case), as `Connection: keep-alive, Upgrade`.
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotWebSocket;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        const HOW: &str =
            "This address speaks WebSocket (RFC 6455): connect with a WebSocket client.";
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(NotWebSocket(StatusCode::BAD_REQUEST, HOW));
        }
        let headers = &parts.headers;
        if !lists(headers, header::CONNECTION, "upgrade")
            || !lists(headers, header::UPGRADE, "websocket")
        {
            return Err(NotWebSocket(StatusCode::UPGRADE_REQUIRED, HOW));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotWebSocket(
                StatusCode::BAD_REQUEST,
                "Only WebSocket version 13 is spoken here.",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(NotWebSocket(
                StatusCode::BAD_REQUEST,
                "The Sec-WebSocket-Key header is missing.",
            ));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(NotWebSocket(StatusCode::UPGRADE_REQUIRED, HOW))?;
        Ok(Self { accept, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` response; once it is out, `session` runs with the socket.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Each frame goes straight into `Batched`: tungstenite's own buffer then never holds a batch.
        let config = config.write_buffer_size(0);
        tokio::spawn(async move {
            let upgraded = match self.on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "a WebSocket upgrade did not complete");
                    return;
                }
            };
            let io = Batched::new(TokioIo::new(upgraded));
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            session(Socket(ws)).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(Body::empty())
            .expect("a valid response")
    }
}

/// Gathers what is written until a flush (or [`WRITE_AT`]), then writes it in one call; a buffer grown
/// past [`KEEP`] is dropped once written.
pub struct Batched<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` is written already.
    written: usize,
}

impl<T> Batched<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// The bytes this holds for writes to come (its buffer's capacity).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncWrite + Unpin> Batched<T> {
    /// Writes out everything gathered.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= WRITE_AT {
            ready!(self.poll_write_out(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A server WebSocket in axum's message types.
pub struct Socket(WebSocketStream<Batched<TokioIo<hyper::upgrade::Upgraded>>>);

fn from_tungstenite(message: ts::Message) -> Option<Message> {
    Some(match message {
        // Copied: a client's frames are small, and axum's text type cannot wrap tungstenite's.
        ts::Message::Text(text) => Message::Text(Utf8Bytes::from(text.as_str())),
        ts::Message::Binary(data) => Message::Binary(data),
        ts::Message::Ping(data) => Message::Ping(data),
        ts::Message::Pong(data) => Message::Pong(data),
        ts::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: Utf8Bytes::from(f.reason.as_str()),
        })),
        // Raw frames only come from a writer's own `write_frame`.
        ts::Message::Frame(_) => return None,
    })
}

fn into_tungstenite(message: Message) -> ts::Message {
    match message {
        Message::Text(text) => {
            let bytes = Bytes::from(text);
            // SAFETY: the bytes are those of a `Utf8Bytes`, valid UTF-8 already; not copied, as a
            // broadcast frame is shared by every recipient.
            ts::Message::Text(unsafe { ts::frame::Utf8Bytes::from_bytes_unchecked(bytes) })
        }
        Message::Binary(data) => ts::Message::Binary(data),
        Message::Ping(data) => ts::Message::Ping(data),
        Message::Pong(data) => ts::Message::Pong(data),
        Message::Close(frame) => ts::Message::Close(frame.map(|f| ts::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
    }
}

impl Stream for Socket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.0).poll_next(cx)) {
                Some(Ok(message)) => {
                    if let Some(message) = from_tungstenite(message) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(axum::Error::new(err)))),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Sink<Message> for Socket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0)
            .poll_ready(cx)
            .map_err(axum::Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.0)
            .start_send(into_tungstenite(item))
            .map_err(axum::Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0)
            .poll_flush(cx)
            .map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0)
            .poll_close(cx)
            .map_err(axum::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_batch_is_one_write_at_its_flush_and_a_large_buffer_goes_after_it() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut batched = Batched::new(near);
        batched.write_all(b"one ").await.unwrap();
        batched.write_all(b"two").await.unwrap();
        let mut got = [0u8; 16];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut got)).await;
        assert!(nothing.is_err(), "nothing is written before the flush");
        batched.flush().await.unwrap();
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two");
        assert!(
            batched.held() <= KEEP,
            "a small buffer is kept for the next frame"
        );
        // A catch-up's batch: written out as it passes WRITE_AT, all of it by the flush, and then the
        // buffer it grew is given back.
        let frame = vec![b'x'; 3_000];
        for _ in 0..5 {
            batched.write_all(&frame).await.unwrap();
        }
        assert!(batched.held() > KEEP);
        batched.flush().await.unwrap();
        assert_eq!(batched.held(), 0, "the batch's buffer is given back");
        let mut all = Vec::new();
        while all.len() < 15_000 {
            let mut chunk = [0u8; 4096];
            let n = far.read(&mut chunk).await.unwrap();
            all.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(all, frame.repeat(5));
    }
}
