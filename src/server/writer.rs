//! A connection's writer task: it alone drains the connection's queue ([`Mailbox`]) onto the socket's
//! write half.
//!
//! A delivery wakes only this task, which touches the queue, the room's cursor and the socket. The
//! session's larger state (its rooms, who it is, its messages in flight, tungstenite's reading side)
//! stays out of it. At 10,000 connections nothing of one connection stays in cache between two of its
//! deliveries, so every cache line a wake-up touches is a miss: when the session wrote its deliveries
//! itself, each one cost twice what a bare writer task costs.
//!
//! The writer keeps each room's cursor, the highest sequence number written. A broadcast at or below it
//! is a duplicate and is skipped; one further on than the next is a gap, caught up from the room's
//! window of recent frames or from the store. The session's own entries are written in their order,
//! ahead of the broadcasts queued before them (as the session's own writes were: a reply does not wait
//! behind a backlog), and they steer the cursors:
//! - [`Kind::Hold`] before the session replays a room's history: the room's broadcasts wait;
//! - its own frames ([`Kind::Own`]): replies, the history itself;
//! - [`Kind::Anchor`] once the replay is queued: the room is written up to there, and what waited goes
//!   out after it, duplicates skipped;
//! - [`Kind::Forget`] when the room is no longer heard: its broadcasts are dropped;
//! - [`Kind::Close`], the close frame: nothing is written after it;
//! - [`Kind::Live`] once the session has sent what a connection starts with (history, who it is, who
//!   is here, its rooms): no broadcast is written before, as none was when the session wrote them.

use super::hub::{Deliveries, Frame, Hub, Kind, Mailbox, EPHEMERAL};
use super::socket::{event_wire, Batched};
use axum::body::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A batch grown past this (a burst, a join storm's backlog) is given back once written: steady chat
/// takes tens of frames at a time, and an idle connection should not hold room for hundreds.
const FORWARD_KEEP: usize = 64;

/// How many events a connection that fell behind takes in one step of its catch-up.
const CATCH_UP_PAGE: usize = 500;

/// One write in this many records its delivery lag: the metric costs a few percent of the server's CPU
/// when recorded on every write at 100,000 writes a second.
const LAG_SAMPLE: u64 = 8;

/// How far a room has been written to this connection.
#[derive(Default)]
struct Cursor {
    /// The highest sequence number written; broadcasts at or below it are duplicates.
    last_seq: u64,
    /// While the session replays the room's history: its broadcasts since, written after the anchor.
    held: Option<Vec<Frame>>,
    /// Broadcasts did not fit in `held`, or a catch-up came while held: caught up after the anchor.
    behind: bool,
}

/// Each room's cursor, found by the pointer of the slug its frames carry (the hub's, shared by every
/// frame and every subscriber, so it is in cache); the busiest rooms are moved to the front.
///
/// A list rather than a hash table: a connection hears a few rooms, and at 10,000 connections the
/// table's control bytes and then its bucket were two cache misses per delivery, with the slug's
/// bytes hashed and compared on top (about 5% of the server's CPU at (s)'s load).
#[derive(Default)]
struct Cursors(Vec<(Arc<str>, Cursor)>);

impl Cursors {
    fn find(&mut self, room: &Arc<str>) -> Option<usize> {
        let at = self
            .0
            .iter()
            .position(|(slug, _)| Arc::ptr_eq(slug, room))
            // The same room under another pointer: the hub made it again since (it had no subscriber
            // for a moment).
            .or_else(|| self.0.iter().position(|(slug, _)| **slug == **room))?;
        if at > 0 {
            // A step towards the front per use: the room that speaks most ends up first.
            self.0.swap(at, at - 1);
            return Some(at - 1);
        }
        Some(at)
    }

    fn get_mut(&mut self, room: &Arc<str>) -> Option<&mut Cursor> {
        let at = self.find(room)?;
        Some(&mut self.0[at].1)
    }

    fn entry(&mut self, room: &Arc<str>) -> &mut Cursor {
        let at = match self.find(room) {
            Some(at) => {
                // From now on, found by the pointer its frames carry.
                self.0[at].0 = room.clone();
                at
            }
            None => {
                self.0.push((room.clone(), Cursor::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    fn remove(&mut self, room: &Arc<str>) {
        if let Some(at) = self.find(room) {
            self.0.swap_remove(at);
        }
    }
}

/// The socket failed, or the store could not fill a gap: the connection ends, and the client resumes.
struct Ended;

/// What a batch left the connection: open, or closed by its close frame.
enum Written {
    More,
    Closed,
}

struct Writer<W> {
    out: Batched<W>,
    hub: Hub,
    mailbox: Arc<Mailbox>,
    rooms: Cursors,
    /// At most this many broadcasts wait in a held room, as many as the queue holds.
    hold_limit: usize,
    /// Looked up once: a registry lookup per write is measurable at 100,000 writes a second.
    delivery_lag: metrics::Histogram,
    /// Frames queued for the write under way; the counter is told once per write, not per frame.
    unreported: u64,
    /// Writes so far; the delivery lag is sampled on one in [`LAG_SAMPLE`].
    writes: u64,
    /// The session has sent what a connection starts with ([`Kind::Live`]): broadcasts are taken.
    live: bool,
}

/// Writes what `deliveries` brings to `write` until the session has ended and everything it queued is
/// written, or the socket fails. Either way the mailbox then tells the session the writer has ended.
pub async fn run<W>(write: W, mut deliveries: Deliveries, mailbox: Arc<Mailbox>, hub: Hub)
where
    W: AsyncWrite + Unpin,
{
    // Shutdown waits for this task too: the session's close frame is written here.
    let _running = hub.session_started();
    let mut writer = Writer {
        out: Batched::new(write),
        hold_limit: hub.live_capacity(),
        hub,
        mailbox,
        rooms: Cursors::default(),
        delivery_lag: metrics::histogram!(super::metrics::DELIVERY_SECONDS),
        unreported: 0,
        writes: 0,
        live: false,
    };
    // Everything queued is taken at once and written in as few vectored writes as it takes.
    // (Measured with 1,000 clients at 100 msg/s: batching halves the server's CPU, 103% → 50%, and
    // p50 latency falls from 49 to 32 ms.)
    let (mut own, mut batch) = (VecDeque::new(), VecDeque::new());
    while deliveries.recv(&mut own, &mut batch, writer.live).await {
        match writer.write_batch(&mut own, &mut batch).await {
            Ok(Written::More) => {}
            Ok(Written::Closed) => break,
            Err(Ended) => return,
        }
        for queue in [&mut own, &mut batch] {
            if queue.capacity() > FORWARD_KEEP {
                *queue = VecDeque::new();
            }
        }
    }
    let _ = writer.out.shutdown().await;
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes a batch taken from the queue, and any catch-up, in one vectored write where it fits:
    /// under load that saves a system call per frame, and each call wakes the receiver.
    async fn write_batch(
        &mut self,
        own: &mut VecDeque<Frame>,
        batch: &mut VecDeque<Frame>,
    ) -> Result<Written, Ended> {
        let broadcast_at = batch.front().map(|entry| entry.at);
        for entry in own.drain(..) {
            if let Written::Closed = self.take(entry).await? {
                // Nothing goes on the wire after the close; what is left is dropped with the batch.
                batch.clear();
                self.out.write_out().await.map_err(|_| Ended)?;
                return Ok(Written::Closed);
            }
        }
        for entry in batch.drain(..) {
            self.forward(entry).await?;
        }
        // Before the connection is live, a lag stays marked: it is caught up once it is.
        if let Some(lagged) = self.live.then(|| self.mailbox.take_lagged()).flatten() {
            for room in lagged {
                tracing::debug!(%room, "slow connection catches up from the store");
                self.catch_up(&room).await?;
            }
        }
        self.out.write_out().await.map_err(|_| Ended)?;
        super::metrics::frames_out(std::mem::take(&mut self.unreported));
        if let Some(at) = broadcast_at {
            self.writes += 1;
            if self.writes % LAG_SAMPLE == 1 {
                // The oldest broadcast of the write: how long it took to reach this socket.
                self.delivery_lag.record(at.elapsed().as_secs_f64());
            }
        }
        Ok(Written::More)
    }

    /// One of the session's own entries.
    async fn take(&mut self, entry: Frame) -> Result<Written, Ended> {
        match entry.kind {
            Kind::Broadcast => self.forward(entry).await?,
            Kind::Own => self.send(entry.wire.clone(), entry.seq).await?,
            Kind::Close => {
                self.send(entry.wire.clone(), entry.seq).await?;
                return Ok(Written::Closed);
            }
            Kind::Hold => {
                let cursor = self.rooms.entry(&entry.room);
                cursor.held.get_or_insert_with(Vec::new);
            }
            Kind::Anchor => {
                let cursor = self.rooms.entry(&entry.room);
                cursor.last_seq = cursor.last_seq.max(entry.seq);
                let held = cursor.held.take().unwrap_or_default();
                let behind = std::mem::take(&mut cursor.behind);
                for frame in held {
                    self.forward(frame).await?;
                }
                if behind {
                    self.catch_up(&entry.room).await?;
                }
            }
            Kind::Forget => self.rooms.remove(&entry.room),
            Kind::Live => self.live = true,
        }
        Ok(Written::More)
    }

    /// A room's broadcast: written if it is the room's next, held while the room is, caught up to
    /// after a gap, skipped if written already or if the room is not heard.
    async fn forward(&mut self, frame: Frame) -> Result<(), Ended> {
        let Some(cursor) = self.rooms.get_mut(&frame.room) else {
            return Ok(());
        };
        if frame.seq == EPHEMERAL {
            return self.send(frame.wire.clone(), 1).await;
        }
        if let Some(held) = cursor.held.as_mut() {
            if held.len() < self.hold_limit {
                held.push(frame);
            } else {
                cursor.behind = true;
            }
            return Ok(());
        }
        if frame.seq <= cursor.last_seq {
            return Ok(());
        }
        if frame.seq > cursor.last_seq + 1 {
            // Frames that did not fit in the queue, or a gap while subscribing: the store fills it.
            // Boxed: rare, and large.
            return Box::pin(self.catch_up(&frame.room)).await;
        }
        cursor.last_seq = frame.seq;
        self.send(frame.wire.clone(), 1).await
    }

    /// Queues `wire`, `frames` whole frames, for this batch's write; a batch grown large is written out
    /// first.
    async fn send(&mut self, wire: Bytes, frames: u64) -> Result<(), Ended> {
        self.out.make_room().await.map_err(|_| Ended)?;
        self.out.push(wire);
        self.unreported += frames;
        Ok(())
    }

    /// Sends everything of `room` after its cursor, from the room's recent frames where they reach back
    /// that far, else from the store; later broadcasts at or below it are skipped.
    async fn catch_up(&mut self, room: &Arc<str>) -> Result<(), Ended> {
        loop {
            let Some(cursor) = self.rooms.get_mut(room) else {
                return Ok(());
            };
            if cursor.held.is_some() {
                // The session is replaying the room: caught up after its anchor.
                cursor.behind = true;
                return Ok(());
            }
            let after = cursor.last_seq;
            if let Some(frames) = self.hub.recent_after(room, after, CATCH_UP_PAGE) {
                let Some(last) = frames.last().map(|f| f.seq) else {
                    return Ok(());
                };
                cursor.last_seq = last;
                for frame in frames {
                    self.send(frame.wire.clone(), 1).await?;
                }
                continue;
            }
            let events = match self.hub.store().since(room, after, CATCH_UP_PAGE).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::error!(error = %err, "catch-up read failed; closing so the client resumes");
                    return Err(Ended);
                }
            };
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            if let Some(cursor) = self.rooms.get_mut(room) {
                cursor.last_seq = last;
            }
            for event in events {
                self.send(event_wire(&event), 1).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventKind, ServerFrame, UserKind, GENERAL_ROOM};
    use crate::server::hub::{Framed, HubConfig};
    use crate::server::socket::text_frame;
    use crate::server::store::NewEvent;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn hub(live_capacity: usize) -> Hub {
        Hub::new(
            Arc::new(crate::server::store::MemoryStore::new(10)),
            Arc::new(crate::server::backplane::Local),
            HubConfig {
                live_capacity,
                ..HubConfig::default()
            },
        )
    }

    /// A broadcast of `room` whose text says which it is.
    fn broadcast(room: &str, seq: u64) -> Frame {
        Arc::new(Framed {
            room: Arc::from(room),
            seq,
            wire: text_frame(format!("{room} {seq}").as_bytes()),
            at: std::time::Instant::now(),
            kind: Kind::Broadcast,
        })
    }

    fn steer(mailbox: &Mailbox, kind: Kind, room: &str, seq: u64) {
        mailbox
            .push_own(Framed::own(kind, Arc::from(room), seq, Bytes::new()))
            .unwrap();
    }

    /// The session's own frames, joined in one entry as a replay is.
    fn own(mailbox: &Mailbox, texts: &[&str]) {
        let mut joined = Vec::new();
        for text in texts {
            joined.extend_from_slice(&text_frame(text.as_bytes()));
        }
        let entry = Framed::unroomed(Kind::Own, texts.len() as u64, joined.into());
        mailbox.push_own(entry).unwrap();
    }

    /// Every text frame the writer wrote, until it shut the socket.
    async fn written(mut far: DuplexStream) -> Vec<String> {
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), far.read_to_end(&mut all))
            .await
            .expect("the writer ends once the session has")
            .unwrap();
        let mut texts = Vec::new();
        let mut rest = &all[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0x81, "a final, unmasked text frame");
            let (len, head) = match rest[1] {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 => panic!("no frame here is that long"),
                n => (usize::from(n), 2),
            };
            texts.push(String::from_utf8(rest[head..head + len].to_vec()).unwrap());
            rest = &rest[head + len..];
        }
        texts
    }

    /// The sequence number of each event frame in `texts`, in order.
    fn seqs(texts: &[String]) -> Vec<u64> {
        texts
            .iter()
            .filter_map(|text| match serde_json::from_str::<ServerFrame>(text) {
                Ok(ServerFrame::Event(event)) => Some(event.seq),
                _ => None,
            })
            .collect()
    }

    /// The next text frame the writer wrote.
    async fn next_text(far: &mut DuplexStream) -> String {
        let read = async {
            let mut head = [0u8; 2];
            far.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x81, "a final, unmasked text frame");
            let mut text = vec![0u8; usize::from(head[1])];
            far.read_exact(&mut text).await.unwrap();
            String::from_utf8(text).unwrap()
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("a frame")
    }

    #[tokio::test]
    async fn a_rooms_broadcasts_wait_for_its_replay_then_follow_it_once_each_in_order() {
        let hub = hub(64);
        let (mailbox, deliveries) = hub.mailbox();
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(run(near, deliveries, mailbox.clone(), hub.clone()));

        steer(&mailbox, Kind::Anchor, "general", 0);
        mailbox.push_all(&[broadcast("general", 1)]);
        own(&mailbox, &["what a connection starts with"]);
        assert_eq!(
            next_text(&mut far).await,
            "what a connection starts with",
            "no broadcast before the connection is live"
        );
        steer(&mailbox, Kind::Live, "", 0);
        assert_eq!(next_text(&mut far).await, "general 1");
        // A tab reopens `general` after 0 while 2 and 3 are broadcast: they wait for the replay.
        steer(&mailbox, Kind::Hold, "general", 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        mailbox.push_all(&[broadcast("general", 2), broadcast("general", 3)]);
        // A room not heard is dropped; typing goes out at once, held or not.
        mailbox.push_all(&[broadcast("design", 1), broadcast("general", EPHEMERAL)]);
        assert_eq!(next_text(&mut far).await, "general 0");
        own(&mailbox, &["replay 1", "replay 2", "replay 3"]);
        steer(&mailbox, Kind::Anchor, "general", 3);
        for expected in ["replay 1", "replay 2", "replay 3"] {
            assert_eq!(next_text(&mut far).await, expected);
        }
        // 2 and 3, held, were in the replay; 3 again is a duplicate; 4 is next.
        mailbox.push_all(&[broadcast("general", 3), broadcast("general", 4)]);
        assert_eq!(next_text(&mut far).await, "general 4");
        // No longer heard: its broadcasts are dropped, even one queued before the session's next
        // entries, which go out first.
        mailbox.push_all(&[broadcast("general", 5)]);
        steer(&mailbox, Kind::Forget, "general", 0);
        own(&mailbox, &["bye"]);
        mailbox.finish();

        let rest = written(far).await;
        assert!(rest == ["bye"] || rest == ["general 5", "bye"], "{rest:?}");
        writer.await.unwrap();
        assert!(mailbox.writer_ended());
    }

    #[tokio::test]
    async fn the_sessions_replies_go_out_ahead_of_a_backlog_and_nothing_after_the_close() {
        let hub = hub(64);
        let (mailbox, deliveries) = hub.mailbox();
        let (near, far) = tokio::io::duplex(1 << 16);
        steer(&mailbox, Kind::Anchor, "general", 0);
        steer(&mailbox, Kind::Live, "", 0);
        let backlog: Vec<Frame> = (1..=20).map(|seq| broadcast("general", seq)).collect();
        mailbox.push_all(&backlog);
        own(&mailbox, &["joined"]);
        let close = Framed::unroomed(Kind::Close, 1, text_frame(b"close, as text for the test"));
        mailbox.push_own(close).unwrap();
        // The writer ends at the close, though the session has not finished.
        let writer = tokio::spawn(run(near, deliveries, mailbox.clone(), hub.clone()));
        assert_eq!(
            written(far).await,
            ["joined", "close, as text for the test"],
            "the reply first; the backlog is not written after the close"
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_room_that_fell_behind_while_held_is_caught_up_after_its_anchor() {
        // A queue of 2: most of the broadcasts neither fit in the queue nor in the held list.
        let hub = hub(2);
        let (mailbox, deliveries) = hub.mailbox();
        let (near, far) = tokio::io::duplex(1 << 16);
        hub.subscribe(
            GENERAL_ROOM,
            uuid::Uuid::nil(),
            &mailbox,
            Some((Kind::Hold, 0)),
        );
        for i in 0..12 {
            let event = NewEvent {
                id: uuid::Uuid::new_v4(),
                kind: EventKind::Message,
                name: "Ann".into(),
                user_id: uuid::Uuid::new_v4(),
                user_kind: UserKind::Guest,
                text: format!("m{i}"),
                target: None,
                call: Vec::new(),
            };
            hub.publish(GENERAL_ROOM, event).await.unwrap();
        }
        // The writer starts only now, as one would whose client read nothing meanwhile.
        let writer = tokio::spawn(run(near, deliveries, mailbox.clone(), hub.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The session's replay went up to 3.
        own(&mailbox, &["replay"]);
        steer(&mailbox, Kind::Anchor, GENERAL_ROOM, 3);
        steer(&mailbox, Kind::Live, "", 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        mailbox.finish();
        let texts = written(far).await;
        assert_eq!(texts[0], "replay", "nothing of the room before its replay");
        assert_eq!(
            seqs(&texts),
            (4..=12).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        writer.await.unwrap();
    }

    #[test]
    fn a_cursor_is_found_by_its_frames_pointer_or_by_name_and_the_busy_room_moves_ahead() {
        let mut cursors = Cursors::default();
        let rooms: Vec<Arc<str>> = ["general", "design", "ops"].map(Arc::from).to_vec();
        for (seq, room) in rooms.iter().enumerate() {
            cursors.entry(room).last_seq = seq as u64;
        }
        // The hub made `ops` again (another pointer): found by name, and from now on by that pointer.
        let ops_again: Arc<str> = Arc::from("ops");
        assert_eq!(cursors.get_mut(&ops_again).map(|c| c.last_seq), Some(2));
        cursors.entry(&ops_again).last_seq = 7;
        assert!(cursors
            .0
            .iter()
            .any(|(slug, _)| Arc::ptr_eq(slug, &ops_again)));
        for _ in 0..3 {
            cursors.get_mut(&ops_again);
        }
        assert!(
            Arc::ptr_eq(&cursors.0[0].0, &ops_again),
            "the busy room is first"
        );
        assert!(cursors.get_mut(&Arc::from("nowhere")).is_none());
        cursors.remove(&rooms[1]);
        let left: Vec<&str> = cursors.0.iter().map(|(slug, _)| &**slug).collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&"design"));
        assert_eq!(cursors.get_mut(&rooms[0]).map(|c| c.last_seq), Some(0));
    }

    #[tokio::test]
    async fn a_writer_whose_socket_failed_tells_its_session() {
        let hub = hub(8);
        let (mailbox, deliveries) = hub.mailbox();
        let (near, far) = tokio::io::duplex(64);
        drop(far);
        let writer = tokio::spawn(run(near, deliveries, mailbox.clone(), hub.clone()));
        own(&mailbox, &["nobody reads this"]);
        tokio::time::timeout(Duration::from_secs(5), mailbox.told())
            .await
            .expect("the session is told");
        assert!(mailbox.writer_ended());
        writer.await.unwrap();
        // Nothing more is queued for a writer that is gone.
        own(&mailbox, &["nor this"]);
    }
}
