//! Networking glue: the accept loop, one task per connection, and the timeout sweeper.
//!
//! The state lives in a `std::sync::Mutex<Tracker>`: every operation on it is short and
//! synchronous, and the guard is never held across an `.await` (the guard is confined to
//! `Shared::with`, which takes a plain closure).

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};
use wire::codec::WireCodec;
use wire::{
    Circuit, ClientMsg, LoginResult, Password, RelayRefusal, ServerMsg, UserName, PROTOCOL_VERSION,
};

use crate::auth::LoginStep;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::credentials::Secret;
use crate::gate::Gate;
use crate::outbox::Outbox;
use crate::relay::{self, Half, JoinError, Joined, Relay, RelayLimits};
use crate::shun::SynFilter;
use crate::state::{ConnId, Listener, Outcome, Tracker};
use crate::store::{self, Answer, Journal, StoreError, Ticket};
use link::tls::ServerIdentity;
use link::tls_server::ServerStream;
use link::Stream;

/// Simultaneous connections; one more waits in the kernel's backlog until one closes.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Clients only send small frames (the largest, a `Register` of 256 chunk hashes, is under
/// 10 KiB); anything bigger is an attack or a bug.
pub const MAX_CLIENT_FRAME: usize = 32 * 1024;
/// Frames a connection may send before logging in (`CheckUser` + `Login` attempts).
const MAX_LOGIN_FRAMES: usize = 32;
/// The client's `Hello` comes at once, or the connection is not a client.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Before logging in, each frame within this (a person typing a name or a password; the
/// client connects again if it took longer), and the whole login within [`LOGIN_DEADLINE`].
/// Neither depends on the inactivity timeout, which is for logged-in users.
pub const LOGIN_IDLE: Duration = Duration::from_secs(60);
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(300);
/// Requests handled before their replies are written, when several are waiting.
const WRITE_BATCH: usize = 64;
/// Buffer capacity a new connection starts with; most frames are far smaller.
const BUFFER_START: usize = 512;
/// A read buffer that grew past this during a burst is given back afterwards.
const BUFFER_KEEP: usize = 16 * 1024;
/// A write that makes no progress this long means the client stopped reading: the
/// connection is dropped (and with it the session, its slot and its buffers). A client on
/// a slow but working link drains its socket continuously and never comes near it.
pub const WRITE_STALL: Duration = Duration::from_secs(20);
/// Once the session has ended (logout, timeout, a client too slow to keep up), what is
/// left to write (the reason, the last reply) gets this long, progress or not.
pub const LAST_WRITE: Duration = Duration::from_secs(2);
/// How long a sender refused as too fast goes unread (see `quota`): the refusal's wait,
/// but at least `MIN_QUIET` and at most `MAX_QUIET`. What the sender sends meanwhile
/// waits in its own socket, not in our CPU; the floor makes a sender that keeps pushing
/// at a fast rate's edge cost one wake-up per 50 ms instead of one per token.
const MIN_QUIET: Duration = Duration::from_millis(50);
const MAX_QUIET: Duration = Duration::from_secs(2);

pub struct Shared {
    tracker: Mutex<Tracker>,
    /// Per-address admission before login; its own lock, never taken with `tracker`'s.
    gate: Mutex<Gate>,
    clock: Arc<dyn Clock>,
    /// Users whose password is being checked: one check per user at a time, so parallel
    /// guesses cannot all be checked before the first failure counts (3 strikes).
    verifying: Mutex<HashSet<UserName>>,
    verified: Notify,
    /// Hashed passwords checked at once: each takes a core for ~30 ms and 19 MiB, so a
    /// burst of logins queues here instead of taking every core from the relay.
    hashing: Semaphore,
    /// Connections carried for peers that cannot connect otherwise (`None`: `--no-relay`).
    relay: Option<Arc<Relay>>,
    /// Where what the rules record as durable goes, in the order they recorded it.
    journal: Journal,
    /// The other trackers of a cluster (`--bus`), if any.
    bus: Option<Bus>,
}

impl Shared {
    pub fn new(tracker: Tracker, journal: Journal, clock: Arc<dyn Clock>) -> Arc<Self> {
        let relay = tracker
            .rules
            .relay
            .then(|| Relay::new(RelayLimits::default()));
        Self::with_relay(tracker, journal, clock, relay)
    }

    /// Makes this tracker one of a cluster talking over `bus` (before it serves anyone).
    pub fn with_bus(mut self: Arc<Self>, bus: Bus) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("joined before serving").bus = Some(bus);
        self.with(|t, _| t.join_cluster());
        self
    }

    /// As `new`, with the relay's own limits (or none).
    pub fn with_relay(
        tracker: Tracker,
        journal: Journal,
        clock: Arc<dyn Clock>,
        relay: Option<Arc<Relay>>,
    ) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Self {
            tracker: Mutex::new(tracker),
            gate: Mutex::new(Gate::default()),
            clock,
            verifying: Mutex::default(),
            verified: Notify::new(),
            hashing: Semaphore::new(cores.saturating_sub(1).max(1)),
            relay,
            journal,
            bus: None,
        })
    }

    /// Waits until no other connection is checking `user`'s password, then holds the turn
    /// until the returned guard drops.
    async fn verify_turn(&self, user: &UserName) -> VerifyTurn<'_> {
        loop {
            // Registered before looking, so a turn ending in between is not missed.
            let ended = self.verified.notified();
            if self
                .verifying
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user.clone())
            {
                return VerifyTurn {
                    shared: self,
                    user: user.clone(),
                };
            }
            ended.await;
        }
    }

    /// Checks `password` against `secret`: inline when plain, on a blocking thread (one of
    /// [`Shared::hashing`]) when hashed.
    async fn verify(&self, secret: Secret, password: Password) -> bool {
        if !secret.is_hashed() {
            return secret.verify(&password);
        }
        let Ok(_slot) = self.hashing.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || secret.verify(&password))
            .await
            .unwrap_or(false)
    }

    /// Runs `f` on the per-address gate with the current time.
    fn gate<R>(&self, f: impl FnOnce(&mut Gate, crate::clock::Millis) -> R) -> R {
        let now = self.clock.now();
        let mut guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard, now)
    }

    /// Runs `f` on the state with the current time; what it recorded as durable goes to
    /// the journal, nobody waiting for it.
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker, crate::clock::Millis) -> R) -> R {
        self.act(f).0
    }

    /// Runs `f` on the state with the current time, and hands what it recorded as durable
    /// to the journal before the lock goes (so in the order it happened everywhere): the
    /// ticket for its answers, if it recorded anything. The only place the lock is taken.
    pub fn act<R>(
        &self,
        f: impl FnOnce(&mut Tracker, crate::clock::Millis) -> R,
    ) -> (R, Option<Ticket>) {
        let now = self.clock.now();
        // A panic while holding the lock would be a bug in a rule; the state is still
        // consistent enough to keep serving everyone else, so take it back.
        let mut guard = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut guard, now);
        let effects = guard.take_effects();
        let ticket = (!effects.is_empty()).then(|| self.journal.submit(effects));
        if let Some(bus) = &self.bus {
            let out = guard.take_bus();
            if !out.is_empty() {
                bus.send(out);
            }
        }
        (r, ticket)
    }
}

/// How connections are carried: TLS with this identity, or (`--insecure-plaintext`) in
/// clear.
pub type Tls = Option<Arc<ServerIdentity>>;

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Tls, shutdown: impl Future) {
    let sweeper = tokio::spawn(sweep(shared.clone()));
    let presence = tokio::spawn(flush_presence(shared.clone()));
    let lease = tokio::spawn(renew_lease(shared.clone()));
    tokio::select! {
        _ = accept_loop(listener, shared, tls) => {}
        _ = shutdown => info!("shutting down"),
    }
    sweeper.abort();
    presence.abort();
    lease.abort();
}

/// Keeps this tracker's lease in the store (see `state::LEASE`).
async fn renew_lease(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(crate::state::RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.with(|t, now| t.renew_lease(now));
    }
}

/// Sends gathered presence changes to everyone, every `presence::FLUSH_EVERY` or, with
/// many online, less often (`presence::flush_interval`).
async fn flush_presence(shared: Arc<Shared>) {
    let mut wait = crate::presence::FLUSH_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        let online = shared.with(|t, _| {
            t.flush_presence();
            t.online_count()
        });
        wait = crate::presence::flush_interval(online);
    }
}

/// Accepts connections without handing them to the reactor until the gate has let them
/// in. A connection turned away then costs one `accept` and one `close` (a reset, with no
/// state left behind), not also two `epoll_ctl`s, a FIN exchange and a TIME_WAIT entry:
/// under a connect flood from one address those were 40% of the tracker's CPU (`perf`
/// on `bench/abuse --flood-retry-ms 0`).
struct Acceptor(AsyncFd<std::net::TcpListener>);

impl Acceptor {
    fn new(listener: TcpListener) -> std::io::Result<Acceptor> {
        let std = listener.into_std()?;
        std.set_nonblocking(true)?;
        // SAFETY: a std listener owns its descriptor, which stays open and the same for
        // as long as the `AsyncFd` that now owns the listener.
        let fd = unsafe { AsyncFd::register(std) }.map_err(std::io::Error::from)?;
        Ok(Acceptor(fd))
    }

    async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
                return accepted;
            }
        }
    }
}

/// Closes `stream` with a reset.
fn turn_away(stream: std::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Tls) {
    let ipv6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
    let acceptor = match Acceptor::new(listener) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot accept connections");
            return;
        }
    };
    let mut filter = SynFilter::new(ipv6);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut next_id: ConnId = 0;
    let mut backoff = Duration::from_millis(10);
    loop {
        // Take the permit first so a flood waits in the backlog instead of in our memory.
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let shun_end = shared.gate(|g, _| g.next_shun_end());
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = sleep_until_millis(&shared, shun_end.unwrap_or_default()), if shun_end.is_some() => {
                let change = shared.gate(|g, now| {
                    g.expire_shuns(now);
                    g.shun_change()
                });
                apply_shuns(&acceptor, &mut filter, change);
                continue;
            }
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: wait for connections to close rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        next_id += 1;
        let id = next_id;
        // A dual-stack listener sees IPv4 clients as mapped addresses: one address, one count.
        let ip = addr.ip().to_canonical();
        let (admitted, change) = shared.gate(|g, now| (g.admit(ip, now), g.shun_change()));
        apply_shuns(&acceptor, &mut filter, change);
        if let Err(why) = admitted {
            // Closed at once: the client says the server closed the connection.
            debug!(%addr, ?why, "turned away");
            turn_away(stream);
            continue;
        }
        filter.clear_inherited(stream.as_fd());
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot take an accepted connection");
                shared.gate(|g, _| g.left_prelogin(ip));
                continue;
            }
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Err(why) = connection(id, stream, tls, addr, ip, &shared).await {
                debug!(conn = id, %addr, "dropped: {why}");
            }
            drop(permit);
        });
    }
}

/// Puts a change in the shunned addresses into the listener's filter.
fn apply_shuns(acceptor: &Acceptor, filter: &mut SynFilter, change: Option<Vec<IpAddr>>) {
    let Some(shunned) = change else { return };
    match filter.set(acceptor.0.get_ref().as_fd(), &shunned) {
        Ok(()) => debug!(?shunned, "shunned addresses"),
        // The gate still turns them away, one accept and reset each.
        Err(e) => warn!(error = %e, "cannot filter shunned addresses"),
    }
}

/// Sleeps until the tracker's clock reads `at`.
async fn sleep_until_millis(shared: &Shared, at: crate::clock::Millis) {
    let now = shared.clock.now();
    tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now.0))).await;
}

/// Logs out idle users. Sleeps until the earliest possible expiry (or 1 s if nobody is
/// online), so an idle tracker does not wake needlessly.
async fn sweep(shared: Arc<Shared>) {
    loop {
        let (expired, next) =
            shared.with(|t, now| (t.expire(now), t.next_expiry().map(|n| (n, now))));
        for user in expired {
            info!(%user, "logged out for inactivity");
        }
        let wait = match next {
            Some((at, now)) => Duration::from_millis(at.0.saturating_sub(now.0)),
            None => Duration::from_secs(1),
        };
        tokio::time::sleep(wait.clamp(Duration::from_millis(20), Duration::from_secs(1))).await;
    }
}

type Reader = FramedRead<ReadHalf<Stream>, WireCodec<ClientMsg, ServerMsg>>;

/// Why a connection ended early; only ever logged under `-d`.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    Frame(#[from] wire::FrameError),
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("no TLS handshake or Hello in time")]
    HelloDeadline,
    #[error("the client stopped reading")]
    Stalled,
    #[error("closed before logging in")]
    Closed,
    #[error("silent for too long before logging in")]
    LoginIdle,
    #[error("too slow to log in")]
    LoginDeadline,
    #[error("too many frames before logging in")]
    LoginFlood,
    #[error("protocol version {0} not supported")]
    Version(u32),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("login refused: {0:?}")]
    Refused(LoginResult),
}

/// One client's connection: its read half, and its write half fed from its outbox, which
/// the tracker also queues events into once the client has logged in.
struct Conn {
    id: ConnId,
    reader: Reader,
    writer: WriteHalf<Stream>,
    outbox: Arc<Outbox>,
}

impl Conn {
    /// Writes everything queued. `false` once the outbox was closed and is now drained:
    /// the session is over.
    async fn write_out(&mut self) -> Result<bool, Dropped> {
        let batch = self.outbox.take();
        if !batch.bytes.is_empty() {
            write_all_within(&mut self.writer, &batch.bytes, &self.outbox, batch.last).await?;
        }
        Ok(!batch.last)
    }

    /// Queues the answer to the client's own frame.
    fn reply(&self, msg: &ServerMsg) -> Result<(), Dropped> {
        Ok(self.outbox.push_reply(msg)?)
    }
}

/// Writes `bytes` and flushes them (TLS keeps what the socket did not take until then),
/// giving up after [`WRITE_STALL`] without progress, or [`LAST_WRITE`] once `outbox` is
/// closed (`last`: it already was when the batch was taken).
async fn write_all_within<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    outbox: &Outbox,
    last: bool,
) -> Result<(), Dropped> {
    use tokio::time::{sleep_until, Instant};
    let mut done = 0;
    let mut ending = last;
    let mut deadline = Instant::now() + if last { LAST_WRITE } else { WRITE_STALL };
    while done < bytes.len() {
        tokio::select! {
            n = w.write(&bytes[done..]) => match n? {
                0 => return Err(Dropped::Write(std::io::ErrorKind::WriteZero.into())),
                n => {
                    done += n;
                    if !ending {
                        deadline = Instant::now() + WRITE_STALL;
                    }
                }
            },
            () = sleep_until(deadline) => return Err(Dropped::Stalled),
            () = outbox.closed(), if !ending => {
                ending = true;
                deadline = deadline.min(Instant::now() + LAST_WRITE);
            }
        }
    }
    loop {
        tokio::select! {
            flushed = w.flush() => return Ok(flushed?),
            () = sleep_until(deadline) => return Err(Dropped::Stalled),
            () = outbox.closed(), if !ending => {
                ending = true;
                deadline = deadline.min(Instant::now() + LAST_WRITE);
            }
        }
    }
}

impl Drop for Conn {
    /// A connection gone mid-session takes no more events; `disconnected` logs it out.
    fn drop(&mut self) {
        self.outbox.close();
    }
}

async fn connection(
    id: ConnId,
    tcp: TcpStream,
    tls: Tls,
    addr: SocketAddr,
    ip: IpAddr,
    shared: &Arc<Shared>,
) -> Result<(), Dropped> {
    debug!(conn = id, %addr, "connected");
    let waiting = Prelogin { shared, ip };
    // The TLS handshake and the client's Hello, together within the Hello deadline.
    let hello_by = tokio::time::Instant::now() + HELLO_DEADLINE;
    let stream: Stream = match tls {
        Some(id) => {
            match tokio::time::timeout_at(hello_by, ServerStream::accept(id.config(), tcp)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => return Err(Dropped::Tls(e)),
                Err(_) => return Err(Dropped::HelloDeadline),
            }
        }
        None => Box::new(tcp),
    };
    let (r, w) = tokio::io::split(stream);
    let mut reader =
        FramedRead::with_capacity(r, WireCodec::with_max(MAX_CLIENT_FRAME), BUFFER_START);
    let left = hello_by.saturating_duration_since(tokio::time::Instant::now());
    let first = next_login_frame(&mut reader, left).await?;
    if let ClientMsg::RelayJoin { version, circuit } = first {
        return relayed(reader, w, version, circuit, waiting).await;
    }
    let mut conn = Conn {
        id,
        reader,
        writer: w,
        outbox: Arc::new(Outbox::default()),
    };
    match first {
        ClientMsg::Hello { version } if version == PROTOCOL_VERSION => {
            conn.reply(&ServerMsg::Hello { version })?;
            conn.write_out().await?;
        }
        ClientMsg::Hello { version } => {
            conn.reply(&ServerMsg::Unsupported {
                version: PROTOCOL_VERSION,
            })?;
            conn.write_out().await?;
            return Err(Dropped::Version(version));
        }
        _ => return Err(Dropped::Unexpected("first frame must be Hello")),
    }

    let (user, p2p_port) =
        match tokio::time::timeout(LOGIN_DEADLINE, login(&mut conn, addr, shared)).await {
            Ok(user) => user?,
            Err(_) => return Err(Dropped::LoginDeadline),
        };
    drop(waiting);
    debug!(conn = id, %user, "logged in");
    // From here on, however the connection ends (a failed write of the welcome itself, an
    // error, a panic), the session ends with it: no ghost stays "online".
    let _session = SessionGuard {
        shared,
        user: user.clone(),
        conn: id,
    };
    if p2p_port != 0 {
        let listener = SocketAddr::new(ip, p2p_port);
        tokio::spawn(probe(shared.clone(), user.clone(), id, addr, listener));
    }
    // The welcome and the backlog `login` queued.
    conn.write_out().await?;
    session(&mut conn, &user, shared).await
}

/// How long the tracker tries to reach a client's listener. A router that drops incoming
/// connections gives no answer at all, so this is how long "unreachable" takes to learn.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Tries to connect to `user`'s listener where the tracker sees it (the address of its
/// connection, never one it claims), and records whether that worked. The connection is
/// closed at once: the listener sees one that says nothing.
async fn probe(
    shared: Arc<Shared>,
    user: UserName,
    conn: ConnId,
    observed: SocketAddr,
    listener: SocketAddr,
) {
    let reachable = matches!(
        tokio::time::timeout(PROBE_DEADLINE, TcpStream::connect(listener)).await,
        Ok(Ok(_))
    );
    debug!(%user, %listener, reachable, "probed the listener");
    shared.with(|t, _| t.probed(&user, conn, observed, reachable));
}

/// A connection that opened with `RelayJoin`: carried to the other side of its circuit
/// (see `relay`), or refused saying why.
async fn relayed(
    reader: Reader,
    mut writer: WriteHalf<Stream>,
    version: u32,
    circuit: Circuit,
    waiting: Prelogin<'_>,
) -> Result<(), Dropped> {
    let shared = waiting.shared;
    let users = match &shared.relay {
        Some(_) if version == PROTOCOL_VERSION => {
            shared.with(|t, now| t.join_circuit(&circuit, now))
        }
        _ => {
            refuse_relay(&mut writer, RelayRefusal::Unavailable).await;
            return Err(Dropped::Unexpected("relay unavailable"));
        }
    };
    let (Some(users), Some(relay)) = (users, shared.relay.clone()) else {
        refuse_relay(&mut writer, RelayRefusal::BadCircuit).await;
        return Err(Dropped::Unexpected("unknown circuit"));
    };
    // Admitted: from here on the circuit's limits hold it, not the per-address gate.
    drop(waiting);
    let early = reader.read_buffer().clone();
    let stream = reader.into_inner().unsplit(writer);
    debug!(?circuit, ?users, "relay side arrived");
    match relay.join(circuit, users, Half { stream, early }).await {
        Ok(Joined::Handed) => Ok(()),
        Ok(Joined::Both {
            mut mine,
            mut theirs,
            slots,
        }) => {
            // Both told before either's bytes move: each then starts its handshake.
            let ready = encode_frame(&ServerMsg::Relaying);
            for half in [&mut mine, &mut theirs] {
                let told = tokio::time::timeout(WRITE_STALL, async {
                    half.stream.write_all(&ready).await?;
                    half.stream.flush().await
                })
                .await;
                if !matches!(told, Ok(Ok(()))) {
                    return Err(Dropped::Stalled);
                }
            }
            let (ab, ba) = relay::splice(mine, theirs, slots).await;
            debug!(?circuit, ab, ba, "relay circuit ended");
            Ok(())
        }
        Err((mut half, why)) => {
            let why = match why {
                JoinError::Alone => RelayRefusal::BadCircuit,
                JoinError::TooMany => RelayRefusal::TooMany,
            };
            let _ = tokio::time::timeout(LAST_WRITE, async {
                half.stream
                    .write_all(&encode_frame(&ServerMsg::RelayRefused(why)))
                    .await?;
                half.stream.flush().await
            })
            .await;
            Err(Dropped::Unexpected("relay join refused"))
        }
    }
}

fn encode_frame(msg: &ServerMsg) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    wire::encode(msg, &mut out, wire::MAX_FRAME_LEN).expect("small frame");
    out.to_vec()
}

async fn refuse_relay(w: &mut WriteHalf<Stream>, why: RelayRefusal) {
    let frame = encode_frame(&ServerMsg::RelayRefused(why));
    let _ = tokio::time::timeout(LAST_WRITE, async {
        w.write_all(&frame).await?;
        w.flush().await
    })
    .await;
}

/// Counts its connection as waiting to log in (per address, see `gate`) until dropped.
struct Prelogin<'a> {
    shared: &'a Shared,
    ip: IpAddr,
}

impl Drop for Prelogin<'_> {
    fn drop(&mut self) {
        self.shared.gate(|g, _| g.left_prelogin(self.ip));
    }
}

/// One connection's turn at checking a user's password (see [`Shared::verify_turn`]).
struct VerifyTurn<'a> {
    shared: &'a Shared,
    user: UserName,
}

impl Drop for VerifyTurn<'_> {
    fn drop(&mut self) {
        self.shared
            .verifying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.user);
        self.shared.verified.notify_waiters();
    }
}

/// Logs its user out of the tracker when dropped, if the session is still this
/// connection's (`disconnected` checks).
struct SessionGuard<'a> {
    shared: &'a Shared,
    user: UserName,
    conn: ConnId,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .with(|t, now| t.disconnected(&self.user, self.conn, now));
    }
}

/// The next frame before login, within `wait`.
async fn next_login_frame(reader: &mut Reader, wait: Duration) -> Result<ClientMsg, Dropped> {
    match tokio::time::timeout(wait, reader.next()).await {
        Err(_) => Err(Dropped::LoginIdle),
        Ok(None) => Err(Dropped::Closed),
        Ok(Some(frame)) => Ok(frame?),
    }
}

async fn login(
    conn: &mut Conn,
    addr: SocketAddr,
    shared: &Shared,
) -> Result<(UserName, u16), Dropped> {
    let ip = addr.ip();
    for _ in 0..MAX_LOGIN_FRAMES {
        match next_login_frame(&mut conn.reader, LOGIN_IDLE).await? {
            ClientMsg::CheckUser { user } => {
                let answer = shared.with(|t, _| t.check_user(&user));
                conn.reply(&ServerMsg::UserCheck(answer))?;
                conn.write_out().await?;
            }
            ClientMsg::Login {
                user,
                password,
                p2p_port,
                key,
                lan_ip,
            } => {
                throttled(conn, shared, ip).await?;
                let (id, outbox) = (conn.id, conn.outbox.clone());
                let turn = shared.verify_turn(&user).await;
                let result = match shared.with(|t, now| t.login_check(&user, now)) {
                    Err(refused) => refused,
                    Ok(secret) => {
                        let ok = shared.verify(secret, password).await;
                        let listener = Listener::announced(addr, p2p_port, key, lan_ip);
                        let (step, ticket) = shared
                            .act(|t, now| t.login_verified(&user, ok, now, id, outbox, listener));
                        settled(shared, &user, step, ticket).await
                    }
                };
                drop(turn);
                if matches!(result, LoginResult::BadPassword | LoginResult::LockedNow) {
                    shared.gate(|g, now| g.failed(ip, now));
                }
                // A welcome was queued by `login` itself, ahead of the session's backlog;
                // it is written once the session's guard exists.
                if result == LoginResult::Welcome {
                    return Ok((user, p2p_port));
                }
                conn.reply(&ServerMsg::Login(result))?;
                conn.write_out().await?;
                if result != LoginResult::BadPassword {
                    return Err(Dropped::Refused(result));
                }
            }
            ClientMsg::Resume {
                user,
                token,
                p2p_port,
                key,
                lan_ip,
            } => {
                // Paced like password logins from the address (a token cannot be guessed,
                // but each try costs a database round trip).
                throttled(conn, shared, ip).await?;
                let (id, outbox) = (conn.id, conn.outbox.clone());
                let turn = shared.verify_turn(&user).await;
                let listener = Listener::announced(addr, p2p_port, key, lan_ip);
                let (step, ticket) =
                    shared.act(|t, now| t.resume(&user, &token, now, id, outbox, listener));
                let result = settled(shared, &user, step, ticket).await;
                drop(turn);
                if result == LoginResult::ResumeRefused {
                    shared.gate(|g, now| g.failed(ip, now));
                }
                if result == LoginResult::Welcome {
                    return Ok((user, p2p_port));
                }
                conn.reply(&ServerMsg::Login(result))?;
                conn.write_out().await?;
                return Err(Dropped::Refused(result));
            }
            _ => return Err(Dropped::Unexpected("not logged in")),
        }
    }
    Err(Dropped::LoginFlood)
}

/// A login's or resume's result, once the store answered if it had to. The caller still
/// holds the user's turn: this user's next attempt waits for it.
async fn settled(
    shared: &Shared,
    user: &UserName,
    step: LoginStep,
    ticket: Option<store::Ticket>,
) -> LoginResult {
    match step {
        LoginStep::Done(result) => result,
        LoginStep::Wait(wait) => {
            let answers = store::answers(ticket).await;
            shared.with(|t, now| t.login_settled(user, wait, answers, now))
        }
    }
}

/// Refuses (and ends) a login or resume from `ip` while it must wait after failed ones.
async fn throttled(conn: &mut Conn, shared: &Shared, ip: IpAddr) -> Result<(), Dropped> {
    if let Err(retry_secs) = shared.gate(|g, now| g.may_try(ip, now)) {
        let result = LoginResult::Throttled { retry_secs };
        conn.reply(&ServerMsg::Login(result))?;
        conn.write_out().await?;
        return Err(Dropped::Refused(result));
    }
    Ok(())
}

async fn session(conn: &mut Conn, user: &UserName, shared: &Shared) -> Result<(), Dropped> {
    use tokio::time::{sleep_until, Instant};
    // Set after a `TooFast` refusal: nothing more is read from this client until then.
    let mut quiet_until: Option<Instant> = None;
    let mut later: Later<'_> = FuturesOrdered::new();
    loop {
        // Biased toward the client's own requests: a batch of them ends by writing
        // everything queued, events included, so a client sending flat out still gets its
        // events, and a client flooded with events still has its requests read (a `block`
        // of the flooder, a `logout`). The other way round, a steady stream of events kept
        // the requests waiting. Random order cost a third of the relay's throughput
        // (`bench/relay`): more, smaller writes.
        tokio::select! {
            biased;
            // Replies that were on their way (messages handed to another tracker) first.
            Some(reply) = later.next(), if !later.is_empty() => {
                conn.outbox.push_reply(&ServerMsg::Reply(reply))?;
                replies_in(&conn.outbox, &mut later)?;
                if !conn.write_out().await? {
                    return Ok(());
                }
            }
            frame = conn.reader.next(), if quiet_until.is_none() && later.len() < MAX_IN_FLIGHT => {
                let Some(frame) = frame else { return Ok(()) };
                // Handle every request already received, then write all replies (and the
                // events queued meanwhile, in order) at once: one write for a burst.
                let mut next = Some(frame?);
                let mut handled = 0;
                while let Some(frame) = next.take() {
                    match handle(conn.id, &conn.outbox, user, frame, shared, &mut later).await? {
                        Flow::Continue => {}
                        Flow::End => {
                            // Every reply owed first, in order.
                            while let Some(reply) = later.next().await {
                                conn.outbox.push_reply(&ServerMsg::Reply(reply))?;
                            }
                            conn.write_out().await?;
                            return Ok(());
                        }
                        Flow::Quiet(wait) => {
                            let wait = wait.clamp(MIN_QUIET, MAX_QUIET);
                            quiet_until = Some(Instant::now() + wait);
                            break;
                        }
                    }
                    handled += 1;
                    if handled == WRITE_BATCH {
                        break; // the rest stays buffered for the next turn of the loop
                    }
                    next = match conn.reader.next().now_or_never() {
                        Some(Some(f)) => Some(f?),
                        Some(None) => {
                            conn.write_out().await?;
                            return Ok(());
                        }
                        None => None,
                    };
                }
                // A client sending flat out must not keep its stored messages (and with a
                // new session's, everything held behind them) waiting.
                if conn.outbox.take_mail() {
                    read_mail(conn.id, user, shared).await;
                }
                replies_in(&conn.outbox, &mut later)?;
                if !conn.write_out().await? {
                    return Ok(());
                }
                shrink(&mut conn.reader);
            }
            () = conn.outbox.ready() => {
                // Stored messages first: a new session's events wait behind its backlog
                // (`Outbox::hold`).
                if conn.outbox.take_mail() {
                    read_mail(conn.id, user, shared).await;
                }
                // The outbox closes when the tracker ends the session (timeout, slow
                // client); what it queued before that, such as the reason, is written first.
                if !conn.write_out().await? {
                    return Ok(());
                }
            }
            // An async block: nothing (no timer) is made unless the branch is polled.
            () = async { sleep_until(quiet_until.unwrap_or_else(Instant::now)).await }, if quiet_until.is_some() => {
                quiet_until = None;
            }
        }
    }
}

enum Flow {
    Continue,
    End,
    /// Refused as too fast: read nothing more for this long.
    Quiet(Duration),
}

/// Replies still on their way, in request order. A message handed to another tracker is
/// answered when that tracker answers; the requests after it are handled meanwhile, and
/// their replies wait behind it, so a client's pipeline is not held to one round trip over
/// the bus per message.
type Later<'a> = FuturesOrdered<Pin<Box<dyn Future<Output = wire::Reply> + Send + 'a>>>;

/// Replies a connection may have on their way; past that nothing more is read from it
/// until some are in.
const MAX_IN_FLIGHT: usize = 256;

/// One frame from a logged-in client; its reply is queued (on the outbox, or behind replies
/// still on their way), not yet written.
async fn handle<'a>(
    conn: ConnId,
    outbox: &Outbox,
    user: &'a UserName,
    frame: ClientMsg,
    shared: &'a Shared,
    later: &mut Later<'a>,
) -> Result<Flow, Dropped> {
    match frame {
        ClientMsg::Request(req) => {
            let logout = matches!(req, wire::Request::Logout);
            let (outcome, ticket) = shared.act(|t, now| t.request(user, conn, req, now));
            let reply = match outcome {
                Outcome::Forward { node, to, text } => {
                    // Handed over now, in the order of this user's requests; answered later.
                    let handed = shared
                        .bus
                        .as_ref()
                        .map(|b| b.deliver(node, user, &to, &text));
                    later.push_back(Box::pin(async move {
                        let how = match handed {
                            Some(answer) => answer.await,
                            None => crate::cluster::Delivery::NotHere,
                        };
                        let (outcome, ticket) =
                            shared.act(|t, now| t.forwarded(user, &to, &text, how, now));
                        settle(shared, user, outcome, ticket).await
                    }));
                    return Ok(Flow::Continue);
                }
                // This connection reads nothing more until its write is answered: one
                // batch in the journal per connection at most.
                other => settle(shared, user, other, ticket).await,
            };
            let flow = match reply {
                wire::Reply::LoggedOut => Flow::End,
                _ if logout => Flow::End,
                wire::Reply::Refused(wire::Refusal::TooFast { retry_ms }) => {
                    Flow::Quiet(Duration::from_millis(retry_ms.into()))
                }
                _ => Flow::Continue,
            };
            // Queued after the lock is released (encoding it there would lengthen the one
            // critical section every connection shares). Every event queued for this user
            // before the request was handled is already in the outbox, so it still lands
            // after them; an event queued meanwhile, after the request, may come first.
            if later.is_empty() {
                outbox.push_reply(&ServerMsg::Reply(reply))?;
            } else {
                later.push_back(Box::pin(std::future::ready(reply)));
            }
            Ok(flow)
        }
        ClientMsg::OfflineAck { up_to } => {
            shared.with(|t, _| t.ack_offline(user, conn, up_to));
            Ok(Flow::Continue)
        }
        _ => Err(Dropped::Unexpected("login frame after login")),
    }
}

/// The reply an outcome comes to, once what it waits for is in (not `Forward`: that is
/// `handle`'s).
async fn settle(
    shared: &Shared,
    user: &UserName,
    outcome: Outcome,
    ticket: Option<Ticket>,
) -> wire::Reply {
    match outcome {
        Outcome::Reply(reply) => reply,
        Outcome::Wait(pending) => {
            let answers = store::answers(ticket).await;
            shared.with(|t, now| t.finish(user, pending, answers, now))
        }
        // `forwarded` never forwards again.
        Outcome::Forward { .. } => wire::Reply::Refused(wire::Refusal::Unavailable),
    }
}

/// Queues the replies of `later` that are in, in order.
fn replies_in(outbox: &Outbox, later: &mut Later<'_>) -> Result<(), Dropped> {
    while let Some(Some(reply)) = later.next().now_or_never() {
        outbox.push_reply(&ServerMsg::Reply(reply))?;
    }
    Ok(())
}

/// Reads the messages stored for the session's user since it last looked, and queues them
/// (see `auth::read_mail`): a batch at a time, the next read asked for only once the
/// last is queued.
async fn read_mail(conn: ConnId, user: &UserName, shared: &Shared) {
    for _ in 0..crate::auth::OFFLINE_BATCHES_AT_ONCE {
        let (at, ticket) = shared.act(|t, _| t.read_mail(user, conn));
        let (Some(at), Some(ticket)) = (at, ticket) else {
            return;
        };
        let found = match store::answer_at(ticket.answers().await, at) {
            Ok(Answer::Messages(m)) => Ok(m),
            Ok(_) => Err(StoreError::Gone),
            Err(e) => Err(e),
        };
        if !shared.with(|t, now| t.mail_read(user, conn, found, now)) {
            return;
        }
    }
}

/// Idle connections are most connections: after a burst, give back a read buffer that grew.
fn shrink(reader: &mut Reader) {
    if reader.read_buffer().is_empty() && reader.read_buffer().capacity() > BUFFER_KEEP {
        *reader.read_buffer_mut() = BytesMut::with_capacity(BUFFER_START);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_write_to_a_client_that_stopped_reading_gives_up() {
        // A 64-byte pipe nobody reads: the first bytes go in, then nothing moves.
        let (mut ours, _theirs) = tokio::io::duplex(64);
        let outbox = Outbox::default();
        let started = Instant::now();
        let r = write_all_within(&mut ours, &[7; 4096], &outbox, false).await;
        assert!(matches!(r, Err(Dropped::Stalled)), "{r:?}");
        assert_eq!(started.elapsed(), WRITE_STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_write_ends_soon_after_the_session_does() {
        let (mut ours, _theirs) = tokio::io::duplex(64);
        let outbox = Arc::new(Outbox::default());
        let closer = outbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            closer.close(); // e.g. logged out as too slow to keep up
        });
        let started = Instant::now();
        let r = write_all_within(&mut ours, &[7; 4096], &outbox, false).await;
        assert!(matches!(r, Err(Dropped::Stalled)), "{r:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(3) + LAST_WRITE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        // Reads 64 bytes every 5 s: far slower than a write deadline would allow for the
        // whole batch, but never silent for long.
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0; 64];
            while theirs.read(&mut buf).await.is_ok_and(|n| n > 0) {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let outbox = Outbox::default();
        let r = write_all_within(&mut ours, &[7; 64 * 10], &outbox, false).await;
        assert!(r.is_ok(), "{r:?}");
    }
}
