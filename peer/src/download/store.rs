//! The thread that writes a download's part file, so disk writes never stall the async
//! threads, and makes each chunk durable before it is recorded as held.
//!
//! Nothing here checks content: every block that reaches the store already matched its
//! hash, a leaf of its chunk's merkle tree whose root the file's description names (the
//! download checks it on arrival). So a chunk whose blocks are all written is a verified
//! chunk; hashing it again as a whole (its plain SHA-256, as the store did before blocks
//! were checked one by one) could only catch a description whose chunk hash and root
//! disagree, which its own registrant made, and cost 0.8 CPU s per GiB (measured with
//! `bench/swarm`: 1 GiB in 2.19 s with both checks).
//!
//! Why one writer: fetches writing the same file concurrently spend their time contending
//! for its inode lock (measured: 10% of the downloader's CPU spinning, with `perf`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use wire::FileMeta;

/// A chunk made durable, or why it could not be.
#[derive(Debug)]
pub struct Checked {
    pub chunk: u32,
    /// `Ok(())`: every block of the chunk is on disk; `Err`: the part file could not be
    /// written.
    pub outcome: Result<(), std::io::ErrorKind>,
}

enum Op {
    Block {
        chunk: u32,
        block: u32,
        bytes: Bytes,
    },
    Complete {
        chunk: u32,
    },
}

/// Told of every block once it is written (it matched its hash before it was queued): from
/// then on it may be served.
pub type OnWritten = Box<dyn Fn(u32, u32) + Send>;

/// Handle to the writer thread; it ends when the handle is dropped.
pub struct Store {
    tx: mpsc::Sender<Op>,
}

/// Blocks queued for the writer at most (4 MiB): memory stays bounded when the disk is
/// slower than the network, and the download stops reading from peers meanwhile.
const QUEUE: usize = 16;

impl Store {
    /// Starts the thread on `file` (the part file, open for writing); results of
    /// [`Store::complete`] go to `checked`, and every written block to `written`.
    pub fn start(
        file: File,
        meta: Arc<FileMeta>,
        checked: mpsc::UnboundedSender<Checked>,
        written: OnWritten,
    ) -> Store {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::spawn(move || Writer::new(file, meta, written).run(rx, checked));
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

    /// Every block of `chunk` has been queued: make it durable. The answer comes as a
    /// [`Checked`].
    pub async fn complete(&self, chunk: u32) {
        let _ = self.tx.send(Op::Complete { chunk }).await;
    }
}

struct Writer {
    file: File,
    meta: Arc<FileMeta>,
    /// The first write error, reported at every later completion.
    failed: Option<std::io::ErrorKind>,
    cached: std::collections::VecDeque<(u64, usize)>,
    written: OnWritten,
}

impl Writer {
    fn new(file: File, meta: Arc<FileMeta>, written: OnWritten) -> Writer {
        Writer {
            file,
            meta,
            written,
            failed: None,
            cached: std::collections::VecDeque::with_capacity(CACHED_BLOCKS + 1),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Op>, checked: mpsc::UnboundedSender<Checked>) {
        while let Some(op) = rx.blocking_recv() {
            match op {
                Op::Block {
                    chunk,
                    block,
                    bytes,
                } => {
                    if self.write(chunk, block, &bytes) {
                        (self.written)(chunk, block);
                    }
                }
                Op::Complete { chunk } => {
                    // What is written before a completion is on disk after it: a chunk is
                    // recorded as held, and announced, only once it would survive a
                    // crash. Writeback started per block, so this waits for little.
                    let outcome = match self.failed {
                        Some(kind) => Err(kind),
                        None => self.file.sync_data().map_err(|e| e.kind()),
                    };
                    if checked.send(Checked { chunk, outcome }).is_err() {
                        return;
                    }
                }
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
    use wire::{Digest, FileName, BLOCK_LEN};

    #[tokio::test]
    async fn blocks_in_any_order_are_written_reported_and_made_durable() {
        let b = BLOCK_LEN;
        let data: Vec<u8> = (0..5 * b).map(|i| (i * 31 % 251) as u8).collect();
        let cs = 5 * b / 2;
        let meta = Arc::new(
            FileMeta::new(
                FileName::new("f").unwrap(),
                data.len() as u64,
                cs as u64,
                vec![Digest([0; 32]); 2],
                vec![Digest([0; 32]); 2],
                Digest([0; 32]),
            )
            .unwrap(),
        );
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
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = written.clone();
        let store = Store::start(
            file,
            meta.clone(),
            tx,
            Box::new(move |c, b| w.lock().unwrap().push((c, b))),
        );
        let block = |c, b| {
            let (at, len) = meta.block_range(c, b).unwrap();
            Bytes::copy_from_slice(&data[at as usize..(at + len) as usize])
        };
        for (c, b) in [(0, 2), (1, 0), (0, 0), (0, 1), (1, 2), (1, 1)] {
            store.write(c, b, block(c, b)).await;
        }
        // A block that does not fit its place is never written.
        store.write(1, 1, Bytes::from_static(b"short")).await;
        store.complete(0).await;
        store.complete(1).await;
        for want in [0, 1] {
            let c = rx.recv().await.unwrap();
            assert_eq!((c.chunk, c.outcome), (want, Ok(())));
        }
        assert_eq!(
            *written.lock().unwrap(),
            [(0, 2), (1, 0), (0, 0), (0, 1), (1, 2), (1, 1)]
        );
        drop(store);
        assert_eq!(std::fs::read(dir.path().join("part")).unwrap(), data);
    }
}
