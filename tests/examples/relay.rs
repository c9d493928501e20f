//! Relay benchmark: how many messages the tracker relays, how fast, and what idle users
//! cost. Load clients speak `wire` directly, all in this process. Prints figures; never
//! fails on speed.
//!
//! The tracker runs twice, in clear (`--insecure-plaintext`) and with TLS, so the cost of
//! encryption is measured in the same run; then logins at a fixed rate while messages
//! flow, to see what a login burst (TLS handshakes, hashed passwords) does to relay.
//!
//! Run it with `bench/relay` (builds release binaries first). Options:
//! `--clients N` (100), `--messages M` per client (10000), `--rate R` offered msg/s (100000),
//! `--seconds S` at that rate (5), `--idle K` idle clients (10000), `--logins L` a second
//! (200) for `--login-seconds T` (10) while messages flow at `--login-rate Q` msg/s (10000),
//! each logging out at once (`--logins-stay`: staying logged in); `--offline O` messages
//! (100000) to users who are offline, acknowledged once stored, on each store engine
//! (SQLite, then a PostgreSQL server the benchmark starts, with fsync on); `--cluster`: only
//! the cluster figures: one tracker against two sharing a PostgreSQL and a NATS server
//! (both started here), 100 clients split between them, flat out and at `--cluster-rate`
//! (50000) msg/s, then `--idle` logins spread over the two.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use harness::{cpu_seconds, peak_rss, Tracker};
use link::Stream;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracker::outbox::Outbox;
use wire::codec::WireCodec;
use wire::{
    ClientMsg, Event, LoginResult, Password, Reply, Request, ServerMsg, Text, UserName,
    PROTOCOL_VERSION,
};

/// The load clients and the bare relay use the same allocator as the tracker, so the
/// ceiling is not lowered by an allocator the tracker does not use.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Rd = FramedRead<ReadHalf<Stream>, WireCodec<ServerMsg, ClientMsg>>;
type Wr = FramedWrite<WriteHalf<Stream>, WireCodec<ServerMsg, ClientMsg>>;

/// Messages a client may have sent and not yet seen acknowledged.
const WINDOW: usize = 128;

struct Args {
    clients: usize,
    messages: usize,
    rate: u64,
    seconds: u64,
    idle: usize,
    logins: u64,
    login_seconds: u64,
    login_rate: u64,
    /// The users logging in stay logged in (each then costs a presence notice to every
    /// later one), instead of logging out at once.
    logins_stay: bool,
    /// Messages to offline users, stored (0: skip that phase).
    offline: usize,
    /// Only the cluster figures.
    cluster: bool,
    cluster_rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        clients: 100,
        messages: 10_000,
        rate: 100_000,
        seconds: 5,
        idle: 10_000,
        logins: 200,
        login_seconds: 10,
        login_rate: 10_000,
        logins_stay: false,
        offline: 100_000,
        cluster: false,
        cluster_rate: 50_000,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let v: Vec<String> = v
        .into_iter()
        .filter(|o| {
            let stay = o == "--logins-stay";
            let cluster = o == "--cluster";
            a.logins_stay |= stay;
            a.cluster |= cluster;
            !stay && !cluster
        })
        .collect();
    for pair in v.chunks(2) {
        let n = || {
            pair.get(1)
                .and_then(|s| s.parse().ok())
                .expect("a number after each option")
        };
        match pair[0].as_str() {
            "--clients" => a.clients = n() as usize,
            "--messages" => a.messages = n() as usize,
            "--rate" => a.rate = n(),
            "--seconds" => a.seconds = n(),
            "--idle" => a.idle = n() as usize,
            "--logins" => a.logins = n(),
            "--login-seconds" => a.login_seconds = n(),
            "--login-rate" => a.login_rate = n(),
            "--offline" => a.offline = n() as usize,
            "--cluster-rate" => a.cluster_rate = n(),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn name(i: usize) -> UserName {
    UserName::new(format!("u{i}")).unwrap()
}

/// Whether the load clients speak TLS to the tracker (the bare relay speaks plain TCP).
#[derive(Clone, Copy, PartialEq)]
enum Tls {
    On,
    Off,
}

async fn login(addr: SocketAddr, tls: Tls, i: usize) -> (Rd, Wr) {
    login_as(addr, tls, &format!("u{i}")).await
}

/// Message text carrying its send time: exactly 32 bytes.
fn stamp(t0: Instant) -> Text {
    Text::new(format!("{:032}", t0.elapsed().as_nanos())).unwrap()
}

/// Latencies in microseconds, from every client.
#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    latencies: Mutex<Vec<u32>>,
}

fn percentiles(mut v: Vec<u32>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Reads everything a client receives: counts deliveries, records latencies, releases the
/// send window on each acknowledgement.
async fn reader(mut rd: Rd, t0: Instant, stats: Arc<Stats>, window: Arc<Semaphore>) {
    let mut lat = Vec::new();
    while let Some(Ok(msg)) = rd.next().await {
        match msg {
            ServerMsg::Event(Event::Message { text, .. }) => {
                let sent: u128 = text.as_str().parse().unwrap_or(0);
                let now = t0.elapsed().as_nanos();
                lat.push(((now.saturating_sub(sent)) / 1000) as u32);
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if lat.len() >= 4096 {
                    stats.latencies.lock().unwrap().append(&mut lat);
                }
            }
            ServerMsg::Reply(Reply::Sent { .. }) => window.add_permits(1),
            ServerMsg::Reply(Reply::LoggedOut) => break,
            ServerMsg::Reply(other) => panic!("unexpected reply {other:?}"),
            _ => {}
        }
    }
    stats.latencies.lock().unwrap().append(&mut lat);
}

/// xorshift64: the next pseudo-random number from `x`.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Pseudo-random recipient other than `me`.
fn pick(me: usize, n: usize, x: &mut u64) -> usize {
    let r = (xorshift(x) % (n as u64 - 1)) as usize;
    if r >= me {
        r + 1
    } else {
        r
    }
}

/// Waits for room in the window, then feeds one stamped message to a random other client.
async fn send_one(
    wr: &mut Wr,
    window: &Semaphore,
    me: usize,
    clients: usize,
    x: &mut u64,
    t0: Instant,
) {
    window.acquire().await.unwrap().forget();
    let to = name(pick(me, clients, x));
    let msg = ClientMsg::Request(Request::Message {
        to,
        text: stamp(t0),
    });
    wr.feed(msg).await.unwrap();
}

struct Run {
    /// Messages the load clients were to send.
    expected: u64,
    secs: f64,
    delivered: u64,
    latencies: Vec<u32>,
}

/// `clients` users each send `messages` 32-byte messages to random others, as fast as
/// the window allows (`rate` = None), or at `rate` msg/s in total for `seconds`.
async fn load(
    addrs: &[SocketAddr],
    tls: Tls,
    clients: usize,
    messages: usize,
    rate: Option<(u64, u64)>,
) -> Run {
    let t0 = Instant::now();
    let stats = Arc::new(Stats::default());
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..clients {
        // Spread over the trackers of a cluster: client i on tracker i mod n.
        let (rd, wr) = login(addrs[i % addrs.len()], tls, i).await;
        let window = Arc::new(Semaphore::new(WINDOW));
        readers.push(tokio::spawn(reader(rd, t0, stats.clone(), window.clone())));
        writers.push((wr, window));
    }
    // Let the presence notices of all those logins drain before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = match rate {
        None => (clients * messages) as u64,
        Some((r, s)) => {
            let per_client = r / clients as u64 * s;
            per_client * clients as u64
        }
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut wr, window)) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            match rate {
                None => {
                    for _ in 0..messages {
                        send_one(&mut wr, &window, i, clients, &mut x, t0).await;
                        if window.available_permits() == 0 {
                            wr.flush().await.unwrap();
                        }
                    }
                }
                Some((r, s)) => {
                    let per_client = r / clients as u64;
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let per_tick = per_client as f64 / 1000.0;
                    let total = per_client * s;
                    let (mut sent, mut owed) = (0u64, 0.0f64);
                    while sent < total {
                        tick.tick().await;
                        owed += per_tick;
                        while owed >= 1.0 && sent < total {
                            owed -= 1.0;
                            sent += 1;
                            send_one(&mut wr, &window, i, clients, &mut x, t0).await;
                        }
                        wr.flush().await.unwrap();
                    }
                }
            }
            wr.flush().await.unwrap();
            wr
        }));
    }
    let mut writers = Vec::new();
    for t in tasks {
        writers.push(t.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let delivered = stats.delivered.load(Ordering::Relaxed);
    for mut wr in writers {
        let _ = wr.send(ClientMsg::Request(Request::Logout)).await;
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let latencies = std::mem::take(&mut *stats.latencies.lock().unwrap());
    Run {
        expected,
        secs,
        delivered,
        latencies,
    }
}

/// The ceiling: a relay with the same framing and the same outbound path as the tracker
/// (`tracker::outbox`), and no tracker logic at all: no credentials, no presence, no
/// blocks, no store, no global lock.
async fn bare_relay(listener: TcpListener) {
    let routes: Arc<Mutex<HashMap<UserName, Arc<Outbox>>>> = Arc::default();
    loop {
        let (s, _) = listener.accept().await.unwrap();
        let routes = routes.clone();
        tokio::spawn(async move {
            s.set_nodelay(true).unwrap();
            let (r, mut w) = s.into_split();
            let mut rd = FramedRead::new(r, WireCodec::<ClientMsg, ServerMsg>::new());
            let outbox = Arc::new(Outbox::default());
            let mut me = None;
            loop {
                tokio::select! {
                    biased;
                    () = outbox.ready() => {}
                    frame = rd.next() => {
                        // Like the tracker: answer every request already received, then
                        // write once.
                        let mut frame = frame;
                        for n in 1..=64 {
                            let reply = match frame {
                                Some(Ok(ClientMsg::Hello { version })) => ServerMsg::Hello { version },
                                Some(Ok(ClientMsg::Login { user, .. })) => {
                                    routes.lock().unwrap().insert(user.clone(), outbox.clone());
                                    me = Some(user);
                                    ServerMsg::Login(LoginResult::Welcome)
                                }
                                Some(Ok(ClientMsg::Request(Request::Message { to, text }))) => {
                                    let target = routes.lock().unwrap().get(&to).cloned();
                                    if let Some(t) = target {
                                        let from = me.clone().unwrap();
                                        let _ = t.push_event_msg(&ServerMsg::Event(Event::Message { from, text }));
                                    }
                                    ServerMsg::Reply(Reply::Sent { to, stored: false })
                                }
                                Some(Ok(ClientMsg::Request(Request::Logout))) => {
                                    ServerMsg::Reply(Reply::LoggedOut)
                                }
                                _ => return,
                            };
                            let bye = matches!(reply, ServerMsg::Reply(Reply::LoggedOut));
                            outbox.push_reply(&reply).unwrap();
                            if bye {
                                outbox.close();
                                break;
                            }
                            if n == 64 {
                                break; // the rest stays buffered for the next turn
                            }
                            match rd.next().now_or_never() {
                                Some(f) => frame = f,
                                None => break,
                            }
                        }
                    }
                }
                let batch = outbox.take();
                if w.write_all(&batch.bytes).await.is_err() || batch.last {
                    return;
                }
            }
        });
    }
}

/// CPU seconds of this process: the load clients (and, in the first two runs, the bare
/// relay beside them).
fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn report(label: &str, run: &Run) -> f64 {
    let rate = run.delivered as f64 / run.secs;
    println!(
        "{label}: {} of {} delivered in {:.2} s = {:.0} msg/s; latency {}",
        run.delivered,
        run.expected,
        run.secs,
        rate,
        percentiles(run.latencies.clone())
    );
    rate
}

/// Logs in `n` users named `l0`, `l1`, ... at `per_sec` a second (each opening its own
/// connection, TLS included), then logs each out again unless `stay`; their login times
/// (connect to welcome, µs) and the connections of those who stay.
async fn login_driver(addr: SocketAddr, n: usize, per_sec: u64, stay: bool) -> (Vec<u32>, Vec<Wr>) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..n {
        tick.tick().await;
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut rd, mut wr) = login_as(addr, Tls::On, &format!("l{i}")).await;
            let took = started.elapsed().as_micros() as u32;
            if !stay {
                let _ = wr.send(ClientMsg::Request(Request::Logout)).await;
            }
            tokio::spawn(async move { while let Some(Ok(_)) = rd.next().await {} });
            (took, stay.then_some(wr))
        }));
    }
    let mut times = Vec::new();
    let mut conns = Vec::new();
    for t in tasks {
        let (took, wr) = t.await.unwrap();
        times.push(took);
        conns.extend(wr);
    }
    (times, conns)
}

async fn login_as(addr: SocketAddr, tls: Tls, user: &str) -> (Rd, Wr) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let stream: Stream = match tls {
        Tls::Off => Box::new(tcp),
        Tls::On => {
            let any = link::tls::KeyCheck::Any;
            Box::new(link::tls::connect(tcp, addr, any).await.expect("TLS").0)
        }
    };
    let (r, w) = tokio::io::split(stream);
    let mut rd = FramedRead::new(r, WireCodec::new());
    let mut wr = FramedWrite::new(w, WireCodec::new());
    wr.send(ClientMsg::Hello {
        version: PROTOCOL_VERSION,
    })
    .await
    .unwrap();
    assert!(matches!(rd.next().await, Some(Ok(ServerMsg::Hello { .. }))));
    wr.send(ClientMsg::Login {
        user: UserName::new(user).unwrap(),
        password: Password::new("pw").unwrap(),
        p2p_port: 0,
        // Never dialled: the benchmark makes no peer connections.
        key: wire::PeerKey([0; 32]),
        lan_ip: None,
    })
    .await
    .unwrap();
    loop {
        match rd.next().await {
            Some(Ok(ServerMsg::Login(LoginResult::Welcome))) => return (rd, wr),
            // Presence of users logging in meanwhile is not ours to read here.
            Some(Ok(ServerMsg::Event(_))) => {}
            other => panic!("login of {user} failed: {other:?}"),
        }
    }
}

/// Users nobody logs in as during the offline phase: messages to them are stored. Enough
/// of them that no mailbox fills (`chat::MAX_OFFLINE_PER_RECIPIENT`).
const OFFLINE_USERS: usize = 1_000;

/// `a.clients` users send `a.offline` messages in all to offline users, each client with
/// `WINDOW` unacknowledged at most: how many the tracker stores and acknowledges a second,
/// on SQLite and on PostgreSQL.
fn offline_store(rt: &tokio::runtime::Runtime, a: &Args) {
    let per_recipient = a.offline.div_ceil(OFFLINE_USERS);
    assert!(
        per_recipient as u64 <= tracker::chat::MAX_OFFLINE_PER_RECIPIENT,
        "--offline {} would fill mailboxes",
        a.offline
    );
    let mut creds: String = (0..a.clients).map(|i| format!("u{i} pw\n")).collect();
    creds.extend((0..OFFLINE_USERS).map(|i| format!("o{i} pw\n")));
    let pg = harness::servers::Postgres::start_with(true);
    let url = pg.database("bench");
    for (label, extra) in [
        ("SQLite (--state)", vec!["--insecure-plaintext".to_string()]),
        (
            "PostgreSQL (--store), fsync on",
            vec![
                "--insecure-plaintext".to_string(),
                "--store".into(),
                url.clone(),
            ],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let t = Tracker::start_quiet_with(&creds, 3600, &extra);
        let cpu0 = cpu_seconds(t.pid()).unwrap_or(0.0);
        let (secs, acked, lat) = rt.block_on(offline_load(t.addr, a.clients, a.offline));
        let cpu1 = cpu_seconds(t.pid()).unwrap_or(0.0);
        println!(
            "offline messages into {label}: {acked} of {} stored and acknowledged in {secs:.2} s: {:.0} msg/s; until acknowledged {}; tracker CPU {:.2} s",
            a.offline,
            acked as f64 / secs,
            percentiles(lat),
            cpu1 - cpu0
        );
    }
}

async fn offline_load(addr: SocketAddr, clients: usize, total: usize) -> (f64, u64, Vec<u32>) {
    let per_client = total / clients;
    let acked = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(login(addr, Tls::Off, i).await);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut rd, mut wr)) in conns.into_iter().enumerate() {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            let mut sent_at = std::collections::VecDeque::new();
            let mut lat = Vec::with_capacity(per_client);
            let (mut sent, mut got) = (0, 0);
            while got < per_client {
                while sent < per_client && sent - got < WINDOW {
                    let to = xorshift(&mut x) % OFFLINE_USERS as u64;
                    let to = UserName::new(format!("o{to}")).unwrap();
                    let text = Text::new(format!("{sent:032}")).unwrap();
                    wr.feed(ClientMsg::Request(Request::Message { to, text }))
                        .await
                        .unwrap();
                    sent_at.push_back(Instant::now());
                    sent += 1;
                }
                wr.flush().await.unwrap();
                match rd.next().await {
                    Some(Ok(ServerMsg::Reply(Reply::Sent { stored: true, .. }))) => {
                        got += 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                        let at = sent_at.pop_front().unwrap();
                        lat.push(at.elapsed().as_micros() as u32);
                    }
                    Some(Ok(ServerMsg::Reply(other))) => panic!("unexpected reply {other:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("connection ended: {other:?}"),
                }
            }
            let _ = wr.send(ClientMsg::Request(Request::Logout)).await;
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (
        t0.elapsed().as_secs_f64(),
        acked.load(Ordering::Relaxed),
        lat,
    )
}

/// Chat at `a.login_rate` msg/s for `a.login_seconds`, first alone, then again while
/// `a.logins` users a second log in; prints both latencies and the logins'.
fn logins_under_load(rt: &tokio::runtime::Runtime, a: &Args, label: &str, creds: &str) {
    let t = Tracker::start_quiet(creds, 3600);
    let addr = t.addr;
    let rate = Some((a.login_rate, a.login_seconds));
    let calm = rt.block_on(load(&[addr], Tls::On, a.clients, 0, rate));
    let n = (a.logins * a.login_seconds) as usize;
    let cpu0 = cpu_seconds(t.pid()).unwrap_or(0.0);
    let started = Instant::now();
    let (per_sec, stay) = (a.logins, a.logins_stay);
    let (busy, (times, conns)) = rt.block_on(async {
        let driver = tokio::spawn(async move {
            // After the chatters have logged in and their presence has drained.
            tokio::time::sleep(Duration::from_millis(400)).await;
            login_driver(addr, n, per_sec, stay).await
        });
        let busy = load(&[addr], Tls::On, a.clients, 0, rate).await;
        (busy, driver.await.unwrap())
    });
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(t.pid()).unwrap_or(0.0) - cpu0;
    println!(
        "logins, {label}: {n} logins offered at {}/s{} while {} msg/s flow: done in {:.1} s ({:.0}/s); login time {}; tracker CPU {:.1} s",
        a.logins,
        if a.logins_stay { ", staying logged in" } else { ", each logging out at once" },
        a.login_rate,
        secs,
        n as f64 / secs,
        percentiles(times),
        cpu
    );
    println!(
        "  relayed messages: alone {}; during the logins {}",
        percentiles(calm.latencies),
        percentiles(busy.latencies)
    );
    drop(conns);
}

/// Idle users: log them in, keep them connected, read what they are sent (presence);
/// prints what each costs the tracker.
/// `idle` clients log in, 256 at a time, client i on `addrs[i % n]`, and stay; they count
/// the presence frames they receive and the changes in them. The connections, and how long
/// the logins took.
fn log_in_idle(
    rt: &tokio::runtime::Runtime,
    addrs: &[SocketAddr],
    tls: Tls,
    idle: usize,
    frames: Arc<AtomicU64>,
    changes: Arc<AtomicU64>,
) -> (Vec<Wr>, f64) {
    let addrs = addrs.to_vec();
    let start = Instant::now();
    let conns = rt.block_on(async move {
        let limit = Arc::new(Semaphore::new(256));
        let mut tasks = Vec::new();
        for i in 0..idle {
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (f, c) = (frames.clone(), changes.clone());
            let addr = addrs[i % addrs.len()];
            tasks.push(tokio::spawn(async move {
                let (mut rd, wr) = login(addr, tls, i).await;
                drop(permit);
                tokio::spawn(async move {
                    while let Some(Ok(m)) = rd.next().await {
                        if let ServerMsg::Event(wire::Event::Presence { changes }) = m {
                            f.fetch_add(1, Ordering::Relaxed);
                            c.fetch_add(changes.len() as u64, Ordering::Relaxed);
                        }
                    }
                });
                wr
            }));
        }
        let mut conns = Vec::new();
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        conns
    });
    (conns, start.elapsed().as_secs_f64())
}

fn idle_users(rt: &tokio::runtime::Runtime, a: &Args, label: &str, tls: Tls, creds: &str) {
    let extra: &[&str] = match tls {
        Tls::On => &[],
        Tls::Off => &["--insecure-plaintext"],
    };
    let t = Tracker::start_quiet_with(creds, 3600, extra);
    let before = t.rss().unwrap_or(0);
    let addr = t.addr;
    let idle = a.idle;
    // Presence frames the idle clients receive, and the changes they carry.
    let frames = Arc::new(AtomicU64::new(0));
    let changes = Arc::new(AtomicU64::new(0));
    let (conns, login_secs) = log_in_idle(rt, &[addr], tls, idle, frames.clone(), changes.clone());
    // The tracker's allocator hands pages freed after the login burst back within a
    // second; what is left after two is what the idle clients hold.
    std::thread::sleep(Duration::from_secs(2));
    let after = t.rss().unwrap_or(0);
    println!(
        "idle, {label}: {idle} clients logged in in {login_secs:.1} s; tracker RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per client",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0 / idle as f64
    );
    let (frames, changes) = (
        frames.load(Ordering::Relaxed),
        changes.load(Ordering::Relaxed),
    );
    println!(
        "  presence: {frames} frames carrying {changes} changes ({:.2} changes per frame; one frame per login and user online would be {})",
        changes as f64 / frames.max(1) as f64,
        (idle as u64) * (idle as u64 - 1) / 2
    );
    drop(conns);
}

/// One tracker against two sharing a PostgreSQL and a NATS server, in the same run.
fn cluster(rt: &tokio::runtime::Runtime, a: &Args, creds: &str) {
    println!(
        "cluster benchmark: {} clients x {} messages of 32 bytes flat out, then {} msg/s for {} s; {} logins; in clear",
        a.clients, a.messages, a.cluster_rate, a.seconds, a.idle
    );
    let plain = ["--insecure-plaintext".to_string()];
    let single = Tracker::start_quiet_with(creds, 3600, &["--insecure-plaintext"]);
    let run = rt.block_on(load(&[single.addr], Tls::Off, a.clients, a.messages, None));
    let one = report("one tracker, flat out", &run);
    let fixed = Some((a.cluster_rate, a.seconds));
    let run = rt.block_on(load(&[single.addr], Tls::Off, a.clients, 0, fixed));
    report(&format!("one tracker, at {} msg/s", a.cluster_rate), &run);
    drop(single);

    let pg = harness::servers::Postgres::start_with(true);
    let nats = harness::servers::Nats::start();
    let url = pg.database("bench");
    let bus = nats.url();
    let args: Vec<String> = plain
        .iter()
        .cloned()
        .chain(["--store".into(), url, "--bus".into(), bus])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ta = Tracker::start_quiet_with(creds, 3600, &args);
    let tb = Tracker::start_quiet_with(creds, 3600, &args);
    let addrs = [ta.addr, tb.addr];
    let cpu = |t: &Tracker| cpu_seconds(t.pid()).unwrap_or(0.0);
    let (a0, b0) = (cpu(&ta), cpu(&tb));
    let run = rt.block_on(load(&addrs, Tls::Off, a.clients, a.messages, None));
    let two = report(
        "two trackers (PostgreSQL + NATS), flat out, half the messages across",
        &run,
    );
    println!(
        "  {:.2}x one tracker; trackers' CPU {:.2} s + {:.2} s",
        two / one,
        cpu(&ta) - a0,
        cpu(&tb) - b0
    );
    let run = rt.block_on(load(&addrs, Tls::Off, a.clients, 0, fixed));
    report(&format!("two trackers, at {} msg/s", a.cluster_rate), &run);
    drop((ta, tb));
    if a.idle == 0 {
        return;
    }

    // Logins spread over two fresh trackers on a fresh database (the killed trackers'
    // claims on the chatters would hold for their lease), each client staying.
    let args: Vec<String> = plain
        .iter()
        .cloned()
        .chain([
            "--store".into(),
            pg.database("logins"),
            "--bus".into(),
            nats.url(),
        ])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ta = Tracker::start_quiet_with(creds, 3600, &args);
    let tb = Tracker::start_quiet_with(creds, 3600, &args);
    let addrs = [ta.addr, tb.addr];
    let idle = a.idle;
    let frames = Arc::new(AtomicU64::new(0));
    let changes = Arc::new(AtomicU64::new(0));
    let (conns, secs) = log_in_idle(rt, &addrs, Tls::Off, idle, frames.clone(), changes.clone());
    // Until the last presence batch reached everyone.
    std::thread::sleep(Duration::from_secs(1));
    let (frames, changes) = (
        frames.load(Ordering::Relaxed),
        changes.load(Ordering::Relaxed),
    );
    println!(
        "{idle} logins spread over two trackers: done in {secs:.1} s; presence: {frames} frames carrying {changes} changes (each user told of every later login once: {})",
        (idle as u64) * (idle as u64 - 1) / 2
    );
    drop(conns);
}

fn main() {
    let a = args();
    let users = a.clients.max(a.idle) + 1;
    let creds: String = (0..users).map(|i| format!("u{i} pw\n")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if a.cluster {
        cluster(&rt, &a, &creds);
        return;
    }
    println!(
        "relay benchmark: {} clients x {} messages of 32 bytes; {} msg/s offered for {} s; {} logins/s for {} s at {} msg/s; {} idle clients",
        a.clients, a.messages, a.rate, a.seconds, a.logins, a.login_seconds, a.login_rate, a.idle
    );

    // The ceiling, on its own runtime as if it were another process.
    let bare_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare_listener = bare_rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let bare_addr = bare_listener.local_addr().unwrap();
    bare_rt.spawn(bare_relay(bare_listener));
    let bare = rt.block_on(load(&[bare_addr], Tls::Off, a.clients, a.messages, None));
    let bare_rate = report("bare relay (ceiling), flat out", &bare);
    let fixed_label = format!("at {} msg/s", a.rate);
    let bare_fixed = rt.block_on(load(
        &[bare_addr],
        Tls::Off,
        a.clients,
        0,
        Some((a.rate, a.seconds)),
    ));
    report(&format!("bare relay (ceiling), {fixed_label}"), &bare_fixed);
    drop(bare_rt);

    let mut flat = Vec::new();
    for (label, tls, extra) in [
        (
            "tracker in clear (--insecure-plaintext)",
            Tls::Off,
            &["--insecure-plaintext"][..],
        ),
        ("tracker with TLS", Tls::On, &[][..]),
    ] {
        let t = Tracker::start_quiet_with(&creds, 3600, extra);
        let cpu0 = cpu_seconds(t.pid()).unwrap_or(0.0);
        let run = rt.block_on(load(&[t.addr], tls, a.clients, a.messages, None));
        let cpu1 = cpu_seconds(t.pid()).unwrap_or(0.0);
        let rate = report(&format!("{label}, flat out"), &run);
        flat.push(rate);
        println!(
            "  tracker CPU {:.2} s, peak RSS {:.1} MiB; {:.2}x the bare relay",
            cpu1 - cpu0,
            peak_rss(t.pid()).unwrap_or(0) as f64 / 1048576.0,
            rate / bare_rate
        );
        let (cpu0, gen0) = (cpu_seconds(t.pid()).unwrap_or(0.0), own_cpu());
        let fixed = rt.block_on(load(
            &[t.addr],
            tls,
            a.clients,
            0,
            Some((a.rate, a.seconds)),
        ));
        let (cpu1, gen1) = (cpu_seconds(t.pid()).unwrap_or(0.0), own_cpu());
        report(&format!("{label}, {fixed_label}"), &fixed);
        println!(
            "  tracker CPU {:.2} s, load generator CPU {:.2} s, over {:.2} s",
            cpu1 - cpu0,
            gen1 - gen0,
            fixed.secs
        );
    }
    println!("TLS / in clear, flat out: {:.2}x", flat[1] / flat[0]);

    if a.logins > 0 {
        let n = (a.logins * a.login_seconds) as usize;
        let chatters: String = (0..a.clients).map(|i| format!("u{i} pw\n")).collect();
        let plain: String = (0..n).map(|i| format!("l{i} pw\n")).collect();
        logins_under_load(&rt, &a, "plain passwords", &format!("{chatters}{plain}"));
        // The same hash for every user: each check costs what any Argon2id check does.
        let phc = tracker::credentials::hash(&Password::new("pw").unwrap());
        let hashed: String = (0..n).map(|i| format!("l{i} {phc}\n")).collect();
        logins_under_load(
            &rt,
            &a,
            "Argon2id passwords",
            &format!("{chatters}{hashed}"),
        );
    }

    if a.offline > 0 {
        offline_store(&rt, &a);
    }

    if a.idle > 0 {
        idle_users(&rt, &a, "in clear", Tls::Off, &creds);
        idle_users(&rt, &a, "TLS", Tls::On, &creds);
    }
}
