//! Networking glue: the accept loop, one task per connection, and the timeout sweeper.
//!
//! The state lives in a `std::sync::Mutex<Tracker>`: every operation on it is short and
//! synchronous, and the guard is never held across an `.await` (the guard is confined to
//! `Shared::with`, which takes a plain closure).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};
use tracing::{debug, info, warn};
use wire::codec::WireCodec;
use wire::{ClientMsg, EncodedFrame, LoginResult, ServerMsg, UserName, PROTOCOL_VERSION};

use crate::clock::Clock;
use crate::state::{ConnId, Tracker, OUTBOUND_QUEUE};

/// Simultaneous connections; one more waits in the kernel's backlog until one closes.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Clients only send small frames (the largest, a `Register` of 256 chunk hashes, is under
/// 10 KiB); anything bigger is an attack or a bug.
pub const MAX_CLIENT_FRAME: usize = 32 * 1024;
/// Frames a connection may send before logging in (`CheckUser` + `Login` attempts).
const MAX_LOGIN_FRAMES: usize = 64;
/// How long a connection may stay silent before logging in, at least.
const MIN_LOGIN_IDLE: Duration = Duration::from_secs(30);
/// Events (or replies) written per flush when several are waiting.
const WRITE_BATCH: usize = 64;
/// Buffer capacity a new connection starts with; most frames are far smaller.
const BUFFER_START: usize = 512;
/// Buffers that grew past this during a burst are given back afterwards.
const BUFFER_KEEP: usize = 16 * 1024;

pub struct Shared {
    tracker: Mutex<Tracker>,
    clock: Arc<dyn Clock>,
    login_idle: Duration,
}

impl Shared {
    pub fn new(tracker: Tracker, clock: Arc<dyn Clock>) -> Arc<Self> {
        let login_idle = tracker.rules.timeout.max(MIN_LOGIN_IDLE);
        Arc::new(Self {
            tracker: Mutex::new(tracker),
            clock,
            login_idle,
        })
    }

    /// Runs `f` on the state with the current time. The only place the lock is taken.
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker, crate::clock::Millis) -> R) -> R {
        let now = self.clock.now();
        // A panic while holding the lock would be a bug in a rule; the state is still
        // consistent enough to keep serving everyone else, so take it back.
        let mut guard = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard, now)
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future) {
    let sweeper = tokio::spawn(sweep(shared.clone()));
    tokio::select! {
        _ = accept_loop(listener, shared) => {}
        _ = shutdown => info!("shutting down"),
    }
    sweeper.abort();
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
        let (stream, addr) = match listener.accept().await {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Err(why) = connection(id, stream, addr, &shared).await {
                debug!(conn = id, %addr, "dropped: {why}");
            }
            drop(permit);
        });
    }
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

type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, WireCodec<ClientMsg, ServerMsg>>;
type Writer = FramedWrite<tokio::net::tcp::OwnedWriteHalf, Outgoing>;

/// What a connection writes: replies, encoded as they are written, and events, encoded
/// once when queued (see `Tracker::push_frame`) and copied out as they are.
struct Outgoing;

impl Encoder<ServerMsg> for Outgoing {
    type Error = wire::FrameError;
    fn encode(&mut self, msg: ServerMsg, dst: &mut BytesMut) -> Result<(), wire::FrameError> {
        wire::encode(&msg, dst, wire::MAX_FRAME_LEN)
    }
}

impl Encoder<EncodedFrame> for Outgoing {
    type Error = wire::FrameError;
    fn encode(&mut self, frame: EncodedFrame, dst: &mut BytesMut) -> Result<(), wire::FrameError> {
        dst.extend_from_slice(frame.as_bytes());
        Ok(())
    }
}

/// Why a connection ended early; only ever logged under `-d`.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    Frame(#[from] wire::FrameError),
    #[error("closed before logging in")]
    Closed,
    #[error("silent for too long before logging in")]
    LoginIdle,
    #[error("too many frames before logging in")]
    LoginFlood,
    #[error("protocol version {0} not supported")]
    Version(u32),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("login refused: {0:?}")]
    Refused(LoginResult),
}

async fn connection(
    id: ConnId,
    stream: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
) -> Result<(), Dropped> {
    debug!(conn = id, %addr, "connected");
    let (r, w) = stream.into_split();
    let mut reader =
        FramedRead::with_capacity(r, WireCodec::with_max(MAX_CLIENT_FRAME), BUFFER_START);
    let mut writer = FramedWrite::with_capacity(w, Outgoing, BUFFER_START);

    match next_login_frame(&mut reader, shared).await? {
        ClientMsg::Hello { version } if version == PROTOCOL_VERSION => {
            writer.send(ServerMsg::Hello { version }).await?;
        }
        ClientMsg::Hello { version } => {
            writer
                .send(ServerMsg::Unsupported {
                    version: PROTOCOL_VERSION,
                })
                .await?;
            return Err(Dropped::Version(version));
        }
        _ => return Err(Dropped::Unexpected("first frame must be Hello")),
    }

    let (user, mut rx) = login(id, addr, &mut reader, &mut writer, shared).await?;
    debug!(conn = id, %user, "logged in");
    let result = session(id, &user, &mut reader, &mut writer, &mut rx, shared).await;
    shared.with(|t, now| t.disconnected(&user, id, now));
    result
}

async fn next_login_frame(reader: &mut Reader, shared: &Shared) -> Result<ClientMsg, Dropped> {
    match tokio::time::timeout(shared.login_idle, reader.next()).await {
        Err(_) => Err(Dropped::LoginIdle),
        Ok(None) => Err(Dropped::Closed),
        Ok(Some(frame)) => Ok(frame?),
    }
}

async fn login(
    id: ConnId,
    addr: SocketAddr,
    reader: &mut Reader,
    writer: &mut Writer,
    shared: &Shared,
) -> Result<(UserName, mpsc::Receiver<EncodedFrame>), Dropped> {
    for _ in 0..MAX_LOGIN_FRAMES {
        match next_login_frame(reader, shared).await? {
            ClientMsg::CheckUser { user } => {
                let answer = shared.with(|t, _| t.check_user(&user));
                writer.send(ServerMsg::UserCheck(answer)).await?;
            }
            ClientMsg::Login {
                user,
                password,
                p2p_port,
            } => {
                let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
                let result = shared
                    .with(|t, now| t.login(&user, &password, now, id, tx, addr.ip(), p2p_port));
                writer.send(ServerMsg::Login(result)).await?;
                match result {
                    LoginResult::Welcome => return Ok((user, rx)),
                    LoginResult::BadPassword => {}
                    refused => return Err(Dropped::Refused(refused)),
                }
            }
            _ => return Err(Dropped::Unexpected("not logged in")),
        }
    }
    Err(Dropped::LoginFlood)
}

async fn session(
    id: ConnId,
    user: &UserName,
    reader: &mut Reader,
    writer: &mut Writer,
    rx: &mut mpsc::Receiver<EncodedFrame>,
    shared: &Shared,
) -> Result<(), Dropped> {
    loop {
        tokio::select! {
            // Events first: whatever was queued for this user before their next request is
            // read gets written before that request's reply, so a user never sees a reply
            // "overtake" something that happened earlier.
            biased;
            event = rx.recv() => {
                // `None`: the tracker ended this session (timeout, slow client). Anything it
                // queued before that, such as the timeout notice, has been written already.
                let Some(event) = event else { return Ok(()) };
                writer.feed(event).await?;
                let open = feed_queued(rx, writer).await?;
                // Flush before ending: the last event may be the one saying why.
                flush(writer).await?;
                if !open {
                    return Ok(());
                }
            }
            frame = reader.next() => {
                let Some(frame) = frame else { return Ok(()) };
                // Handle every request already received, then write all replies at once:
                // one write for a burst instead of one per request.
                let mut next = Some(frame?);
                let mut handled = 0;
                while let Some(frame) = next.take() {
                    if handle(id, user, frame, writer, shared).await? == Flow::End {
                        flush(writer).await?;
                        return Ok(());
                    }
                    handled += 1;
                    if handled == WRITE_BATCH {
                        break; // the rest stays buffered for the next turn of the loop
                    }
                    next = match reader.next().now_or_never() {
                        Some(Some(f)) => Some(f?),
                        Some(None) => {
                            flush(writer).await?;
                            return Ok(());
                        }
                        None => None,
                    };
                    // Keep the ordering promise inside the burst too.
                    if next.is_some() && !feed_queued(rx, writer).await? {
                        flush(writer).await?;
                        return Ok(());
                    }
                }
                flush(writer).await?;
                shrink(reader, writer);
            }
        }
    }
}

/// The writer is a sink of both replies and pre-encoded events; flushing is the same.
async fn flush(writer: &mut Writer) -> Result<(), Dropped> {
    SinkExt::<ServerMsg>::flush(writer).await?;
    Ok(())
}

/// Feeds the events already queued (up to a batch). `false` if the session was ended.
async fn feed_queued(
    rx: &mut mpsc::Receiver<EncodedFrame>,
    writer: &mut Writer,
) -> Result<bool, Dropped> {
    for _ in 0..WRITE_BATCH {
        match rx.try_recv() {
            Ok(e) => writer.feed(e).await?,
            Err(mpsc::error::TryRecvError::Empty) => return Ok(true),
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(false),
        }
    }
    Ok(true)
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    End,
}

/// One frame from a logged-in client; its reply is fed, not flushed.
async fn handle(
    id: ConnId,
    user: &UserName,
    frame: ClientMsg,
    writer: &mut Writer,
    shared: &Shared,
) -> Result<Flow, Dropped> {
    match frame {
        ClientMsg::Request(req) => {
            let logout = matches!(req, wire::Request::Logout);
            let reply = shared.with(|t, now| t.request(user, id, req, now));
            let ended = matches!(reply, wire::Reply::LoggedOut);
            writer.feed(ServerMsg::Reply(reply)).await?;
            Ok(if logout || ended {
                Flow::End
            } else {
                Flow::Continue
            })
        }
        ClientMsg::OfflineAck { up_to } => {
            shared.with(|t, _| t.ack_offline(user, id, up_to));
            Ok(Flow::Continue)
        }
        _ => Err(Dropped::Unexpected("login frame after login")),
    }
}

/// Idle connections are most connections: after a burst, give back buffers that grew.
fn shrink(reader: &mut Reader, writer: &mut Writer) {
    if reader.read_buffer().is_empty() && reader.read_buffer().capacity() > BUFFER_KEEP {
        *reader.read_buffer_mut() = BytesMut::with_capacity(BUFFER_START);
    }
    if writer.write_buffer().is_empty() && writer.write_buffer().capacity() > BUFFER_KEEP {
        *writer.write_buffer_mut() = BytesMut::with_capacity(BUFFER_START);
    }
}
