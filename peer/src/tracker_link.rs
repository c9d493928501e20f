//! The connection to the tracker: TCP + wire frames, version handshake.

use std::net::SocketAddr;

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
    #[error("the server sent something unexpected ({0})")]
    Unexpected(String),
    #[error("connection to the server failed: {0}")]
    Frame(#[from] wire::FrameError),
}

pub struct TrackerLink {
    framed: Framed<TcpStream, WireCodec<ServerMsg, ClientMsg>>,
}

impl TrackerLink {
    pub async fn connect(addr: SocketAddr) -> Result<TrackerLink, LinkError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| LinkError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut link = TrackerLink {
            framed: Framed::new(stream, WireCodec::new()),
        };
        link.send(ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
        match link.recv().await? {
            ServerMsg::Hello { .. } => Ok(link),
            ServerMsg::Unsupported { version } => Err(LinkError::Version(version)),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
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
