//! One transfer connection to one holder: opens it, names the file, then sends the
//! requests the download gives it and reports what comes back, with the hash of every
//! block (computed here, so blocks from different peers are hashed on different threads).
//! It decides nothing: the download's scheduler does.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use wire::{Digest, FileMeta, PeerMsg, Purpose, UserName};

use crate::establish::Path;
use crate::p2p::{Dialer, Grant, PeerFramed};
use crate::ratelimit::RateLimiter;

/// Longest wait for the holder's answer to `Interested`.
const ANSWER: Duration = Duration::from_secs(10);

/// What the download asks of a connection.
#[derive(Debug)]
pub enum Cmd {
    Request { chunk: u32, block: u32 },
    Cancel { chunk: u32, block: u32 },
    WantHashes { chunk: u32, batch: u32 },
    Interested,
    NotInterested,
}

/// What a connection reports.
#[derive(Debug)]
pub enum Event {
    /// Open; the holder holds `chunks` whole and these blocks of others. `received`
    /// counts every byte read from it.
    Connected {
        peer: UserName,
        chunks: Vec<u32>,
        partial: Vec<(u32, Vec<u32>)>,
        received: Arc<AtomicU64>,
        /// How the connection was made.
        path: Path,
    },
    Choked {
        peer: UserName,
    },
    Unchoked {
        peer: UserName,
    },
    /// A block, and its merkle leaf hash (to compare with the chunk's block hashes).
    Block {
        peer: UserName,
        chunk: u32,
        block: u32,
        bytes: Bytes,
        leaf: Digest,
    },
    Hashes {
        peer: UserName,
        chunk: u32,
        batch: u32,
        leaves: Vec<Digest>,
        proof: Vec<Digest>,
    },
    NoHashes {
        peer: UserName,
        chunk: u32,
    },
    /// The holder verified a block of a chunk it holds in part.
    HaveBlock {
        peer: UserName,
        chunk: u32,
        block: u32,
    },
    Rejected {
        peer: UserName,
        chunk: u32,
        block: u32,
    },
    /// The holder sends that block to others first.
    Later {
        peer: UserName,
        chunk: u32,
        block: u32,
    },
    /// The holder verified another chunk.
    Have {
        peer: UserName,
        chunk: u32,
    },
    /// The holder's suggested order for chunks to fetch from it.
    Suggest {
        peer: UserName,
        chunks: Vec<u32>,
    },
    /// The connection could not be opened, broke, or the holder broke the protocol.
    Closed {
        peer: UserName,
        why: String,
    },
}

/// Everything a connection needs to know about the download.
pub struct Target {
    pub meta: Arc<FileMeta>,
    pub down: Option<Arc<RateLimiter>>,
    pub dialer: Dialer,
}

/// Runs one connection until the download drops `cmds` or the connection ends.
pub async fn run(
    peer: UserName,
    grant: Grant,
    target: Target,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::Sender<Event>,
) {
    let why = match talk(&peer, grant, &target, cmds, &events).await {
        Ok(()) => return, // the download is done with it
        Err(why) => why,
    };
    let _ = events.send(Event::Closed { peer, why }).await;
}

async fn talk(
    peer: &UserName,
    grant: Grant,
    target: &Target,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: &mpsc::Sender<Event>,
) -> Result<(), String> {
    let (mut framed, path) = target.dialer.dial(&grant, Purpose::Transfer).await?;
    let name = target.meta.name().clone();
    send(&mut framed, PeerMsg::Interested { name }).await?;
    let (chunks, partial) = match tokio::time::timeout(ANSWER, framed.next()).await {
        Ok(Some(Ok(PeerMsg::Holding { chunks, partial }))) => (chunks, partial),
        Ok(Some(Ok(_))) => return Err("broke the protocol".into()),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(None) => return Err("closed the connection".into()),
        Err(_) => return Err("did not answer".into()),
    };
    let meta = &target.meta;
    let mut blocks = Vec::with_capacity(partial.len());
    for p in partial {
        let count = meta
            .block_count(p.chunk)
            .ok_or("named a chunk the file does not have")?;
        blocks.push((
            p.chunk,
            p.blocks(count).ok_or("sent a bitfield that does not fit")?,
        ));
    }
    let received = framed.get_ref().counter();
    let connected = Event::Connected {
        peer: peer.clone(),
        chunks,
        partial: blocks,
        received,
        path,
    };
    if events.send(connected).await.is_err() {
        return Ok(());
    }
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                // Everything queued goes out in one write.
                framed.feed(request(cmd, target)).await.map_err(|e| e.to_string())?;
                while let Ok(cmd) = cmds.try_recv() {
                    framed.feed(request(cmd, target)).await.map_err(|e| e.to_string())?;
                }
                framed.flush().await.map_err(|e| e.to_string())?;
            }
            frame = framed.next() => {
                let event = match frame {
                    Some(Ok(PeerMsg::Block { chunk, block, bytes })) => {
                        let right = target.meta.block_range(chunk, block);
                        if right.is_none_or(|(_, len)| len != bytes.len() as u64) {
                            return Err("sent a block that does not fit the file".into());
                        }
                        if let Some(l) = &target.down {
                            l.take(bytes.len()).await;
                        }
                        // 0.2 ms per 256 KiB block: short enough for an async thread.
                        let leaf = merkle::leaf(&bytes);
                        Event::Block { peer: peer.clone(), chunk, block, bytes, leaf }
                    }
                    Some(Ok(PeerMsg::Hashes { chunk, batch, leaves, proof })) => {
                        Event::Hashes { peer: peer.clone(), chunk, batch, leaves, proof }
                    }
                    Some(Ok(PeerMsg::NoHashes { chunk, .. })) => {
                        Event::NoHashes { peer: peer.clone(), chunk }
                    }
                    Some(Ok(PeerMsg::HaveBlock { chunk, block }))
                        if target.meta.block_range(chunk, block).is_some() =>
                    {
                        Event::HaveBlock { peer: peer.clone(), chunk, block }
                    }
                    Some(Ok(PeerMsg::Reject { chunk, block })) => {
                        Event::Rejected { peer: peer.clone(), chunk, block }
                    }
                    Some(Ok(PeerMsg::Later { chunk, block })) => {
                        Event::Later { peer: peer.clone(), chunk, block }
                    }
                    Some(Ok(PeerMsg::Have { chunk })) if chunk < target.meta.chunk_count() => {
                        Event::Have { peer: peer.clone(), chunk }
                    }
                    Some(Ok(PeerMsg::Suggest { chunks })) => {
                        Event::Suggest { peer: peer.clone(), chunks }
                    }
                    Some(Ok(PeerMsg::Choke)) => Event::Choked { peer: peer.clone() },
                    Some(Ok(PeerMsg::Unchoke)) => Event::Unchoked { peer: peer.clone() },
                    Some(Ok(_)) => return Err("broke the protocol".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed the connection".into()),
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn request(cmd: Cmd, target: &Target) -> PeerMsg {
    match cmd {
        Cmd::Request { chunk, block } => PeerMsg::Request { chunk, block },
        Cmd::Cancel { chunk, block } => PeerMsg::Cancel { chunk, block },
        Cmd::WantHashes { chunk, batch } => PeerMsg::WantHashes { chunk, batch },
        Cmd::Interested => PeerMsg::Interested {
            name: target.meta.name().clone(),
        },
        Cmd::NotInterested => PeerMsg::NotInterested,
    }
}

async fn send(framed: &mut PeerFramed, msg: PeerMsg) -> Result<(), String> {
    framed.send(msg).await.map_err(|e| e.to_string())
}
