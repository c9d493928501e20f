//! Connection establishment between peers: how a connection to another peer comes to
//! exist, on whichever of the four paths the tracker chose for the pair (`wire::Via`,
//! decided by `tracker::route` from what it knows of both sides' routers):
//!
//! - **direct**: the requester connects to the target's listener;
//! - **reversed**: the target cannot be reached, the requester can: the target connects to
//!   the requester's listener and opens with [`wire::REVERSED_MAGIC`] and the circuit, and
//!   the listener hands the connection to the requester's waiting dial ([`Meetings`]);
//! - **punched**: neither can be reached, both routers keep ports: both connect to each
//!   other's address from their own listening port at once, and the two connection attempts
//!   become one connection (TCP simultaneous open);
//! - **relayed**: through the tracker's relay, both sides joining the circuit; also where a
//!   punch that failed within [`PUNCH_WINDOW`] goes.
//!
//! Whatever the path, the connection then carries the same handshake (`p2p`): the
//! requester presents its ticket and proves its key as dialler, the target checks both as
//! listener. So a ticket opens one connection once on every path, and the relay carries only
//! what the two peers encrypt for each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use link::Stream;
use wire::{Circuit, ClientMsg, RelayRefusal, ServerMsg, Via, PROTOCOL_VERSION};

use crate::tracker_link::{bind_shared, open, Dial};

/// How long a requester waits for the target to connect back.
pub const REVERSE_WAIT: Duration = Duration::from_secs(5);
/// How long both sides of a punch keep trying before going to the relay. Covers the
/// kernel's first SYN retransmission (1 s), for a SYN lost on the way.
pub const PUNCH_WINDOW: Duration = Duration::from_millis(1500);
/// A refused punch attempt (a router that answers instead of dropping) is retried this
/// much later, within the window.
const PUNCH_RETRY: Duration = Duration::from_millis(100);
/// Connect deadline of a direct or reversed connection, and of the relay's answer.
const CONNECT: Duration = Duration::from_secs(10);

/// Which path carried a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    Direct,
    Reversed,
    Punched,
    Relayed,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reversed => "reversed",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

/// What establishing a connection needs besides the grant.
#[derive(Clone)]
pub struct Ways {
    /// Our listener's port: punches go out from it.
    pub port: u16,
    pub meetings: Arc<Meetings>,
    /// How to reach our tracker's relay (`None`: never relay). Replaced when the session
    /// moves to another tracker of the cluster.
    pub relay: Arc<std::sync::RwLock<Option<Arc<Dial>>>>,
}

impl Ways {
    /// Only direct connections (tests, tools).
    pub fn direct_only() -> Ways {
        Ways {
            port: 0,
            meetings: Arc::default(),
            relay: Arc::default(),
        }
    }

    /// Our tracker's relay from now on.
    pub fn relay_through(&self, dial: Option<Arc<Dial>>) {
        *self.relay.write().unwrap_or_else(|e| e.into_inner()) = dial;
    }

    fn our_relay(&self) -> Option<Arc<Dial>> {
        self.relay.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reversed connections, by circuit: the dials waiting for them, and those that came
/// first. The tracker tells both sides at once, so the target's connection can reach our
/// listener before our own dial has asked for it; it waits here for [`REVERSE_WAIT`].
#[derive(Default)]
pub struct Meetings {
    inner: Mutex<HashMap<Circuit, Meeting>>,
}

enum Meeting {
    Waiting(oneshot::Sender<TcpStream>),
    Early(TcpStream, Instant),
}

/// Early connections kept at once: the oldest goes when more come (they are cheap to
/// make for anyone who can reach our listener, so they must not pile up).
const MAX_EARLY: usize = 32;

impl Meetings {
    fn expect(&self, circuit: Circuit) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        match inner.remove(&circuit) {
            Some(Meeting::Early(tcp, _)) => {
                let _ = tx.send(tcp);
            }
            _ => {
                inner.insert(circuit, Meeting::Waiting(tx));
            }
        }
        rx
    }

    fn forget(&self, circuit: &Circuit) {
        self.lock().remove(circuit);
    }

    /// Our listener got a reversed connection for `circuit`: to the dial waiting for it,
    /// or kept until it comes.
    pub fn arrived(&self, circuit: Circuit, tcp: TcpStream) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(Meeting::Waiting(_)) = inner.get(&circuit) {
            if let Some(Meeting::Waiting(tx)) = inner.remove(&circuit) {
                let _ = tx.send(tcp);
            }
            return;
        }
        inner.retain(|_, m| match m {
            Meeting::Early(_, at) => now.duration_since(*at) < REVERSE_WAIT,
            Meeting::Waiting(tx) => !tx.is_closed(),
        });
        let early = inner
            .iter()
            .filter_map(|(c, m)| match m {
                Meeting::Early(_, at) => Some((*at, *c)),
                Meeting::Waiting(_) => None,
            })
            .min_by_key(|(at, _)| *at);
        let count = inner
            .values()
            .filter(|m| matches!(m, Meeting::Early(..)))
            .count();
        if count >= MAX_EARLY {
            if let Some((_, oldest)) = early {
                inner.remove(&oldest);
            }
        }
        inner.insert(circuit, Meeting::Early(tcp, now));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Circuit, Meeting>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The requester's side: a connection to the target at `addr` as `via` says.
pub async fn to_target(ways: &Ways, via: Via, addr: SocketAddr) -> Result<(Stream, Path), String> {
    match via {
        Via::Direct => {
            let tcp = connect(addr).await?;
            Ok((Box::new(tcp), Path::Direct))
        }
        Via::Reversed { circuit } => {
            let rx = ways.meetings.expect(circuit);
            match tokio::time::timeout(REVERSE_WAIT, rx).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    Ok((Box::new(tcp), Path::Reversed))
                }
                _ => {
                    ways.meetings.forget(&circuit);
                    Err("cannot be reached, and did not connect to us in turn".into())
                }
            }
        }
        Via::Punched { circuit } => punch_or_relay(ways, circuit, addr, None).await,
        Via::Relayed { circuit } => Ok((relay(ways, circuit, None).await?, Path::Relayed)),
    }
}

/// The target's side of an introduction that is not direct: a connection to the requester
/// (at `addr`), on which we then answer its handshake as its listener would.
/// `at`: the relay to meet at, when it is not our tracker's (the requester is on another
/// tracker of the cluster).
pub async fn to_requester(
    ways: &Ways,
    via: Via,
    addr: SocketAddr,
    at: Option<Arc<Dial>>,
) -> Result<(Stream, Path), String> {
    match via {
        Via::Direct => Err("a direct connection comes to our listener".into()),
        Via::Reversed { circuit } => {
            let mut tcp = connect(addr).await?;
            let mut opening = wire::REVERSED_MAGIC.to_vec();
            opening.extend_from_slice(&circuit.0);
            tokio::time::timeout(CONNECT, tcp.write_all(&opening))
                .await
                .map_err(|_| format!("{addr} stopped reading"))?
                .map_err(|e| format!("{addr}: {e}"))?;
            Ok((Box::new(tcp), Path::Reversed))
        }
        Via::Punched { circuit } => punch_or_relay(ways, circuit, addr, at).await,
        Via::Relayed { circuit } => Ok((relay(ways, circuit, at).await?, Path::Relayed)),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no answer from {addr}")),
    }
}

async fn punch_or_relay(
    ways: &Ways,
    circuit: Circuit,
    addr: SocketAddr,
    at: Option<Arc<Dial>>,
) -> Result<(Stream, Path), String> {
    match punch(ways.port, addr, PUNCH_WINDOW).await {
        Some(tcp) => Ok((Box::new(tcp), Path::Punched)),
        None => Ok((relay(ways, circuit, at).await?, Path::Relayed)),
    }
}

/// Connects to `addr` from our listening `port` while the other side does the same to us,
/// trying again on a refusal, until `window` has passed. Both routers see an outgoing
/// connection first, so each lets the other's attempt in as its answer.
pub async fn punch(port: u16, addr: SocketAddr, window: Duration) -> Option<TcpStream> {
    if port == 0 {
        return None;
    }
    let until = Instant::now() + window;
    while Instant::now() < until {
        let tried = Instant::now();
        let socket = bind_shared(port).ok()?;
        match tokio::time::timeout_at(until, socket.connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Some(tcp);
            }
            Ok(Err(_)) => tokio::time::sleep_until((tried + PUNCH_RETRY).min(until)).await,
            Err(_) => return None,
        }
    }
    None
}

/// A connection through the tracker's relay, joined to the other side of `circuit`.
async fn relay(ways: &Ways, circuit: Circuit, at: Option<Arc<Dial>>) -> Result<Stream, String> {
    let dial = at
        .or_else(|| ways.our_relay())
        .ok_or("no relay to go through")?;
    let deadline = Instant::now() + CONNECT;
    let (mut stream, _, _) = open(&dial, 0, deadline)
        .await
        .map_err(|e| format!("the relay: {e}"))?;
    let mut join = bytes::BytesMut::new();
    let msg = ClientMsg::RelayJoin {
        version: PROTOCOL_VERSION,
        circuit,
    };
    wire::encode(&msg, &mut join, 1024).expect("a small frame");
    let answer = tokio::time::timeout_at(deadline + CONNECT, async {
        stream.write_all(&join).await?;
        stream.flush().await?;
        read_frame(&mut stream).await
    })
    .await
    .map_err(|_| "the relay did not answer".to_string())?
    .map_err(|e| format!("the relay: {e}"))?;
    match answer {
        ServerMsg::Relaying => Ok(stream),
        ServerMsg::RelayRefused(RelayRefusal::TooMany) => {
            Err("the relay carries no more connections for one of us now".into())
        }
        ServerMsg::RelayRefused(RelayRefusal::Unavailable) => {
            Err("the server relays nothing".into())
        }
        ServerMsg::RelayRefused(RelayRefusal::BadCircuit) => {
            Err("cannot be reached, and did not come to the server's relay".into())
        }
        other => Err(format!("unexpected answer from the relay: {other:?}")),
    }
}

/// Reads exactly one frame (no byte past it: what follows is the other peer's).
async fn read_frame(stream: &mut Stream) -> std::io::Result<ServerMsg> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 || len > 1024 {
        return Err(std::io::Error::other("bad frame"));
    }
    let mut frame = bytes::BytesMut::with_capacity(4 + len);
    frame.extend_from_slice(&head);
    frame.resize(4 + len, 0);
    stream.read_exact(&mut frame[4..]).await?;
    match wire::decode(&mut frame, 1024) {
        Ok(Some(msg)) => Ok(msg),
        _ => Err(std::io::Error::other("bad frame")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_punch_to_nobody_gives_up_within_its_window() {
        let a = bind_shared(0).unwrap();
        let port = a.local_addr().unwrap().port();
        let _l = a.listen(16).unwrap();
        // A port nobody listens on: refused at once, again and again, until the window ends.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = free.local_addr().unwrap();
        drop(free);
        let started = Instant::now();
        assert!(punch(port, nobody, Duration::from_millis(500))
            .await
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
