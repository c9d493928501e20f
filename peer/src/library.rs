//! The user's folder (`--dir`): the files they share and download, and what we know about
//! them.
//!
//! Layout:
//! - `<dir>/<name>`: a complete file (registered by us, or downloaded and verified).
//! - `<dir>/.swarmchat/<name>.meta`: its manifest: description, which chunks we hold
//!   (verified), whether it is complete. Rewritten atomically (temp file + rename).
//! - `<dir>/.swarmchat/<name>.part`: a download in progress, full size, verified chunks in
//!   place. Renamed to `<dir>/<name>` once every chunk is held.
//! - `<dir>/.swarmchat/<name>.leaves`: the block hashes (merkle leaves) of every chunk whose
//!   hashes we know, 32 bytes per block of the file at the block's index, zeros where not
//!   known. A chunk's slice counts only if it hashes to the chunk's root, so a torn or
//!   stale file costs a refetch of hashes, never a wrong answer.
//!
//! We serve a chunk only if the manifest says we hold it: every chunk of a file we
//! registered, and only verified chunks of a download; and a block of a chunk we hold in
//! part only once it matched its hash and was written. Blocks held in part live in memory
//! only: after a restart they are found again by hashing the part file's blocks of chunks
//! whose hashes we know ([`Library::prepare`]), so no write waits for a manifest. All file
//! reads and writes are streamed in blocks; no whole file or chunk is ever in memory.
//!
//! What we hold follows what is on disk: a complete file's size and modification time are
//! recorded when it is registered or finished, and checked before it is served and before
//! a download of its name starts. A file that vanished or changed is forgotten at once
//! (its manifest removed) and reported on the channel from [`Library::withdrawals`], so the
//! session withdraws it from the tracker instead of serving stale bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wire::{Digest, FileMeta, FileName, BLOCK_LEN, STATE_DIR};

use crate::hash::Hasher;

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Meta(#[from] wire::MetaError),
    #[error("{} is not a regular file: only regular files can be shared", .path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "another client is already using the folder {}; give each client its own --dir",
        .dir.display()
    )]
    InUse { dir: PathBuf },
    #[error("{path} already exists and is not the file being downloaded")]
    Exists { path: PathBuf },
    #[error("cannot save the manifest {path}: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error(
        "{} is {}, but only {} is free in {}",
        .name, crate::render::human_size(*.need), crate::render::human_size(*.free), .dir.display()
    )]
    NoSpace {
        name: FileName,
        need: u64,
        free: u64,
        dir: PathBuf,
    },
}

/// Bytes free for us (not root's reserve) on the filesystem holding `dir`; `None` if the
/// system cannot say.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Opens a file to be shared, refusing anything but a regular file. Opened without
/// blocking and checked on the open descriptor, not the name: opening a FIFO would
/// otherwise wait for a writer forever, and a device such as `/dev/zero` never ends.
pub(crate) fn open_regular(path: &Path) -> Result<File, LibraryError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(LibraryError::NotRegular {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LibraryError + '_ {
    move |source| LibraryError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    meta: FileMeta,
    have: BTreeSet<u32>,
    complete: bool,
    /// The complete file as it was when registered or finished.
    #[serde(default)]
    stamp: Option<Stamp>,
    /// Shared with `register` here (not downloaded): when it changes on disk it is read
    /// again and registered anew, as the user would; a downloaded copy that changes is
    /// only no longer shared.
    #[serde(default)]
    registered: bool,
    /// Per chunk, its block hashes once known (checked against its root).
    #[serde(skip)]
    leaves: Vec<Option<Leaves>>,
    /// Verified, written blocks of chunks not in `have`.
    #[serde(skip)]
    blocks: BTreeMap<u32, BTreeSet<u32>>,
}

/// The block hashes of one chunk, in order.
pub type Leaves = Arc<[Digest]>;

/// A file read and hashed by [`Library::describe`], ready to register.
#[derive(Debug, Clone)]
pub struct Described {
    pub meta: FileMeta,
    /// The number of chunks asked for (`meta` may have fewer).
    pub wanted: usize,
    pub stamp: Stamp,
    leaves: Vec<Leaves>,
}

/// What a download starts from ([`Library::prepare`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Chunks held whole.
    pub have: BTreeSet<u32>,
    /// Verified blocks of chunks held in part.
    pub blocks: BTreeMap<u32, BTreeSet<u32>>,
    /// Chunks whose block hashes are known.
    pub leaves: BTreeMap<u32, Leaves>,
}

/// What a holder just gained, as told to the connections serving that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gained {
    Chunk(u32),
    Block(u32, u32),
}

fn block_index(meta: &FileMeta, chunk: u32, block: u32) -> u64 {
    meta.block_index(chunk, block).unwrap_or(0)
}

/// What tells us a file changed without reading it: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    fn of_path(path: &Path) -> std::io::Result<Stamp> {
        std::fs::metadata(path).map(|m| Stamp::of(&m))
    }
}

/// A file we held and no longer do, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Withdrawn {
    pub name: FileName,
    pub why: &'static str,
    /// The description it had, when the whole file is still there with other contents:
    /// read it again, to share the new version or stop for good.
    pub changed: Option<FileMeta>,
    /// Found while running (the tracker knows we held it), not at start.
    pub announced: bool,
}

/// Where the bytes of a chunk we hold are.
#[derive(Debug, Clone)]
pub struct ChunkSource {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

pub struct Library {
    dir: PathBuf,
    state: PathBuf,
    /// Held briefly for lookups and updates, never across I/O on file contents.
    files: Mutex<HashMap<FileName, Manifest>>,
    withdrawn: Mutex<Option<mpsc::UnboundedSender<Withdrawn>>>,
    /// Found at start, reported to the first [`Library::withdrawals`] receiver.
    found_at_open: Mutex<Vec<Withdrawn>>,
    /// Every chunk and block verified, as it is: what serving connections tell their
    /// downloaders.
    verified: tokio::sync::broadcast::Sender<(FileName, Gained)>,
    /// Our lock on the folder, held while we live (released by the kernel when the
    /// process ends, however it ends).
    _lock: File,
}

/// Takes `<state>/lock` so that two clients never share a folder: each would rewrite the
/// other's manifests and part files mid-download.
fn lock_folder(dir: &Path, state: &Path) -> Result<File, LibraryError> {
    use std::os::fd::AsRawFd;
    let path = state.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a descriptor we own and keep open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            LibraryError::InUse {
                dir: dir.to_owned(),
            }
        } else {
            LibraryError::Io { path, source: e }
        });
    }
    Ok(file)
}

impl Library {
    /// Opens (creating the state folder if needed) and reads every manifest. A manifest
    /// whose complete file has gone or changed size is forgotten.
    /// The folder's `.swarmchat/`, where the client keeps its own state too (its key, the
    /// trackers it knows).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn open(dir: &Path) -> Result<Library, LibraryError> {
        let state = dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io(&state))?;
        let lock = lock_folder(dir, &state)?;
        let mut files = HashMap::new();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&state).map_err(io(&state))? {
            let path = entry.map_err(io(&state))?.path();
            let leftover = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".save-") && n.ends_with(".tmp"));
            if leftover {
                // A save cut short by a crash; the manifest it was replacing is intact.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "meta") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut m) = rmp_serde::from_slice::<Manifest>(&bytes) else {
                continue;
            };
            m.leaves = read_leaves(&state, &m.meta);
            let data = if m.complete {
                dir.join(m.meta.name().as_str())
            } else {
                state.join(format!("{}.part", m.meta.name()))
            };
            let name = m.meta.name().clone();
            // What we knew of it no longer holds. Its state files stay until the session
            // has told the user (`forget_state`): a login that fails first loses nothing.
            let gone = |why, changed| Withdrawn {
                name: name.clone(),
                why,
                changed,
                announced: false,
            };
            let Ok(on_disk) = std::fs::metadata(&data) else {
                if m.complete {
                    found.push(gone("was deleted", None));
                }
                continue;
            };
            if m.complete {
                // A manifest from before stamps were kept trusts the file as it is now.
                let now = Stamp::of(&on_disk);
                if *m.stamp.get_or_insert(now) != now {
                    let changed = m.registered.then(|| m.meta.clone());
                    found.push(gone("changed on disk", changed));
                    continue;
                }
            }
            if on_disk.len() == m.meta.size() {
                files.insert(name, m);
            }
        }
        Ok(Library {
            dir: dir.to_owned(),
            state,
            files: Mutex::new(files),
            withdrawn: Mutex::new(None),
            found_at_open: Mutex::new(found),
            verified: tokio::sync::broadcast::channel(1024).0,
            _lock: lock,
        })
    }

    /// Chunks and blocks verified from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(FileName, Gained)> {
        self.verified.subscribe()
    }

    /// Where files found vanished or changed are reported from now on, starting with
    /// those found at [`Library::open`].
    pub fn withdrawals(&self) -> mpsc::UnboundedReceiver<Withdrawn> {
        let (tx, rx) = mpsc::unbounded_channel();
        let found =
            std::mem::take(&mut *self.found_at_open.lock().unwrap_or_else(|e| e.into_inner()));
        for w in found {
            let _ = tx.send(w);
        }
        *self.withdrawn.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Is what we hold of `name` still on disk as we recorded it? If not, it is forgotten
    /// and reported (see [`Library::withdrawals`]), and `false` returned. Blocking (a
    /// `stat`).
    pub fn still_there(&self, name: &FileName) -> bool {
        let Some((complete, stamp, meta, registered)) = self
            .lock()
            .get(name)
            .map(|m| (m.complete, m.stamp, m.meta.clone(), m.registered))
        else {
            return false;
        };
        let (why, changed) = if complete {
            match Stamp::of_path(&self.path_of(name)) {
                Err(_) => (Some("was deleted"), None),
                Ok(now) if Some(now) != stamp => {
                    (Some("changed on disk"), registered.then(|| meta.clone()))
                }
                Ok(_) => (None, None),
            }
        } else {
            match std::fs::metadata(self.part_path(name)) {
                Ok(d) if d.len() == meta.size() => (None, None),
                _ => (Some("lost its partial download"), None),
            }
        };
        let Some(why) = why else { return true };
        if self.unshare(name) {
            if let Some(tx) = &*self.withdrawn.lock().unwrap_or_else(|e| e.into_inner()) {
                let _ = tx.send(Withdrawn {
                    name: name.clone(),
                    why,
                    changed,
                    announced: true,
                });
            }
        }
        false
    }

    /// Removes the state files of a file found gone or changed at start (reported by
    /// [`Library::withdrawals`], not loaded), once the user has been told.
    pub fn forget_state(&self, name: &FileName) {
        if self.lock().contains_key(name) {
            return; // registered or downloaded again meanwhile: its state is live
        }
        let _ = std::fs::remove_file(self.manifest_path(name));
        let _ = std::fs::remove_file(self.leaves_path(name));
    }

    /// Drops everything we knew of `name` (its partial download too) but the file itself:
    /// from now on it is neither served nor announced. `false` if we knew nothing of it.
    pub fn unshare(&self, name: &FileName) -> bool {
        if self.lock().remove(name).is_none() {
            return false;
        }
        let _ = std::fs::remove_file(self.manifest_path(name));
        let _ = std::fs::remove_file(self.part_path(name));
        let _ = std::fs::remove_file(self.leaves_path(name));
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileName, Manifest>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path_of(&self, name: &FileName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    fn part_path(&self, name: &FileName) -> PathBuf {
        self.state.join(format!("{name}.part"))
    }

    fn manifest_path(&self, name: &FileName) -> PathBuf {
        self.state.join(format!("{name}.meta"))
    }

    fn leaves_path(&self, name: &FileName) -> PathBuf {
        leaves_path(&self.state, name)
    }

    /// Everything we hold, to announce to the tracker at login.
    pub fn holdings(&self) -> Vec<(FileMeta, Vec<u32>)> {
        let mut out: Vec<_> = self
            .lock()
            .values()
            .filter(|m| !m.have.is_empty())
            .map(|m| (m.meta.clone(), m.have.iter().copied().collect()))
            .collect();
        out.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        out
    }

    /// The description of `name`, if we hold or are downloading it.
    pub fn meta(&self, name: &FileName) -> Option<FileMeta> {
        self.lock().get(name).map(|m| m.meta.clone())
    }

    /// Whether we hold all of `name` (`None`: nothing of it).
    pub fn is_complete(&self, name: &FileName) -> Option<bool> {
        self.lock().get(name).map(|m| m.complete)
    }

    /// Chunks of `name` we hold.
    pub fn have(&self, name: &FileName) -> BTreeSet<u32> {
        self.lock()
            .get(name)
            .map(|m| m.have.clone())
            .unwrap_or_default()
    }

    /// Reads `<dir>/<name>` once, computing the SHA-256 of each of (at most) `wanted`
    /// chunks and of the whole file, and each chunk's merkle tree over its blocks.
    /// Blocking: run it off the async threads.
    pub fn describe(&self, name: &FileName, wanted: usize) -> Result<Described, LibraryError> {
        let path = self.path_of(name);
        let file = open_regular(&path)?;
        let before = file.metadata().map_err(io(&path))?;
        let stamp = Stamp::of(&before);
        let size = before.len();
        let chunk_size = FileMeta::chunk_size_for(size, wanted);
        let mut whole = Hasher::new();
        let (mut chunks, mut roots, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
        let mut buf = vec![0u8; BLOCK_LEN];
        let mut reader = std::io::BufReader::with_capacity(0, file);
        let mut at = 0u64;
        while at < size {
            let len = chunk_size.min(size - at);
            let mut chunk = Hasher::new();
            let mut tree = Vec::with_capacity(len.div_ceil(BLOCK_LEN as u64) as usize);
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(BLOCK_LEN as u64) as usize;
                let block = &mut buf[..n];
                reader.read_exact(block).map_err(|e| LibraryError::Io {
                    path: path.clone(),
                    source: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        std::io::Error::other("it changed while being read; try again")
                    } else {
                        e
                    },
                })?;
                whole.update(block);
                chunk.update(block);
                tree.push(merkle::leaf(block));
                done += n as u64;
            }
            chunks.push(chunk.finish());
            roots.push(merkle::root(&tree).expect("a chunk is never empty"));
            leaves.push(Leaves::from(tree));
            at += len;
        }
        let mut extra = [0u8; 1];
        let longer = reader.read(&mut extra).map_err(io(&path))? > 0;
        if longer || Stamp::of_path(&path).ok() != Some(stamp) {
            return Err(LibraryError::Io {
                path,
                source: std::io::Error::other("it changed while being read; try again"),
            });
        }
        let meta = FileMeta::new(
            name.clone(),
            size,
            if size == 0 { 1 } else { chunk_size },
            chunks,
            roots,
            whole.finish(),
        )?;
        Ok(Described {
            meta,
            wanted,
            stamp,
            leaves,
        })
    }

    /// Records a file we registered: we hold every chunk of `<dir>/<name>`, as it was
    /// when it was described.
    pub fn add_complete(&self, d: Described) -> Result<(), LibraryError> {
        let m = Manifest {
            have: (0..d.meta.chunk_count()).collect(),
            complete: true,
            stamp: Some(d.stamp),
            registered: true,
            leaves: d.leaves.into_iter().map(Some).collect(),
            blocks: BTreeMap::new(),
            meta: d.meta,
        };
        self.write_leaves(
            &m.meta,
            (0..m.meta.chunk_count()).zip(m.leaves.iter().flatten()),
        )?;
        self.save(&m)?;
        self.lock().insert(m.meta.name().clone(), m);
        Ok(())
    }

    /// Block hashes of `chunk` of `name`, if we know them.
    pub fn leaves(&self, name: &FileName, chunk: u32) -> Option<Leaves> {
        self.lock().get(name)?.leaves.get(chunk as usize)?.clone()
    }

    /// The block hashes of `chunk` of a download, checked against its root by the caller:
    /// kept (and saved, without waiting for the disk) to check blocks with after a restart
    /// and to hand to other downloaders.
    pub fn set_leaves(
        &self,
        name: &FileName,
        chunk: u32,
        leaves: Leaves,
    ) -> Result<(), LibraryError> {
        let meta = {
            let mut files = self.lock();
            let Some(m) = files.get_mut(name) else {
                return Ok(());
            };
            match m.leaves.get_mut(chunk as usize) {
                Some(slot @ None) => *slot = Some(leaves.clone()),
                _ => return Ok(()),
            }
            m.meta.clone()
        };
        self.write_leaves(&meta, [(chunk, &leaves)])
    }

    fn write_leaves<'a>(
        &self,
        meta: &FileMeta,
        chunks: impl IntoIterator<Item = (u32, &'a Leaves)>,
    ) -> Result<(), LibraryError> {
        let path = self.leaves_path(meta.name());
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        for (chunk, leaves) in chunks {
            let bytes: Vec<u8> = leaves.iter().flat_map(|d| d.0).collect();
            f.write_all_at(&bytes, block_index(meta, chunk, 0) * 32)
                .map_err(io(&path))?;
        }
        Ok(())
    }

    /// Block `block` of `chunk` of a download matched its hash and is written: from now on
    /// we serve it, and those downloading from us hear of it.
    pub fn block_verified(&self, name: &FileName, chunk: u32, block: u32) {
        {
            let mut files = self.lock();
            let Some(m) = files.get_mut(name) else { return };
            if m.have.contains(&chunk) || !m.blocks.entry(chunk).or_default().insert(block) {
                return;
            }
        }
        let _ = self
            .verified
            .send((name.clone(), Gained::Block(chunk, block)));
    }

    /// Verified blocks of chunks of `name` held in part.
    pub fn partial(&self, name: &FileName) -> BTreeMap<u32, BTreeSet<u32>> {
        self.lock()
            .get(name)
            .map(|m| m.blocks.clone())
            .unwrap_or_default()
    }

    /// Where to read block `block` of `chunk` of `name` from, if we hold it (its chunk
    /// whole, or the block itself), as the path and the block's offset and length.
    pub fn block_source(&self, name: &FileName, chunk: u32, block: u32) -> Option<ChunkSource> {
        let files = self.lock();
        let m = files.get(name)?;
        let held =
            m.have.contains(&chunk) || m.blocks.get(&chunk).is_some_and(|b| b.contains(&block));
        if !held {
            return None;
        }
        let (offset, len) = m.meta.block_range(chunk, block)?;
        let path = if m.complete {
            self.path_of(name)
        } else {
            self.part_path(name)
        };
        Some(ChunkSource { path, offset, len })
    }

    /// Where to read `chunk` of `name` from, if we hold it.
    pub fn source(&self, name: &FileName, chunk: u32) -> Option<ChunkSource> {
        let files = self.lock();
        let m = files.get(name)?;
        if !m.have.contains(&chunk) {
            return None;
        }
        let (offset, len) = m.meta.chunk_range(chunk)?;
        let path = if m.complete {
            self.path_of(name)
        } else {
            self.part_path(name)
        };
        Some(ChunkSource { path, offset, len })
    }

    /// Gets ready to download `meta`: the part file exists at full size. Returns what is
    /// already held: every chunk if the file is complete; else the verified chunks, the
    /// block hashes known, and the blocks of unfinished chunks that match their hashes
    /// (read back from the part file: blocks written before a restart count). A stale
    /// partial download of different content under the same name is discarded. Blocking.
    pub fn prepare(&self, meta: &FileMeta) -> Result<Prepared, LibraryError> {
        let name = meta.name();
        // What we claim to hold must still be there; if not, it is forgotten first.
        self.still_there(name);
        let known = self.lock().get(name).filter(|m| m.meta == *meta).cloned();
        if let Some(m) = known {
            let leaves: BTreeMap<u32, Leaves> = m
                .leaves
                .iter()
                .enumerate()
                .filter_map(|(c, l)| Some((c as u32, l.clone()?)))
                .collect();
            if m.complete {
                return Ok(Prepared {
                    have: m.have,
                    leaves,
                    ..Prepared::default()
                });
            }
            let part = self.part_path(name);
            if std::fs::metadata(&part).is_ok_and(|d| d.len() == meta.size()) {
                let blocks = self.recheck_blocks(&m, &leaves)?;
                if let Some(live) = self.lock().get_mut(name) {
                    live.blocks = blocks.clone();
                }
                return Ok(Prepared {
                    have: m.have,
                    blocks,
                    leaves,
                });
            }
        }
        let target = self.path_of(name);
        if target.exists() {
            return Err(LibraryError::Exists { path: target });
        }
        // The part file is sparse: without this a description bigger than the disk (or a
        // forged one of exabytes) would fail only when the disk fills, mid-download.
        if let Some(free) = free_space(&self.dir).filter(|&free| free < meta.size()) {
            return Err(LibraryError::NoSpace {
                name: name.clone(),
                need: meta.size(),
                free,
                dir: self.dir.clone(),
            });
        }
        let part = self.part_path(name);
        let f = File::create(&part).map_err(io(&part))?;
        f.set_len(meta.size()).map_err(io(&part))?;
        let _ = std::fs::remove_file(self.leaves_path(name));
        let m = Manifest {
            meta: meta.clone(),
            have: BTreeSet::new(),
            complete: false,
            stamp: None,
            registered: false,
            leaves: vec![None; meta.chunk_count() as usize],
            blocks: BTreeMap::new(),
        };
        self.save(&m)?;
        self.lock().insert(name.clone(), m);
        Ok(Prepared::default())
    }

    /// The blocks of unfinished chunks (with known hashes) that the part file holds.
    fn recheck_blocks(
        &self,
        m: &Manifest,
        leaves: &BTreeMap<u32, Leaves>,
    ) -> Result<BTreeMap<u32, BTreeSet<u32>>, LibraryError> {
        let part = self.part_path(m.meta.name());
        let f = File::open(&part).map_err(io(&part))?;
        let mut buf = vec![0u8; BLOCK_LEN];
        let mut out = BTreeMap::new();
        for (&chunk, hashes) in leaves.iter().filter(|(c, _)| !m.have.contains(c)) {
            let mut held = BTreeSet::new();
            for (b, want) in hashes.iter().enumerate() {
                let Some((at, len)) = m.meta.block_range(chunk, b as u32) else {
                    break;
                };
                let block = &mut buf[..len as usize];
                f.read_exact_at(block, at).map_err(io(&part))?;
                if merkle::leaf(block) == *want {
                    held.insert(b as u32);
                }
            }
            if !held.is_empty() {
                out.insert(chunk, held);
            }
        }
        Ok(out)
    }

    /// Opens the part file of a prepared download for writing chunks into (and reading
    /// them back to check them).
    pub fn part_file(&self, name: &FileName) -> Result<File, LibraryError> {
        let part = self.part_path(name);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io(&part))
    }

    /// `chunk` of `name` has been written and verified: from now on we hold and serve it.
    pub fn verified(&self, name: &FileName, chunk: u32) -> Result<(), LibraryError> {
        let m = {
            let mut files = self.lock();
            let Some(m) = files.get_mut(name) else {
                return Ok(());
            };
            m.have.insert(chunk);
            m.blocks.remove(&chunk);
            m.clone()
        };
        self.save(&m)?;
        // Nobody listening is fine.
        let _ = self.verified.send((name.clone(), Gained::Chunk(chunk)));
        Ok(())
    }

    /// Every chunk is held (verified, and durable since it was recorded): moves the part
    /// file into place atomically (rename within the same folder tree). Blocking.
    ///
    /// The whole file is not hashed again here: each byte lies in exactly one chunk, each
    /// chunk's SHA-256 matched the description before it was recorded, and a chunk is on
    /// disk before it is recorded (the writer's `sync_data`). Re-reading and hashing the
    /// file cost 0.8 CPU s per GiB (a third of a 1 GiB download's time in `bench/swarm`)
    /// and could only catch a description whose chunk hashes disagree with its whole hash,
    /// which its own registrant made.
    pub fn finish(&self, name: &FileName) -> Result<PathBuf, LibraryError> {
        let Some(mut m) = self.lock().get(name).cloned() else {
            return Err(LibraryError::Manifest {
                path: self.manifest_path(name),
                why: "unknown download".into(),
            });
        };
        let target = self.path_of(name);
        if m.complete {
            return Ok(target);
        }
        if (0..m.meta.chunk_count()).any(|c| !m.have.contains(&c)) {
            return Err(LibraryError::Manifest {
                path: self.manifest_path(name),
                why: "chunks are still missing".into(),
            });
        }
        let part = self.part_path(name);
        // On disk before it takes its name, so a crash never leaves a named, torn file.
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io(&part))?;
        if target.exists() {
            return Err(LibraryError::Exists { path: target });
        }
        // The rename and the switch to the new path happen under the lock (a rename moves
        // no file contents): whoever asks where a block is gets a path that exists. Seen
        // under load: a holder asked between the two found neither, refused the block,
        // and its downloader stopped asking it for the chunk.
        {
            let mut files = self.lock();
            std::fs::rename(&part, &target).map_err(io(&target))?;
            m.complete = true;
            m.blocks.clear();
            m.stamp = Some(Stamp::of_path(&target).map_err(io(&target))?);
            files.insert(name.clone(), m.clone());
        }
        self.save(&m)?;
        Ok(target)
    }

    fn save(&self, m: &Manifest) -> Result<(), LibraryError> {
        let path = self.manifest_path(m.meta.name());
        let fail = |why: String| LibraryError::Manifest {
            path: path.clone(),
            why,
        };
        let bytes = rmp_serde::to_vec(m).map_err(|e| fail(e.to_string()))?;
        // A short name of its own, not the file's name plus a suffix: a 250-byte file name
        // plus ".meta.tmp" is longer than a directory entry may be. Unique per save, so
        // two saves at once never share one.
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".save-{}-{n}.tmp", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| fail(e.to_string()))?;
        f.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
        f.sync_data().map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))
    }
}

fn leaves_path(state: &Path, name: &FileName) -> PathBuf {
    state.join(format!("{name}.leaves"))
}

/// The block hashes of each chunk of `meta` found in its leaves file, where they match the
/// chunk's root.
fn read_leaves(state: &Path, meta: &FileMeta) -> Vec<Option<Leaves>> {
    let bytes = std::fs::read(leaves_path(state, meta.name())).unwrap_or_default();
    (0..meta.chunk_count())
        .map(|c| {
            let n = meta.block_count(c)? as u64;
            let at = (block_index(meta, c, 0) * 32) as usize;
            let slice = bytes.get(at..at + n as usize * 32)?;
            let hashes: Vec<Digest> = slice
                .chunks_exact(32)
                .map(|h| Digest(h.try_into().expect("32 bytes")))
                .collect();
            (merkle::root(&hashes).as_ref() == meta.chunk_root(c)).then(|| Leaves::from(hashes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;

    fn name(s: &str) -> FileName {
        FileName::new(s).unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn describe_hashes_each_chunk_and_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(1000);
        std::fs::write(dir.path().join("f.bin"), &data).unwrap();
        let lib = Library::open(dir.path()).unwrap();
        let meta = lib.describe(&name("f.bin"), 10).unwrap().meta;
        assert_eq!(meta.size(), 1000);
        assert_eq!(meta.chunk_count(), 10);
        assert_eq!(meta.sha256(), &sha256(&data));
        for c in 0..10 {
            let (off, len) = meta.chunk_range(c).unwrap();
            let want = sha256(&data[off as usize..(off + len) as usize]);
            assert_eq!(meta.chunk_hash(c), Some(&want));
            // One block per chunk here: the root is the block's leaf.
            let leaf = merkle::leaf(&data[off as usize..(off + len) as usize]);
            assert_eq!(meta.chunk_root(c), Some(&leaf));
        }
        assert!(lib.describe(&name("missing"), 10).is_err());
    }

    #[test]
    fn a_folder_is_used_by_one_client_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Library::open(dir.path()).unwrap();
        let second = Library::open(dir.path()).map(|_| ()).unwrap_err();
        assert!(matches!(second, LibraryError::InUse { .. }), "{second}");
        assert!(second
            .to_string()
            .contains("give each client its own --dir"));
        drop(first);
        Library::open(dir.path()).unwrap();
    }

    #[test]
    fn download_lifecycle_survives_reopen() {
        let src = tempfile::tempdir().unwrap();
        let data = sample(3000);
        std::fs::write(src.path().join("f.bin"), &data).unwrap();
        let meta = Library::open(src.path())
            .unwrap()
            .describe(&name("f.bin"), 3)
            .unwrap()
            .meta;

        let dst = tempfile::tempdir().unwrap();
        let lib = Library::open(dst.path()).unwrap();
        assert_eq!(lib.prepare(&meta).unwrap(), Prepared::default());
        let part = lib.part_file(meta.name()).unwrap();
        let (off, len) = meta.chunk_range(1).unwrap();
        part.write_all_at(&data[off as usize..(off + len) as usize], off)
            .unwrap();
        lib.verified(meta.name(), 1).unwrap();
        assert!(lib.source(meta.name(), 1).is_some());
        assert!(
            lib.source(meta.name(), 0).is_none(),
            "not verified, not served"
        );

        // A restart remembers the verified chunk.
        drop(lib);
        let lib = Library::open(dst.path()).unwrap();
        assert_eq!(lib.prepare(&meta).unwrap().have, BTreeSet::from([1]));
        assert_eq!(lib.holdings(), [(meta.clone(), vec![1])]);
        let part = lib.part_file(meta.name()).unwrap();
        for c in [0, 2] {
            let (off, len) = meta.chunk_range(c).unwrap();
            part.write_all_at(&data[off as usize..(off + len) as usize], off)
                .unwrap();
            lib.verified(meta.name(), c).unwrap();
        }
        let path = lib.finish(meta.name()).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert!(lib.source(meta.name(), 0).is_some());
    }

    #[test]
    fn a_file_that_vanished_or_changed_is_forgotten_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.bin", "b.bin"] {
            std::fs::write(dir.path().join(f), sample(100)).unwrap();
        }
        let lib = Library::open(dir.path()).unwrap();
        let mut gone = lib.withdrawals();
        for f in ["a.bin", "b.bin"] {
            let d = lib.describe(&name(f), 2).unwrap();
            lib.add_complete(d).unwrap();
            assert!(lib.still_there(&name(f)));
        }
        std::fs::remove_file(dir.path().join("a.bin")).unwrap();
        // Same size, new content: the modification time tells.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("b.bin"))
            .unwrap();
        f.write_all_at(b"edited", 0).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(!lib.still_there(&name("a.bin")));
        assert!(!lib.still_there(&name("b.bin")));
        assert!(
            lib.source(&name("b.bin"), 0).is_none(),
            "never served stale"
        );
        assert!(lib.holdings().is_empty());
        let why: Vec<_> = std::iter::from_fn(|| gone.try_recv().ok()).collect();
        let old_b = why[1].changed.clone();
        assert_eq!(
            why,
            [
                Withdrawn {
                    name: name("a.bin"),
                    why: "was deleted",
                    changed: None,
                    announced: true,
                },
                Withdrawn {
                    name: name("b.bin"),
                    why: "changed on disk",
                    changed: old_b.clone(),
                    announced: true,
                }
            ]
        );
        assert_eq!(
            old_b.unwrap().size(),
            100,
            "the old description, to compare"
        );
        // Forgotten for good: a restart does not bring them back.
        let d = lib.describe(&name("b.bin"), 2).unwrap();
        lib.add_complete(d).unwrap();
        drop(lib);
        // ...and what changed while the client was not running is found at start, once.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("b.bin"))
            .unwrap();
        f.write_all_at(b"again!", 0).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(9))
            .unwrap();
        let found_at_start = || {
            let lib = Library::open(dir.path()).unwrap();
            assert!(lib.holdings().is_empty());
            let mut rx = lib.withdrawals();
            let found: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
            (lib, found)
        };
        let (lib, found) = found_at_start();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].why, found[0].announced),
            ("changed on disk", false)
        );
        assert!(found[0].changed.is_some());
        // Not told yet (a login that failed, say): found again at the next start.
        drop(lib);
        let (lib, found) = found_at_start();
        assert_eq!(found.len(), 1);
        // Told: forgotten for good.
        lib.forget_state(&name("b.bin"));
        drop(lib);
        assert!(found_at_start().1.is_empty(), "told once");
    }

    /// A file of 5 blocks in 2 chunks of 3 blocks each, the last of each chunk short.
    fn blocky() -> (tempfile::TempDir, Vec<u8>, Described) {
        let src = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5 * BLOCK_LEN).map(|i| (i * 13 % 253) as u8).collect();
        std::fs::write(src.path().join("f.bin"), &data).unwrap();
        let d = Library::open(src.path())
            .unwrap()
            .describe(&name("f.bin"), 2)
            .unwrap();
        (src, data, d)
    }

    #[test]
    fn roots_cover_each_chunks_blocks_and_a_seeder_hands_out_its_hashes() {
        let (src, data, d) = blocky();
        let meta = d.meta.clone();
        assert_eq!(meta.block_count(0), Some(3));
        // Chunks of 2.5 blocks: the third block of each is half a block.
        assert_eq!(
            meta.block_range(0, 2),
            Some((2 * BLOCK_LEN as u64, BLOCK_LEN as u64 / 2))
        );
        let leaves: Vec<Digest> = (0..3)
            .map(|b| {
                let (at, len) = meta.block_range(0, b).unwrap();
                merkle::leaf(&data[at as usize..(at + len) as usize])
            })
            .collect();
        assert_eq!(meta.chunk_root(0), merkle::root(&leaves).as_ref());
        let lib = Library::open(src.path()).unwrap();
        lib.add_complete(d).unwrap();
        assert_eq!(lib.leaves(meta.name(), 0).as_deref(), Some(&leaves[..]));
        // Kept across a restart, from the leaves file.
        drop(lib);
        let lib = Library::open(src.path()).unwrap();
        assert_eq!(lib.leaves(meta.name(), 0).as_deref(), Some(&leaves[..]));
        assert_eq!(lib.leaves(meta.name(), 1).map(|l| l.len()), Some(3));
    }

    #[test]
    fn blocks_are_served_once_written_and_found_again_after_a_restart() {
        let (_src, data, d) = blocky();
        let meta = d.meta.clone();
        let dst = tempfile::tempdir().unwrap();
        let lib = Library::open(dst.path()).unwrap();
        let mut news = lib.subscribe();
        lib.prepare(&meta).unwrap();
        let hashes = d.leaves[0].clone();
        lib.set_leaves(meta.name(), 0, hashes.clone()).unwrap();
        let part = lib.part_file(meta.name()).unwrap();
        for b in [0u32, 2] {
            let (at, len) = meta.block_range(0, b).unwrap();
            part.write_all_at(&data[at as usize..(at + len) as usize], at)
                .unwrap();
            lib.block_verified(meta.name(), 0, b);
        }
        assert!(lib.block_source(meta.name(), 0, 2).is_some());
        assert!(lib.block_source(meta.name(), 0, 1).is_none(), "not held");
        assert!(
            lib.source(meta.name(), 0).is_none(),
            "the chunk is not whole"
        );
        assert_eq!(
            lib.partial(meta.name()),
            BTreeMap::from([(0, BTreeSet::from([0, 2]))])
        );
        assert_eq!(news.try_recv().unwrap().1, Gained::Block(0, 0));
        assert_eq!(news.try_recv().unwrap().1, Gained::Block(0, 2));
        // Block 1 was written but never verified (a crash came first); block 0 rotted.
        let (at, len) = meta.block_range(0, 1).unwrap();
        part.write_all_at(&data[at as usize..(at + len) as usize], at)
            .unwrap();
        part.write_all_at(b"rot", 0).unwrap();
        drop(lib);
        let lib = Library::open(dst.path()).unwrap();
        let p = lib.prepare(&meta).unwrap();
        assert!(p.have.is_empty());
        assert_eq!(p.leaves.get(&0), Some(&hashes));
        assert_eq!(p.blocks, BTreeMap::from([(0, BTreeSet::from([1, 2]))]));
        assert!(lib.block_source(meta.name(), 0, 1).is_some());
        assert!(lib.block_source(meta.name(), 0, 0).is_none());
    }

    #[test]
    fn finish_refuses_while_chunks_are_missing() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f.bin"), sample(100)).unwrap();
        let meta = Library::open(src.path())
            .unwrap()
            .describe(&name("f.bin"), 2)
            .unwrap()
            .meta;
        let dst = tempfile::tempdir().unwrap();
        let lib = Library::open(dst.path()).unwrap();
        lib.prepare(&meta).unwrap();
        lib.verified(meta.name(), 0).unwrap();
        assert!(matches!(
            lib.finish(meta.name()),
            Err(LibraryError::Manifest { .. })
        ));
        assert!(!dst.path().join("f.bin").exists());
    }

    #[test]
    fn a_file_bigger_than_the_free_space_is_refused_before_anything_is_written() {
        let d = |b: u8| wire::Digest([b; 32]);
        // 1 EiB in 10 chunks: no disk here holds it.
        let size: u64 = 1 << 60;
        let meta = FileMeta::new(
            name("huge.bin"),
            size,
            size.div_ceil(10),
            vec![d(1); 10],
            vec![d(2); 10],
            d(3),
        )
        .unwrap();
        let dst = tempfile::tempdir().unwrap();
        let lib = Library::open(dst.path()).unwrap();
        let err = lib.prepare(&meta).unwrap_err();
        assert!(matches!(err, LibraryError::NoSpace { .. }), "{err}");
        let said = err.to_string();
        assert!(
            said.starts_with("huge.bin is ") && said.contains(", but only "),
            "{said}"
        );
        assert!(!dst.path().join(".swarmchat").join("huge.bin.part").exists());
        assert!(std::fs::read_dir(dst.path())
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == ".swarmchat"));
    }

    #[test]
    fn prepare_will_not_overwrite_someone_elses_file() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f.bin"), sample(100)).unwrap();
        let meta = Library::open(src.path())
            .unwrap()
            .describe(&name("f.bin"), 2)
            .unwrap()
            .meta;
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join("f.bin"), b"mine").unwrap();
        let lib = Library::open(dst.path()).unwrap();
        assert!(matches!(
            lib.prepare(&meta),
            Err(LibraryError::Exists { .. })
        ));
    }
}
