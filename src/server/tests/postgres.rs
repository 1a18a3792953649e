//! Scale-out on PostgreSQL: several instances, one database.
//!
//! Each test gets a database of its own on the server named by `CONFAB_TEST_DATABASE_URL` (`make test`
//! finds or starts one and sets it). Without it these tests print a loud notice and skip; with
//! `CONFAB_REQUIRE_POSTGRES=1` (CI) they fail instead.

use super::*;
use crate::server::store::{EventStore, NewEvent, PgStore};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A throwaway database, dropped by [`TestDb::drop_now`].
pub(super) struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    pub(super) async fn create() -> Option<Self> {
        let Some(admin_url) = std::env::var("CONFAB_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            if std::env::var("CONFAB_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("CONFAB_REQUIRE_POSTGRES=1 but CONFAB_TEST_DATABASE_URL is not set");
            }
            eprintln!(
                "\n!!! SKIPPED: PostgreSQL test: CONFAB_TEST_DATABASE_URL is not set \
                 (`make test` sets it; see the README) !!!\n"
            );
            return None;
        };
        let name = format!("confab_test_{}", Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("CONFAB_TEST_DATABASE_URL connects");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("the test role may create databases");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    pub(super) fn config(&self) -> Config {
        let mut config = Config {
            store: StoreConfig::Postgres(self.url.clone()),
            instance_ttl: Duration::from_millis(1_500),
            ..Config::default()
        };
        config.session.leave_grace = Duration::from_millis(200);
        config.session.burst = std::num::NonZeroU32::new(1_000).unwrap();
        config.session.address_burst = std::num::NonZeroU32::new(100_000).unwrap();
        config
    }

    async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }

    /// This database with the `count` migrations before `version` applied, as a release from before
    /// that migration left it.
    async fn schema_before(&self, version: &str, count: usize) -> sqlx::PgPool {
        let old = crate::server::store::migrations_before("postgres", version);
        let pool = self.pool().await;
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        assert_eq!(migrator.iter().count(), count);
        migrator.run(&pool).await.unwrap();
        pool
    }

    pub(super) async fn drop_now(self) {
        let admin = sqlx::PgPool::connect(&self.admin_url).await.unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// An instance in a runtime of its own, so the test can kill it as a crash would: every task and
/// socket dropped at once, nothing flushed, nothing said.
struct Instance {
    addr: SocketAddr,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Instance {
    fn start(config: Config) -> Self {
        let (ready, addr) = std::sync::mpsc::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = runtime.block_on(Server::start(config));
            ready.send(server.addr).unwrap();
            let _ = killed.recv();
            std::mem::forget(server);
            runtime.shutdown_background();
        });
        let addr = addr.recv().expect("the instance starts");
        Self { addr, kill, thread }
    }

    fn kill(self) {
        let _ = self.kill.send(());
        self.thread.join().unwrap();
    }
}

fn says(text: &str) -> (Uuid, ClientFrame) {
    let id = Uuid::new_v4();
    (
        id,
        ClientFrame::Send {
            room: GENERAL_ROOM.into(),
            id,
            text: text.into(),
        },
    )
}

/// Reads events until every id in `ids` has arrived; returns all events read (joins included).
async fn until_all(client: &mut Client, ids: &HashSet<Uuid>) -> Vec<ChatEvent> {
    let mut seen = Vec::new();
    let mut missing = ids.clone();
    while !missing.is_empty() {
        let event = client.next_event().await;
        missing.remove(&event.id);
        seen.push(event);
    }
    seen
}

fn assert_gapless_and_unique(events: &[ChatEvent]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless, in order: {seqs:?}"
    );
    let ids: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_show_everyone_every_message_once_in_one_gapless_order() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Both start at once on an empty database: the migrations must not trip over each other.
    let (a, b) = tokio::join!(Server::start(db.config()), Server::start(db.config()));
    let mut ann = joined(a.addr, "Ann").await;
    let mut bob = joined(b.addr, "Bob").await;
    let mut watchers = [connect(a.addr, "").await, connect(b.addr, "").await];

    // Concurrent senders on both instances.
    let mut ids = HashSet::new();
    let mut ann_frames = Vec::new();
    let mut bob_frames = Vec::new();
    for i in 0..40 {
        let (id, frame) = says(&format!("from A {i}"));
        ids.insert(id);
        ann_frames.push(frame);
        let (id, frame) = says(&format!("from B {i}"));
        ids.insert(id);
        bob_frames.push(frame);
    }
    let send_a = async {
        for frame in &ann_frames {
            ann.send(frame).await;
        }
    };
    let send_b = async {
        for frame in &bob_frames {
            bob.send(frame).await;
        }
    };
    tokio::join!(send_a, send_b);

    let mut orders = Vec::new();
    for client in watchers.iter_mut().chain([&mut ann, &mut bob]) {
        let events = until_all(client, &ids).await;
        let messages: Vec<(u64, Uuid)> = events
            .iter()
            .filter(|e| e.kind == EventKind::Message)
            .map(|e| (e.seq, e.id))
            .collect();
        assert_eq!(messages.len(), ids.len(), "each message exactly once");
        orders.push(messages);
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "one order everywhere"
    );
    let seqs: Vec<u64> = orders[0].iter().map(|(seq, _)| *seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless: {seqs:?}"
    );

    // A late reader on either instance gets the same history.
    let history_a = PgStore::open(&db.url)
        .await
        .unwrap()
        .since(crate::protocol::GENERAL_ROOM, 0, 1_000)
        .await
        .unwrap();
    assert_gapless_and_unique(&history_a);
    assert_eq!(history_a.first().map(|e| e.seq), Some(1));
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_message_crosses_instances_intact() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Server::start(db.config()).await;
    let mut ann = joined(a.addr, "Ann").await;
    let mut bob = joined(b.addr, "Bob").await;
    // 4,000 four-byte characters: 16,000 bytes of UTF-8, twice what a NOTIFY payload may carry.
    let text = "😀".repeat(MAX_TEXT_CHARS);
    let (id, frame) = says(&text);
    ann.send(&frame).await;
    let events = until_all(&mut bob, &HashSet::from([id])).await;
    let got = events.iter().find(|e| e.id == id).unwrap();
    assert_eq!(got.text, text);
    assert_eq!(got.name, "Ann");
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_presence_and_typing_span_instances() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Server::start(db.config()).await;
    // Sessions are shared: a browser issued its cookie by one instance is known to the other.
    let ann_browser = browser(a.addr).await;
    let other_browser = browser(b.addr).await;
    let bob_browser = browser(b.addr).await;
    let mut ann = connect_as(a.addr, &ann_browser, "").await;
    ann.join("Ann").await;

    // Another browser on the other instance cannot take the name.
    let mut impostor = connect_as(b.addr, &other_browser, "").await;
    impostor
        .send(&ClientFrame::Join { name: "Ann".into() })
        .await;
    impostor.expect_error(ErrorCode::NameTaken).await;

    // B lists who is on A.
    let mut bob = connect_as(b.addr, &bob_browser, "").await;
    let online = bob
        .next_matching(|f| match f {
            ServerFrame::Presence { online, .. } => Some(online.clone()),
            _ => None,
        })
        .await;
    assert_eq!(online, ["Ann"]);
    bob.join("Bob").await;

    // The same browser, through the other instance, keeps its name without a second join line.
    let mut ann_tab = connect_as(b.addr, &ann_browser, "").await;
    let rejoined = ann_tab
        .next_matching(|f| match f {
            ServerFrame::Joined(me) => Some(me.name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(rejoined, "Ann");
    ann.send(&ClientFrame::Typing {
        room: GENERAL_ROOM.into(),
    })
    .await;
    let typing = bob
        .next_matching(|f| match f {
            ServerFrame::Typing { name, .. } => Some(name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(typing, "Ann");

    // Ann leaves on purpose (both tabs): everyone, on both instances, sees one leave line.
    ann.send(&ClientFrame::Leave).await;
    drop(ann_tab);
    let left = bob
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Leave => Some(e.name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(left, "Ann");
    let joins = PgStore::open(&db.url)
        .await
        .unwrap()
        .since(crate::protocol::GENERAL_ROOM, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.name == "Ann")
        .map(|e| e.kind)
        .collect::<Vec<_>>();
    assert_eq!(
        joins,
        [EventKind::Join, EventKind::Leave],
        "one join, one leave"
    );
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_instance_dies_its_clients_resume_on_another_and_its_names_free_up() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Instance::start(db.config());
    let bea_browser = browser(a.addr).await;
    let cid_browser = browser(a.addr).await;
    let someone_else = browser(a.addr).await;
    let mut ann = joined(a.addr, "Ann").await;
    let mut bea = connect_as(b.addr, &bea_browser, "").await;
    bea.join("Bea").await;
    let mut cid = connect_as(b.addr, &cid_browser, "").await;
    cid.join("Cid").await;
    let (first, frame) = says("before the crash");
    ann.send(&frame).await;
    let seen = until_all(&mut bea, &HashSet::from([first])).await;
    let last_seq = seen.last().unwrap().seq;

    b.kill();
    // Messages keep coming while Bea is away.
    let mut during = HashSet::new();
    for i in 0..5 {
        let (id, frame) = says(&format!("during the outage {i}"));
        during.insert(id);
        ann.send(&frame).await;
    }
    // Bea's browser reconnects (to A, the one left) and resumes after what it had.
    let mut bea = connect_as(a.addr, &bea_browser, &format!("?after={last_seq}")).await;
    let resumed = until_all(&mut bea, &during).await;
    assert_gapless_and_unique(&resumed);
    assert_eq!(resumed.first().unwrap().seq, last_seq + 1, "nothing lost");
    let rejoined = bea
        .next_matching(|f| match f {
            ServerFrame::Joined(me) => Some(me.name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        rejoined, "Bea",
        "the cookie keeps the name across instances"
    );

    // Cid never came back: within the instance TTL, A announces the leave, and the name is free.
    let left = ann
        .next_matching(|f| match f {
            ServerFrame::Event(e) if e.kind == EventKind::Leave => Some(e.name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(left, "Cid");
    let mut new_cid = connect_as(a.addr, &someone_else, "").await;
    new_cid.join("Cid").await;
    // Bea, back through A, was never announced as gone.
    let events = PgStore::open(&db.url)
        .await
        .unwrap()
        .since(crate::protocol::GENERAL_ROOM, 0, 100)
        .await
        .unwrap();
    assert!(!events
        .iter()
        .any(|e| e.name == "Bea" && e.kind == EventKind::Leave));
    a.stop().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listen_connection_recovers_and_misses_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Server::start(db.config()).await;
    let mut ann = joined(a.addr, "Ann").await;
    let mut bob = joined(b.addr, "Bob").await;
    let admin = db.pool().await;

    let mut ids = HashSet::new();
    for round in 0..3 {
        // Both instances are listening (again, after the first round: they reconnected by themselves).
        let listening = || async {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(&admin)
            .await
            .unwrap();
            count
        };
        let started = tokio::time::Instant::now();
        while listening().await < 2 {
            assert!(started.elapsed() < PATIENCE, "the instances LISTEN again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Cut every LISTEN connection, then send at once, before they reconnect.
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .execute(&admin)
        .await
        .unwrap();
        for i in 0..5 {
            let (id, frame) = says(&format!("round {round} message {i}"));
            ids.insert(id);
            ann.send(&frame).await;
        }
    }
    let events = until_all(&mut bob, &ids).await;
    let messages: Vec<ChatEvent> = events
        .into_iter()
        .filter(|e| e.kind == EventKind::Message)
        .collect();
    assert_eq!(messages.len(), ids.len());
    assert_gapless_and_unique(&messages);
    admin.close().await;
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

/// A TCP forwarder to the database that the test can cut and restore, as a network outage would.
struct Outage {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Outage {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (is_down, all) = (down.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                all.lock().unwrap().push(link);
            }
        });
        Self { addr, down, links }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// host:port of a postgres:// URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap();
    if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_clients_hear_so_and_nothing_is_lost() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let outage = Outage::start(host_port(&db.url)).await;
    let through = db
        .url
        .replacen(&host_port(&db.url), &outage.addr.to_string(), 1);
    let mut config = db.config();
    config.store = StoreConfig::Postgres(through);
    let server = Server::start(config).await;
    let ann_browser = browser(server.addr).await;
    let mut ann = connect_as(server.addr, &ann_browser, "").await;
    ann.join("Ann").await;

    outage.cut();
    let (id, frame) = says("written during the outage");
    ann.send(&frame).await;
    let (message, about) = ann.expect_error(ErrorCode::Unavailable).await;
    assert_eq!(
        about,
        Some(id),
        "the error names the message, so it stays in the outbox"
    );
    assert!(message.contains("temporarily unavailable"), "{message}");

    // A browser connecting now is told the same, and asked to come back later (1013).
    let mut late = connect_as(server.addr, &ann_browser, "").await;
    late.expect_error(ErrorCode::Unavailable).await;
    let close = loop {
        match timeout(PATIENCE, late.socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1013);

    // The database comes back; the server recovers by itself, and the outbox's resend is stored once.
    outage.restore();
    let mut ann = loop {
        let mut client = connect_as(server.addr, &ann_browser, "").await;
        let healthy = client
            .next_matching(|f| match f {
                ServerFrame::Presence { .. } => Some(true),
                ServerFrame::Error { code, .. } if *code == ErrorCode::Unavailable => Some(false),
                _ => None,
            })
            .await;
        if healthy {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ann.send(&frame).await;
    ann.send(&frame).await;
    let seq = ack(&mut ann, id).await;
    assert_eq!(
        ack(&mut ann, id).await,
        seq,
        "the repeat is the same message"
    );
    let stored = PgStore::open(&db.url)
        .await
        .unwrap()
        .since(crate::protocol::GENERAL_ROOM, 0, 100)
        .await
        .unwrap();
    assert_eq!(stored.iter().filter(|e| e.id == id).count(), 1);
    server.stop().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_commit_in_sequence_order_so_readers_never_skip() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Two "instances" (two pools) append at once, while a reader tails the room the way a resuming
    // client does: "everything after the last seq I saw". With numbers that could commit out of order,
    // the reader would see 11 before 10 and then never see 10.
    let writers = [
        Arc::new(PgStore::open(&db.url).await.unwrap()),
        Arc::new(PgStore::open(&db.url).await.unwrap()),
    ];
    let reader = PgStore::open(&db.url).await.unwrap();
    let room = crate::protocol::GENERAL_ROOM;
    let per_task = 25;
    let mut tasks = Vec::new();
    for (w, store) in writers.iter().enumerate() {
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    let event = NewEvent {
                        id: Uuid::new_v4(),
                        kind: EventKind::Message,
                        name: format!("w{w}"),
                        user_id: Uuid::nil(),
                        user_kind: crate::protocol::UserKind::Guest,
                        text: format!("{t}-{i}"),
                        target: None,
                        call: Vec::new(),
                    };
                    store.append(room, vec![event], 0).await.unwrap();
                }
            }));
        }
    }
    let total = (writers.len() * 4 * per_task) as u64;
    let mut last = 0;
    let mut seen = Vec::new();
    while last < total {
        for event in reader.since(room, last, 1_000).await.unwrap() {
            assert_eq!(event.seq, last + 1, "a reader never sees past a gap");
            last = event.seq;
            seen.push(event);
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_gapless_and_unique(&seen);
    assert_eq!(seen.len() as u64, total);
    db.drop_now().await;
}

#[tokio::test]
async fn postgres_keeps_the_identity_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    crate::server::store::identity::check_contract(&store).await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn postgres_keeps_the_bot_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    crate::server::store::bots::check_contract(&store).await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn postgres_keeps_the_room_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::open(&db.url).await.unwrap();
    crate::server::store::rooms::check_contract(&store).await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_postgres_database_of_schema_0006_keeps_its_users_and_finds_owners_by_the_new_index() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.schema_before("0007", 6).await;
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let mut insert = sqlx::query(crate::server::store::USERS_OF_0006);
    for id in ids {
        insert = insert.bind(id.to_string());
    }
    insert.execute(&pool).await.unwrap();
    pool.close().await;

    let store = PgStore::open(&db.url).await.unwrap();
    crate::server::store::check_users_of_0006(&store, ids).await;
    let pool = db.pool().await;
    // Both indexes made since 0006: owners by name key (0007), and what was said, for unread (0008).
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname FROM pg_indexes WHERE indexname IN ('users_by_name_key', 'events_said') \
         ORDER BY indexname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, ["events_said", "users_by_name_key"]);
    pool.close().await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_postgres_database_of_schema_0007_keeps_its_history_and_counts_unread_alike() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.schema_before("0008", 7).await;
    let (reader, other) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(&crate::server::store::storm_of_0007(reader, other))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = PgStore::open(&db.url).await.unwrap();
    assert_eq!(
        store.since("general", 0, 1_000).await.unwrap().len(),
        300,
        "the whole history is kept"
    );
    crate::server::store::check_unread_of_0007(&store, reader).await;
    store.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_postgres_database_from_before_accounts_keeps_its_history_names_and_sessions() {
    use crate::server::store::IdentityStore;
    let Some(db) = TestDb::create().await else {
        return;
    };
    let old = tempfile::tempdir().unwrap();
    std::fs::write(
        old.path().join("0001_events_sessions_presence.sql"),
        include_str!("../store/migrations/postgres/0001_events_sessions_presence.sql"),
    )
    .unwrap();
    let pool = db.pool().await;
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for (seq, kind, name, text) in [
        (1i64, "join", "Ann", ""),
        (2, "message", "Ann", "hello from before"),
        (3, "message", "Bo", "hi"),
    ] {
        sqlx::query(
            "INSERT INTO events (room, seq, id, at, kind, name, text) VALUES ('general', $1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(Uuid::new_v4().to_string())
        .bind(seq * 1000)
        .bind(kind)
        .bind(name)
        .bind(text)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO rooms (room, last_seq) VALUES ('general', 3)")
        .execute(&pool)
        .await
        .unwrap();
    let token = "11111111-1111-4111-8111-111111111111";
    sqlx::query("INSERT INTO sessions (token, name, updated_at) VALUES ($1, 'Ann', 5)")
        .bind(token)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = PgStore::open(&db.url).await.unwrap();
    let events = store.since("general", 0, 10).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].user_id, events[1].user_id);
    assert_ne!(events[1].user_id, events[2].user_id);
    assert!(events.iter().all(|e| !e.user_id.is_nil()));
    let session = store
        .session(&crate::server::identity::token_hash(token))
        .await
        .unwrap()
        .expect("the joined session survives");
    assert_eq!(session.user.unwrap().id, events[0].user_id);
    let unkeyed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name_key = ''")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(unkeyed, 0);
    // New events continue the sequence.
    let next = store
        .append(
            "general",
            vec![crate::server::store::NewEvent {
                id: Uuid::new_v4(),
                kind: EventKind::Message,
                name: "Ann".into(),
                user_id: events[0].user_id,
                user_kind: crate::protocol::UserKind::Guest,
                text: "after the upgrade".into(),
                target: None,
                call: Vec::new(),
            }],
            9,
        )
        .await
        .unwrap();
    assert_eq!(next[0].event.seq, 4);
    // The rooms schema came too: the old history is general's, and rooms work on the upgraded database.
    use crate::server::store::RoomStore;
    let ann = events[0].user_id;
    assert!(store.rooms_of(ann).await.unwrap().is_empty());
    store.mark_read(ann, "general", 4).await.unwrap();
    assert_eq!(store.read_mark(ann, "general").await.unwrap(), Some(4));
    let room = crate::server::store::Room {
        slug: "after".into(),
        name: "After".into(),
        topic: String::new(),
        kind: crate::protocol::RoomKind::Private,
        created_by: ann,
        created_at: 9,
        archived: false,
    };
    store
        .create_room(&room, &[ann, events[2].user_id], 9)
        .await
        .unwrap();
    assert_eq!(store.members("after").await.unwrap().len(), 2);
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_span_instances_and_a_sign_out_on_one_closes_tabs_on_the_other() {
    use super::accounts::{boot_of, form, get_as, member, post, status};
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Server::start(db.config()).await;
    // A name kept through instance A...
    let (token, mut on_a) = member(a.addr, "Ann", "correct horse").await;
    assert_eq!(
        on_a.identity().await.kind,
        crate::protocol::UserKind::Member
    );
    // ...is the member's on B too, for any guest there, however it is written.
    let mut guest = connect(b.addr, "").await;
    guest
        .send(&ClientFrame::Join {
            name: "ＡＮＮ".into(),
        })
        .await;
    guest.expect_error(ErrorCode::NameOwned).await;
    // The session works on B, and a sign-in on B is checked against the same store.
    let mut on_b = connect_as(b.addr, &token, "").await;
    assert_eq!(on_b.identity().await.name, "Ann");
    let signed_in = post(
        b.addr,
        "/login",
        None,
        None,
        &form(&[("name", "ann"), ("password", "correct horse")]),
    )
    .await;
    assert_eq!(status(&signed_in), 303);

    // Signing out through A closes this browser's tab on B as well.
    let out = post(a.addr, "/logout", Some(&token), None, "").await;
    assert_eq!(status(&out), 303);
    assert_eq!(
        on_b.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(
        on_a.close_code().await,
        Some(crate::server::session::CLOSE_SIGNED_OUT)
    );
    assert_eq!(boot_of(&get_as(b.addr, "/", &token).await).me, None);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_direct_messages_span_instances_and_stay_private() {
    use super::rooms::{assert_never_heard, create, event_in, in_room, room_frame, settle};
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Server::start(db.config()).await;
    let b = Server::start(db.config()).await;
    let mut ann = joined(a.addr, "Ann").await;
    let bo_browser = browser(b.addr).await;
    let mut bo = connect_as(b.addr, &bo_browser, "").await;
    bo.join("Bo").await;
    let mut cy = joined(b.addr, "Cy").await;

    // An invitation on A reaches Bo's socket on B, and the room's messages cross both ways.
    let ops = create(&mut ann, "Ops", true).await;
    ann.send(&ClientFrame::Invite {
        room: ops.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    assert_eq!(room_frame(&mut bo).await.slug, ops.slug);
    let (_, frame) = in_room(&ops.slug, "deploy at noon");
    ann.send(&frame).await;
    while event_in(&mut bo, &ops.slug).await.text != "deploy at noon" {}
    let (_, frame) = in_room(&ops.slug, "ok from B");
    bo.send(&frame).await;
    while event_in(&mut ann, &ops.slug).await.text != "ok from B" {}

    // A DM opened on B appears on A at once.
    bo.send(&ClientFrame::Dm {
        with: vec!["Ann".into()],
    })
    .await;
    let dm = room_frame(&mut bo).await;
    assert_eq!(room_frame(&mut ann).await.slug, dm.slug);
    let (_, frame) = in_room(&dm.slug, "a word in private");
    ann.send(&frame).await;
    assert_eq!(event_in(&mut bo, &dm.slug).await.text, "a word in private");
    // Bo reads it on a tab through A: the tab on B clears its badge.
    let mut bo_on_a = connect_as(a.addr, &bo_browser, "").await;
    bo_on_a
        .next_matching(|f| matches!(f, ServerFrame::Rooms { .. }).then_some(()))
        .await;
    bo_on_a
        .send(&ClientFrame::Read {
            room: dm.slug.clone(),
            seq: u64::MAX,
        })
        .await;
    let read = bo
        .next_matching(|f| match f {
            ServerFrame::Read { room, seq } if *room == dm.slug => Some(*seq),
            _ => None,
        })
        .await;
    assert_eq!(read, 1);

    // Removed on A, Bo's socket on B stops hearing the room before anything more is said in it.
    ann.send(&ClientFrame::Remove {
        room: ops.slug.clone(),
        name: "Bo".into(),
    })
    .await;
    let gone = super::rooms::room_gone(&mut bo).await;
    assert_eq!(gone, ops.slug);
    let (_, frame) = in_room(&ops.slug, "after Bo was removed");
    ann.send(&frame).await;
    while event_in(&mut ann, &ops.slug).await.text != "after Bo was removed" {}
    let (_, frame) = in_room(&ops.slug, "Bo again");
    bo.send(&frame).await;
    bo.expect_error(ErrorCode::NotFound).await;
    settle(&mut bo, Duration::from_millis(300)).await;
    assert!(!bo
        .transcript
        .iter()
        .any(|f| f.contains("after Bo was removed")));

    // Cy, on B beside Bo, heard nothing of either room.
    settle(&mut cy, Duration::from_millis(300)).await;
    assert_never_heard(
        &cy,
        "Cy",
        &[
            ops.slug.as_str(),
            dm.slug.as_str(),
            "deploy at noon",
            "a word in private",
            "after Bo was removed",
        ],
    );
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

#[tokio::test]
async fn webhook_calls_from_two_instances_are_each_made_and_replied_to_once() {
    use super::accounts::connect_with_bearer;
    use super::bots::{make_bot, plain, receiver};
    use super::rooms::in_room;
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut config = db.config();
    config.bots.allow_private = true;
    config.bots.retry_base = Duration::from_millis(50);
    let a = Server::start(config.clone()).await;
    let b = Server::start(config).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let (hook, received) = receiver(secret.clone(), Arc::new(|_| plain("pong"))).await;
    let bot = make_bot(&a, "hooky", &format!("http://{hook}/hook")).await;
    *secret.lock().unwrap() = bot.secret.clone();
    // B hears of the bot on its next reread (every 2 s); the test does not wait for it.
    b.bots.refresh().await.unwrap();

    let mut ann = joined(a.addr, "Ann").await;
    let mut bo = joined(b.addr, "Bo").await;
    let mut asked = HashSet::new();
    for n in 0..10 {
        for client in [&mut ann, &mut bo] {
            let (id, frame) = in_room(GENERAL_ROOM, &format!("@hooky ping {n}"));
            asked.insert(id);
            client.send(&frame).await;
        }
    }
    let calls = received.wait_for(20).await;
    let keys: HashSet<String> = calls
        .iter()
        .map(|(h, _)| h["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 20, "every mention called once per key");
    let called: HashSet<Uuid> = calls
        .iter()
        .map(|(_, p)| p["message"]["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(called, asked);
    // Each call's reply is posted once, whichever instance made it, and reaches both instances.
    let mut replies = HashSet::new();
    while replies.len() < 20 {
        let event = ann
            .next_matching(|f| match f {
                ServerFrame::Event(e) if e.user_id == bot.user.id => Some(e.clone()),
                _ => None,
            })
            .await;
        assert_eq!(event.text, "pong");
        assert!(replies.insert(event.id), "a reply posted twice");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received.calls().len() >= 20);

    // Revoked on A: the bot's socket on B closes at once, and B's API refuses the token.
    let mut socket = connect_with_bearer(b.addr, &bot.token).await;
    socket
        .next_matching(|f| matches!(f, ServerFrame::Joined(_)).then_some(()))
        .await;
    a.bots.revoke(bot.user.id).await.unwrap();
    let closed = socket.close_code().await;
    assert_eq!(closed, Some(crate::server::session::CLOSE_SIGNED_OUT));
    let refused = reqwest::Client::new()
        .get(format!("http://{}/api/v1/rooms", b.addr))
        .bearer_auth(&bot.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}
