//! The WebSocket under the sessions: the RFC 6455 handshake, the socket split in two halves, tungstenite
//! reading, and text frames written as they are, shared.
//!
//! Every text frame a server sends is the same bytes for every recipient: final, unmasked, its length
//! in front ([`text_frame`]). So a broadcast is framed once, by the hub, and each recipient's writer
//! task ([`crate::server::writer`]) queues a reference to those bytes in [`Batched`], which writes a
//! batch of them in one vectored system call. Nothing is copied per recipient.
//!
//! The socket is split: its write half belongs to the writer task, its read half to the session, which
//! reads through tungstenite ([`Socket`]). Tungstenite's own writes (pongs, closes) and the session's
//! frames go into the connection's queue, after the broadcasts queued before them, so everything
//! reaches the wire in the order it was queued.

use super::hub::{Framed, Kind, Mailbox};
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
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
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

/// What a session reads through, and writes its control frames (pings, closes) through: client frames
/// in, axum's messages out. Its text goes straight into its queue, already framed.
pub trait Transport:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin
{
}

impl<
        T: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    > Transport for T
{
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

/// The read half of an upgraded connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of an upgraded connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An upgraded connection, split: the session reads one half, its writer task writes the other.
pub struct Connection {
    pub read: ReadHalf,
    pub write: WriteHalf,
    pub config: WebSocketConfig,
}

impl Connection {
    /// Splits `upgraded`. A TCP socket splits into two owned halves that take no lock; anything else
    /// (not served by axum over TCP) is split behind a lock.
    fn split(upgraded: hyper::upgrade::Upgraded, config: WebSocketConfig) -> Self {
        use hyper_util::server::conn::auto::upgrade::downcast;
        match downcast::<TokioIo<tokio::net::TcpStream>>(upgraded) {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                // What the server read past the handshake is the start of the WebSocket stream. It is
                // a slice of the HTTP connection's read buffer, which it would keep whole for the
                // connection's life: kept only when there is something in it (clients wait for the
                // 101 before they send).
                let read: ReadHalf = if parts.read_buf.is_empty() {
                    Box::new(read)
                } else {
                    Box::new(std::io::Cursor::new(parts.read_buf).chain(read))
                };
                Self {
                    read,
                    write: Box::new(write),
                    config,
                }
            }
            Err(upgraded) => {
                tracing::debug!("an upgraded connection that is not TCP is split behind a lock");
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                Self {
                    read: Box::new(read),
                    write: Box::new(write),
                    config,
                }
            }
        }
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` response; once it is out, `session` runs with the connection.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let upgraded = match self.on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "a WebSocket upgrade did not complete");
                    return;
                }
            };
            session(Connection::split(upgraded, config)).await;
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
/// are queued as they are, so nothing is copied per recipient. A queue grown past [`KEEP_PARTS`] is
/// dropped once written.
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

    pub fn push(&mut self, part: Bytes) {
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
    /// Bytes gathered and not written yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Writes out everything gathered.
    pub async fn write_out(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Waits until there is room for more: a batch of [`WRITE_AT`] goes out first.
    pub async fn make_room(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_room(cx)).await
    }

    /// Writes out everything gathered.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.parts.is_empty() {
            if self.parts.len() == 1 {
                // One frame per write is the common case under wide fan-out: no slices to build.
                let part = &self.parts[0][self.written..];
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, part))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending -= n;
                self.written += n;
                if self.written == self.parts[0].len() {
                    self.written = 0;
                    self.parts.pop_front();
                }
                continue;
            }
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

/// The session's side of the connection under tungstenite: reads from the socket's read half; writes
/// (tungstenite's pongs and closes) go into the connection's queue, to be written by its writer task.
pub struct Halves<R> {
    read: R,
    out: Arc<Mailbox>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Halves<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for Halves<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Tungstenite writes through (its write buffer is 0), so each call is one whole frame: a close
        // frame is told apart by its opcode, for the writer to write nothing after it.
        let kind = match data.first() {
            Some(first) if first & 0x0f == 0x8 => Kind::Close,
            _ => Kind::Own,
        };
        let entry = Framed::unroomed(kind, 1, Bytes::copy_from_slice(data));
        match self.out.push_own(entry) {
            Ok(()) => Poll::Ready(Ok(data.len())),
            Err(_) => Poll::Ready(Err(io::Error::other("the client stopped reading"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer shuts the socket down once the session has ended and everything queued is out.
        Poll::Ready(Ok(()))
    }
}

/// A server WebSocket's reading side in axum's message types, over the read half of an upgraded
/// connection (or, in tests, any stream). Its reads are tried again only once the socket woke the
/// session (see [`Woken`]).
pub struct Socket<R = ReadHalf>(Woken<WebSocketStream<Halves<R>>>);

impl<R: AsyncRead + Unpin> Socket<R> {
    /// The session's socket over `read`; what it writes goes into `out`.
    pub async fn new(read: R, out: Arc<Mailbox>, config: WebSocketConfig) -> Self {
        // Tungstenite writes each frame straight into the queue: its own buffer never holds one.
        let config = config.write_buffer_size(0);
        let halves = Halves { read, out };
        let ws = WebSocketStream::from_raw_socket(halves, Role::Server, Some(config)).await;
        Self(Woken::new(ws))
    }

    fn ws(&mut self) -> &mut WebSocketStream<Halves<R>> {
        self.0.get_mut()
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
        // Sessions queue their text already framed; this is for any other writer.
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

impl<R: AsyncRead + Unpin> Stream for Socket<R> {
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

impl<R: AsyncRead + Unpin> Sink<Message> for Socket<R> {
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

    #[tokio::test]
    async fn a_socket_is_read_again_only_once_it_woke_its_task() {
        use futures_util::{FutureExt, SinkExt, StreamExt};
        let (near, far) = tokio::io::duplex(4096);
        let reads = Arc::new(AtomicUsize::new(0));
        let read = CountingReads {
            inner: near,
            reads: reads.clone(),
        };
        let hub = crate::server::hub::Hub::new(
            Arc::new(crate::server::store::MemoryStore::new(10)),
            Arc::new(crate::server::backplane::Local),
            crate::server::hub::HubConfig::default(),
        );
        let (mailbox, _deliveries) = hub.mailbox();
        let mut socket = Socket::new(read, mailbox, WebSocketConfig::default()).await;
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
