//! Integration tests: the real router on an ephemeral port, driven by real WebSocket clients.

mod postgres;

mod accounts;

mod bots;
mod commands;

mod privacy;
mod rooms;

use super::backplane::Local;
use super::config::{Config, StoreConfig};
use super::store::{Appended, EventStore, MemoryStore, NewEvent, StoreError};
use super::{router, serve, AppState, Stores};
use crate::protocol::{
    ChatEvent, ClientFrame, ErrorCode, EventKind, ServerFrame, GENERAL_ROOM, MAX_FRAME_BYTES,
    MAX_TEXT_CHARS,
};
use futures_util::{SinkExt, StreamExt};
use leptos::prelude::LeptosOptions;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// A test client: a real WebSocket, plus frames read ahead while looking for a particular one.
struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    backlog: VecDeque<ServerFrame>,
    /// Every text frame received, as sent: what privacy tests search for things the client may not see.
    transcript: Vec<String>,
}

/// Generous: only a broken server waits this long.
const PATIENCE: Duration = Duration::from_secs(10);

fn memory() -> Config {
    let mut config = Config {
        store: StoreConfig::Memory,
        ..Config::default()
    };
    // Every test client comes from 127.0.0.1: the per-address limit has tests of its own.
    config.session.address_per_second = std::num::NonZeroU32::new(100_000).unwrap();
    config.session.address_burst = std::num::NonZeroU32::new(100_000).unwrap();
    config
}

/// A server running on an ephemeral port, stoppable like SIGTERM stops the real one.
struct Server {
    addr: SocketAddr,
    hub: super::hub::Hub,
    bots: super::bots::Bots,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: Config) -> Self {
        Self::start_with(config, None).await
    }

    /// With `stores` instead of the ones `config` names.
    async fn start_with(config: Config, stores: Option<Stores>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = LeptosOptions::builder()
            .output_name("confab")
            .site_addr(addr)
            .build();
        let state = match stores {
            Some(stores) => AppState::with_stores(options, &config, stores)
                .await
                .unwrap(),
            None => AppState::new(options, &config).await.unwrap(),
        };
        let hub = state.hub.clone();
        let bots = state.bots.clone();
        let handle = hub.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let closing = hub.clone();
        let done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
                closing.begin_shutdown();
            };
            serve(listener, router(state), shutdown).await.unwrap();
            hub.sessions_ended().await;
            hub.close().await;
        });
        Self {
            addr,
            hub: handle,
            bots,
            stop: Some(stop),
            done,
        }
    }

    /// Shuts down as SIGTERM does: stop accepting, close every socket with 1012, flush the store.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(PATIENCE, &mut self.done)
            .await
            .expect("shutdown finishes")
            .unwrap();
    }
}

/// The real server on an ephemeral port, with the in-memory store unless the config says otherwise.
async fn start(config: Config) -> SocketAddr {
    let server = Server::start(config).await;
    let addr = server.addr;
    // Runs until the test's runtime ends.
    std::mem::forget(server);
    addr
}

async fn connect(addr: SocketAddr, query: &str) -> Client {
    let socket = connect_async(format!("ws://{addr}/ws{query}"))
        .await
        .expect("websocket connects")
        .0;
    Client {
        socket,
        backlog: VecDeque::new(),
        transcript: Vec::new(),
    }
}

/// Connects and joins as `name`.
async fn joined(addr: SocketAddr, name: &str) -> Client {
    let mut client = connect(addr, "").await;
    client.join(name).await;
    client
}

/// A new browser: loads the page, as a browser would, and returns the session token the server issued.
async fn browser(addr: SocketAddr) -> String {
    let page = get(addr, "/", "").await;
    session_token(&page).expect("the page issues a session cookie")
}

/// The session token a response sets, if it sets one.
fn session_token(response: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if !key.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let value = value.trim();
        let rest = value.strip_prefix(&format!("{}=", super::identity::COOKIE_NAME))?;
        let token = rest.split(';').next()?;
        (!token.is_empty()).then(|| token.to_owned())
    })
}

/// Connects as a browser with the session cookie `token`.
async fn connect_as(addr: SocketAddr, token: &str, query: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "cookie",
        format!("{}={token}", super::identity::COOKIE_NAME)
            .parse()
            .unwrap(),
    );
    let socket = connect_async(request).await.expect("websocket connects").0;
    Client {
        socket,
        backlog: VecDeque::new(),
        transcript: Vec::new(),
    }
}

impl Client {
    async fn send(&mut self, frame: &ClientFrame) {
        self.send_raw(serde_json::to_string(frame).unwrap()).await;
    }

    async fn send_raw(&mut self, text: impl Into<String>) {
        self.socket.send(Message::text(text.into())).await.unwrap();
    }

    /// The next protocol frame, skipping pings.
    async fn next(&mut self) -> ServerFrame {
        if let Some(frame) = self.backlog.pop_front() {
            return frame;
        }
        loop {
            let message = timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .unwrap();
            match message {
                Message::Text(text) => {
                    self.transcript.push(text.to_string());
                    return serde_json::from_str(&text).expect("server frames parse");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next frame that `pick` accepts; the others stay queued, in order, for later reads.
    async fn next_matching<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        let mut skipped = VecDeque::new();
        let found = loop {
            let frame = match self.backlog.pop_front() {
                Some(frame) => frame,
                None => {
                    let rest = std::mem::take(&mut self.backlog);
                    let frame = self.next().await;
                    self.backlog = rest;
                    frame
                }
            };
            match pick(&frame) {
                Some(found) => break found,
                None => skipped.push_back(frame),
            }
        };
        skipped.extend(self.backlog.drain(..));
        self.backlog = skipped;
        found
    }

    async fn next_event(&mut self) -> ChatEvent {
        self.next_matching(|f| match f {
            ServerFrame::Event(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    async fn join(&mut self, name: &str) {
        self.send(&ClientFrame::Join { name: name.into() }).await;
        let result = self
            .next_matching(|f| match f {
                ServerFrame::Joined(me) => Some(Ok(me.name.clone())),
                ServerFrame::Error { message, .. } => Some(Err(message.clone())),
                _ => None,
            })
            .await;
        assert_eq!(result, Ok(name.trim().to_owned()));
    }

    /// The next error, which must have `code`; events that arrive meanwhile stay queued.
    async fn expect_error(&mut self, code: ErrorCode) -> (String, Option<Uuid>) {
        let (got, message, id) = self
            .next_matching(|f| match f {
                ServerFrame::Error {
                    code, message, id, ..
                } => Some((*code, message.clone(), *id)),
                _ => None,
            })
            .await;
        assert_eq!(got, code, "{message}");
        assert!(!message.is_empty());
        (message, id)
    }
}

fn say(text: &str) -> ClientFrame {
    ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id: Uuid::new_v4(),
        text: text.into(),
    }
}

#[tokio::test]
async fn two_clients_see_both_join_lines() {
    let addr = start(memory()).await;
    let mut ann = connect(addr, "").await;
    let mut bob = connect(addr, "").await;
    ann.join("Ann").await;
    bob.join("  Bob ").await;

    for socket in [&mut ann, &mut bob] {
        let first = socket.next_event().await;
        let second = socket.next_event().await;
        assert_eq!(
            (first.kind, first.name.as_str(), first.seq),
            (EventKind::Join, "Ann", 1)
        );
        assert_eq!(
            (second.kind, second.name.as_str(), second.seq),
            (EventKind::Join, "Bob", 2)
        );
        assert_eq!(second.system_line().unwrap(), "Bob has joined the chat.");
    }
}

#[tokio::test]
async fn messages_fan_out_to_everyone_in_one_order() {
    let addr = start(memory()).await;
    let mut clients = Vec::new();
    for name in ["Ann", "Bob", "Cy"] {
        let mut socket = connect(addr, "").await;
        socket.join(name).await;
        clients.push(socket);
    }
    // Everyone sends at once; the store decides one order and everyone must see that order.
    let mut sent = Vec::new();
    for round in 0..5 {
        for (i, socket) in clients.iter_mut().enumerate() {
            let frame = say(&format!("m{round}-{i}"));
            if let ClientFrame::Send { id, .. } = &frame {
                sent.push(*id);
            }
            socket.send(&frame).await;
        }
    }
    let mut orders = Vec::new();
    for socket in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < sent.len() {
            let event = socket.next_event().await;
            if event.kind == EventKind::Message {
                seen.push((event.seq, event.id, event.text));
            }
        }
        orders.push(seen);
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "everyone sees the same order"
    );
    let seqs: Vec<u64> = orders[0].iter().map(|(seq, ..)| *seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers are gapless: {seqs:?}"
    );
    let mut ids: Vec<Uuid> = orders[0].iter().map(|(_, id, _)| *id).collect();
    ids.sort();
    sent.sort();
    assert_eq!(
        ids, sent,
        "every message arrives once, with the client's uuid"
    );
}

#[tokio::test]
async fn sender_gets_an_ack_with_the_stored_sequence() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let id = Uuid::new_v4();
    ann.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "  hello\r\nworld  ".into(),
    })
    .await;
    let mut acked = None;
    let mut event = None;
    while acked.is_none() || event.is_none() {
        match ann.next().await {
            ServerFrame::Ack { id: got, seq } if got == id => acked = Some(seq),
            ServerFrame::Event(e) if e.id == id => event = Some(e),
            _ => {}
        }
    }
    let event = event.unwrap();
    assert_eq!(acked, Some(event.seq));
    assert_eq!(event.text, "hello\nworld");
    assert!(
        event.at > 1_600_000_000_000,
        "server timestamp in ms: {}",
        event.at
    );
}

#[tokio::test]
async fn late_joiners_get_recent_history_and_resume_gets_the_rest() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    for i in 0..3 {
        ann.send(&say(&format!("m{i}"))).await;
    }
    let mut last = 0;
    while last < 4 {
        last = ann.next_event().await.seq;
    }
    let mut late = connect(addr, "").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(late.next_event().await.seq);
    }
    assert_eq!(got, [1, 2, 3, 4]);

    let mut resumed = connect(addr, "?after=2").await;
    assert_eq!(resumed.next_event().await.seq, 3);
    assert_eq!(resumed.next_event().await.seq, 4);
    ann.send(&say("live")).await;
    let live = resumed.next_event().await;
    assert_eq!((live.seq, live.text.as_str()), (5, "live"));
}

/// The sequence numbers of `events`.
fn seqs(events: &[ChatEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// The `reset` frame a resuming client gets first; an event before it would be a replay.
async fn expect_reset(client: &mut Client) -> (Vec<ChatEvent>, bool) {
    client
        .next_matching(|f| match f {
            ServerFrame::Reset {
                events, complete, ..
            } => Some((events.clone(), *complete)),
            ServerFrame::Event(e) => panic!("replayed event {} instead of a reset", e.seq),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn a_resume_cursor_past_the_head_gets_a_reset_then_live_events() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    ann.send(&say("one")).await;
    let mut last = 0;
    while last < 2 {
        last = ann.next_event().await.seq;
    }
    // A tab that showed seq 100 of a room that now ends at 2 (a restored database, a restarted memory
    // store). Before the reset it waited for seq 101 and showed nothing new, ever.
    let mut tab = connect(addr, "?after=100").await;
    let (events, complete) = expect_reset(&mut tab).await;
    assert_eq!(seqs(&events), [1, 2]);
    assert!(complete);
    ann.send(&say("after the reset")).await;
    let live = tab.next_event().await;
    assert_eq!((live.seq, live.text.as_str()), (3, "after the reset"));

    // An up-to-date cursor is no reset: nothing replayed, then the live events.
    let mut current = connect(addr, "?after=3").await;
    current
        .next_matching(|f| matches!(f, ServerFrame::Presence { .. }).then_some(()))
        .await;
    ann.send(&say("four")).await;
    let next = current
        .next_matching(|f| match f {
            ServerFrame::Reset { .. } => panic!("an up-to-date cursor is not reset"),
            ServerFrame::Event(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(next.seq, 4);
}

#[tokio::test]
async fn a_resume_too_far_behind_gets_the_recent_page_as_a_reset() {
    use crate::protocol::{HISTORY_PAGE, RESUME_LIMIT};
    let store = MemoryStore::new(10_000);
    let stored = RESUME_LIMIT + 100;
    let events = (0..stored)
        .map(|i| super::store::test_message(&format!("m{i}")))
        .collect();
    store.append("general", events, 1).await.unwrap();
    let server = Server::start_with(memory(), Some(Stores::local(store))).await;
    let head = stored as u64;

    let mut far = connect(server.addr, "?after=10").await;
    let (events, complete) = expect_reset(&mut far).await;
    let newest: Vec<u64> = (head - HISTORY_PAGE as u64 + 1..=head).collect();
    assert_eq!(seqs(&events), newest);
    assert!(!complete, "older pages are still there to scroll back to");

    // Within the limit, a resume is replayed event by event as before.
    let mut near = connect(server.addr, &format!("?after={}", head - 3)).await;
    for expected in head - 2..=head {
        assert_eq!(near.next_event().await.seq, expected);
    }
}

#[tokio::test]
async fn malformed_frames_get_clear_errors_and_harm_no_one() {
    let addr = start(memory()).await;
    let mut bad = connect(addr, "").await;
    let mut good = joined(addr, "Good").await;
    let _ = good.next_event().await; // Good's own join line

    bad.send_raw("{not json").await;
    bad.expect_error(ErrorCode::BadJson).await;
    bad.send_raw(r#"{"type":"dance","moves":3}"#).await;
    let (message, _) = bad.expect_error(ErrorCode::UnknownType).await;
    assert!(message.contains("dance"), "{message}");
    bad.send_raw(r#"{"type":"send","text":"no id"}"#).await;
    bad.expect_error(ErrorCode::BadFrame).await;
    bad.socket
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    bad.expect_error(ErrorCode::BinaryFrame).await;

    let id = Uuid::new_v4();
    bad.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "before joining".into(),
    })
    .await;
    assert_eq!(bad.expect_error(ErrorCode::NotJoined).await.1, Some(id));

    bad.send(&ClientFrame::Join {
        name: " \t ".into(),
    })
    .await;
    let (message, _) = bad.expect_error(ErrorCode::NameBlank).await;
    assert_eq!(message, "Name cannot be blank!");
    bad.send(&ClientFrame::Join {
        name: "x".repeat(33),
    })
    .await;
    bad.expect_error(ErrorCode::NameTooLong).await;
    bad.send(&ClientFrame::Join {
        name: "bell\u{7}".into(),
    })
    .await;
    bad.expect_error(ErrorCode::NameInvalid).await;

    // After all that, the same connection still works.
    bad.join("Mallory").await;
    bad.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "   ".into(),
    })
    .await;
    bad.expect_error(ErrorCode::TextBlank).await;
    let long = ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "a".repeat(MAX_TEXT_CHARS + 1),
    };
    bad.send(&long).await;
    assert_eq!(bad.expect_error(ErrorCode::TextTooLong).await.1, Some(id));
    bad.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "<img src=x onerror=alert(1)>".into(),
    })
    .await;

    // The other client saw only the join and the one valid message: nothing refused was stored.
    let join_line = good.next_event().await;
    assert_eq!(
        (join_line.kind, join_line.name.as_str()),
        (EventKind::Join, "Mallory")
    );
    let message = good.next_event().await;
    assert_eq!(message.text, "<img src=x onerror=alert(1)>");
    assert_eq!(message.seq, join_line.seq + 1);
}

#[tokio::test]
async fn oversize_frames_are_refused_and_close_only_that_connection() {
    let addr = start(memory()).await;
    let mut big = connect(addr, "").await;
    let mut other = connect(addr, "").await;
    big.join("Big").await;
    other.join("Other").await;
    let text = "a".repeat(MAX_FRAME_BYTES + 1);
    big.send_raw(format!(
        r#"{{"type":"send","id":"{}","text":"{text}"}}"#,
        Uuid::new_v4()
    ))
    .await;
    let mut saw_error = false;
    let close = loop {
        match timeout(PATIENCE, big.socket.next())
            .await
            .expect("answer in time")
        {
            Some(Ok(Message::Text(text))) => {
                if let Ok(ServerFrame::Error {
                    code: ErrorCode::FrameTooLarge,
                    ..
                }) = serde_json::from_str(&text)
                {
                    saw_error = true;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(saw_error, "the client is told why");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1009));

    other.send(&say("still here")).await;
    loop {
        let event = other.next_event().await;
        if event.kind == EventKind::Message {
            assert_eq!(event.text, "still here");
            break;
        }
    }
}

#[tokio::test]
async fn floods_are_rate_limited_without_slowing_others() {
    let mut config = memory();
    config.session.burst = std::num::NonZeroU32::new(5).unwrap();
    config.session.messages_per_second = std::num::NonZeroU32::new(1).unwrap();
    let addr = start(config).await;
    let mut flood = connect(addr, "").await;
    let mut calm = connect(addr, "").await;
    flood.join("Flood").await;
    calm.join("Calm").await;

    for i in 0..30 {
        flood.send(&say(&format!("spam {i}"))).await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 30 {
        match flood.next().await {
            ServerFrame::Ack { .. } => acks += 1,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                id,
                ..
            } => {
                assert!(
                    id.is_some(),
                    "the refused message is named so it can be retried"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        (5..=7).contains(&acks),
        "about the burst gets through: {acks}"
    );
    assert_eq!(limited, 30 - acks);

    // The calm client is unaffected by the other's limit.
    calm.send(&say("hi")).await;
    loop {
        match calm.next().await {
            ServerFrame::Ack { .. } => break,
            ServerFrame::Error { message, .. } => panic!("calm client refused: {message}"),
            _ => {}
        }
    }
}

/// A store whose every append takes as long as a slow disk's commit, and which records batch sizes and
/// the thread each append ran on.
struct SlowDisk {
    inner: MemoryStore,
    commit: Duration,
    batches: Mutex<Vec<usize>>,
    threads: Mutex<Vec<Option<String>>>,
}

impl SlowDisk {
    fn new(commit: Duration) -> Self {
        Self {
            inner: MemoryStore::new(1000),
            commit,
            batches: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn stores(self: &Arc<Self>) -> Stores {
        Stores {
            events: self.clone(),
            identity: Arc::new(MemoryStore::new(10)),
            rooms: Arc::new(MemoryStore::new(10)),
            bots: Arc::new(MemoryStore::new(10)),
            backplane: Arc::new(Local),
        }
    }
}

#[async_trait::async_trait]
impl EventStore for SlowDisk {
    async fn append(
        &self,
        room: &str,
        events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        self.batches.lock().unwrap().push(events.len());
        let thread = std::thread::current().name().map(str::to_owned);
        self.threads.lock().unwrap().push(thread);
        tokio::time::sleep(self.commit).await;
        self.inner.append(room, events, at).await
    }
    async fn since(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        self.inner.since(room, after, limit).await
    }
    async fn unread_since(
        &self,
        room: &str,
        after: u64,
        reader: Uuid,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        self.inner.unread_since(room, after, reader, limit).await
    }
    async fn before(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatEvent>, StoreError> {
        self.inner.before(room, before, limit).await
    }
    async fn find(&self, room: &str, id: Uuid) -> Result<Option<ChatEvent>, StoreError> {
        self.inner.find(room, id).await
    }
    async fn redact(&self, room: &str, id: Uuid) -> Result<bool, StoreError> {
        self.inner.redact(room, id).await
    }
}

#[tokio::test]
async fn a_burst_from_one_connection_is_committed_together_and_acknowledged_in_order() {
    // An outbox flushed after a reconnect: 60 messages at once. Each one waiting for its own 20 ms
    // commit would take over a second; the connection keeps reading while earlier ones are stored.
    let disk = Arc::new(SlowDisk::new(Duration::from_millis(20)));
    let mut config = memory();
    config.session.burst = std::num::NonZeroU32::new(100).unwrap();
    let server = Server::start_with(config, Some(disk.stores())).await;
    let mut ann = joined(server.addr, "Ann").await;
    let mut bob = joined(server.addr, "Bob").await;
    let writes_before = disk.batches.lock().unwrap().len();

    let ids: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        ann.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id: *id,
            text: format!("outbox {i}"),
        })
        .await;
    }
    let mut acked = Vec::new();
    while acked.len() < ids.len() {
        let (id, seq) = ann
            .next_matching(|f| match f {
                ServerFrame::Ack { id, seq } => Some((*id, *seq)),
                ServerFrame::Error { message, .. } => panic!("refused: {message}"),
                _ => None,
            })
            .await;
        acked.push((id, seq));
    }
    let acked_ids: Vec<Uuid> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        acked_ids, ids,
        "acks come in the order the messages were sent"
    );
    assert!(
        acked.windows(2).all(|w| w[1].1 == w[0].1 + 1),
        "consecutive sequence numbers: {acked:?}"
    );
    let shown = messages(&mut bob, 60).await;
    let texts: Vec<String> = shown.iter().map(|e| e.text.clone()).collect();
    let sent: Vec<String> = (0..60).map(|i| format!("outbox {i}")).collect();
    assert_eq!(texts, sent, "the others see every message once, in order");

    let batches = disk.batches.lock().unwrap()[writes_before..].to_vec();
    assert_eq!(batches.iter().sum::<usize>(), 60);
    assert!(
        batches.len() <= 10,
        "60 messages in {} commits ({batches:?}): the burst waited for one commit per message",
        batches.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_rooms_writer_stores_on_the_writers_thread_not_the_connections_runtime() {
    // Each of an append's round trips to the store ends with the writer waiting for a turn to run; on
    // the connections' runtime that turn came after every session the last broadcast woke.
    let disk = Arc::new(SlowDisk::new(Duration::from_millis(1)));
    let server = Server::start_with(memory(), Some(disk.stores())).await;
    let mut ann = joined(server.addr, "Ann").await;
    ann.send(&say("stored where?")).await;
    ann.next_matching(|f| matches!(f, ServerFrame::Ack { .. }).then_some(()))
        .await;
    let threads = disk.threads.lock().unwrap().clone();
    assert!(!threads.is_empty());
    assert!(
        threads
            .iter()
            .all(|name| name.as_deref() == Some("confab-writers")),
        "appends ran on {threads:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_catches_up_from_the_store() {
    // No window of recent frames: every frame that did not fit is read from the store again.
    falls_behind_and_catches_up(0).await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_catches_up_from_the_rooms_recent_frames() {
    // All of it from the room's window, then (a window of 8) the start from the store, the rest from it.
    falls_behind_and_catches_up(4_096).await;
    falls_behind_and_catches_up(8).await;
}

async fn falls_behind_and_catches_up(recent_frames: usize) {
    // A tiny live buffer forces the lag path that a slow phone would hit under load.
    let mut config = Config {
        live_buffer: 2,
        recent_frames,
        ..memory()
    };
    config.session.burst = std::num::NonZeroU32::new(1000).unwrap();
    let addr = start(config).await;
    let mut slow = connect(addr, "").await;
    let mut fast = joined(addr, "Fast").await;
    // Let `slow` sit unread while many events are published.
    let mut seq = 0;
    for i in 0..40 {
        fast.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id: Uuid::new_v4(),
            text: format!("m{i}"),
        })
        .await;
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while seq < 41 {
        seq = fast.next_event().await.seq;
    }
    let mut seen = Vec::new();
    while seen.len() < 41 {
        seen.push(slow.next_event().await.seq);
    }
    assert_eq!(
        seen,
        (1..=41).collect::<Vec<_>>(),
        "no gap and no duplicate"
    );
}

#[tokio::test]
async fn the_page_is_server_rendered_with_the_name_dialog() {
    let addr = start(memory()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..body.len().min(200)]
    );
    assert!(body.contains("<title>Confab</title>"));
    assert!(body.contains("Welcome!"));
    assert!(body.contains("Enter your name"));
    assert!(body.contains("Write a message..."));
}

#[tokio::test]
async fn the_page_carries_its_history_as_inert_text_and_other_paths_are_404() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let evil = "</script><script>alert(1)</script><!-- & \u{2028} end";
    let id = Uuid::new_v4();
    ann.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: evil.into(),
    })
    .await;
    ack(&mut ann, id).await;

    let page = get(addr, "/", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    // The history is in the HTML, escaped, and in the hydration JSON, where it cannot end the element.
    assert!(page.contains("&lt;/script&gt;&lt;script&gt;alert(1)"));
    assert!(!page.contains("<script>alert(1)"), "{page}");
    let json = page
        .split_once(&format!("id=\"{}\">", crate::ui::state::BOOTSTRAP_ID))
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(json, _)| json)
        .expect("the page carries its bootstrap");
    assert!(!json.contains('<') && !json.contains('>'), "{json}");
    let boot: crate::ui::state::Bootstrap = serde_json::from_str(json).unwrap();
    let last = boot.events.last().unwrap();
    assert_eq!(last.text, evil, "the JSON gives back exactly what was said");
    assert_eq!(boot.me, None, "this request had no session that joined");

    let missing = get(addr, "/no/such/page", "").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("Page not found"));
}

/// Collects `count` message events, asserting they arrive in one gapless run.
async fn messages(client: &mut Client, count: usize) -> Vec<ChatEvent> {
    let mut got: Vec<ChatEvent> = Vec::new();
    while got.len() < count {
        let event = client.next_event().await;
        if let Some(last) = got.last() {
            assert!(
                event.seq > last.seq,
                "in order: {} after {}",
                event.seq,
                last.seq
            );
        }
        if event.kind == EventKind::Message {
            got.push(event);
        }
    }
    got
}

async fn ack(client: &mut Client, id: Uuid) -> u64 {
    client
        .next_matching(|f| match f {
            ServerFrame::Ack { id: got, seq } if *got == id => Some(*seq),
            ServerFrame::Error {
                id: Some(got),
                message,
                ..
            } if *got == id => panic!("refused: {message}"),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn a_restart_loses_no_acknowledged_message_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        store: StoreConfig::Sqlite(dir.path().join("confab.db")),
        ..Config::default()
    };
    let server = Server::start(config()).await;
    let mut ann = joined(server.addr, "Ann").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = Uuid::new_v4();
        ann.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: format!("before {i}"),
        })
        .await;
        acked.push((id, ack(&mut ann, id).await));
    }
    // Unacknowledged sends in flight when the server goes away: the client retries them after the restart.
    let in_flight: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for (i, id) in in_flight.iter().enumerate() {
        ann.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id: *id,
            text: format!("in flight {i}"),
        })
        .await;
    }
    server.stop().await;

    let server = Server::start(config()).await;
    let mut ann = connect(server.addr, "?after=0").await;
    ann.join("Ann").await;
    for (i, id) in in_flight.iter().enumerate() {
        ann.send(&ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id: *id,
            text: format!("in flight {i}"),
        })
        .await;
        acked.push((*id, ack(&mut ann, *id).await));
    }
    let mut reader = connect(server.addr, "?after=0").await;
    let events = messages(&mut reader, 25).await;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 25, "every message exactly once");
    for (id, seq) in &acked {
        let event = events
            .iter()
            .find(|e| e.id == *id)
            .expect("acknowledged message present");
        assert_eq!(event.seq, *seq, "at the sequence number its ack gave");
    }
    let seqs: Vec<u64> = reader_seqs(&events);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    server.stop().await;
}

fn reader_seqs(events: &[ChatEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn a_repeated_uuid_is_acknowledged_but_stored_and_shown_once() {
    let addr = start(memory()).await;
    let mut ann = connect(addr, "").await;
    let mut bob = connect(addr, "").await;
    ann.join("Ann").await;
    bob.join("Bob").await;
    let id = Uuid::new_v4();
    let frame = ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "only once".into(),
    };
    ann.send(&frame).await;
    let first = ack(&mut ann, id).await;
    ann.send(&frame).await;
    assert_eq!(
        ack(&mut ann, id).await,
        first,
        "the repeat gets the original's ack"
    );
    ann.send(&say("after")).await;
    let seen = messages(&mut bob, 2).await;
    assert_eq!(
        seen.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["only once", "after"]
    );
}

#[tokio::test]
async fn resuming_while_messages_arrive_has_no_gap_and_no_duplicate() {
    let mut config = memory();
    config.session.burst = std::num::NonZeroU32::new(10_000).unwrap();
    let addr = start(config).await;
    let mut writer = joined(addr, "Writer").await;
    for i in 0..50 {
        writer.send(&say(&format!("early {i}"))).await;
    }
    // Stored before anyone resumes: a cursor past the room's head would get a reset, not a replay.
    while writer.next_event().await.seq < 51 {}
    // Resume from the middle while 200 more are being sent: replay and live overlap.
    let sending = tokio::spawn(async move {
        for i in 0..200 {
            writer.send(&say(&format!("late {i}"))).await;
        }
        writer
    });
    let mut resumers = Vec::new();
    for after in [10, 30, 45] {
        resumers.push((after, connect(addr, &format!("?after={after}")).await));
        tokio::task::yield_now().await;
    }
    let _writer = sending.await.unwrap();
    for (after, mut client) in resumers {
        let mut seqs = Vec::new();
        // Seq 1 is the join line; 2..=251 are the 250 messages.
        while seqs.last() != Some(&251) {
            seqs.push(client.next_event().await.seq);
        }
        let expected: Vec<u64> = (after + 1..=251).collect();
        assert_eq!(seqs, expected, "resume after {after}");
    }
}

#[tokio::test]
async fn a_browser_keeps_its_name_across_tabs_and_reloads_and_others_cannot_take_it() {
    let mut config = memory();
    config.session.leave_grace = Duration::from_millis(300);
    let addr = start(config).await;
    let token = browser(addr).await;
    let mut watcher = joined(addr, "Watcher").await;

    let mut tab1 = connect_as(addr, &token, "").await;
    tab1.join("Ann").await;
    // A second tab of the same browser is joined at once, with no second join line.
    let mut tab2 = connect_as(addr, &token, "").await;
    let joined = tab2
        .next_matching(|f| match f {
            ServerFrame::Joined(me) => Some(me.clone()),
            _ => None,
        })
        .await;
    assert_eq!(joined.name, "Ann");
    assert_eq!(joined.kind, crate::protocol::UserKind::Guest);
    assert!(!joined.user_id.is_nil());
    let online = tab2
        .next_matching(|f| match f {
            ServerFrame::Presence { online, .. } => Some(online.clone()),
            _ => None,
        })
        .await;
    assert_eq!(online, ["Ann", "Watcher"]);

    // Another browser cannot take the name.
    let mut thief = connect(addr, "").await;
    thief.send(&ClientFrame::Join { name: "Ann".into() }).await;
    let (message, _) = thief.expect_error(ErrorCode::NameTaken).await;
    assert_eq!(message, "That name is taken");

    // A reload: every tab closes and one comes back within the grace period. No leave, no join.
    drop(tab1);
    drop(tab2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tab3 = connect_as(addr, &token, "").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    watcher.send(&say("marker")).await;
    let mut lines = Vec::new();
    loop {
        let event = watcher.next_event().await;
        if event.kind == EventKind::Message {
            break;
        }
        lines.push(event.system_line().unwrap());
    }
    assert_eq!(
        lines,
        ["Watcher has joined the chat.", "Ann has joined the chat."]
    );

    // Closing for good: after the grace period everyone sees the leave line, and the name is free.
    drop(tab3);
    let leave = watcher.next_event().await;
    assert_eq!(leave.system_line().unwrap(), "Ann has left the chat.");
    thief.join("Ann").await;
}

#[tokio::test]
async fn leaving_frees_the_name_at_once_and_forgets_it() {
    let addr = start(memory()).await;
    let token = browser(addr).await;
    let mut watcher = joined(addr, "Watcher").await;
    let mut ann = connect_as(addr, &token, "").await;
    ann.join("Ann").await;
    ann.send(&ClientFrame::Leave).await;
    ann.next_matching(|f| (*f == ServerFrame::Left).then_some(()))
        .await;
    let mut kinds = Vec::new();
    while kinds.last() != Some(&EventKind::Leave) {
        kinds.push(watcher.next_event().await.kind);
    }
    // The reconnecting browser is not joined any more: its next frames are history and presence only.
    let mut again = connect_as(addr, &token, "?after=100").await;
    let online = again
        .next_matching(|f| match f {
            ServerFrame::Joined(_) => panic!("a browser that left is not rejoined"),
            ServerFrame::Presence { online, .. } => Some(online.clone()),
            _ => None,
        })
        .await;
    assert_eq!(online, ["Watcher"]);
}

#[tokio::test]
async fn older_pages_reach_back_to_the_start() {
    let mut config = memory();
    config.session.burst = std::num::NonZeroU32::new(1_000).unwrap();
    let addr = start(config).await;
    let mut ann = joined(addr, "Ann").await;
    for i in 0..70 {
        ann.send(&say(&format!("m{i}"))).await;
    }
    messages(&mut ann, 70).await;
    let mut reader = connect(addr, "").await;
    let recent: Vec<u64> = messages(&mut reader, 50)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        recent,
        (22..=71).collect::<Vec<_>>(),
        "the newest 50 on connect"
    );
    reader
        .send(&ClientFrame::History {
            room: GENERAL_ROOM.into(),
            before: 22,
        })
        .await;
    let (events, complete) = reader
        .next_matching(|f| match f {
            ServerFrame::History {
                events, complete, ..
            } => Some((events.clone(), *complete)),
            _ => None,
        })
        .await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    assert!(complete);
}

#[tokio::test]
async fn typing_reaches_the_others_and_is_throttled() {
    let addr = start(memory()).await;
    let mut ann = connect(addr, "").await;
    let mut bob = connect(addr, "").await;
    ann.join("Ann").await;
    bob.join("Bob").await;
    for _ in 0..5 {
        ann.send(&ClientFrame::Typing {
            room: GENERAL_ROOM.into(),
        })
        .await;
    }
    ann.send(&say("done")).await;
    let mut typing = 0;
    loop {
        match bob.next().await {
            ServerFrame::Typing { name, .. } => {
                assert_eq!(name, "Ann");
                typing += 1;
            }
            ServerFrame::Event(e) if e.kind == EventKind::Message => break,
            _ => {}
        }
    }
    assert_eq!(typing, 1, "five signals in a burst make one");
}

/// A raw HTTP/1.1 GET; returns the whole response, head and body.
async fn get(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn pages_carry_security_headers_and_a_nonce_their_scripts_use() {
    let addr = start(memory()).await;
    let page = get(addr, "/", "").await;
    let csp = header(&page, "content-security-policy").expect("CSP header");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a nonce");
    assert!(nonce.len() >= 22, "a nonce of 128 bits: {nonce}");
    assert!(
        page.contains(&format!("nonce=\"{nonce}\"")),
        "the hydration scripts carry the nonce"
    );
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&page, "referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        header(&page, "cache-control"),
        Some("no-cache"),
        "HTML is never cached"
    );
    let cookie = header(&page, "set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: not Secure");
    let behind_https = get(addr, "/", "X-Forwarded-Proto: https\r\n").await;
    assert!(header(&behind_https, "set-cookie")
        .unwrap()
        .contains("Secure"));
    // Each response gets its own nonce.
    let again = get(addr, "/", "").await;
    assert_ne!(header(&again, "content-security-policy"), Some(csp));

    assert!(get(addr, "/healthz", "").await.ends_with("ok"));
}

#[tokio::test]
async fn cross_origin_websocket_upgrades_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr = start(memory()).await;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    assert!(
        connect_async(request).await.is_ok(),
        "same origin is welcome"
    );
}

/// Sends `request` as it is and returns the response's head (the socket may stay open after it).
async fn response_head(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
        response.push(byte[0]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn the_socket_address_answers_what_is_not_a_websocket_handshake_with_why() {
    let addr = start(memory()).await;
    // A browser following a link to the socket's address.
    let plain = get(addr, "/ws", "").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(plain.contains("connect with a WebSocket client"), "{plain}");
    let handshake = |version: &str, key: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: {version}\r\n{key}\r\n"
        )
    };
    // RFC 6455's own example key.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let old = response_head(addr, &handshake("8", key)).await;
    assert!(old.starts_with("HTTP/1.1 400"), "{old}");
    let keyless = response_head(addr, &handshake("13", "")).await;
    assert!(keyless.starts_with("HTTP/1.1 400"), "{keyless}");
    // The same request with version 13 and a key is accepted, with the key the RFC's example gives.
    let accepted = response_head(addr, &handshake("13", key)).await;
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert_eq!(
        header(&accepted, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[tokio::test]
async fn metrics_count_connections_and_messages() {
    let addr = start(memory()).await;
    let mut ann = joined(addr, "Ann").await;
    let id = Uuid::new_v4();
    ann.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "counted".into(),
    })
    .await;
    ack(&mut ann, id).await;
    let metrics = get(addr, "/metrics", "").await;
    assert!(header(&metrics, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    // Other tests share the process-wide recorder, so these are lower bounds.
    assert!(value("confab_connected_clients") >= 1.0);
    assert!(value("confab_messages_in_total") >= 1.0);
    assert!(value("confab_frames_out_total") >= 3.0);
    assert!(value("confab_fanout_seconds_count") >= 1.0);
    assert!(value("confab_store_append_seconds_count") >= 1.0);
    assert!(value("confab_delivery_lag_seconds_count") >= 1.0);
    assert!(value("confab_join_seconds_count") >= 1.0);
}

#[tokio::test]
async fn shutdown_closes_sockets_as_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        store: StoreConfig::Sqlite(dir.path().join("confab.db")),
        ..Config::default()
    };
    let server = Server::start(config).await;
    let mut ann = joined(server.addr, "Ann").await;
    let id = Uuid::new_v4();
    ann.send(&ClientFrame::Send {
        room: GENERAL_ROOM.into(),
        id,
        text: "acked before shutdown".into(),
    })
    .await;
    ack(&mut ann, id).await;
    let stopping = tokio::spawn(server.stop());
    let close = loop {
        match timeout(PATIENCE, ann.socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1012);
    assert_eq!(close.reason.as_str(), "server restarting");
    stopping.await.unwrap();

    let store = super::store::SqliteStore::open(&dir.path().join("confab.db"))
        .await
        .unwrap();
    use super::store::EventStore;
    let events = store
        .since(crate::protocol::GENERAL_ROOM, 0, 100)
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.id == id),
        "the acknowledged message is on disk"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_leaves() {
    let mut config = memory();
    config.session.ping_every = Duration::from_millis(100);
    config.session.leave_grace = Duration::ZERO;
    let addr = start(config).await;
    let mut watcher = joined(addr, "Watcher").await;
    let silent = joined(addr, "Silent").await;
    // From now on `silent` reads nothing, so its client library never answers a ping: a lid closed.
    let leave = loop {
        let event = watcher.next_event().await;
        if event.kind == EventKind::Leave {
            break event;
        }
    };
    assert_eq!(leave.system_line().unwrap(), "Silent has left the chat.");
    drop(silent);
}

/// The Dockerfile, fly.toml, README and the pinned versions must agree on port, data path and tools.
#[test]
fn deployment_files_agree() {
    let dockerfile = include_str!("../../../Dockerfile");
    let fly = include_str!("../../../fly.toml");
    let readme = include_str!("../../../README.md");
    let versions = include_str!("../../../.ci/versions");

    assert!(
        dockerfile.contains("LEPTOS_SITE_ADDR=0.0.0.0:8080") && dockerfile.contains("EXPOSE 8080")
    );
    assert!(
        fly.contains("internal_port = 8080")
            && fly.contains(r#"LEPTOS_SITE_ADDR = "0.0.0.0:8080""#)
    );
    assert!(readme.contains("`internal_port = 8080`") && readme.contains("port `8080`"));

    assert!(dockerfile.contains("CONFAB_DATA_DIR=/data"));
    assert!(
        fly.contains(r#"destination = "/data""#) && fly.contains(r#"CONFAB_DATA_DIR = "/data""#)
    );
    assert!(readme.contains("mounted at /data"));
    let volume = fly
        .split(r#"source = ""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    assert!(
        readme.contains(&format!("fly volumes create {volume}")),
        "README creates the volume fly.toml mounts"
    );

    // Tools: the image uses the pinned setup script, and the README names the pinned versions.
    assert!(dockerfile.contains("bash .ci/setup") && dockerfile.contains("make build"));
    let pin = |key: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} pinned"))
    };
    assert!(readme.contains(&format!(
        "| cargo-leptos | {},",
        pin("CARGO_LEPTOS_VERSION")
    )));
    assert!(readme.contains(&format!("binaryen@{}", pin("BINARYEN_VERSION"))));

    // Fly must wait longer than the server's own shutdown cap before it kills the process.
    let kill_timeout: u64 = fly
        .lines()
        .find_map(|l| l.trim().strip_prefix("kill_timeout = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("kill_timeout");
    assert!(Duration::from_secs(kill_timeout) > super::SHUTDOWN_GRACE + Duration::from_secs(2));
    assert!(fly.contains(r#"kill_signal = "SIGTERM""#));
    assert!(fly.contains(r#"path = "/healthz""#));
}

#[test]
fn the_image_build_stage_installs_what_the_setup_needs() {
    let dockerfile = include_str!("../../../Dockerfile");
    // The first stage: after the header comments, up to the runtime stage.
    let build = dockerfile.split("\nFROM ").nth(1).expect("a build stage");
    assert!(
        build.contains("bash .ci/setup"),
        "the build stage runs the setup"
    );
    let installed: Vec<&str> = build
        .split("apt-get install")
        .nth(1)
        .expect("the build stage installs packages")
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|word| !word.starts_with('-') && *word != "\\")
        .collect();
    // What .ci/setup and `make build` need beyond the Rust image: npm (binaryen, the end2end tools),
    // make, certificates for the registries, and the full perl that a vendored OpenSSL (in
    // cargo-leptos) configures with; the slim image has only perl-base.
    for needed in ["nodejs", "npm", "make", "ca-certificates", "perl"] {
        assert!(
            installed.contains(&needed),
            "the build stage must install {needed}: {installed:?}"
        );
    }
}

#[test]
fn the_dependency_layer_stands_in_for_every_target_and_asset_the_manifest_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), dir.path().join(file)).unwrap();
    }
    let stubbed = std::process::Command::new("bash")
        .arg(root.join(".ci/dependency-stubs"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(stubbed.success());
    // cargo reads the manifest with the stand-ins as it will in the image build, and every target it
    // lists has a source.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        metadata.status.success(),
        "{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let targets = metadata["packages"][0]["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().filter_map(|t| t["name"].as_str()).collect();
    for expected in ["confab", "confab-load"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for target in targets {
        let source = target["src_path"].as_str().unwrap();
        assert!(
            std::path::Path::new(source).is_file(),
            "no stand-in for {source}"
        );
    }
    // What cargo-leptos reads besides the code.
    let manifest = include_str!("../../../Cargo.toml");
    let setting = |key: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(" = \""))
            .map(|v| v.trim_end_matches('"'))
            .unwrap_or_else(|| panic!("Cargo.toml sets {key}"))
    };
    assert!(dir.path().join(setting("style-file")).is_file());
    assert!(dir.path().join(setting("assets-dir")).is_dir());

    // The Dockerfile builds the dependencies from the stand-ins before the sources arrive, and then makes
    // cargo see the real sources as newer than that build.
    let build = include_str!("../../../Dockerfile")
        .split("\nFROM ")
        .nth(1)
        .unwrap();
    let stubs = build
        .find("bash .ci/dependency-stubs")
        .expect("a dependency layer");
    let sources = build.find("COPY . .").expect("the sources");
    assert!(stubs < sources);
    assert!(build[sources..].contains("-exec touch"));
}

/// Whether `.dockerignore` keeps `path` out of the build context: each line (`*`, `**`, and `!` to put
/// back) is tried in order and the last one that matches the path, or a folder above it, decides.
fn docker_ignores(rules: &str, path: &str) -> bool {
    let pattern = |rule: &str| {
        let mut regex = String::from("^");
        let rule = rule.trim_end_matches('/');
        let mut chars = rule.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    regex.push_str("(.*/)?");
                }
                '*' => regex.push_str("[^/]*"),
                '.' => regex.push_str("\\."),
                c => regex.push(c),
            }
        }
        regex.push('$');
        regex
    };
    let matches = |regex: &str, path: &str| {
        // A tiny regex engine is not worth it here: match by trying every prefix folder of the path.
        let candidates: Vec<String> = path
            .split('/')
            .scan(String::new(), |acc, part| {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                Some(acc.clone())
            })
            .collect();
        candidates.iter().any(|c| glob_like(regex, c))
    };
    let mut ignored = false;
    for line in rules.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keep, rule) = match line.strip_prefix('!') {
            Some(rule) => (true, rule),
            None => (false, line),
        };
        if matches(&pattern(rule), path) {
            ignored = !keep;
        }
    }
    ignored
}

/// Matches the small regex dialect `docker_ignores` builds: `^`, `$`, `[^/]*`, `(.*/)?`, `\.`, literals.
fn glob_like(regex: &str, text: &str) -> bool {
    fn go(re: &[u8], text: &[u8]) -> bool {
        if re.is_empty() {
            return text.is_empty();
        }
        if re.starts_with(b"[^/]*") {
            let rest = &re[5..];
            return (0..=text.len())
                .take_while(|&i| i == 0 || text[i - 1] != b'/')
                .any(|i| go(rest, &text[i..]));
        }
        if re.starts_with(b"(.*/)?") {
            let rest = &re[6..];
            return go(rest, text)
                || (0..text.len()).any(|i| text[i] == b'/' && go(rest, &text[i + 1..]));
        }
        if re.starts_with(b"\\.") {
            return text.first() == Some(&b'.') && go(&re[2..], &text[1..]);
        }
        text.first() == Some(&re[0]) && go(&re[1..], &text[1..])
    }
    let re = regex.trim_start_matches('^').trim_end_matches('$');
    go(re.as_bytes(), text.as_bytes())
}

#[test]
fn the_build_context_holds_only_what_the_build_needs() {
    let rules = include_str!("../../../.dockerignore");
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "Makefile",
        ".ci/setup",
        ".ci/versions",
        ".ci/dependency-stubs",
        "src/main.rs",
        "src/server/store/migrations/sqlite/0001_events_and_sessions.sql",
        "style/main.css",
        "public/favicon.svg",
    ] {
        assert!(
            !docker_ignores(rules, kept),
            "{kept} is needed by the build"
        );
    }
    for left_out in [
        "target/release/confab",
        "target/debug/deps/x.rlib",
        "data/confab.db",
        "data/confab.db-wal",
        "end2end/node_modules/@playwright/test/index.js",
        "end2end/tests/chat.spec.ts",
        ".git/HEAD",
        "README.md",
        "fly.toml",
        "src/server/stray.db",
    ] {
        assert!(
            docker_ignores(rules, left_out),
            "{left_out} must stay out of the build context"
        );
    }
}

#[tokio::test]
async fn with_a_metrics_address_metrics_leave_the_public_port_and_start_complete() {
    let mut config = memory();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let addr = start(config).await;
    let public = get(addr, "/metrics", "").await;
    assert!(public.starts_with("HTTP/1.1 404"), "{public}");
    let metrics_addr = super::serve_metrics("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let scraped = get(metrics_addr, "/metrics", "").await;
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    for name in [
        super::metrics::CONNECTED,
        super::metrics::MESSAGES_IN,
        super::metrics::FRAMES_OUT,
    ] {
        assert!(
            scraped.contains(&format!("\n{name} ")) || scraped.contains(&format!("{name}{{")),
            "{name} from the start:\n{scraped}"
        );
    }
}
