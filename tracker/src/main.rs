//! `tracker <SERVER_PORT> <BLOCK_DURATION> <TIMEOUT> [--credentials FILE] [--state PATH]
//! [--release-after SECS] [--bind ADDR] [--cert FILE --key FILE | --insecure-plaintext] [-d]`,
//! `tracker hash-credentials FILE`, or `tracker fingerprint [--state PATH | --cert FILE]`.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracker::clock::Millis;
use tracker::clock::{Clock, SystemClock};
use tracker::credentials::Credentials;
use tracker::relay::{Relay, RelayLimits};
use tracker::store::{Boot, Engine, Journal, Postgres, Sqlite};
use tracker::{Rules, Shared, Tracker};

/// swarmchat tracker: authentication, presence, message relay and the file registry.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TCP port to listen on (0: let the OS pick; the port is printed with -d).
    server_port: u16,
    /// Seconds an account stays locked after three wrong passwords in a row.
    block_duration: u64,
    /// Seconds without a command after which a user is logged out.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// File of `user password` lines.
    #[arg(long, default_value = "credentials.txt")]
    credentials: PathBuf,
    /// SQLite database holding offline messages, block lists and login history (unless
    /// --store says otherwise); the TLS certificate is kept beside it.
    #[arg(long, default_value = "tracker.db")]
    state: PathBuf,
    /// Join the trackers sharing the --store database into one service over this NATS
    /// server (`nats://HOST:PORT`): users see and message each other whichever tracker
    /// they are logged in through.
    #[arg(long, requires = "store")]
    bus: Option<String>,
    /// Where clients reach this tracker (HOST_IP:PORT), told to the clients of the other
    /// trackers of the cluster to fail over to. Default: the address it listens on, unless
    /// that is all interfaces (then clients are told of no other tracker to go to).
    #[arg(long, requires = "bus", value_name = "IP:PORT")]
    advertise: Option<SocketAddr>,
    /// Keep the durable state in a PostgreSQL database instead of --state, e.g.
    /// `postgres://swarm@127.0.0.1:5432/swarmchat`; its tables are made on first use.
    #[arg(long, value_parser = postgres_url)]
    store: Option<String>,
    /// Seconds a registered file name may go without anyone holding it before it is
    /// released (anyone may then register other content under it). Default: 30 days.
    #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    release_after: u64,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// TLS certificate (PEM). Default: beside the state database (`tracker.cert.pem` for
    /// `tracker.db`), made with a new key on the first start.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// No TLS: passwords and messages cross the network in clear. For benchmarks and
    /// debugging on a trusted network only; clients must say the same.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    insecure_plaintext: bool,
    /// Relay nothing: peers that can neither reach each other nor punch through their
    /// routers cannot connect.
    #[arg(long, conflicts_with_all = ["relay_rate", "relay_connections"])]
    no_relay: bool,
    /// KiB per second the relay carries to and from one user, over all its relayed
    /// connections.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    relay_rate: u64,
    /// Relayed connections one user may have at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    relay_connections: u64,
    /// Print debugging information to stderr.
    #[arg(short, long)]
    debug: bool,
}

fn postgres_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_string())
    } else {
        Err("expected a PostgreSQL URL: postgres://USER@HOST:PORT/DATABASE".into())
    }
}

/// Replaces every plain password in FILE by its Argon2id hash, in place and atomically;
/// every user logs in with the same password as before.
#[derive(Parser)]
#[command(name = "tracker hash-credentials")]
struct HashArgs {
    /// The credentials file to rewrite.
    file: PathBuf,
}

/// Prints the fingerprint of the tracker's TLS key, for users to pin with
/// `peer --tracker-fingerprint` (or to compare with what their client remembered).
#[derive(Parser)]
#[command(name = "tracker fingerprint")]
struct FingerprintArgs {
    /// The state database whose certificate is meant (the default certificate's place).
    #[arg(long, default_value = "tracker.db")]
    state: PathBuf,
    /// The certificate, when one was given with --cert.
    #[arg(long)]
    cert: Option<PathBuf>,
}

/// Where the certificate and key are: given, or beside the state database (and then
/// made on the first start).
fn identity_paths(
    state: &std::path::Path,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> (PathBuf, PathBuf, bool) {
    match (cert, key) {
        (Some(c), Some(k)) => (c, k, false),
        _ => (
            state.with_extension("cert.pem"),
            state.with_extension("key.pem"),
            true,
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let sub = std::env::args_os().nth(1);
    if sub.as_ref().is_some_and(|a| a == "fingerprint") {
        let name = std::ffi::OsString::from("tracker fingerprint");
        let args =
            FingerprintArgs::parse_from(std::iter::once(name).chain(std::env::args_os().skip(2)));
        let cert = args
            .cert
            .unwrap_or_else(|| identity_paths(&args.state, None, None).0);
        let pem = std::fs::read(&cert)
            .with_context(|| format!("cannot read certificate {}", cert.display()))?;
        let fp = link::tls::fingerprint_of_pem(&pem)
            .map_err(|why| anyhow::anyhow!("{}: {why}", cert.display()))?;
        println!("{fp}");
        return Ok(());
    }
    if sub.is_some_and(|a| a == "hash-credentials") {
        let name = std::ffi::OsString::from("tracker hash-credentials");
        let args = HashArgs::parse_from(std::iter::once(name).chain(std::env::args_os().skip(2)));
        let done = tracker::credentials::hash_file(&args.file)?;
        println!(
            "{}: {} password{} hashed, {} already hashed",
            args.file.display(),
            done.hashed,
            if done.hashed == 1 { "" } else { "s" },
            done.kept
        );
        return Ok(());
    }
    let args = Args::parse();
    if args.debug {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "debug".into()),
            )
            .init();
    }
    let creds = Credentials::load(&args.credentials)?;
    let tls = if args.insecure_plaintext {
        tracing::warn!("no TLS (--insecure-plaintext): passwords and messages cross in clear");
        None
    } else {
        let (cert, key, create) = identity_paths(&args.state, args.cert, args.key);
        let (identity, made) = link::tls::ServerIdentity::load_or_create(&cert, &key, create)?;
        tracing::info!(fingerprint = %identity.fingerprint(), made, cert = %cert.display(), "TLS key");
        Some(Arc::new(identity))
    };
    let rules = Rules {
        block_duration: Duration::from_secs(args.block_duration),
        timeout: Duration::from_secs(args.timeout),
        release_after: Duration::from_secs(args.release_after),
        relay: !args.no_relay,
    };
    let clock = Arc::new(SystemClock);
    let node = node_id(&args.state.with_extension("node"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (boot, journal) = match &args.store {
            Some(url) => {
                let mut pg = Postgres::connect(url)
                    .await
                    .with_context(|| format!("cannot use the state database {url}"))?;
                let boot = pg
                    .boot(clock.now(), node)
                    .await
                    .with_context(|| format!("cannot read the state database {url}"))?;
                (boot, Journal::spawn(pg))
            }
            None => open_sqlite(&args.state, clock.now())?,
        };
        let tracker = Tracker::new(creds, boot, rules, node, clock.now());
        let addr = SocketAddr::new(args.bind, args.server_port);
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let relay = (!args.no_relay).then(|| {
            Relay::new(RelayLimits {
                rate: args.relay_rate * 1024,
                circuits: args.relay_connections as usize,
            })
        });
        let mut shared = Shared::with_relay(tracker, journal, clock, relay);
        if let Some(url) = &args.bus {
            let bus = tracker::bus::Bus::connect(url, node)
                .await
                .with_context(|| format!("cannot use the bus {url}"))?;
            shared = shared.with_bus(bus.clone());
            let listening = listener.local_addr()?;
            let at = args
                .advertise
                .or((!listening.ip().is_unspecified()).then_some(listening));
            if let Some(addr) = at {
                let fingerprint = tls.as_ref().map(|id| id.fingerprint().0);
                shared.with(|t, _| t.advertise(wire::TrackerEndpoint { addr, fingerprint }));
            }
            let (s, node) = (shared.clone(), node);
            tokio::spawn(async move {
                if let Err(e) = bus.serve(s, node).await {
                    tracing::error!(error = %e, "the bus stopped");
                }
            });
        }
        tracker::serve(listener, shared, tls, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        Ok(())
    })
}

/// This tracker's id among trackers sharing a store, kept in `path` (beside the state
/// database, `tracker.node`) so a restarted tracker is the same one: made on first start.
fn node_id(path: &std::path::Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .with_context(|| format!("{} does not hold a tracker id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = rand::random::<u64>() >> 1;
            std::fs::write(path, format!("{id}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The embedded store at `path`: what the tracker starts from, and its journal (on a
/// thread of its own: SQLite's calls block), with a thread moving its write-ahead log into
/// the database file.
fn open_sqlite(path: &std::path::Path, now: Millis) -> anyhow::Result<(Boot, Journal)> {
    let store = Sqlite::open(path)
        .with_context(|| format!("cannot open state database {}", path.display()))?;
    let boot = store
        .boot_now(now)
        .with_context(|| format!("cannot read state database {}", path.display()))?;
    let checkpointer = store
        .hand_checkpoints_to(path)
        .with_context(|| format!("cannot open state database {}", path.display()))?;
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = checkpointer.run() {
                tracing::warn!(error = %e, "checkpoint failed");
            }
        })?;
    Ok((boot, Journal::spawn_blocking(store)?))
}

/// The kernel's backlog is the first line against a connect flood: connections wait there
/// for the gate to turn them away, and once it is full the kernel drops new ones, a
/// legitimate user's too (their connect then takes a second longer). tokio's default is
/// 1,024; 5,000 connections reopened together overflowed it (`TcpExtListenOverflows` in
/// `bench/abuse`), so ask for the most Linux allows by default (`somaxconn`, 4,096).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4_096)
}

/// jemalloc, handing freed pages back to the system within a second from a background
/// thread. With glibc's malloc, 10,000 idle clients cost 10-13 KiB each: pages freed after
/// the burst of presence notices their logins cause stayed in the process (calling
/// `malloc_trim` by hand halved RSS, so it was free memory, not live). With this, 3.2 KiB
/// each, which is the live memory (`bench/relay --idle 3000`; valgrind massif agrees).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc before `main`; the symbol name is the crate's prefixed `malloc_conf`.
#[used]
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
