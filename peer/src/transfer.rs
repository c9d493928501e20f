//! Moving chunk bytes between peers, on `Transfer` connections to a peer's listener.
//!
//! Serving: answer each `GetChunk` with `ChunkStart { len }` and the bytes in `Data` frames
//! of at most `BLOCK_LEN`, read from disk one block at a time, or with `NoChunk` when the
//! library does not hold that chunk (never bytes of anything else).
//!
//! Fetching: one task per peer runs the chunk requests the scheduler gives it, hashing
//! each block and handing it to the download's single [`PartWriter`]; a chunk counts only
//! if the hash matches the file's description and its bytes are written.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use wire::{FileMeta, PeerMsg, Purpose, Ticket, UserName, BLOCK_LEN};

use crate::hash::Hasher;
use crate::library::Library;
use crate::p2p::{dial, PeerFramed};

/// A serving connection with no request for this long is closed.
const SERVE_IDLE: Duration = Duration::from_secs(120);
/// Longest wait for any frame while fetching a chunk.
const FETCH_IDLE: Duration = Duration::from_secs(30);

/// Answers chunk requests on an accepted `Transfer` connection until it closes.
pub async fn serve(mut framed: PeerFramed, lib: Arc<Library>) {
    loop {
        let Ok(Some(Ok(PeerMsg::GetChunk { name, chunk }))) =
            tokio::time::timeout(SERVE_IDLE, framed.next()).await
        else {
            return; // closed, idle, junk, or a frame that is not a request
        };
        let Some(src) = lib.source(&name, chunk) else {
            if framed.send(PeerMsg::NoChunk).await.is_err() {
                return;
            }
            continue;
        };
        let file = match File::open(&src.path) {
            Ok(f) => Arc::new(f),
            Err(_) => {
                if framed.send(PeerMsg::NoChunk).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if framed
            .send(PeerMsg::ChunkStart { len: src.len })
            .await
            .is_err()
        {
            return;
        }
        let end = src.offset + src.len;
        let mut offset = src.offset;
        while offset < end {
            let n = (end - offset).min(BLOCK_LEN as u64) as usize;
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = BytesMut::zeroed(n);
                f.read_exact_at(&mut buf, offset).map(|_| buf.freeze())
            })
            .await;
            let Ok(Ok(bytes)) = read else {
                return; // the file went away under us: the fetcher sees a broken transfer
            };
            if framed.send(PeerMsg::Data { bytes }).await.is_err() {
                return;
            }
            offset += n as u64;
        }
    }
}

/// What a fetch task reports.
#[derive(Debug)]
pub enum Fetched {
    /// Chunk written and its hash matched.
    Verified { peer: UserName, chunk: u32 },
    /// The peer does not hold it.
    Refused { peer: UserName, chunk: u32 },
    /// The bytes did not match the hash (or the peer broke the protocol mid-chunk).
    Corrupt { peer: UserName, chunk: u32 },
    /// The connection could not be opened or broke; `chunk` was in progress, if any.
    Gone {
        peer: UserName,
        chunk: Option<u32>,
        why: String,
    },
}

/// Everything a fetch task needs about the download.
pub struct FetchTarget {
    pub meta: Arc<FileMeta>,
    pub writer: PartWriter,
    /// Bytes received so far by this task, for progress display.
    pub received: Arc<AtomicU64>,
}

/// Connects to `peer` and fetches the chunks sent on `jobs`, one after another, until the
/// channel closes or the connection fails.
pub async fn fetch(
    peer: UserName,
    addr: SocketAddr,
    ticket: Ticket,
    target: FetchTarget,
    mut jobs: mpsc::UnboundedReceiver<u32>,
    results: mpsc::UnboundedSender<Fetched>,
) {
    let mut framed = match dial(addr, ticket, Purpose::Transfer).await {
        Ok(f) => f,
        Err(why) => {
            let _ = results.send(Fetched::Gone {
                peer,
                chunk: None,
                why,
            });
            return;
        }
    };
    while let Some(chunk) = jobs.recv().await {
        let outcome = fetch_one(&mut framed, &target, chunk).await;
        let report = match outcome {
            Ok(true) => Fetched::Verified {
                peer: peer.clone(),
                chunk,
            },
            Ok(false) => Fetched::Refused {
                peer: peer.clone(),
                chunk,
            },
            Err(FetchError::Corrupt) => Fetched::Corrupt {
                peer: peer.clone(),
                chunk,
            },
            Err(FetchError::Broken(why)) => {
                let _ = results.send(Fetched::Gone {
                    peer,
                    chunk: Some(chunk),
                    why,
                });
                return;
            }
        };
        let corrupt = matches!(report, Fetched::Corrupt { .. });
        if results.send(report).is_err() || corrupt {
            return; // a peer that sent bad bytes is not asked again
        }
    }
}

enum FetchError {
    Corrupt,
    Broken(String),
}

async fn next(framed: &mut PeerFramed) -> Result<PeerMsg, FetchError> {
    match tokio::time::timeout(FETCH_IDLE, framed.next()).await {
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(e))) => Err(FetchError::Broken(e.to_string())),
        Ok(None) => Err(FetchError::Broken("connection closed".into())),
        Err(_) => Err(FetchError::Broken("timed out".into())),
    }
}

/// `Ok(true)`: verified and written; `Ok(false)`: the peer does not hold it.
async fn fetch_one(
    framed: &mut PeerFramed,
    t: &FetchTarget,
    chunk: u32,
) -> Result<bool, FetchError> {
    let (offset, len) = t
        .meta
        .chunk_range(chunk)
        .expect("scheduler asks only for real chunks");
    framed
        .send(PeerMsg::GetChunk {
            name: t.meta.name().clone(),
            chunk,
        })
        .await
        .map_err(|e| FetchError::Broken(e.to_string()))?;
    match next(framed).await? {
        PeerMsg::NoChunk => return Ok(false),
        PeerMsg::ChunkStart { len: l } if l == len => {}
        _ => return Err(FetchError::Corrupt),
    }
    let mut hasher = Hasher::new();
    let mut got = 0u64;
    while got < len {
        let PeerMsg::Data { bytes } = next(framed).await? else {
            return Err(FetchError::Corrupt);
        };
        if bytes.is_empty() || got + bytes.len() as u64 > len {
            return Err(FetchError::Corrupt);
        }
        let at = offset + got;
        got += bytes.len() as u64;
        t.writer
            .write(at, bytes.clone())
            .await
            .map_err(|e| FetchError::Broken(format!("cannot write: {e}")))?;
        hasher = hash_block(hasher, bytes).await?;
        t.received.fetch_add(got - (at - offset), Ordering::Relaxed);
    }
    // Count the chunk only once its bytes are in the file: it may be served right away.
    t.writer
        .barrier()
        .await
        .map_err(|e| FetchError::Broken(format!("cannot write: {e}")))?;
    if Some(&hasher.finish()) == t.meta.chunk_hash(chunk) {
        Ok(true)
    } else {
        Err(FetchError::Corrupt)
    }
}

/// Hashes one block off the async threads.
async fn hash_block(mut hasher: Hasher, bytes: Bytes) -> Result<Hasher, FetchError> {
    tokio::task::spawn_blocking(move || {
        hasher.update(&bytes);
        hasher
    })
    .await
    .map_err(|e| FetchError::Broken(e.to_string()))
}

/// `sync_file_range` on a range of the part file with `flags`. Errors are ignored by
/// every caller: they only lose a head start or keep pages cached; the `sync_data` at each
/// chunk's barrier is what makes bytes durable.
fn sync_range(file: &File, at: u64, len: usize, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

/// Asks the kernel to start writing this range to disk now, without waiting for it, so
/// the `fsync` before the finished file is renamed has little left to do (measured: it
/// otherwise adds about 1 s to a 1 GiB download, all at the end).
fn start_writeback(file: &File, at: u64, len: usize) {
    sync_range(file, at, len, libc::SYNC_FILE_RANGE_WRITE);
}

/// Blocks written but still kept in the page cache; older ones are dropped from it.
const CACHED_BLOCKS: usize = 32;

/// Waits for an earlier block's writeback to finish, then drops its pages from the page
/// cache, so the pages of the blocks that follow reuse them. Pages the kernel has to take
/// fresh cost far more than reused ones on the development VM (dd: 280-340 MB/s against
/// 1.7 GB/s), and a download only reads its file back to serve chunks, from disk.
fn release_pages(file: &File, at: u64, len: usize) {
    use std::os::fd::AsRawFd;
    sync_range(
        file,
        at,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    // SAFETY: a plain syscall on a descriptor we own; it reads no memory of ours. An error
    // only keeps the pages cached, which the kernel can reclaim anyway.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

enum WriteOp {
    Block { at: u64, bytes: Bytes },
    Barrier(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

/// The one thread that writes a download's part file. Fetch tasks writing the same file
/// concurrently spend their time contending for its inode lock (measured: 10% of the
/// downloader's CPU spinning, with `perf`); one writer avoids that and lets writing
/// overlap with hashing.
#[derive(Clone)]
pub struct PartWriter {
    tx: mpsc::Sender<WriteOp>,
}

/// Blocks queued for the writer at most (8 MiB): memory stays bounded when the disk is
/// slower than the network.
const WRITE_QUEUE: usize = 32;

impl PartWriter {
    /// Starts the writer thread; it ends when every handle is dropped.
    pub fn start(file: File) -> PartWriter {
        let (tx, mut rx) = mpsc::channel::<WriteOp>(WRITE_QUEUE);
        std::thread::spawn(move || {
            // The first error is kept and reported at every later barrier.
            let mut failed: Option<std::io::ErrorKind> = None;
            let mut cached = std::collections::VecDeque::with_capacity(CACHED_BLOCKS + 1);
            while let Some(op) = rx.blocking_recv() {
                match op {
                    WriteOp::Block { at, bytes } => {
                        if failed.is_none() {
                            match file.write_all_at(&bytes, at) {
                                Ok(()) => {
                                    start_writeback(&file, at, bytes.len());
                                    cached.push_back((at, bytes.len()));
                                    if cached.len() > CACHED_BLOCKS {
                                        let (at, len) = cached.pop_front().expect("not empty");
                                        release_pages(&file, at, len);
                                    }
                                }
                                Err(e) => failed = Some(e.kind()),
                            }
                        }
                    }
                    WriteOp::Barrier(done) => {
                        // What is written before a barrier is on disk after it: a chunk
                        // is recorded as held, served and announced only once it would
                        // survive a crash. Writeback started per block, so this waits for
                        // little (measured: no change in `bench/swarm`).
                        if failed.is_none() {
                            if let Err(e) = file.sync_data() {
                                failed = Some(e.kind());
                            }
                        }
                        let _ = done.send(match failed {
                            None => Ok(()),
                            Some(kind) => Err(kind.into()),
                        });
                    }
                }
            }
        });
        PartWriter { tx }
    }

    /// Queues `bytes` for offset `at`, waiting while the queue is full.
    pub async fn write(&self, at: u64, bytes: Bytes) -> std::io::Result<()> {
        self.tx
            .send(WriteOp::Block { at, bytes })
            .await
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    /// Waits until everything queued before it is written and on disk.
    pub async fn barrier(&self) -> std::io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(WriteOp::Barrier(done)).await.is_err() {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        wait.await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::BrokenPipe.into()))
    }
}
