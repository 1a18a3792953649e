//! The raw reference for `make bench`: the least a server can do to speak Confab's protocol to the load
//! generator, so Confab's figures can be read as ratios against it, measured in the same run.
//!
//! It keeps nothing: no store, no identities, no limits. What it does do, it does the cheapest way known:
//! - each frame is encoded once, WebSocket header and all, and shared by every recipient;
//! - each client has one queue, and its writer drains the whole queue in one vectored write;
//! - sockets are `TCP_NODELAY`, as Confab's are.
//!
//! The frames are Confab's own (`confab::protocol`), so a delivery costs the same bytes on the wire:
//! on connect `reset` (general's last page), `presence` and `rooms`; `join` answers `joined` and
//! announces the join line; `send` broadcasts the event and answers `ack`; `create_room`, `join_room`
//! and `open` answer `room` or `reset`. Everything else is ignored.
//!
//! `confab-raw --port 4500` serves `ws://127.0.0.1:4500/ws` and `GET /healthz`, on loopback only.

use axum::body::Bytes;
use confab::protocol::{
    validate_room_name, ChatEvent, ClientFrame, EventKind, Identity, Notify, RoomInfo, RoomKind,
    ServerFrame, UserKind, Via, GENERAL_ROOM, HISTORY_PAGE,
};
use confab::server::socket::{event_wire, frame_wire, text_frame};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify as Wake;
use uuid::Uuid;

/// The largest client frame read; Confab's own limit is of this order.
const MAX_FRAME: u64 = 64 * 1024;

/// One connection's outgoing queue: frames already encoded, drained by its writer.
#[derive(Default)]
struct Outbox {
    frames: Mutex<Vec<Bytes>>,
    wake: Wake,
    /// The reader has ended: the writer stops once the queue is empty.
    closed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    fn push(&self, frame: Bytes) {
        self.frames.lock().unwrap().push(frame);
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Room {
    seq: u64,
    name: String,
    listeners: Vec<(u64, Arc<Outbox>)>,
    /// The last page of events, for `reset`.
    recent: VecDeque<ChatEvent>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    next_client: u64,
}

type Shared = Arc<Mutex<State>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn room_info(slug: &str, room: &Room) -> RoomInfo {
    RoomInfo {
        slug: slug.to_owned(),
        name: room.name.clone(),
        topic: String::new(),
        kind: RoomKind::Public,
        members: Vec::new(),
        member: true,
        archived: false,
        head: room.seq,
        last_read: room.seq,
        unread: 0,
        mentions: 0,
        notify: Notify::default(),
        manage: false,
    }
}

fn reset(slug: &str, room: &Room) -> Bytes {
    frame_wire(&ServerFrame::Reset {
        room: slug.to_owned(),
        events: room.recent.iter().cloned().collect(),
        complete: room.seq as usize <= HISTORY_PAGE,
    })
}

/// Stores nothing: numbers the event, keeps it in the last page, and hands the one encoding to every
/// listener of the room.
fn broadcast(room: &mut Room, slug: &str, mut event: ChatEvent) -> u64 {
    room.seq += 1;
    event.seq = room.seq;
    event.room = slug.to_owned();
    let frame = event_wire(&event);
    for (_, outbox) in &room.listeners {
        outbox.push(frame.clone());
    }
    room.recent.push_back(event);
    if room.recent.len() > HISTORY_PAGE {
        room.recent.pop_front();
    }
    room.seq
}

/// Writes what is queued, all of it in one vectored write (more only when the kernel takes less).
async fn writer(mut socket: OwnedWriteHalf, outbox: Arc<Outbox>) {
    loop {
        outbox.wake.notified().await;
        let frames = std::mem::take(&mut *outbox.frames.lock().unwrap());
        if frames.is_empty() {
            // A wake-up whose frames an earlier one took, or the reader ended.
            if outbox.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            continue;
        }
        let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match socket.write_vectored(rest).await {
                Ok(0) | Err(_) => return,
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
            }
        }
    }
}

/// One client frame's payload (text), or `None` at a close, an error or a frame too large.
async fn read_frame(socket: &mut BufReader<OwnedReadHalf>, outbox: &Outbox) -> Option<Vec<u8>> {
    loop {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.ok()?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(socket.read_u16().await.ok()?),
            127 => socket.read_u64().await.ok()?,
            n => u64::from(n),
        };
        if len > MAX_FRAME {
            return None;
        }
        let mut mask = [0u8; 4];
        if masked {
            socket.read_exact(&mut mask).await.ok()?;
        }
        let mut payload = vec![0u8; len as usize];
        socket.read_exact(&mut payload).await.ok()?;
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        match opcode {
            0x1 => return Some(payload),
            0x8 => return None,
            0x9 => {
                // Ping: answer pong with the same payload.
                let mut pong = text_frame(&payload).to_vec();
                pong[0] = 0x8a;
                outbox.push(pong.into());
            }
            _ => {}
        }
    }
}

/// The request line and headers: whether it asks for `/healthz`, and its `Sec-WebSocket-Key`.
async fn read_request(socket: &mut BufReader<OwnedReadHalf>) -> Option<(String, Option<String>)> {
    let mut line = String::new();
    socket.read_line(&mut line).await.ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut key = None;
    loop {
        line.clear();
        if socket.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Some((path, key));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_owned());
            }
        }
    }
}

async fn connection(stream: TcpStream, state: Shared) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(4096, read);
    let Some((path, key)) = read_request(&mut read).await else {
        return;
    };
    let Some(key) = key.filter(|_| path == "/ws") else {
        let (status, body) = if path == "/healthz" {
            ("200 OK", "ok")
        } else {
            ("404 Not Found", "not found")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = write.write_all(response.as_bytes()).await;
        return;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if write.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let outbox = Arc::new(Outbox::default());
    let writing = tokio::spawn(writer(write, outbox.clone()));
    let me = {
        let mut state = state.lock().unwrap();
        state.next_client += 1;
        let me = state.next_client;
        let general = state.rooms.entry(GENERAL_ROOM.to_owned()).or_default();
        general.listeners.push((me, outbox.clone()));
        outbox.push(reset(GENERAL_ROOM, general));
        outbox.push(frame_wire(&ServerFrame::Presence {
            room: GENERAL_ROOM.to_owned(),
            online: Vec::new(),
            more: 0,
        }));
        outbox.push(frame_wire(&ServerFrame::Rooms {
            rooms: vec![room_info(GENERAL_ROOM, general)],
        }));
        me
    };
    let mut name = String::new();
    let user_id = Uuid::new_v4();
    while let Some(payload) = read_frame(&mut read, &outbox).await {
        let Ok(frame) = serde_json::from_slice::<ClientFrame>(&payload) else {
            continue;
        };
        let mut state = state.lock().unwrap();
        match frame {
            ClientFrame::Join { name: wanted } => {
                name = wanted;
                outbox.push(frame_wire(&ServerFrame::Joined(Identity {
                    name: name.clone(),
                    user_id,
                    kind: UserKind::Guest,
                    admin: false,
                    via: Via::Guest,
                })));
                let general = state.rooms.entry(GENERAL_ROOM.to_owned()).or_default();
                let line = ChatEvent {
                    seq: 0,
                    id: Uuid::new_v4(),
                    room: String::new(),
                    at: now_ms(),
                    kind: EventKind::Join,
                    name: name.clone(),
                    user_id,
                    user_kind: UserKind::Guest,
                    text: String::new(),
                    target: None,
                };
                broadcast(general, GENERAL_ROOM, line);
            }
            ClientFrame::Send { room, id, text } => {
                let Some(target) = state.rooms.get_mut(&room) else {
                    continue;
                };
                let event = ChatEvent {
                    seq: 0,
                    id,
                    room: String::new(),
                    at: now_ms(),
                    kind: EventKind::Message,
                    name: name.clone(),
                    user_id,
                    user_kind: UserKind::Guest,
                    text,
                    target: None,
                };
                let seq = broadcast(target, &room, event);
                outbox.push(frame_wire(&ServerFrame::Ack { id, seq }));
            }
            ClientFrame::CreateRoom { name: wanted, .. } => {
                let Ok((shown, slug)) = validate_room_name(&wanted) else {
                    continue;
                };
                let room = state.rooms.entry(slug.clone()).or_default();
                room.name = shown;
                room.listeners.push((me, outbox.clone()));
                outbox.push(frame_wire(&ServerFrame::Room(room_info(&slug, room))));
            }
            ClientFrame::JoinRoom { room } => enter(&mut state, me, &outbox, &room, false),
            ClientFrame::Open { room, .. } => enter(&mut state, me, &outbox, &room, true),
            _ => {}
        }
    }
    {
        let mut state = state.lock().unwrap();
        for room in state.rooms.values_mut() {
            room.listeners.retain(|(id, _)| *id != me);
        }
    }
    outbox.frames.lock().unwrap().clear();
    outbox
        .closed
        .store(true, std::sync::atomic::Ordering::Release);
    outbox.wake.notify_one();
    let _ = writing.await;
}

/// Adds the connection to an existing room: answered with the room (`join_room`) or its last page
/// (`open`), or `not_found`.
fn enter(state: &mut State, me: u64, outbox: &Arc<Outbox>, slug: &str, opens: bool) {
    let Some(room) = state.rooms.get_mut(slug) else {
        outbox.push(frame_wire(&ServerFrame::Error {
            code: confab::protocol::ErrorCode::NotFound,
            message: "No such room.".into(),
            id: None,
            retry_after_ms: None,
        }));
        return;
    };
    if !room.listeners.iter().any(|(id, _)| *id == me) {
        room.listeners.push((me, outbox.clone()));
    }
    outbox.push(if opens {
        reset(slug, room)
    } else {
        frame_wire(&ServerFrame::Room(room_info(slug, room)))
    });
}

#[tokio::main]
async fn main() {
    let mut port = 4500u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("--port takes a number")
            }
            other => {
                eprintln!("usage: confab-raw [--port N]  (unknown argument {other})");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|err| panic!("cannot listen on 127.0.0.1:{port}: {err}"));
    let state = Shared::default();
    let mut stop = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM can be awaited");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(stream, state.clone()));
                }
            }
            _ = stop.recv() => return,
        }
    }
}
