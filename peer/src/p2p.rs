//! Private connections between peers: the listener every client runs, the tickets that
//! say who may connect, dialling out, and one task per open private chat.
//!
//! Trust comes only from the tracker: a connection is accepted when it presents a ticket
//! the tracker gave us (via `Event::PrivateTicket`) *and* proves it holds the key the
//! tracker gave with that ticket; the other side's name is the one that came with the
//! ticket, never one the connecting program claims. Both proofs and everything after them
//! travel encrypted (Noise IK, `link::noise`): the ticket rides in the handshake's first
//! message, which only our key can open, and the dialler checks that the listener holds the
//! key the tracker gave it. Each ticket opens one connection, once; a presentation with
//! the wrong key does not use it up.
//!
//! With `--insecure-plaintext` the same frames travel in clear and only the ticket counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::establish::{self, Path, Ways};
use crate::library::Library;
use crate::serve::Uploads;
use link::noise::Identity;
use link::{Security, Stream};
use wire::codec::WireCodec;
use wire::{
    Circuit, Holder, PeerKey, PeerMsg, PeerRefusal, Purpose, Text, Ticket, UserName, Via,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// How long an unused ticket stays valid.
const TICKET_LIFETIME: Duration = Duration::from_secs(60);
/// How long an incoming connection may wait for its ticket to arrive from the tracker: the
/// requester can reach us before the tracker's notice does.
const TICKET_WAIT: Duration = Duration::from_secs(5);
/// Connect, handshake and farewell deadlines.
const HANDSHAKE: Duration = Duration::from_secs(10);
const FAREWELL: Duration = Duration::from_secs(1);
/// Frames before authentication are tiny; junk cannot make us allocate.
const HANDSHAKE_FRAME: usize = 1024;
/// Incoming connections at once; more wait in the kernel's backlog.
const MAX_INCOMING: usize = 256;
/// Transfer connections one user may have to our listener at once. A downloader needs one
/// (one more while a dropped one is noticed); without a bound, one user holding enough
/// tickets (a `download` lookup hands out one per holder, 20 a second) could take every
/// slot of [`MAX_INCOMING`] with requests it never reads the answers to.
const MAX_TRANSFERS_PER_USER: usize = 4;
/// Private messages queued per connection before `private` reports it as gone.
const QUEUE: usize = 256;
/// Events (texts, opened and closed chats) waiting for the session loop.
pub const EVENTS: usize = 256;
/// A write to a peer that makes no progress this long: it stopped reading; cut it off.
pub const WRITE_STALL: Duration = Duration::from_secs(20);

pub type PeerFramed = Framed<Counted<Stream>, WireCodec<PeerMsg, PeerMsg>>;

/// Mixed into every peer handshake: a connection made by anything else fails it.
pub const PROLOGUE: &[u8] = b"swarmchat peer connection, Noise IK";

/// What the tracker handed us to connect to a peer: where, the one-time ticket, and the
/// key the listener there must prove it holds.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub addr: SocketAddr,
    pub ticket: Ticket,
    pub key: PeerKey,
    /// How the connection is made (`establish`).
    pub via: Via,
}

impl Grant {
    pub fn of(h: &Holder) -> Grant {
        Grant {
            addr: h.addr,
            ticket: h.ticket,
            key: h.key,
            via: h.via,
        }
    }
}

/// How this client opens connections to other peers.
#[derive(Clone)]
pub struct Dialer {
    pub security: Security,
    pub identity: Arc<Identity>,
    /// Reversal, punching and the relay, besides direct connections.
    pub ways: Ways,
}

/// One frame's bytes (length prefix included), for a handshake payload.
fn frame_bytes(msg: &PeerMsg) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    wire::encode(msg, &mut out, HANDSHAKE_FRAME).expect("handshake frames are small");
    out.to_vec()
}

/// The one frame a handshake payload holds, if it is exactly that (under the handshake's
/// small frame cap).
pub fn frame_of(payload: &[u8]) -> Option<PeerMsg> {
    let mut buf = bytes::BytesMut::from(payload);
    match wire::decode(&mut buf, HANDSHAKE_FRAME) {
        Ok(Some(msg)) if buf.is_empty() => Some(msg),
        _ => None,
    }
}

impl Dialer {
    /// Connects to the listener in `grant` and presents its ticket for `purpose`; with
    /// encryption, also checks that the listener holds the granted key. On success the
    /// connection is open with the full frame cap.
    pub async fn dial(
        &self,
        grant: &Grant,
        purpose: Purpose,
    ) -> Result<(PeerFramed, Path), String> {
        let addr = grant.addr;
        let hello = PeerMsg::Hello {
            version: PROTOCOL_VERSION,
            ticket: grant.ticket,
            purpose,
        };
        let (stream, path) = establish::to_target(&self.ways, grant.via, addr).await?;
        let opened = tokio::time::timeout(HANDSHAKE, async {
            match self.security {
                Security::Plaintext => {
                    let mut framed =
                        Framed::new(Counted::new(stream), WireCodec::with_max(HANDSHAKE_FRAME));
                    framed.send(hello).await.map_err(|e| e.to_string())?;
                    let answer = match framed.next().await {
                        Some(Ok(answer)) => answer,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("connection closed".into()),
                    };
                    Ok((framed, answer))
                }
                Security::Encrypted => {
                    let (stream, payload) = link::noise::initiate(
                        stream,
                        &self.identity,
                        &grant.key.0,
                        PROLOGUE,
                        &frame_bytes(&hello),
                    )
                    .await
                    .map_err(|e| match e {
                        link::noise::NoiseError::Handshake => {
                            format!(
                                "the peer at {addr} does not hold the key the server gave for it"
                            )
                        }
                        other => other.to_string(),
                    })?;
                    let answer = frame_of(&payload).ok_or("unexpected answer")?;
                    let framed = Framed::new(
                        Counted::new(Box::new(stream) as Stream),
                        WireCodec::with_max(HANDSHAKE_FRAME),
                    );
                    Ok((framed, answer))
                }
            }
        })
        .await;
        let (mut framed, answer) = match opened {
            Ok(r) => r?,
            Err(_) => return Err(format!("no answer from {addr}")),
        };
        match answer {
            PeerMsg::Accepted => {
                framed.codec_mut().set_max(MAX_FRAME_LEN);
                Ok((framed, path))
            }
            PeerMsg::Refused(why) => Err(format!("refused ({why:?})")),
            _ => Err("unexpected answer".into()),
        }
    }
}

/// A stream that counts the bytes read from it: how a download sees that a peer is
/// sending (even in the middle of a block) and how fast.
pub struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Counted<S> {
        Counted {
            inner,
            read: Arc::default(),
        }
    }

    /// Bytes read so far, shared.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Tickets the tracker has issued for connections to us, not yet used.
#[derive(Default)]
pub struct TicketBook {
    inner: Mutex<Book>,
    added: Notify,
}

#[derive(Default)]
struct Book {
    /// Unused tickets: who may connect with each, the key they must prove, and until when.
    open: HashMap<Ticket, (UserName, PeerKey, Instant)>,
    /// Used tickets, until they would have expired: a replay is refused at once instead of
    /// waiting for a ticket that will never come.
    used: HashMap<Ticket, Instant>,
    /// Expired entries are swept at most this often: a sweep on every insert made a flood
    /// of tickets quadratic. Between sweeps, expiry is checked on each lookup.
    next_prune: Option<Instant>,
}

/// How often expired tickets are swept out of the book.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl Book {
    fn prune(&mut self, now: Instant) {
        if self.next_prune.is_some_and(|t| now < t) {
            return;
        }
        self.open.retain(|_, (_, _, expires)| *expires > now);
        self.used.retain(|_, expires| *expires > now);
        self.next_prune = Some(now + PRUNE_EVERY);
    }
}

/// What a claim found.
enum Claim {
    Granted(UserName),
    Refused(PeerRefusal),
    NotYet,
}

impl TicketBook {
    pub fn add(&self, ticket: Ticket, from: UserName, key: PeerKey) {
        let now = Instant::now();
        let mut book = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        book.prune(now);
        book.open.insert(ticket, (from, key, now + TICKET_LIFETIME));
        drop(book);
        self.added.notify_waiters();
    }

    fn try_claim(&self, ticket: &Ticket, key: Option<PeerKey>) -> Claim {
        let now = Instant::now();
        let mut book = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        book.prune(now);
        if book.used.get(ticket).is_some_and(|expires| *expires > now) {
            return Claim::Refused(PeerRefusal::BadTicket);
        }
        match book.open.get(ticket) {
            // Someone holding another key: refused, and the ticket stays for its owner.
            Some((_, want, expires)) if *expires > now && key.is_some_and(|k| k != *want) => {
                Claim::Refused(PeerRefusal::WrongKey)
            }
            Some((_, _, expires)) if *expires > now => {
                let (user, _, expires) = book.open.remove(ticket).expect("just seen");
                book.used.insert(*ticket, expires);
                Claim::Granted(user)
            }
            // Expired but not swept yet: as good as never given.
            Some(_) | None => Claim::NotYet,
        }
    }

    /// Takes `ticket` out of the book for the holder of `key` (`None`: in clear, the
    /// ticket alone), waiting up to `wait` for it to arrive. Refused for a ticket that
    /// never came, expired or was used already (`BadTicket`), or that was issued for
    /// another key (`WrongKey`: the ticket stays unused).
    pub async fn claim(
        &self,
        ticket: &Ticket,
        key: Option<PeerKey>,
        wait: Duration,
    ) -> Result<UserName, PeerRefusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up before looking, so an `add` in between is not missed.
            let added = self.added.notified();
            match self.try_claim(ticket, key) {
                Claim::Granted(user) => return Ok(user),
                Claim::Refused(why) => return Err(why),
                Claim::NotYet => {}
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Err(PeerRefusal::BadTicket);
            }
        }
    }
}

/// Why a private connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The other side said `Bye` (stopprivate, logout).
    Bye,
    /// The other side replaced this connection with a newer one.
    Superseded,
    /// The connection broke or the other side misbehaved.
    Lost,
}

/// What private connections report to the session loop.
#[derive(Debug)]
pub enum P2pEvent {
    Opened(PeerHandle),
    OpenFailed { user: UserName, why: String },
    Text { user: UserName, id: u64, text: Text },
    Closed { user: UserName, id: u64, why: Ended },
}

/// One open private connection. Dropping it closes the connection without a farewell.
#[derive(Debug)]
pub struct PeerHandle {
    pub id: u64,
    pub user: UserName,
    /// Who opened it: decides which of two crossing connections survives.
    pub initiator: UserName,
    /// How the connection was made.
    pub path: Path,
    tx: mpsc::Sender<PeerMsg>,
    task: JoinHandle<()>,
}

impl PeerHandle {
    /// Queues a private message; `false` if it could not be (the queue is full, or the
    /// connection is gone: see [`PeerHandle::is_open`]).
    pub fn send_text(&self, text: Text) -> bool {
        self.tx.try_send(PeerMsg::Text { text }).is_ok()
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Says `farewell` (`Bye` or `Superseded`), closes, and waits briefly for it to go out.
    ///
    /// Returns within 2 × [`FAREWELL`] whatever the other side does: a partner that stopped
    /// reading leaves our queue full and our writer stuck, and is cut off.
    pub async fn close(self, farewell: PeerMsg) {
        let queued = tokio::time::timeout(FAREWELL, self.tx.send(farewell)).await;
        drop(self.tx);
        let mut task = self.task;
        if queued.is_err() || tokio::time::timeout(FAREWELL, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Shared by the listener and outgoing connections.
#[derive(Clone)]
pub struct P2p {
    me: Arc<Mutex<Option<UserName>>>,
    library: Arc<Library>,
    pub uploads: Arc<Uploads>,
    pub tickets: Arc<TicketBook>,
    events: mpsc::Sender<P2pEvent>,
    next_id: Arc<AtomicU64>,
    /// Transfer connections open per user (see [`MAX_TRANSFERS_PER_USER`]).
    transfers: Arc<Mutex<HashMap<UserName, usize>>>,
    /// Our key and whether connections are encrypted, for both directions.
    pub dialer: Dialer,
    /// Connections we make for others' introductions (reversed, punched, relayed).
    answering: Arc<Semaphore>,
}

/// One user's transfer connection, counted until dropped.
struct TransferSlot {
    counts: Arc<Mutex<HashMap<UserName, usize>>>,
    user: UserName,
}

impl TransferSlot {
    fn take(counts: &Arc<Mutex<HashMap<UserName, usize>>>, user: &UserName) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(user.clone()).or_default();
        if *n >= MAX_TRANSFERS_PER_USER {
            return None;
        }
        *n += 1;
        Some(TransferSlot {
            counts: counts.clone(),
            user: user.clone(),
        })
    }
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.user);
            }
        }
    }
}

impl P2p {
    pub fn new(
        events: mpsc::Sender<P2pEvent>,
        library: Arc<Library>,
        uploads: Arc<Uploads>,
        dialer: Dialer,
    ) -> P2p {
        P2p {
            me: Arc::new(Mutex::new(None)),
            library,
            uploads,
            tickets: Arc::default(),
            events,
            next_id: Arc::new(AtomicU64::new(1)),
            transfers: Arc::default(),
            dialer,
            answering: Arc::new(Semaphore::new(MAX_INCOMING)),
        }
    }

    /// Called once logged in: our own name, as initiator of outgoing connections.
    pub fn set_me(&self, me: UserName) {
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
    }

    fn me(&self) -> Option<UserName> {
        self.me.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Accepts private connections until the listener fails.
    pub async fn listen(self, listener: TcpListener) {
        let limit = Arc::new(Semaphore::new(MAX_INCOMING));
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let p2p = self.clone();
            tokio::spawn(async move {
                p2p.arrived(stream).await;
                drop(permit);
            });
        }
    }

    /// A connection to our listener: a dialler's handshake, or a peer we asked to connect
    /// back to us (`establish`), handed to the dial waiting for it.
    async fn arrived(&self, mut tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let mut first = [0u8; 1];
        // Peeked, not read: a handshake keeps its first byte.
        let peeked = tokio::time::timeout(HANDSHAKE, tcp.peek(&mut first)).await;
        if !matches!(peeked, Ok(Ok(1))) {
            return;
        }
        if first[0] == wire::REVERSED_MAGIC[0] {
            let mut opening = [0u8; 24];
            let read = tokio::time::timeout(HANDSHAKE, tcp.read_exact(&mut opening)).await;
            if matches!(read, Ok(Ok(_))) && opening[..8] == wire::REVERSED_MAGIC {
                let circuit = Circuit(opening[8..].try_into().expect("16 bytes"));
                self.dialer.ways.meetings.arrived(circuit, tcp);
            }
            return;
        }
        self.accept(Box::new(tcp), Path::Direct).await;
    }

    /// Answers a dialler's handshake on `stream` and, if its ticket and key check out,
    /// serves it: chunks for a transfer, a private chat otherwise.
    async fn accept(&self, stream: Stream, path: Path) {
        let Some((framed, ticket, purpose, key, answer)) = self.handshake(stream).await else {
            return; // junk, silence, the wrong frame or a failed handshake: just close
        };
        let Some(answer) = answer else {
            return; // refused (the answer went with the handshake)
        };
        let user = match self.tickets.claim(&ticket, key, TICKET_WAIT).await {
            Ok(user) => user,
            Err(why) => {
                let _ = answer.refuse(framed, why).await;
                return;
            }
        };
        let slot = match purpose {
            Purpose::Transfer => match TransferSlot::take(&self.transfers, &user) {
                Some(slot) => Some(slot),
                None => {
                    let _ = answer.refuse(framed, PeerRefusal::Busy).await;
                    return;
                }
            },
            Purpose::Chat => None,
        };
        let Some(mut framed) = answer.accept(framed).await else {
            return;
        };
        // Authenticated: the other side may now send full-size frames.
        framed.codec_mut().set_max(MAX_FRAME_LEN);
        if purpose == Purpose::Transfer {
            // Chunk requests: served quietly, never shown as a chat.
            crate::serve::serve(framed, user, self.library.clone(), self.uploads.clone()).await;
            drop(slot);
            return;
        }
        let handle = self.spawn(framed, user.clone(), user, path);
        let _ = self.events.send(P2pEvent::Opened(handle)).await;
    }

    /// Reads the dialler's hello, within [`HANDSHAKE`]: its ticket, purpose and (encrypted)
    /// proven key, and how to answer it. `None` for anything that is not a hello; an
    /// answer of `None` when it was refused already (another protocol version).
    #[allow(clippy::type_complexity)]
    async fn handshake(
        &self,
        tcp: Stream,
    ) -> Option<(
        Option<PeerFramed>,
        Ticket,
        Purpose,
        Option<PeerKey>,
        Option<Answer>,
    )> {
        let read = async {
            match self.dialer.security {
                Security::Plaintext => {
                    let mut framed =
                        Framed::new(Counted::new(tcp), WireCodec::with_max(HANDSHAKE_FRAME));
                    let hello = framed.next().await?.ok()?;
                    Some((Some(framed), hello, None, Answer::Clear))
                }
                Security::Encrypted => {
                    let (pending, payload) =
                        link::noise::respond(tcp, &self.dialer.identity, PROLOGUE)
                            .await
                            .ok()?;
                    let key = PeerKey(pending.remote());
                    let answer = Answer::Noise(Box::new(pending));
                    Some((None, frame_of(&payload)?, Some(key), answer))
                }
            }
        };
        let (framed, hello, key, answer) = tokio::time::timeout(HANDSHAKE, read).await.ok()??;
        let PeerMsg::Hello {
            version,
            ticket,
            purpose,
        } = hello
        else {
            return None;
        };
        if version != PROTOCOL_VERSION {
            let _ = answer
                .refuse(framed, PeerRefusal::Version(PROTOCOL_VERSION))
                .await;
            return Some((None, ticket, purpose, key, None));
        }
        Some((framed, ticket, purpose, key, Some(answer)))
    }

    /// Connects to `user` as `grant` says, in the background; the result arrives as
    /// `Opened` or `OpenFailed`.
    pub fn connect(&self, user: UserName, grant: Grant) {
        let p2p = self.clone();
        tokio::spawn(async move {
            let event = match p2p.open(&user, grant).await {
                Ok(handle) => P2pEvent::Opened(handle),
                Err(why) => P2pEvent::OpenFailed { user, why },
            };
            let _ = p2p.events.send(event).await;
        });
    }

    async fn open(&self, user: &UserName, grant: Grant) -> Result<PeerHandle, String> {
        let me = self.me().ok_or("not logged in")?;
        let (framed, path) = self.dialer.dial(&grant, Purpose::Chat).await?;
        Ok(self.spawn(framed, user.clone(), me, path))
    }

    /// The tracker introduced `from` to us (`Event::PrivateTicket`) on a path where we make
    /// (or help make) the connection: made in the background, then answered as our listener
    /// answers any dialler. Bounded like the listener: at most [`MAX_INCOMING`] at once.
    /// `relay`: where to meet the requester if not at our tracker's relay.
    pub fn introduced(
        &self,
        via: Via,
        addr: SocketAddr,
        relay: Option<Arc<crate::tracker_link::Dial>>,
    ) {
        if via == Via::Direct {
            return;
        }
        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
            return; // as a full listener would: the requester's dial fails
        };
        let p2p = self.clone();
        tokio::spawn(async move {
            if let Ok((stream, path)) =
                establish::to_requester(&p2p.dialer.ways, via, addr, relay).await
            {
                p2p.accept(stream, path).await;
            }
            drop(permit);
        });
    }

    fn spawn(
        &self,
        framed: PeerFramed,
        user: UserName,
        initiator: UserName,
        path: Path,
    ) -> PeerHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = self.events.clone();
        let task = tokio::spawn(run(framed, user.clone(), id, rx, events));
        PeerHandle {
            id,
            user,
            initiator,
            path,
            tx,
            task,
        }
    }
}

/// Slowest link a block is still sent over: below this a downloader is taken for one
/// that stopped reading.
const MIN_RATE: u64 = 4 * 1024;

/// Sends `msg` to a peer, giving up on one that stopped reading: a downloader would hold
/// an upload slot and a listener slot for good, a chat partner our writer. A frame gets [`WRITE_STALL`], and a block as long
/// again as it takes at [`MIN_RATE`] (64 s for 256 KiB).
pub async fn send(framed: &mut PeerFramed, msg: PeerMsg) -> Result<(), ()> {
    let len = match &msg {
        PeerMsg::Block { bytes, .. } => bytes.len() as u64,
        _ => 0,
    };
    let deadline = WRITE_STALL + Duration::from_millis(len * 1000 / MIN_RATE);
    match tokio::time::timeout(deadline, framed.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

/// How a listener answers a hello: in clear on the connection, or in the second message
/// of the Noise handshake (which also opens the encrypted session).
enum Answer {
    Clear,
    /// Boxed: the handshake state is most of a kilobyte, held only for a moment.
    Noise(Box<link::noise::Pending<Stream>>),
}

impl Answer {
    /// Accepts: the connection, framed (`framed` is the one read in clear, if any).
    async fn accept(self, framed: Option<PeerFramed>) -> Option<PeerFramed> {
        match self {
            Answer::Clear => {
                let mut framed = framed?;
                framed.send(PeerMsg::Accepted).await.ok()?;
                Some(framed)
            }
            Answer::Noise(pending) => {
                let stream = pending
                    .answer(&frame_bytes(&PeerMsg::Accepted))
                    .await
                    .ok()?;
                Some(Framed::new(
                    Counted::new(Box::new(stream) as Stream),
                    WireCodec::with_max(HANDSHAKE_FRAME),
                ))
            }
        }
    }

    /// Refuses, saying why (only the dialler can read it, when encrypted), then closes.
    async fn refuse(self, framed: Option<PeerFramed>, why: PeerRefusal) -> Option<()> {
        let refusal = PeerMsg::Refused(why);
        match self {
            Answer::Clear => framed?.send(refusal).await.ok(),
            Answer::Noise(pending) => {
                let mut stream = (*pending).answer(&frame_bytes(&refusal)).await.ok()?;
                tokio::io::AsyncWriteExt::shutdown(&mut stream).await.ok()
            }
        }
    }
}

/// One open private connection: writes what the session queues, reports what arrives.
async fn run(
    mut framed: PeerFramed,
    user: UserName,
    id: u64,
    mut rx: mpsc::Receiver<PeerMsg>,
    events: mpsc::Sender<P2pEvent>,
) {
    let why = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(msg) => {
                    let last = matches!(msg, PeerMsg::Bye | PeerMsg::Superseded);
                    // A partner that stops reading is cut off, not waited for.
                    if send(&mut framed, msg).await.is_err() {
                        break Some(Ended::Lost);
                    }
                    if last {
                        break None;
                    }
                }
                // Closed by us without a farewell.
                None => break None,
            },
            frame = framed.next() => match frame {
                Some(Ok(PeerMsg::Text { text })) => {
                    // Bounded: a partner sending faster than we show texts waits (its
                    // writes stall in TCP) instead of growing our memory.
                    if events.send(P2pEvent::Text { user: user.clone(), id, text }).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(PeerMsg::Bye)) => break Some(Ended::Bye),
                Some(Ok(PeerMsg::Superseded)) => break Some(Ended::Superseded),
                // A handshake frame now, junk, or a broken connection.
                Some(Ok(_)) | Some(Err(_)) | None => break Some(Ended::Lost),
            },
        }
    };
    if let Some(why) = why {
        let _ = events.send(P2pEvent::Closed { user, id, why }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_ticket_opens_once_and_only_for_its_key() {
        let book = TicketBook::default();
        let t = Ticket([7; 16]);
        let (hans, thief) = (Some(PeerKey([1; 32])), Some(PeerKey([2; 32])));
        book.add(t, u("hans"), PeerKey([1; 32]));
        // Another key: refused, and the ticket is still there for its owner.
        assert_eq!(
            book.claim(&t, thief, Duration::ZERO).await,
            Err(PeerRefusal::WrongKey)
        );
        assert_eq!(book.claim(&t, hans, Duration::ZERO).await, Ok(u("hans")));
        // Reuse is refused at once, even by a claim willing to wait.
        assert_eq!(
            book.claim(&t, hans, Duration::from_secs(3600)).await,
            Err(PeerRefusal::BadTicket)
        );
        let unknown = Ticket([8; 16]);
        assert_eq!(
            book.claim(&unknown, hans, Duration::ZERO).await,
            Err(PeerRefusal::BadTicket)
        );
        // In clear, the ticket alone counts.
        book.add(unknown, u("luke"), PeerKey([3; 32]));
        assert_eq!(
            book.claim(&unknown, None, Duration::ZERO).await,
            Ok(u("luke"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_returns_when_the_partner_stopped_reading() {
        // The queue is full and the writer stuck, as behind a partner that reads nothing.
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(PeerMsg::Bye).unwrap();
        let task = tokio::spawn(async move {
            let _rx = rx;
            std::future::pending::<()>().await
        });
        let h = PeerHandle {
            id: 1,
            user: u("yoda"),
            initiator: u("hans"),
            path: Path::Direct,
            tx,
            task,
        };
        let started = tokio::time::Instant::now();
        h.close(PeerMsg::Bye).await;
        assert_eq!(started.elapsed(), FAREWELL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chat_whose_partner_stopped_reading_is_cut_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_theirs, _) = theirs.unwrap(); // never read
        let framed = Framed::new(
            Counted::new(Box::new(ours.unwrap()) as link::Stream),
            WireCodec::with_max(MAX_FRAME_LEN),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let (events_tx, mut events) = mpsc::channel(EVENTS);
        let task = tokio::spawn(run(framed, u("yoda"), 1, rx, events_tx));
        let text = Text::new("x".repeat(wire::ids::MAX_TEXT_LEN)).unwrap();
        // Far more than the socket buffers hold; the queue fills, then the writer gives up.
        for _ in 0..QUEUE * 64 {
            if tx.send(PeerMsg::Text { text: text.clone() }).await.is_err() {
                break;
            }
        }
        let closed = events.recv().await;
        assert!(
            matches!(
                closed,
                Some(P2pEvent::Closed {
                    why: Ended::Lost,
                    ..
                })
            ),
            "{closed:?}"
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_waits_for_a_ticket_still_on_its_way() {
        let book = Arc::new(TicketBook::default());
        let t = Ticket([1; 16]);
        let b = book.clone();
        let claim = tokio::spawn(async move { b.claim(&t, None, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        book.add(t, u("luke"), PeerKey([3; 32]));
        assert_eq!(claim.await.unwrap(), Ok(u("luke")));

        // Never arrives: refused after the wait.
        let never = Ticket([2; 16]);
        let started = tokio::time::Instant::now();
        assert_eq!(
            book.claim(&never, None, Duration::from_secs(5)).await,
            Err(PeerRefusal::BadTicket)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
