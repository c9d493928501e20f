//! The threads that write a download's part file and check each chunk's SHA-256: one
//! writes, one per core hashes (a chunk always on the same one), so writing and hashing
//! overlap and chunks coming from different peers are hashed side by side (on the
//! development machine SHA-256 runs at 1.0-1.5 GB/s per core, buffered writes at
//! 0.5-3 GB/s).
//!
//! Blocks arrive in the order the download keeps them, which is per chunk mostly in order
//! (a chunk's owner fetches it from the front) but not always (a faster peer may take the
//! tail, a block may be fetched again after a liar was banned). Each chunk's hash is
//! computed as its blocks arrive in order; blocks that arrive ahead of that point are only
//! written, and read back from the file when the hash gets to them. A block that arrives
//! again for a part already hashed makes the hash start over from the file at the check.
//! So the common case hashes every byte once, from memory, and nothing is kept in memory
//! but the block being written.
//!
//! Why one writer: fetches writing the same file concurrently spend their time contending
//! for its inode lock (measured: 10% of the downloader's CPU spinning, with `perf`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use wire::{FileMeta, BLOCK_LEN};

use crate::hash::Hasher as Sha256;

/// What a check found.
#[derive(Debug)]
pub struct Checked {
    pub chunk: u32,
    /// `Ok(true)`: the hash matched and the chunk is on disk; `Ok(false)`: it did not
    /// match; `Err`: the part file could not be written or read.
    pub outcome: Result<bool, std::io::ErrorKind>,
}

enum Op {
    Block {
        chunk: u32,
        block: u32,
        bytes: Bytes,
    },
    Verify {
        chunk: u32,
    },
}

/// Handle to the store threads; they end when the handle is dropped.
pub struct Store {
    tx: mpsc::Sender<Op>,
}

/// What the writer passes on to the hasher, in the order it wrote it.
enum Hash {
    Block {
        chunk: u32,
        block: u32,
        bytes: Bytes,
    },
    Verify {
        chunk: u32,
        failed: Option<std::io::ErrorKind>,
    },
}

/// Blocks queued for the writer, and for the hasher, at most (4 MiB each): memory stays
/// bounded when the disk or the CPU is slower than the network, and the download stops
/// reading from peers meanwhile.
const QUEUE: usize = 16;

impl Store {
    /// Starts the thread on `file` (the part file, open for reading and writing); check
    /// results go to `checked`.
    pub fn start(
        file: File,
        meta: Arc<FileMeta>,
        checked: mpsc::UnboundedSender<Checked>,
    ) -> Store {
        let (tx, rx) = mpsc::channel(QUEUE);
        // One hasher per core (at most 4): a chunk's hash is sequential, but chunks from
        // different peers arrive side by side and are hashed side by side (measured: one
        // hasher capped a 1 GiB loopback download at one core's SHA-256 rate).
        let hashers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let mut hash_tx = Vec::with_capacity(hashers);
        for _ in 0..hashers {
            let (htx, hash_rx) = std::sync::mpsc::sync_channel(QUEUE);
            hash_tx.push(htx);
            let checked = checked.clone();
            match file.try_clone() {
                Ok(reader) => {
                    let m = meta.clone();
                    std::thread::spawn(move || Hasher::new(reader, m).run(hash_rx, checked));
                }
                Err(e) => {
                    // Without a second handle nothing can be checked: say so at every check.
                    let kind = e.kind();
                    std::thread::spawn(move || {
                        for h in hash_rx {
                            if let Hash::Verify { chunk, .. } = h {
                                let _ = checked.send(Checked {
                                    chunk,
                                    outcome: Err(kind),
                                });
                            }
                        }
                    });
                }
            }
        }
        std::thread::spawn(move || Writer::new(file, meta).run(rx, hash_tx));
        Store { tx }
    }

    /// Queues block `block` of `chunk` for writing, waiting while the queue is full.
    pub async fn write(&self, chunk: u32, block: u32, bytes: Bytes) {
        let _ = self
            .tx
            .send(Op::Block {
                chunk,
                block,
                bytes,
            })
            .await;
    }

    /// Every block of `chunk` has been queued: check it. The answer comes as a [`Checked`].
    pub async fn verify(&self, chunk: u32) {
        let _ = self.tx.send(Op::Verify { chunk }).await;
    }
}

/// A chunk's hash so far.
#[derive(Default)]
struct Progress {
    hasher: Sha256,
    /// Blocks `0..next` are hashed.
    next: u32,
    /// Blocks written past `next`, to read back when the hash gets there.
    ahead: BTreeSet<u32>,
    /// A block came again for a part already hashed: start over at the check.
    again: bool,
}

struct Writer {
    file: File,
    meta: Arc<FileMeta>,
    /// The first write error, reported at every later check.
    failed: Option<std::io::ErrorKind>,
    cached: std::collections::VecDeque<(u64, usize)>,
}

impl Writer {
    fn new(file: File, meta: Arc<FileMeta>) -> Writer {
        Writer {
            file,
            meta,
            failed: None,
            cached: std::collections::VecDeque::with_capacity(CACHED_BLOCKS + 1),
        }
    }

    /// Writes what comes, and passes each chunk's blocks and check on to its hasher (every
    /// chunk always to the same one, so they stay in order).
    fn run(mut self, mut rx: mpsc::Receiver<Op>, hashers: Vec<std::sync::mpsc::SyncSender<Hash>>) {
        while let Some(op) = rx.blocking_recv() {
            let chunk = match &op {
                Op::Block { chunk, .. } | Op::Verify { chunk } => *chunk,
            };
            let hash = &hashers[chunk as usize % hashers.len()];
            let next = match op {
                Op::Block {
                    chunk,
                    block,
                    bytes,
                } => {
                    if !self.write(chunk, block, &bytes) {
                        continue;
                    }
                    Hash::Block {
                        chunk,
                        block,
                        bytes,
                    }
                }
                Op::Verify { chunk } => Hash::Verify {
                    chunk,
                    failed: self.failed,
                },
            };
            if hash.send(next).is_err() {
                return;
            }
        }
    }

    /// Writes a block; `false` if it was not written.
    fn write(&mut self, chunk: u32, block: u32, bytes: &Bytes) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let Some((at, len)) = self.meta.block_range(chunk, block) else {
            return false; // the download checks ranges; nothing else reaches here
        };
        if len != bytes.len() as u64 {
            return false;
        }
        if let Err(e) = self.file.write_all_at(bytes, at) {
            self.failed = Some(e.kind());
            return false;
        }
        start_writeback(&self.file, at, bytes.len());
        self.cached.push_back((at, bytes.len()));
        if self.cached.len() > CACHED_BLOCKS {
            let (at, len) = self.cached.pop_front().expect("not empty");
            release_pages(&self.file, at, len);
        }
        true
    }
}

/// Hashes what the writer has written.
struct Hasher {
    file: File,
    meta: Arc<FileMeta>,
    chunks: HashMap<u32, Progress>,
}

impl Hasher {
    fn new(file: File, meta: Arc<FileMeta>) -> Hasher {
        Hasher {
            file,
            meta,
            chunks: HashMap::new(),
        }
    }

    fn run(mut self, rx: std::sync::mpsc::Receiver<Hash>, checked: mpsc::UnboundedSender<Checked>) {
        for h in rx {
            match h {
                Hash::Block {
                    chunk,
                    block,
                    bytes,
                } => self.block(chunk, block, &bytes),
                Hash::Verify { chunk, failed } => {
                    let outcome = match failed {
                        Some(kind) => {
                            self.chunks.remove(&chunk);
                            Err(kind)
                        }
                        None => self.verify(chunk),
                    };
                    if checked.send(Checked { chunk, outcome }).is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn block(&mut self, chunk: u32, block: u32, bytes: &Bytes) {
        let p = self.chunks.entry(chunk).or_default();
        if p.again {
            return;
        }
        if block < p.next || p.ahead.contains(&block) {
            p.again = true;
        } else if block == p.next {
            p.hasher.update(bytes);
            p.next += 1;
        } else {
            p.ahead.insert(block);
        }
    }

    /// Hashes what is left of `chunk` from the file (the writer has written all of it by
    /// now: the check comes after its blocks) and compares; on a match, makes the chunk
    /// durable before saying so.
    fn verify(&mut self, chunk: u32) -> Result<bool, std::io::ErrorKind> {
        let mut p = self.chunks.remove(&chunk).unwrap_or_default();
        if p.again {
            p = Progress::default();
        }
        let count = self.meta.block_count(chunk).unwrap_or(0);
        let mut buf = vec![0u8; BLOCK_LEN];
        while p.next < count {
            let (at, len) = self.meta.block_range(chunk, p.next).expect("in range");
            let buf = &mut buf[..len as usize];
            self.file.read_exact_at(buf, at).map_err(|e| e.kind())?;
            p.hasher.update(buf);
            p.next += 1;
        }
        if Some(&p.hasher.finish()) != self.meta.chunk_hash(chunk) {
            return Ok(false);
        }
        // What is written before a check is on disk after it: a chunk is recorded as held,
        // served and announced only once it would survive a crash. Writeback started per
        // block, so this waits for little (measured: no change in `bench/swarm`).
        self.file.sync_data().map_err(|e| e.kind())?;
        Ok(true)
    }
}

/// `sync_file_range` on a range of the part file with `flags`. Errors are ignored by
/// every caller: they only lose a head start or keep pages cached; the `sync_data` at each
/// chunk's check is what makes bytes durable.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;
    use wire::{Digest, FileName};

    /// A file of two chunks of 2.5 blocks, and its description.
    fn sample() -> (Vec<u8>, Arc<FileMeta>) {
        let b = BLOCK_LEN;
        let data: Vec<u8> = (0..5 * b).map(|i| (i * 31 % 251) as u8).collect();
        let cs = 5 * b / 2;
        let chunks = vec![sha256(&data[..cs]), sha256(&data[cs..])];
        let meta = FileMeta::new(
            FileName::new("f").unwrap(),
            data.len() as u64,
            cs as u64,
            chunks,
            Digest([0; 32]),
        )
        .unwrap();
        (data, Arc::new(meta))
    }

    fn block(data: &[u8], meta: &FileMeta, c: u32, b: u32) -> Bytes {
        let (at, len) = meta.block_range(c, b).unwrap();
        Bytes::copy_from_slice(&data[at as usize..(at + len) as usize])
    }

    #[tokio::test]
    async fn blocks_in_any_order_again_or_wrong_are_judged_by_the_hash() {
        let (data, meta) = sample();
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("part"))
            .unwrap();
        file.set_len(data.len() as u64).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let store = Store::start(file, meta.clone(), tx);
        // Chunk 0: the tail first (read back later), then the rest.
        for b in [2, 0, 1] {
            store.write(0, b, block(&data, &meta, 0, b)).await;
        }
        store.verify(0).await;
        // Chunk 1: a wrong block, then the right one again over it.
        store.write(1, 0, Bytes::from(vec![0u8; BLOCK_LEN])).await;
        store.write(1, 1, block(&data, &meta, 1, 1)).await;
        store.write(1, 2, block(&data, &meta, 1, 2)).await;
        store.verify(1).await;
        store.write(1, 0, block(&data, &meta, 1, 0)).await;
        store.verify(1).await;
        // Chunks are checked side by side: in order per chunk, in any order across them.
        let mut got: Vec<(u32, Result<bool, std::io::ErrorKind>)> = Vec::new();
        for _ in 0..3 {
            let c = rx.recv().await.unwrap();
            got.push((c.chunk, c.outcome));
        }
        got.sort_by_key(|&(c, _)| c);
        assert_eq!(got, [(0, Ok(true)), (1, Ok(false)), (1, Ok(true))]);
        drop(store);
        assert_eq!(std::fs::read(dir.path().join("part")).unwrap(), data);
    }
}
