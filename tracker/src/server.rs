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
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};
use wire::codec::WireCodec;
use wire::{ClientMsg, LoginResult, ServerMsg, UserName, PROTOCOL_VERSION};

use crate::clock::Clock;
use crate::outbox::Outbox;
use crate::state::{ConnId, Tracker};

/// Simultaneous connections; one more waits in the kernel's backlog until one closes.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Clients only send small frames (the largest, a `Register` of 256 chunk hashes, is under
/// 10 KiB); anything bigger is an attack or a bug.
pub const MAX_CLIENT_FRAME: usize = 32 * 1024;
/// Frames a connection may send before logging in (`CheckUser` + `Login` attempts).
const MAX_LOGIN_FRAMES: usize = 64;
/// How long a connection may stay silent before logging in, at least.
const MIN_LOGIN_IDLE: Duration = Duration::from_secs(30);
/// Requests handled before their replies are written, when several are waiting.
const WRITE_BATCH: usize = 64;
/// Buffer capacity a new connection starts with; most frames are far smaller.
const BUFFER_START: usize = 512;
/// A read buffer that grew past this during a burst is given back afterwards.
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

type Reader = FramedRead<OwnedReadHalf, WireCodec<ClientMsg, ServerMsg>>;

/// Why a connection ended early; only ever logged under `-d`.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    Frame(#[from] wire::FrameError),
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
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

/// One client's connection: its read half, and its write half fed from its outbox, which
/// the tracker also queues events into once the client has logged in.
struct Conn {
    id: ConnId,
    reader: Reader,
    writer: OwnedWriteHalf,
    outbox: Arc<Outbox>,
}

impl Conn {
    /// Writes everything queued. `false` once the outbox was closed and is now drained:
    /// the session is over.
    async fn write_out(&mut self) -> Result<bool, Dropped> {
        let batch = self.outbox.take();
        if !batch.bytes.is_empty() {
            self.writer.write_all(&batch.bytes).await?;
        }
        Ok(!batch.last)
    }

    /// Queues the answer to the client's own frame.
    fn reply(&self, msg: &ServerMsg) -> Result<(), Dropped> {
        Ok(self.outbox.push_reply(msg)?)
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
    stream: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
) -> Result<(), Dropped> {
    debug!(conn = id, %addr, "connected");
    let (r, w) = stream.into_split();
    let mut conn = Conn {
        id,
        reader: FramedRead::with_capacity(r, WireCodec::with_max(MAX_CLIENT_FRAME), BUFFER_START),
        writer: w,
        outbox: Arc::new(Outbox::default()),
    };

    match next_login_frame(&mut conn.reader, shared).await? {
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

    let user = login(&mut conn, addr, shared).await?;
    debug!(conn = id, %user, "logged in");
    let result = session(&mut conn, &user, shared).await;
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

async fn login(conn: &mut Conn, addr: SocketAddr, shared: &Shared) -> Result<UserName, Dropped> {
    for _ in 0..MAX_LOGIN_FRAMES {
        match next_login_frame(&mut conn.reader, shared).await? {
            ClientMsg::CheckUser { user } => {
                let answer = shared.with(|t, _| t.check_user(&user));
                conn.reply(&ServerMsg::UserCheck(answer))?;
                conn.write_out().await?;
            }
            ClientMsg::Login {
                user,
                password,
                p2p_port,
            } => {
                let (id, outbox) = (conn.id, conn.outbox.clone());
                let result = shared
                    .with(|t, now| t.login(&user, &password, now, id, outbox, addr.ip(), p2p_port));
                // A welcome was queued by `login` itself, ahead of the session's backlog.
                if result != LoginResult::Welcome {
                    conn.reply(&ServerMsg::Login(result))?;
                }
                conn.write_out().await?;
                match result {
                    LoginResult::Welcome => return Ok(user),
                    LoginResult::BadPassword => {}
                    refused => return Err(Dropped::Refused(refused)),
                }
            }
            _ => return Err(Dropped::Unexpected("not logged in")),
        }
    }
    Err(Dropped::LoginFlood)
}

async fn session(conn: &mut Conn, user: &UserName, shared: &Shared) -> Result<(), Dropped> {
    loop {
        tokio::select! {
            biased;
            () = conn.outbox.ready() => {
                // The outbox closes when the tracker ends the session (timeout, slow
                // client); what it queued before that, such as the reason, is written first.
                if !conn.write_out().await? {
                    return Ok(());
                }
            }
            frame = conn.reader.next() => {
                let Some(frame) = frame else { return Ok(()) };
                // Handle every request already received, then write all replies (and the
                // events queued meanwhile, in order) at once: one write for a burst.
                let mut next = Some(frame?);
                let mut handled = 0;
                while let Some(frame) = next.take() {
                    if handle(conn, user, frame, shared)? == Flow::End {
                        conn.write_out().await?;
                        return Ok(());
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
                if !conn.write_out().await? {
                    return Ok(());
                }
                shrink(&mut conn.reader);
            }
        }
    }
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    End,
}

/// One frame from a logged-in client; its reply is queued, not yet written.
fn handle(
    conn: &Conn,
    user: &UserName,
    frame: ClientMsg,
    shared: &Shared,
) -> Result<Flow, Dropped> {
    match frame {
        ClientMsg::Request(req) => {
            let logout = matches!(req, wire::Request::Logout);
            let reply = shared.with(|t, now| t.request(user, conn.id, req, now));
            // Queued after the lock is released (encoding it there would lengthen the one
            // critical section every connection shares). Every event queued for this user
            // before the request was handled is already in the outbox, so it still lands
            // after them; an event queued meanwhile, after the request, may come first.
            let ended = matches!(reply, wire::Reply::LoggedOut);
            conn.reply(&ServerMsg::Reply(reply))?;
            Ok(if logout || ended {
                Flow::End
            } else {
                Flow::Continue
            })
        }
        ClientMsg::OfflineAck { up_to } => {
            shared.with(|t, _| t.ack_offline(user, conn.id, up_to));
            Ok(Flow::Continue)
        }
        _ => Err(Dropped::Unexpected("login frame after login")),
    }
}

/// Idle connections are most connections: after a burst, give back a read buffer that grew.
fn shrink(reader: &mut Reader) {
    if reader.read_buffer().is_empty() && reader.read_buffer().capacity() > BUFFER_KEEP {
        *reader.read_buffer_mut() = BytesMut::with_capacity(BUFFER_START);
    }
}
