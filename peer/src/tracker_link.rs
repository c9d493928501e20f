//! The connection to the tracker: TCP + wire frames, version handshake.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
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
}

/// Connecting, and the server's answer to our `Hello`, within this.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// An answer to a login step within this.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(15);

pub struct TrackerLink {
    framed: Framed<TcpStream, WireCodec<ServerMsg, ClientMsg>>,
    addr: SocketAddr,
}

impl TrackerLink {
    /// Connects and says `Hello`, within [`CONNECT_DEADLINE`] (a port that accepts and
    /// never speaks is not a tracker).
    pub async fn connect(addr: SocketAddr) -> Result<TrackerLink, LinkError> {
        let silent = LinkError::Silent {
            addr,
            secs: CONNECT_DEADLINE.as_secs(),
        };
        // A tracker turning a connection away resets it at once; the reset can arrive
        // while our connect is still finishing, or before our Hello is written.
        let reset = |kind: std::io::ErrorKind| {
            matches!(
                kind,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        };
        let stream = match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if reset(e.kind()) => return Err(LinkError::ClosedAtOnce { addr }),
            Ok(Err(source)) => return Err(LinkError::Connect { addr, source }),
            Err(_) => return Err(silent),
        };
        let _ = stream.set_nodelay(true);
        let mut link = TrackerLink {
            framed: Framed::new(stream, WireCodec::new()),
            addr,
        };
        let hello = async {
            link.send(ClientMsg::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?;
            link.recv().await
        };
        match tokio::time::timeout(CONNECT_DEADLINE, hello).await {
            Err(_) => Err(silent),
            Ok(Err(LinkError::Closed)) => Err(LinkError::ClosedAtOnce { addr }),
            Ok(Err(LinkError::Frame(wire::FrameError::Io(e)))) if reset(e.kind()) => {
                Err(LinkError::ClosedAtOnce { addr })
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(ServerMsg::Hello { .. })) => Ok(link),
            Ok(Ok(ServerMsg::Unsupported { version })) => Err(LinkError::Version(version)),
            Ok(Ok(other)) => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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
