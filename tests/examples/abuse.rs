//! Flood benchmark: well-behaved users chat through the tracker while others attack it
//! from the same network: thousands of connections that never log in from one address,
//! users who log in and stop reading, and one user per kind of request sending it flat
//! out. Prints the well-behaved users' message latency undisturbed and under the flood
//! (same invocation), whether any of them was logged out or refused, what each attacker
//! got, and the tracker's memory and CPU. Never fails on speed.
//!
//! Run it with `bench/abuse` (builds release binaries first; needs root: the network lab
//! gives every user an address of its own, so per-address limits apply as on the
//! internet). Options: `--good N` (100) well-behaved users, each sending `--rate R` (10)
//! messages a second to random others; `--stalled K` (100) users who stop reading;
//! `--flood F` (5000) connections that never log in, each opened again `--flood-retry-ms`
//! (1000) after the tracker closed it (0: a connect flood as fast as this machine goes);
//! `--calm S` (10) and `--storm S` (30)
//! seconds measured without and with the attack; `--spam KIND,...` (all) which kinds of
//! request are sent flat out, or `none`; `--attacker idle|nice` (idle) how the attackers
//! are kept off the CPU the tracker and the chatters want (see `main`).
//!
//! Topology: lab host 0 runs the tracker; host 1 the well-behaved users (this program
//! again, `role good`), host 2 the attackers (`role attack`), each user on its own
//! address except the flood, which uses one.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use harness::lab::{self, Lab, Link};
use harness::{cpu_seconds, Tracker};
use link::Stream;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, FramedWrite};
use wire::codec::WireCodec;
use wire::{
    ClientMsg, Digest, Event, FileMeta, FileName, LoginResult, Password, Refusal, Reply, Request,
    ServerMsg, Text, UserName, PROTOCOL_VERSION,
};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Rd = FramedRead<ReadHalf<Stream>, WireCodec<ServerMsg, ClientMsg>>;
type Wr = FramedWrite<WriteHalf<Stream>, WireCodec<ServerMsg, ClientMsg>>;

/// The kinds of request the attack sends flat out, one user each.
const SPAM: [&str; 12] = [
    "message",
    "broadcast",
    "startprivate",
    "locate",
    "searchfile",
    "searchchunk",
    "whoelse",
    "whoelsesince",
    "register",
    "block",
    "offline",
    "havechunk",
];

struct Args {
    good: usize,
    rate: u64,
    stalled: usize,
    flood: usize,
    /// How long each flood connection waits, once closed, before it is opened again.
    retry_ms: u64,
    calm: u64,
    storm: u64,
    /// Which kinds of request are spammed (all by default).
    spam: Vec<&'static str>,
    attacker: Priority,
}

/// How the attackers are kept from competing with the tracker for this machine's CPU.
#[derive(Clone, Copy)]
enum Priority {
    /// SCHED_IDLE (`chrt --idle 0`): they run only when nothing else wants the core.
    Idle,
    /// `nice -n 19`.
    Nice,
}

fn args(v: &[String]) -> Args {
    let mut a = Args {
        good: 100,
        rate: 10,
        stalled: 100,
        flood: 5000,
        retry_ms: 1000,
        calm: 10,
        storm: 30,
        spam: SPAM.to_vec(),
        attacker: Priority::Idle,
    };
    for pair in v.chunks(2) {
        if pair[0] == "--attacker" {
            a.attacker = match pair.get(1).map(String::as_str) {
                Some("idle") => Priority::Idle,
                Some("nice") => Priority::Nice,
                _ => usage("--attacker takes idle or nice"),
            };
            continue;
        }
        if pair[0] == "--spam" {
            let list = pair.get(1).map(String::as_str).unwrap_or("");
            a.spam = SPAM
                .iter()
                .copied()
                .filter(|k| list.split(',').any(|w| w == *k))
                .collect();
            if list != "none" && a.spam.len() != list.split(',').count() {
                usage(&format!("--spam takes none or some of {}", SPAM.join(",")));
            }
            continue;
        }
        let n: u64 = pair
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage(&format!("a number after {}", pair[0])));
        match pair[0].as_str() {
            "--good" => a.good = n as usize,
            "--rate" => a.rate = n,
            "--stalled" => a.stalled = n as usize,
            "--flood" => a.flood = n as usize,
            "--flood-retry-ms" => a.retry_ms = n,
            "--calm" => a.calm = n,
            "--storm" => a.storm = n,
            other => usage(&format!("unknown option {other}")),
        }
    }
    if !(2..=250).contains(&a.good) || a.stalled > 249 || a.rate == 0 {
        usage("--good 2..=250, --stalled at most 249, --rate at least 1");
    }
    a
}

fn usage(why: &str) -> ! {
    eprintln!("bench/abuse: {why}");
    eprintln!(
        "usage: bench/abuse [--good N] [--rate R] [--stalled K] [--flood F] [--flood-retry-ms MS] [--calm S] [--storm S] [--spam KIND,...|none] [--attacker idle|nice]"
    );
    std::process::exit(2)
}

fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

/// The file the good user `g2` holds: what the `locate`, search and announce spammers ask
/// about.
fn bait(name: &str) -> FileMeta {
    FileMeta::new(
        FileName::new(name).unwrap(),
        1 << 20,
        1 << 20,
        vec![Digest([1; 32])],
        vec![Digest([2; 32])],
        Digest([1; 32]),
    )
    .unwrap()
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ip.into(), 0))?;
    let s = s.connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn login(from: Ipv4Addr, to: SocketAddr, name: &str, p2p_port: u16) -> (Rd, Wr) {
    let tcp = connect_from(from, to)
        .await
        .unwrap_or_else(|e| panic!("{name} cannot connect from {from}: {e}"));
    let (tls, _) = link::tls::connect(tcp, to, link::tls::KeyCheck::Any)
        .await
        .unwrap_or_else(|e| panic!("{name}: TLS from {from}: {e}"));
    let (r, w) = tokio::io::split(Box::new(tls) as Stream);
    let mut rd = FramedRead::new(r, WireCodec::new());
    let mut wr = FramedWrite::new(w, WireCodec::new());
    wr.send(ClientMsg::Hello {
        version: PROTOCOL_VERSION,
    })
    .await
    .unwrap();
    match rd.next().await {
        Some(Ok(ServerMsg::Hello { .. })) => {}
        other => panic!("{name}: no hello: {other:?}"),
    }
    wr.send(ClientMsg::Login {
        user: user(name),
        password: Password::new("pw").unwrap(),
        p2p_port,
        // Never dialled: the benchmark makes no peer connections.
        key: wire::PeerKey([0; 32]),
        lan_ip: None,
    })
    .await
    .unwrap();
    loop {
        match rd.next().await {
            Some(Ok(ServerMsg::Login(LoginResult::Welcome))) => return (rd, wr),
            Some(Ok(ServerMsg::Event(_))) => {}
            other => panic!("login of {name} from {from} failed: {other:?}"),
        }
    }
}

/// Lines from this process's stdin, one channel message each; closed at end of input.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---- the well-behaved users ------------------------------------------------------------

/// What the well-behaved users saw since the last report.
#[derive(Default)]
struct Seen {
    /// (when it arrived, in ms since the start; latency in µs).
    latencies: Mutex<Vec<(u32, u32)>>,
    sent: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    /// Sessions that ended without their user asking: logged out, timed out, cut off.
    cut: AtomicU64,
}

fn percentile(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

/// `role good TRACKER RATE IP...`: user `g<i>` on address `IP[i]`, each sending RATE
/// messages a second to random others; stdin `report LABEL` prints what was seen since
/// the last report, `quit` logs everyone out.
fn role_good(args: &[String]) {
    let tracker: SocketAddr = args[0].parse().unwrap();
    let rate: u64 = args[1].parse().unwrap();
    let ips: Vec<Ipv4Addr> = args[2..].iter().map(|s| s.parse().unwrap()).collect();
    let n = ips.len();
    runtime().block_on(async move {
        let t0 = Instant::now();
        let seen = Arc::new(Seen::default());
        let quitting = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            // A listening port, so the tracker hands g1 and g2 out to the private-chat and
            // locate spammers (nobody needs to answer on it).
            let (rd, mut wr) = login(*ip, tracker, &format!("g{i}"), 9).await;
            if i == 2 {
                let have = vec![0];
                wr.send(ClientMsg::Request(Request::Register {
                    meta: bait("bait.bin"),
                    have,
                }))
                .await
                .unwrap();
            }
            readers.push(tokio::spawn(good_reader(
                rd,
                t0,
                seen.clone(),
                quitting.clone(),
            )));
            writers.push(wr);
        }
        println!("ready");
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, mut wr) in writers.into_iter().enumerate() {
            let (seen, stop) = (seen.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let period = Duration::from_micros(1_000_000 / rate);
                // Spread the senders over the period instead of all at once.
                let start = tokio::time::Instant::now() + period * i as u32 / n as u32;
                let mut tick = tokio::time::interval_at(start, period);
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut to = (x % (n as u64 - 1)) as usize;
                    if to >= i {
                        to += 1;
                    }
                    let text = Text::new(format!("{:032}", t0.elapsed().as_nanos())).unwrap();
                    let msg = ClientMsg::Request(Request::Message {
                        to: user(&format!("g{to}")),
                        text,
                    });
                    if wr.send(msg).await.is_err() {
                        break;
                    }
                    seen.sent.fetch_add(1, Ordering::Relaxed);
                }
                wr
            }));
        }
        let mut commands = stdin_lines();
        while let Some(line) = commands.recv().await {
            if let Some(label) = line.strip_prefix("report ") {
                let samples = std::mem::take(&mut *seen.latencies.lock().unwrap());
                // p99 of each whole second of the phase, to tell spikes from a level.
                let first = samples.iter().map(|s| s.0).min().unwrap_or(0);
                let mut per_sec: Vec<Vec<u32>> = Vec::new();
                for &(at, l) in &samples {
                    let i = ((at - first) / 1000) as usize;
                    if per_sec.len() <= i {
                        per_sec.resize(i + 1, Vec::new());
                    }
                    per_sec[i].push(l);
                }
                let timeline: Vec<String> = per_sec
                    .iter_mut()
                    .map(|v| {
                        v.sort_unstable();
                        format!("{:.1}", percentile(v, 0.99))
                    })
                    .collect();
                let mut lat: Vec<u32> = samples.into_iter().map(|s| s.1).collect();
                lat.sort_unstable();
                println!(
                    "{label} sent={} delivered={} refused={} cut={} p50={:.3} p99={:.3} max={:.3} each_second={}",
                    seen.sent.swap(0, Ordering::Relaxed),
                    seen.delivered.swap(0, Ordering::Relaxed),
                    seen.refused.swap(0, Ordering::Relaxed),
                    seen.cut.load(Ordering::Relaxed),
                    percentile(&lat, 0.5),
                    percentile(&lat, 0.99),
                    percentile(&lat, 1.0),
                    timeline.join(","),
                );
            } else if line == "quit" {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        quitting.store(true, Ordering::Relaxed);
        for t in tasks {
            if let Ok(mut wr) = t.await {
                let _ = wr.send(ClientMsg::Request(Request::Logout)).await;
            }
        }
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        println!("cut={}", seen.cut.load(Ordering::Relaxed));
    });
}

async fn good_reader(mut rd: Rd, t0: Instant, seen: Arc<Seen>, quitting: Arc<AtomicBool>) {
    let mut lat = Vec::new();
    let cut = loop {
        let Some(Ok(msg)) = rd.next().await else {
            break true;
        };
        match msg {
            ServerMsg::Event(Event::Message { text, .. }) => {
                // Only the good users' stamped texts; the spam has none.
                if let Ok(sent) = text.as_str().parse::<u128>() {
                    let now = t0.elapsed().as_nanos();
                    let at = (now / 1_000_000) as u32;
                    lat.push((at, (now.saturating_sub(sent) / 1000) as u32));
                    seen.delivered.fetch_add(1, Ordering::Relaxed);
                    // At once (a few thousand a second): a sample must count in the phase
                    // it arrived in.
                    seen.latencies.lock().unwrap().append(&mut lat);
                }
            }
            ServerMsg::Event(Event::TimedOut) => break true,
            ServerMsg::Reply(Reply::Refused(_)) => {
                seen.refused.fetch_add(1, Ordering::Relaxed);
            }
            ServerMsg::Reply(Reply::LoggedOut) => break false,
            _ => {}
        }
    };
    seen.latencies.lock().unwrap().append(&mut lat);
    if cut && !quitting.load(Ordering::Relaxed) {
        seen.cut.fetch_add(1, Ordering::Relaxed);
    }
}

// ---- the attackers ----------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    served: AtomicU64,
    too_fast: AtomicU64,
    other: AtomicU64,
}

#[derive(Default)]
struct FloodTally {
    connected: AtomicU64,
    /// Connections the tracker kept at least a second (admitted to wait for a login).
    held: AtomicU64,
    failed: AtomicU64,
    /// Connection attempts given up after [`FLOOD_CONNECT`] without an answer.
    unanswered: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// How long a flood connection attempt waits for the tracker's answer.
const FLOOD_CONNECT: Duration = Duration::from_secs(1);

/// `role attack TRACKER FLOOD RETRY_MS FLOOD_IP SPAM_IP KIND,... STALLED_IP...`.
fn role_attack(args: &[String]) {
    let tracker: SocketAddr = args[0].parse().unwrap();
    let flood: usize = args[1].parse().unwrap();
    let retry = Duration::from_millis(args[2].parse().unwrap());
    let flood_ip: Ipv4Addr = args[3].parse().unwrap();
    let spam_ip: Ipv4Addr = args[4].parse().unwrap();
    let kinds: Vec<&'static str> = SPAM
        .iter()
        .copied()
        .filter(|k| args[5].split(',').any(|w| w == *k))
        .collect();
    let stalled_ips: Vec<Ipv4Addr> = args[6..].iter().map(|s| s.parse().unwrap()).collect();
    raise_fd_limit(flood + stalled_ips.len() + 256);
    let good = |i: usize| user(&format!("g{i}"));
    runtime().block_on(async move {
        // Users who log in and never read again.
        let mut stalled = Vec::new();
        for (i, ip) in stalled_ips.iter().enumerate() {
            stalled.push(login(*ip, tracker, &format!("n{i}"), 0).await);
        }
        let targets: Vec<UserName> = (0..stalled.len())
            .map(|i| user(&format!("n{i}")))
            .chain([good(0)])
            .collect();
        // One spammer per kind of request.
        let tallies: Vec<Arc<Tally>> = kinds.iter().map(|_| Arc::default()).collect();
        for (k, kind) in kinds.iter().enumerate() {
            let (rd, wr) = login(spam_ip, tracker, &format!("x-{kind}"), 0).await;
            let tally = tallies[k].clone();
            let targets = targets.clone();
            let window = Arc::new(Semaphore::new(64));
            tokio::spawn(spam_replies(rd, tally.clone(), window.clone()));
            tokio::spawn(spam(kind, wr, tally, window, targets, good(1), good(3)));
        }
        // Connections that never log in, from one address, reopened as soon as closed.
        let flood_tally = Arc::new(FloodTally::default());
        for _ in 0..flood {
            let t = flood_tally.clone();
            tokio::spawn(async move {
                loop {
                    // An attempt the tracker leaves unanswered (its kernel drops the SYNs
                    // of a shunned address) is given up after a second and made again
                    // from a new port: the flood keeps sending, it does not wait politely.
                    let attempt =
                        tokio::time::timeout(FLOOD_CONNECT, connect_from(flood_ip, tracker));
                    let Ok(attempt) = attempt.await else {
                        t.unanswered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match attempt {
                        Ok(mut s) => {
                            t.connected.fetch_add(1, Ordering::Relaxed);
                            let opened = Instant::now();
                            let mut buf = [0u8; 64];
                            use tokio::io::AsyncReadExt;
                            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                            if opened.elapsed() >= Duration::from_secs(1) {
                                t.held.fetch_add(1, Ordering::Relaxed);
                            }
                            if !retry.is_zero() {
                                tokio::time::sleep(retry).await;
                            }
                        }
                        Err(e) => {
                            t.failed.fetch_add(1, Ordering::Relaxed);
                            t.last_error.lock().unwrap().replace(e.to_string());
                            tokio::time::sleep(retry.max(Duration::from_millis(10))).await;
                        }
                    }
                }
            });
        }
        println!("ready");
        let mut commands = stdin_lines();
        while let Some(line) = commands.recv().await {
            if line == "report" {
                for (kind, t) in kinds.iter().zip(&tallies) {
                    println!(
                        "{kind} sent={} served={} too_fast={} other={}",
                        t.sent.load(Ordering::Relaxed),
                        t.served.load(Ordering::Relaxed),
                        t.too_fast.load(Ordering::Relaxed),
                        t.other.load(Ordering::Relaxed),
                    );
                }
                // Cut off by the tracker: everything it had sent, then the end.
                let drains = stalled.iter_mut().map(|(rd, _)| {
                    tokio::time::timeout(Duration::from_secs(3), async {
                        while let Some(Ok(_)) = rd.next().await {}
                    })
                });
                let cut = futures_util::future::join_all(drains)
                    .await
                    .iter()
                    .filter(|d| d.is_ok())
                    .count();
                println!("stalled users={} cut_off={cut}", stalled.len());
                println!(
                    "flood connected={} held={} failed={} unanswered={} ({})",
                    flood_tally.connected.load(Ordering::Relaxed),
                    flood_tally.held.load(Ordering::Relaxed),
                    flood_tally.failed.load(Ordering::Relaxed),
                    flood_tally.unanswered.load(Ordering::Relaxed),
                    flood_tally
                        .last_error
                        .lock()
                        .unwrap()
                        .as_deref()
                        .unwrap_or("no error"),
                );
                println!("end");
            } else if line == "quit" {
                break;
            }
        }
        drop(stalled);
    });
}

fn raise_fd_limit(want: usize) {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(want as libc::rlim_t).max(r.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

async fn spam_replies(mut rd: Rd, tally: Arc<Tally>, window: Arc<Semaphore>) {
    while let Some(Ok(msg)) = rd.next().await {
        let ServerMsg::Reply(reply) = msg else {
            continue;
        };
        match reply {
            Reply::Refused(Refusal::TooFast { .. }) => &tally.too_fast,
            Reply::Refused(_) => &tally.other,
            _ => &tally.served,
        }
        .fetch_add(1, Ordering::Relaxed);
        window.add_permits(1);
    }
}

/// Sends one kind of request as fast as the replies come back (64 outstanding).
async fn spam(
    kind: &'static str,
    mut wr: Wr,
    tally: Arc<Tally>,
    window: Arc<Semaphore>,
    targets: Vec<UserName>,
    private_target: UserName,
    block_target: UserName,
) {
    // Long texts: what fills the stalled users' buffers fastest.
    let long = Text::new("x".repeat(wire::ids::MAX_TEXT_LEN)).unwrap();
    let name = FileName::new("bait.bin").unwrap();
    let mut k = 0usize;
    loop {
        let Ok(permit) = window.acquire().await else {
            return;
        };
        permit.forget();
        k += 1;
        let msg = match kind {
            "message" => Request::Message {
                to: targets[k % targets.len()].clone(),
                text: long.clone(),
            },
            "broadcast" => Request::Broadcast { text: long.clone() },
            "startprivate" => Request::StartPrivate {
                user: private_target.clone(),
            },
            "locate" => Request::Locate {
                name: name.clone(),
                from: None,
            },
            "searchfile" => Request::SearchFile { name: name.clone() },
            "searchchunk" => Request::SearchChunk {
                name: name.clone(),
                chunks: vec![0; 8000],
            },
            "whoelse" => Request::WhoElse,
            "whoelsesince" => Request::WhoElseSince { secs: u64::MAX },
            "register" => Request::Register {
                meta: bait(&format!("junk-{k}")),
                have: vec![0],
            },
            "block" if k.is_multiple_of(2) => Request::Block {
                user: block_target.clone(),
            },
            "block" => Request::Unblock {
                user: block_target.clone(),
            },
            "offline" => Request::Message {
                to: user("o0"),
                text: long.clone(),
            },
            "havechunk" => Request::HaveChunk {
                name: name.clone(),
                chunk: 0,
            },
            other => unreachable!("{other}"),
        };
        let more = window.available_permits() > 0;
        let sent = if more {
            wr.feed(ClientMsg::Request(msg)).await
        } else {
            wr.send(ClientMsg::Request(msg)).await
        };
        if sent.is_err() {
            return;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
}

// ---- the conductor ----------------------------------------------------------------------

/// A role process on a lab host: its stdin to command it, its stdout lines on a channel.
struct Role {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Role {
    /// `low`: run at a low CPU priority (see `main`).
    fn start(lab: &Lab, host: usize, low: Option<Priority>, args: &[String]) -> Role {
        let exe = std::env::current_exe().unwrap();
        let mut command = match low {
            Some(Priority::Idle) => {
                let mut c = lab.place(host).command("chrt");
                c.args(["--idle", "0"]).arg(exe);
                c
            }
            Some(Priority::Nice) => {
                let mut c = lab.place(host).command("nice");
                c.args(["-n", "19"]).arg(exe);
                c
            }
            None => lab.place(host).command(exe),
        };
        let mut child = command
            .arg("role")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a role");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Role {
            name: args[0].clone(),
            child,
            stdin,
            lines,
        }
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    fn line(&self, wait: Duration) -> String {
        self.lines
            .recv_timeout(wait)
            .unwrap_or_else(|_| panic!("the {} role said nothing for {wait:?}", self.name))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` fields of a report line.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Sleeps `secs`, sampling the tracker's RSS every 250 ms; the largest sample.
fn watch_rss(t: &Tracker, secs: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut peak = 0;
    while Instant::now() < end {
        peak = peak.max(t.rss().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    peak
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("role") => {
            match argv.get(1).map(String::as_str) {
                Some("good") => role_good(&argv[2..]),
                Some("attack") => role_attack(&argv[2..]),
                _ => usage("unknown role"),
            }
            return;
        }
        _ => lab::remove_on_signal(),
    }
    let a = args(&argv);
    let lab = Lab::new(&[Link::FREE, Link::FREE, Link::FREE]).unwrap_or_else(|e| usage(&e));
    let good_ips = lab.add_addresses(1, a.good).unwrap();
    let attack_ips = lab.add_addresses(2, a.stalled + 1).unwrap();
    let mut creds = String::new();
    for i in 0..a.good {
        creds.push_str(&format!("g{i} pw\n"));
    }
    for i in 0..a.stalled {
        creds.push_str(&format!("n{i} pw\n"));
    }
    for kind in SPAM {
        creds.push_str(&format!("x-{kind} pw\n"));
    }
    creds.push_str("o0 pw\n");
    let t = Tracker::start_quiet_on(lab.place(0), lab.ip(0), &creds, 3600);
    println!(
        "flood benchmark: {} users chatting ({} msg/s each, {} msg/s in all); attack: {} connections that never log in from one address (each reopened {} ms after it is closed, or after {} s unanswered), {} users who stop reading, one user flat out on each of {} kinds of request; attackers at {}",
        a.good,
        a.rate,
        a.rate * a.good as u64,
        a.flood,
        a.retry_ms,
        FLOOD_CONNECT.as_secs(),
        a.stalled,
        a.spam.len(),
        match a.attacker {
            Priority::Idle => "SCHED_IDLE",
            Priority::Nice => "nice 19",
        }
    );

    let mut args = vec![t.addr.to_string(), a.rate.to_string()];
    args.extend(good_ips.iter().map(|ip| ip.to_string()));
    let mut good = Role::start(&lab, 1, None, &[vec!["good".to_string()], args].concat());
    assert_eq!(good.line(Duration::from_secs(120)), "ready");
    std::thread::sleep(Duration::from_secs(2));
    good.say("report warm-up");
    good.line(Duration::from_secs(10));

    let rss_before = t.rss().unwrap_or(0);
    let cpu0 = cpu_seconds(t.pid()).unwrap_or(0.0);
    let rss_calm = watch_rss(&t, a.calm);
    good.say("report calm");
    let calm = good.line(Duration::from_secs(10));
    let cpu_calm = cpu_seconds(t.pid()).unwrap_or(0.0) - cpu0;

    let mut args = vec![
        "attack".to_string(),
        t.addr.to_string(),
        a.flood.to_string(),
        a.retry_ms.to_string(),
        lab.ip(2).to_string(),
        attack_ips[a.stalled].to_string(),
        if a.spam.is_empty() {
            "none".into()
        } else {
            a.spam.join(",")
        },
    ];
    args.extend(attack_ips[..a.stalled].iter().map(|ip| ip.to_string()));
    let started = Instant::now();
    // The attackers stand in for other machines: at a low CPU priority, so what they
    // spend themselves on this one machine does not count against the tracker (which
    // still pays for everything they send it). SCHED_IDLE by default: a nice-19 task
    // that is running keeps the core until its slice ends (EEVDF), so a woken tracker or
    // chatter waited behind it for up to a few ms: the attacker's own CPU, not the
    // tracker's work, was then most of the p99 (`--attacker nice` shows it).
    let mut attack = Role::start(&lab, 2, Some(a.attacker), &args);
    assert_eq!(attack.line(Duration::from_secs(120)), "ready");
    let attack_login = started.elapsed().as_secs_f64();
    // The attackers' first bursts (each bucket starts full) land in these seconds; the
    // storm below is the flood at the limits.
    std::thread::sleep(Duration::from_secs(2));
    good.say("report attack-start");
    let start_line = good.line(Duration::from_secs(10));
    let cpu1 = cpu_seconds(t.pid()).unwrap_or(0.0);
    let (good_cpu0, attack_cpu0) = (
        cpu_seconds(good.child.id()).unwrap_or(0.0),
        cpu_seconds(attack.child.id()).unwrap_or(0.0),
    );
    let rss_storm = watch_rss(&t, a.storm);
    let (good_cpu, attack_cpu) = (
        cpu_seconds(good.child.id()).unwrap_or(0.0) - good_cpu0,
        cpu_seconds(attack.child.id()).unwrap_or(0.0) - attack_cpu0,
    );
    good.say("report storm");
    let storm = good.line(Duration::from_secs(10));
    let cpu_storm = cpu_seconds(t.pid()).unwrap_or(0.0) - cpu1;
    attack.say("report");
    let mut attack_lines = Vec::new();
    loop {
        let l = attack.line(Duration::from_secs(10));
        if l == "end" {
            break;
        }
        attack_lines.push(l);
    }
    drop(attack);
    let rss_after = watch_rss(&t, 3);
    good.say("quit");
    let cut_line = good.line(Duration::from_secs(20));

    let show = |label: &str, l: &str, cpu: f64, secs: u64, rss: u64| {
        println!(
            "  {label:<6} {:>6} sent, {:>6} delivered, {} refused; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; tracker CPU {:.0}%, RSS peak {:.1} MiB",
            field(l, "sent"),
            field(l, "delivered"),
            field(l, "refused"),
            field(l, "p50"),
            field(l, "p99"),
            field(l, "max"),
            100.0 * cpu / secs as f64,
            mib(rss)
        );
    };
    println!(
        "well-behaved users (tracker RSS before: {:.1} MiB):",
        mib(rss_before)
    );
    show("calm", &calm, cpu_calm, a.calm, rss_calm);
    println!(
        "  attack logged in its users in {attack_login:.1} s; its first 2 s (every limit's burst): p99 {:.2} ms, max {:.2} ms, {} refused",
        field(&start_line, "p99"),
        field(&start_line, "max"),
        field(&start_line, "refused")
    );
    show("storm", &storm, cpu_storm, a.storm, rss_storm);
    let each = |l: &str| {
        l.split_whitespace()
            .find_map(|kv| kv.strip_prefix("each_second="))
            .unwrap_or("")
            .replace(',', " ")
    };
    println!("  p99 of each second, calm (ms):  {}", each(&calm));
    println!("  p99 of each second, storm (ms): {}", each(&storm));
    println!(
        "  p99 under the flood: {:.2}x undisturbed; well-behaved users logged out or cut off: {}",
        field(&storm, "p99") / field(&calm, "p99"),
        field(&cut_line, "cut")
    );
    println!(
        "  CPU during the storm: well-behaved users {:.0}%, attackers {:.0}% (of one core)",
        100.0 * good_cpu / a.storm as f64,
        100.0 * attack_cpu / a.storm as f64
    );
    println!("attackers (over the whole storm):");
    for l in &attack_lines {
        println!("  {l}");
    }
    println!(
        "tracker RSS 3 s after the attack ended: {:.1} MiB",
        mib(rss_after)
    );
}
