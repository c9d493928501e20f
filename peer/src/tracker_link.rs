//! The connection to the tracker: TLS (or, with `--insecure-plaintext`, plain TCP) through
//! `link`, wire frames, version handshake.
//!
//! The tracker's key is trusted on first use and remembered per address in the folder's
//! `.swarmchat/known_trackers`, like SSH's `known_hosts`; a different key later is refused
//! with what to do. `--tracker-fingerprint` pins one instead.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use link::known::{KnownError, KnownTrackers};
use link::tls::KeyCheck;
use link::{Fingerprint, Security, Stream};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::codec::WireCodec;
use wire::{ClientMsg, ServerMsg, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the server at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server speaks protocol version {0}; this client speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("connection to the server was lost")]
    Closed,
    #[error(
        "the server at {addr} closed the connection at once (too many connections from this address? try again in a minute)"
    )]
    ClosedAtOnce { addr: SocketAddr },
    #[error("the server sent something unexpected ({0})")]
    Unexpected(String),
    #[error("connection to the server failed: {0}")]
    Frame(#[from] wire::FrameError),
    #[error("the server at {addr} is not answering (nothing for {} s)", .secs)]
    Silent { addr: SocketAddr, secs: u64 },
    #[error("cannot open an encrypted connection to the server at {addr}: {source} (is it a tracker started with --insecure-plaintext? then start this client with it too)")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server at {addr} presented the key {presented}, not the key {expected} remembered in {}: someone may be intercepting the connection. If the server's key was changed on purpose, delete its line from that file and connect again", .file.display())]
    KeyChanged {
        addr: SocketAddr,
        presented: Fingerprint,
        expected: Fingerprint,
        file: std::path::PathBuf,
    },
    #[error("the server at {addr} presented the key {presented}, not {expected} given with --tracker-fingerprint")]
    NotPinned {
        addr: SocketAddr,
        presented: Fingerprint,
        expected: Fingerprint,
    },
    #[error("{0}")]
    Known(#[from] KnownError),
}

/// Connecting, and the server's answer to our `Hello`, within this.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// An answer to a login step within this.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(15);

/// Where the tracker is and how to know it is the one meant.
pub struct Dial {
    pub addr: SocketAddr,
    pub security: Security,
    /// A key the user pinned on the command line, if any.
    pub pinned: Option<Fingerprint>,
    /// Keys remembered per address (trust on first use).
    pub known: KnownTrackers,
    /// The port our listener is on, to connect to the tracker from: the tracker then sees
    /// whether our router keeps that port, which decides whether others can punch through
    /// to us (`tracker::route`). 0: any port.
    pub from_port: u16,
}

/// A tracker met for the first time: its key, now remembered.
#[derive(Debug, Clone)]
pub struct FirstUse {
    pub addr: SocketAddr,
    pub key: Fingerprint,
    pub file: std::path::PathBuf,
}

impl std::fmt::Display for FirstUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "First connection to the server at {} from this folder: its key {} is now remembered (in {}); `tracker fingerprint` on the server prints the same if it is the one meant",
            self.addr,
            self.key,
            self.file.display()
        )
    }
}

pub struct TrackerLink {
    framed: Framed<Stream, WireCodec<ServerMsg, ClientMsg>>,
    addr: SocketAddr,
    /// Our address on the network we reach the tracker through.
    local_ip: Option<std::net::IpAddr>,
}

impl TrackerLink {
    /// Connects, checks the tracker's key and says `Hello`, within [`CONNECT_DEADLINE`]
    /// (a port that accepts and never speaks is not a tracker). A tracker met for the first
    /// time (no pin) is remembered, and said so.
    ///
    /// It is opened from `dial.from_port` (see [`bind_shared`]).
    pub async fn connect(dial: &Dial) -> Result<(TrackerLink, Option<FirstUse>), LinkError> {
        let addr = dial.addr;
        let silent = LinkError::Silent {
            addr,
            secs: CONNECT_DEADLINE.as_secs(),
        };
        let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
        let (stream, first_use, local_ip) = open(dial, dial.from_port, deadline).await?;
        let mut link = TrackerLink {
            framed: Framed::new(stream, WireCodec::new()),
            addr,
            local_ip,
        };
        let hello = async {
            link.send(ClientMsg::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?;
            link.recv().await
        };
        match tokio::time::timeout_at(deadline, hello).await {
            Err(_) => Err(silent),
            Ok(Err(LinkError::Closed)) => Err(LinkError::ClosedAtOnce { addr }),
            Ok(Err(LinkError::Frame(wire::FrameError::Io(e)))) if reset(e.kind()) => {
                Err(LinkError::ClosedAtOnce { addr })
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(ServerMsg::Hello { .. })) => Ok((link, first_use)),
            Ok(Ok(ServerMsg::Unsupported { version })) => Err(LinkError::Version(version)),
            Ok(Ok(other)) => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Our own address on the network the tracker is reached through (behind a router,
    /// the home network's): told at login, for peers behind the same router.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.local_ip
    }

    /// Sends `msg` and waits for the next frame, within [`ANSWER_DEADLINE`].
    pub async fn ask(&mut self, msg: ClientMsg) -> Result<ServerMsg, LinkError> {
        let addr = self.addr;
        match tokio::time::timeout(ANSWER_DEADLINE, async {
            self.send(msg).await?;
            self.recv().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(LinkError::Silent {
                addr,
                secs: ANSWER_DEADLINE.as_secs(),
            }),
        }
    }

    pub async fn send(&mut self, msg: ClientMsg) -> Result<(), LinkError> {
        Ok(self.framed.send(msg).await?)
    }

    /// The next frame. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ServerMsg, LinkError> {
        match self.framed.next().await {
            Some(frame) => Ok(frame?),
            None => Err(LinkError::Closed),
        }
    }
}

/// A tracker turning a connection away resets it at once; the reset can arrive while our
/// connect is still finishing, or before our first frame is written.
fn reset(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// A TCP socket on `port` (0: one the OS picks) that other sockets on the same port may
/// share: our listener, and the connections we open from its port (to the tracker, and
/// simultaneous opens to peers). Linux sends an incoming segment to the connection it
/// belongs to first, so sharing the port costs the listener nothing.
pub fn bind_shared(port: u16) -> std::io::Result<tokio::net::TcpSocket> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))?;
    Ok(s)
}

/// Connects to `addr` from `port` when it can (0, or a port that cannot be shared: from
/// any).
async fn connect_from(addr: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    if port != 0 {
        if let Ok(s) = bind_shared(port) {
            match s.connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {}
                Err(e) => return Err(e),
            }
        }
    }
    TcpStream::connect(addr).await
}

/// Opens a connection to the tracker and, unless in clear, its TLS session, checking the
/// tracker's key (remembering it if met for the first time), by `deadline`.
pub async fn open(
    dial: &Dial,
    from_port: u16,
    deadline: tokio::time::Instant,
) -> Result<(Stream, Option<FirstUse>, Option<std::net::IpAddr>), LinkError> {
    let addr = dial.addr;
    let silent = LinkError::Silent {
        addr,
        secs: CONNECT_DEADLINE.as_secs(),
    };
    let tcp = match tokio::time::timeout_at(deadline, connect_from(addr, from_port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if reset(e.kind()) => return Err(LinkError::ClosedAtOnce { addr }),
        Ok(Err(source)) => return Err(LinkError::Connect { addr, source }),
        Err(_) => return Err(silent),
    };
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp.local_addr().ok().map(|a| a.ip());
    let mut first_use = None;
    let stream: Stream = match dial.security {
        Security::Plaintext => Box::new(tcp),
        Security::Encrypted => {
            let remembered = match dial.pinned {
                Some(_) => None,
                None => dial.known.get(addr)?,
            };
            let check = match dial.pinned.or(remembered) {
                Some(fp) => KeyCheck::Only(fp),
                None => KeyCheck::Any,
            };
            let opened =
                tokio::time::timeout_at(deadline, link::tls::connect(tcp, addr, check)).await;
            match opened {
                Err(_) => return Err(silent),
                Ok(Ok((tls, key))) => {
                    if check == KeyCheck::Any {
                        dial.known.remember(addr, &key)?;
                        first_use = Some(FirstUse {
                            addr,
                            key,
                            file: dial.known.path().to_owned(),
                        });
                    }
                    Box::new(tls)
                }
                Ok(Err(link::tls::ConnectError::WrongKey {
                    presented,
                    expected,
                })) => {
                    return Err(match dial.pinned {
                        Some(_) => LinkError::NotPinned {
                            addr,
                            presented,
                            expected,
                        },
                        None => LinkError::KeyChanged {
                            addr,
                            presented,
                            expected,
                            file: dial.known.path().to_owned(),
                        },
                    })
                }
                Ok(Err(link::tls::ConnectError::Io(e))) if reset(e.kind()) => {
                    return Err(LinkError::ClosedAtOnce { addr })
                }
                Ok(Err(link::tls::ConnectError::Io(source))) => {
                    return Err(LinkError::Tls { addr, source })
                }
            }
        }
    };
    Ok((stream, first_use, local_ip))
}
