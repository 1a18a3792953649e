//! The WebSocket under the sessions: the RFC 6455 handshake, tungstenite's reading and control frames,
//! and text frames written as they are, shared.
//!
//! Every text frame a server sends is the same bytes for every recipient: final, unmasked, its length
//! in front ([`text_frame`]). So a broadcast is framed once, by the hub, and each recipient's connection
//! queues a reference to those bytes in [`Batched`], which writes a batch of them in one vectored system
//! call at the flush. Nothing is copied per recipient: through tungstenite, each delivery was framed
//! again and copied twice (into its buffer, then into ours), and its buffer kept the largest frame it
//! ever wrote (the history page sent on connecting) for the connection's whole life. Tungstenite still
//! reads, answers pings and writes the control frames (its writes are queued in the same order as the
//! text), so its own buffer, set to write through, only ever holds one control frame.
//!
//! The sessions see axum's message types for what they read ([`Socket`] converts) and write text through
//! [`Transport::feed_wire`], so they stay generic over any transport.

use super::woken::Woken;
use crate::protocol::{ChatEvent, ServerFrame};
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{self as ts, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A batch is written out once this much is gathered, even before its flush.
const WRITE_AT: usize = 64 * 1024;
/// A queue of parts that grew past this for a batch is given back after the batch is written; ordinary
/// chat writes a frame or two at a time, so steady traffic reuses its queue.
const KEEP_PARTS: usize = 4;
/// The most parts handed to one vectored write (Linux takes up to 1,024).
const MAX_SLICES: usize = 256;

/// What a session talks through: client frames in, axum's messages out for control frames, and text
/// frames already framed for the wire.
pub trait Transport:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin
{
    /// Queues `wire`, a whole frame as [`text_frame`] makes it, for the next flush; it waits only when a
    /// batch of [`WRITE_AT`] is gathered and must go out first.
    fn feed_wire(&mut self, wire: Bytes) -> impl Future<Output = Result<(), axum::Error>> + Send;
}

/// A server's text frame of `payload`, as it goes on the wire (RFC 6455 §5.2): final, unmasked, its
/// length in the shortest form. The same bytes go to every recipient.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame.into()
}

/// The wire frame of a server frame.
pub fn frame_wire(frame: &ServerFrame) -> Bytes {
    text_frame(frame.encode().as_bytes())
}

/// The wire frame of one event, as a broadcast and a catch-up send it.
pub fn event_wire(event: &ChatEvent) -> Bytes {
    text_frame(ServerFrame::encode_event(event).as_bytes())
}

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
            session(Socket::new(ws)).await;
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

/// Gathers frames until a flush (or [`WRITE_AT`]), then writes them in one vectored call. Shared frames
/// are queued as they are; tungstenite's own writes (control frames) are copied into the same queue, so
/// everything goes out in the order it was written. A queue grown past [`KEEP_PARTS`] is dropped once
/// written.
pub struct Batched<T> {
    inner: T,
    parts: VecDeque<Bytes>,
    /// How much of the first part is written already.
    written: usize,
    /// Bytes queued and not written yet.
    pending: usize,
}

impl<T> Batched<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            parts: VecDeque::new(),
            written: 0,
            pending: 0,
        }
    }

    fn push(&mut self, part: Bytes) {
        self.pending += part.len();
        self.parts.push_back(part);
    }

    /// The parts this has room for without growing (its queue's capacity).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.parts.capacity()
    }
}

impl<T: AsyncWrite + Unpin> Batched<T> {
    /// Writes out everything gathered.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.parts.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slice, part) in slices.iter_mut().zip(&self.parts) {
                let skip = if count == 0 { self.written } else { 0 };
                *slice = IoSlice::new(&part[skip..]);
                count += 1;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending -= n;
            let mut done = self.written + n;
            self.written = 0;
            while let Some(first) = self.parts.front() {
                if done < first.len() {
                    self.written = done;
                    break;
                }
                done -= first.len();
                self.parts.pop_front();
            }
        }
        if self.parts.capacity() > KEEP_PARTS {
            self.parts = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Ready for more once less than [`WRITE_AT`] waits.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending >= WRITE_AT {
            ready!(self.poll_write_out(cx))?;
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
        ready!(self.poll_room(cx))?;
        self.push(Bytes::copy_from_slice(data));
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

/// A server WebSocket in axum's message types, over an upgraded HTTP connection (or, in tests, any
/// stream). Its reads are tried again only once the socket woke the session (see [`Woken`]).
pub struct Socket<T = TokioIo<hyper::upgrade::Upgraded>>(Woken<WebSocketStream<Batched<T>>>);

impl<T> Socket<T> {
    fn new(ws: WebSocketStream<Batched<T>>) -> Self {
        Self(Woken::new(ws))
    }

    fn ws(&mut self) -> &mut WebSocketStream<Batched<T>> {
        self.0.get_mut()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for Socket<T> {
    async fn feed_wire(&mut self, wire: Bytes) -> Result<(), axum::Error> {
        let batched = self.ws().get_mut();
        std::future::poll_fn(|cx| batched.poll_room(cx))
            .await
            .map_err(axum::Error::new)?;
        batched.push(wire);
        Ok(())
    }
}

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
        // Sessions write text with `feed_wire`; this is for any other writer.
        Message::Text(text) => ts::Message::Text(text.as_str().into()),
        Message::Binary(data) => ts::Message::Binary(data),
        Message::Ping(data) => ts::Message::Ping(data),
        Message::Pong(data) => ts::Message::Pong(data),
        Message::Close(frame) => ts::Message::Close(frame.map(|f| ts::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for Socket<T> {
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

impl<T: AsyncRead + AsyncWrite + Unpin> Sink<Message> for Socket<T> {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(self.ws()).poll_ready(cx).map_err(axum::Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(self.ws())
            .start_send(into_tungstenite(item))
            .map_err(axum::Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(self.ws()).poll_flush(cx).map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(self.ws()).poll_close(cx).map_err(axum::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_batch_is_one_write_at_its_flush_and_a_long_queue_goes_after_it() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut batched = Batched::new(near);
        batched.write_all(b"one ").await.unwrap();
        batched.push(Bytes::from_static(b"two"));
        let mut got = [0u8; 16];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut got)).await;
        assert!(nothing.is_err(), "nothing is written before the flush");
        batched.flush().await.unwrap();
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two");
        assert!(
            batched.held() <= KEEP_PARTS,
            "a short queue is kept for the next frames"
        );
        // A catch-up's batch: many frames queued, then the queue they grew is given back.
        let frame = Bytes::from(vec![b'x'; 500]);
        for _ in 0..10 {
            batched.push(frame.clone());
        }
        assert!(batched.held() > KEEP_PARTS);
        batched.flush().await.unwrap();
        assert_eq!(batched.held(), 0, "the batch's queue is given back");
        let mut all = Vec::new();
        while all.len() < 5_000 {
            let mut chunk = [0u8; 4096];
            let n = far.read(&mut chunk).await.unwrap();
            all.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(all, frame.repeat(10));
    }

    #[tokio::test]
    async fn what_a_slow_reader_takes_a_little_at_a_time_arrives_whole_and_in_order() {
        // The pipe holds 100 bytes: every vectored write is partial, often inside a part.
        let (near, mut far) = tokio::io::duplex(100);
        let mut expected = Vec::new();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut batched = Batched::new(near);
        for i in 0..300u32 {
            let text = format!("frame {i} ").repeat(1 + i as usize % 7);
            let wire = text_frame(text.as_bytes());
            expected.extend_from_slice(&wire);
            if i % 5 == 0 {
                // tungstenite's own writes are copied into the same queue, in order.
                batched.write_all(&wire).await.unwrap();
            } else {
                std::future::poll_fn(|cx| batched.poll_room(cx))
                    .await
                    .unwrap();
                batched.push(wire);
            }
            if i % 40 == 39 {
                batched.flush().await.unwrap();
            }
        }
        batched.shutdown().await.unwrap();
        drop(batched);
        assert_eq!(reader.await.unwrap(), expected);
    }

    /// A stream that counts the reads tried on it.
    struct CountingReads {
        inner: tokio::io::DuplexStream,
        reads: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_socket_is_read_again_only_once_it_woke_its_task() {
        use futures_util::{FutureExt, SinkExt, StreamExt};
        let (near, far) = tokio::io::duplex(4096);
        let reads = Arc::new(AtomicUsize::new(0));
        let io = Batched::new(CountingReads {
            inner: near,
            reads: reads.clone(),
        });
        let mut socket =
            Socket::new(WebSocketStream::from_raw_socket(io, Role::Server, None).await);
        let mut client = WebSocketStream::from_raw_socket(far, Role::Client, None).await;

        assert!(socket.next().now_or_never().is_none(), "nothing was sent");
        let tried = reads.load(Ordering::Relaxed);
        assert!(tried > 0, "the first poll reads");
        // What a session does on every delivery: its `select!` polls the socket again.
        for _ in 0..10 {
            assert!(socket.next().now_or_never().is_none());
        }
        assert_eq!(
            reads.load(Ordering::Relaxed),
            tried,
            "no read is tried again before the socket wakes the task"
        );

        // Two frames in one go: the second is read from what the first read took in, with no wake-up.
        client.feed(ts::Message::text("hello")).await.unwrap();
        client.feed(ts::Message::text("and more")).await.unwrap();
        client.flush().await.unwrap();
        for expected in ["hello", "and more"] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
                .await
                .expect("the socket woke the task")
                .expect("a frame")
                .expect("read");
            assert_eq!(got, Message::Text(Utf8Bytes::from(expected)));
        }
    }

    #[test]
    fn a_text_frame_is_final_unmasked_and_its_length_is_in_the_shortest_form() {
        assert_eq!(&text_frame(b"hello")[..], b"\x81\x05hello");
        let frame = text_frame(&[b'a'; 200]);
        assert_eq!(&frame[..4], &[0x81, 126, 0, 200]);
        assert_eq!(frame.len(), 204);
        let frame = text_frame(&[b'a'; 70_000]);
        assert_eq!(&frame[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(frame.len(), 70_010);
    }
}
