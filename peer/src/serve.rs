//! The serving side of transfers: one task per downloader connected to our listener, and
//! [`Uploads`], which decides whom we serve.
//!
//! A holder has one uplink, and in a crowd more downloaders than it can serve well: split
//! twelve ways, a 40 Mbit/s uplink delivers no block to anyone for a long while, and
//! nothing can be re-shared meanwhile. So at most [`UPLOAD_SLOTS`] downloaders are
//! *unchoked* (served) at once; the others wait in line, in the order they came, and each
//! unchoked one keeps its slot for one turn: [`TURN_BYTES`] (two blocks, a chunk at most),
//! [`TURN`] at most, or until it stops asking. Then, if someone is waiting, it goes to the
//! back of the line. Nobody starves, and each turn hands one downloader blocks it can pass
//! on at once (blocks are re-shared as soon as they are verified).
//!
//! Measured on the lab's flash crowd (`bench/netswarm 2`: one 40 Mbit/s seed, twelve
//! leechers): with 4 slots the last leecher finished at 16.0 s, with 2 at 11.9-12.4 s,
//! with 1 at 11.9-12.3 s; 2 is kept, so a holder whose uplink is faster than one
//! downloader's downlink still uses more of it.
//!
//! When it unchokes a downloader the holder also suggests chunks, least sent first (as
//! BitTorrent's Suggest Piece): twelve leechers that start together then take different
//! chunks from the seed instead of several the same one.
//!
//! A seed (it holds the whole file) with more interested downloaders than slots also sends
//! every block once before it sends any block twice (as BitTorrent's super-seeding, at block
//! level): a request for a block it has sent more often than its least-sent block is
//! answered `Later`, once per downloader and block, so the downloader fetches it from the
//! fellow that has it (or soon will) and the seed's uplink carries only what nobody has.
//! The check is made when the request comes and again when its turn to be sent comes: two
//! downloaders asking for one block at once both pass the first (measured on `bench/netswarm
//! 2` with only the first: 10 of the seed's first 140 blocks out were second copies, and its
//! last new block went out 0.5 s later).
//! Measured on `bench/netswarm 2` before this rule: the seed sent 2.15 copies of the file,
//! 44 of its 130 blocks once and the rest up to 7 times, the last new block at 13.2 s.
//!
//! Within the unchoked set every block goes out in the order it was asked for, the
//! `--up-limit` bucket taken before each; blocks are read from disk one at a time, so a
//! connection holds at most one block in memory. A chunk is only served while the file it
//! comes from is still on disk as recorded (checked when the connection opens and every
//! [`RECHECK`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use wire::{FileName, Partial, PeerMsg, UserName};

use crate::library::{Gained, Library};
use crate::p2p::{send, PeerFramed, WRITE_STALL};
use crate::ratelimit::RateLimiter;

/// Downloaders served at once.
pub const UPLOAD_SLOTS: usize = 2;
/// Longest turn in a slot while others wait.
pub const TURN: Duration = Duration::from_secs(20);
/// An unchoked downloader that asks for nothing this long gives its slot to one waiting
/// (a downloader using its slot keeps requests queued: one comes at least every block).
const IDLE_TURN: Duration = Duration::from_millis(500);
/// Bytes in one turn (at most a chunk): two blocks. Short turns spread what a holder just
/// got to everyone waiting within a second; measured on `bench/netswarm 2` with blocks
/// re-shared as they arrive: turns of a chunk (3.2 MiB) 9.5 s, 1 MiB 8.7-9.1 s, 512 KiB
/// 8.5-8.9 s, 256 KiB 8.9 s.
const TURN_BYTES: u64 = 2 * wire::BLOCK_LEN as u64;
/// Requests a downloader may have queued with us; more are rejected.
const MAX_QUEUED: usize = 256;
/// A connection with no frame from the downloader for this long is closed.
const SERVE_IDLE: Duration = Duration::from_secs(120);
/// How often a served file is checked to still be on disk as recorded.
const RECHECK: Duration = Duration::from_secs(1);

/// Who is served now and who waits: pure, with time passed in (milliseconds).
#[derive(Debug, Default)]
pub struct Choker {
    slots: usize,
    turn_ms: u64,
    idle_ms: u64,
    conns: BTreeMap<u64, Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// It needs something we have (it said `NotInterested` otherwise): it may be served.
    interested: bool,
    /// Unchoked, or waiting.
    served: bool,
    /// When its turn started, or when it began waiting.
    since: u64,
    /// Bytes sent this turn, and a turn's worth.
    sent: u64,
    quota: u64,
    last_request: u64,
}

impl Choker {
    pub fn new(slots: usize, turn: Duration, idle: Duration) -> Choker {
        Choker {
            slots,
            turn_ms: turn.as_millis() as u64,
            idle_ms: idle.as_millis() as u64,
            conns: BTreeMap::new(),
        }
    }

    /// A downloader asks to be served; a turn is `quota` bytes.
    pub fn join(&mut self, id: u64, quota: u64, now: u64) {
        self.conns.insert(
            id,
            Slot {
                interested: true,
                served: false,
                since: now,
                sent: 0,
                quota,
                last_request: now,
            },
        );
    }

    pub fn leave(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// The downloader says whether it needs anything we have. One that does not leaves the
    /// line (and its slot, if it had one: `true` if so, and it must be told it is choked);
    /// one that does again joins it at the back.
    pub fn interest(&mut self, id: u64, interested: bool, now: u64) -> bool {
        let Some(s) = self.conns.get_mut(&id) else {
            return false;
        };
        let was_served = s.served;
        if s.interested != interested {
            s.interested = interested;
            s.served = false;
            s.since = now;
        }
        was_served && !interested
    }

    pub fn requested(&mut self, id: u64, now: u64) {
        if let Some(s) = self.conns.get_mut(&id) {
            s.last_request = now;
        }
    }

    /// `bytes` went out to `id`; `true` if that ended its turn's quota.
    pub fn sent(&mut self, id: u64, bytes: u64) -> bool {
        match self.conns.get_mut(&id) {
            Some(s) => {
                s.sent += bytes;
                s.sent >= s.quota
            }
            None => false,
        }
    }

    pub fn is_served(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|s| s.served)
    }

    /// More downloaders need something from us than we have slots.
    pub fn crowded(&self) -> bool {
        self.conns.values().filter(|s| s.interested).count() > self.slots
    }

    /// Applies the rule (see the module doc); returns the connections whose state changed,
    /// with their new state (`true`: served).
    pub fn rechoke(&mut self, now: u64) -> Vec<(u64, bool)> {
        let mut changes = Vec::new();
        let waiting = self
            .conns
            .values()
            .filter(|s| s.interested && !s.served)
            .count();
        if waiting > 0 {
            // Turns that are over go to the back of the line.
            let (turn_ms, idle_ms) = (self.turn_ms, self.idle_ms);
            let mut over: Vec<(u64, u64)> = self
                .conns
                .iter()
                .filter(|(_, s)| {
                    s.served
                        && (s.sent >= s.quota
                            || now.saturating_sub(s.since) >= turn_ms
                            || now.saturating_sub(s.last_request) >= idle_ms)
                })
                .map(|(&id, s)| (s.since, id))
                .collect();
            over.sort_unstable();
            for (_, id) in over.into_iter().take(waiting) {
                let s = self.conns.get_mut(&id).expect("listed");
                s.served = false;
                s.since = now;
                changes.push((id, false));
            }
        }
        // The line, longest waiting first: those just choked are at its back.
        let mut line: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, s)| s.interested && !s.served)
            .map(|(&id, s)| (s.since, id))
            .collect();
        line.sort_unstable();
        let mut free = self
            .slots
            .saturating_sub(self.conns.values().filter(|s| s.served).count());
        for (_, id) in line {
            if free == 0 {
                break;
            }
            let s = self.conns.get_mut(&id).expect("listed");
            s.served = true;
            s.since = now;
            s.sent = 0;
            s.last_request = now;
            free -= 1;
            match changes.iter().position(|&(c, _)| c == id) {
                // Choked and served again at once: no change to report.
                Some(i) => {
                    changes.remove(i);
                }
                None => changes.push((id, true)),
            }
        }
        changes
    }
}

/// Everything our listener uploads, shared by its transfer connections.
pub struct Uploads {
    started: Instant,
    limiter: Option<Arc<RateLimiter>>,
    inner: Mutex<Inner>,
    /// Payload bytes sent, for `transfers`.
    pub sent: AtomicU64,
    /// Bytes per second over the last seconds, and the count it was last measured at.
    rate: Mutex<(f64, u64)>,
}

struct Inner {
    choker: Choker,
    /// Bytes sent of each chunk of each file: what `Suggest` puts last.
    served: HashMap<FileName, HashMap<u32, u64>>,
    /// Copies sent of each block of each file.
    copies: HashMap<FileName, Copies>,
    next_id: u64,
    /// Each connection's view of whether it is served.
    tells: HashMap<u64, watch::Sender<bool>>,
    /// Who each connection serves, for `transfers`.
    users: HashMap<u64, UserName>,
}

impl Uploads {
    pub fn new(limiter: Option<Arc<RateLimiter>>) -> Arc<Uploads> {
        let uploads = Arc::new(Uploads {
            started: Instant::now(),
            limiter,
            inner: Mutex::new(Inner {
                choker: Choker::new(UPLOAD_SLOTS, TURN, IDLE_TURN),
                served: HashMap::new(),
                copies: HashMap::new(),
                next_id: 0,
                tells: HashMap::new(),
                users: HashMap::new(),
            }),
            sent: AtomicU64::new(0),
            rate: Mutex::new((0.0, 0)),
        });
        // Turns also end with time: look again twice a second (and measure the rate).
        let weak = Arc::downgrade(&uploads);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(u) => {
                        u.rechoke();
                        u.measure(0.5);
                    }
                    None => return,
                }
            }
        });
        uploads
    }

    pub fn limit(&self) -> Option<crate::ratelimit::Rate> {
        self.limiter.as_ref().map(|l| l.rate())
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Upload rate in bytes per second, smoothed.
    pub fn rate(&self) -> f64 {
        self.rate.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn measure(&self, secs: f64) {
        let sent = self.sent.load(Ordering::Relaxed);
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let inst = (sent - r.1) as f64 / secs;
        *r = (0.5 * r.0 + 0.5 * inst, sent);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Users we are serving now, and how many wait.
    pub fn serving(&self) -> (Vec<UserName>, usize) {
        let inner = self.lock();
        let mut served = Vec::new();
        let mut waiting = 0;
        for (id, user) in &inner.users {
            if inner.choker.is_served(*id) {
                served.push(user.clone());
            } else {
                waiting += 1;
            }
        }
        served.sort();
        (served, waiting)
    }

    fn join(&self, user: &UserName, quota: u64) -> (u64, watch::Receiver<bool>) {
        let now = self.now();
        let rx = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            inner.choker.join(id, quota, now);
            let (tx, rx) = watch::channel(false);
            inner.tells.insert(id, tx);
            inner.users.insert(id, user.clone());
            (id, rx)
        };
        self.rechoke();
        rx
    }

    fn leave(&self, id: u64) {
        {
            let mut inner = self.lock();
            inner.choker.leave(id);
            inner.tells.remove(&id);
            inner.users.remove(&id);
        }
        self.rechoke();
    }

    fn requested(&self, id: u64) {
        let now = self.now();
        self.lock().choker.requested(id, now);
    }

    fn interest(&self, id: u64, interested: bool) {
        let now = self.now();
        {
            let mut inner = self.lock();
            if inner.choker.interest(id, interested, now) {
                if let Some(tx) = inner.tells.get(&id) {
                    let _ = tx.send(false);
                }
            }
        }
        self.rechoke();
    }

    /// The chunks of `held` ordered by how little of each we have sent (ties at random).
    fn suggest(&self, name: &FileName, held: &[u32]) -> Vec<u32> {
        let inner = self.lock();
        let counts = inner.served.get(name);
        let mut order: Vec<(u64, u64, u32)> = held
            .iter()
            .map(|&c| {
                let n = counts.and_then(|m| m.get(&c)).copied().unwrap_or(0);
                (n, rand::random::<u64>(), c)
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, c)| c).collect()
    }

    /// Whether block `index` (of the file's blocks, `total` of them) should go to others
    /// first: we are crowded and have sent it more often than some other block.
    fn later(&self, name: &FileName, index: u64, total: u64) -> bool {
        let inner = self.lock();
        if !inner.choker.crowded() {
            return false;
        }
        match inner.copies.get(name) {
            Some(c) => c.of(index) > c.least(total),
            None => false,
        }
    }

    fn sent(&self, id: u64, name: &FileName, chunk: u32, index: u64, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        let turn_over = {
            let mut inner = self.lock();
            *inner
                .served
                .entry(name.clone())
                .or_default()
                .entry(chunk)
                .or_default() += bytes;
            inner.copies.entry(name.clone()).or_default().add(index);
            inner.choker.sent(id, bytes)
        };
        if turn_over {
            self.rechoke();
        }
    }

    fn rechoke(&self) {
        let now = self.now();
        let mut inner = self.lock();
        for (id, served) in inner.choker.rechoke(now) {
            if let Some(tx) = inner.tells.get(&id) {
                let _ = tx.send(served);
            }
        }
    }
}

/// How many copies of each block of a file went out, and how many blocks were sent how
/// many times, so the least-sent count is at hand without a scan.
#[derive(Debug, Default)]
struct Copies {
    of: HashMap<u64, u32>,
    /// Copies → blocks sent that many times (blocks never sent are not counted here).
    blocks_at: BTreeMap<u32, u64>,
}

impl Copies {
    fn of(&self, index: u64) -> u32 {
        self.of.get(&index).copied().unwrap_or(0)
    }

    /// The fewest copies of any of the file's `total` blocks.
    fn least(&self, total: u64) -> u32 {
        if (self.of.len() as u64) < total {
            return 0; // some block was never sent
        }
        self.blocks_at.keys().next().copied().unwrap_or(0)
    }

    fn add(&mut self, index: u64) {
        let n = self.of.entry(index).or_default();
        if *n > 0 {
            let at = self.blocks_at.get_mut(n).expect("counted");
            *at -= 1;
            if *at == 0 {
                self.blocks_at.remove(n);
            }
        }
        *n += 1;
        *self.blocks_at.entry(*n).or_default() += 1;
    }
}

/// The blocks a seed has answered `Later` to one downloader: each at most once, so none is
/// refused for good.
struct Laters {
    said: std::collections::HashSet<u64>,
    /// Blocks in the file.
    total: u64,
}

impl Laters {
    /// Whether block `index` should be answered `Later` now (we are crowded and have sent it
    /// more than some other block, and have not said so for it yet); if so, it is noted.
    fn now(&mut self, up: &Uploads, name: &FileName, index: Option<u64>) -> bool {
        let Some(index) = index else { return false };
        if self.said.contains(&index) || !up.later(name, index, self.total) {
            return false;
        }
        self.said.insert(index)
    }
}

/// Leaves the line when the connection ends, however it ends.
struct Member<'a> {
    uploads: &'a Uploads,
    id: u64,
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.uploads.leave(self.id);
    }
}

/// Serves one downloader (`user`) on an accepted `Transfer` connection until it closes.
pub async fn serve(mut framed: PeerFramed, user: UserName, lib: Arc<Library>, up: Arc<Uploads>) {
    let Ok(Some(Ok(PeerMsg::Interested { name }))) =
        tokio::time::timeout(SERVE_IDLE, framed.next()).await
    else {
        return; // closed, idle, junk, or a frame that is not the first one
    };
    // Before reading what we hold, so no chunk verified meanwhile goes untold.
    let mut verified = lib.subscribe();
    let (held, partial) = {
        let (lib, name) = (lib.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            if lib.still_there(&name) {
                (lib.have(&name), lib.partial(&name))
            } else {
                Default::default()
            }
        })
        .await
        .unwrap_or_default()
    };
    // A file we are downloading too is worth keeping the connection for even while we
    // hold nothing of it: blocks come, and the downloader hears of each.
    let meta = lib.meta(&name);
    let chunks: Vec<u32> = held.into_iter().collect();
    let partial: Vec<Partial> = match &meta {
        Some(m) => partial
            .into_iter()
            .filter_map(|(c, blocks)| Some(Partial::new(c, m.block_count(c)?, blocks)))
            .collect(),
        None => Vec::new(),
    };
    if send(&mut framed, PeerMsg::Holding { chunks, partial })
        .await
        .is_err()
    {
        return;
    }
    let Some(meta) = meta else { return };
    let (id, mut served) = up.join(&user, meta.chunk_size().min(TURN_BYTES));
    let _member = Member { uploads: &up, id };
    let mut queue: VecDeque<(u32, u32)> = VecDeque::new();
    let mut unchoked = false;
    // A seed spreads what nobody has first (see the module doc); each block is sent
    // `Later` at most once to this downloader, so it is never refused for good.
    let mut seed = lib.have(&name).len() as u32 == meta.chunk_count();
    let mut laters = Laters {
        said: Default::default(),
        total: meta.total_blocks(),
    };
    let mut source = Source::new(name, lib.clone());
    loop {
        tokio::select! {
            biased;
            changed = served.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *served.borrow_and_update();
                if now == unchoked {
                    continue;
                }
                unchoked = now;
                let msg = if unchoked {
                    let held: Vec<u32> = lib.have(source.name()).into_iter().collect();
                    let chunks = up.suggest(source.name(), &held);
                    if feed(&mut framed, PeerMsg::Suggest { chunks }).await.is_err() {
                        return;
                    }
                    PeerMsg::Unchoke
                } else {
                    queue.clear();
                    PeerMsg::Choke
                };
                if send(&mut framed, msg).await.is_err() {
                    return;
                }
            }
            frame = tokio::time::timeout(SERVE_IDLE, framed.next()) => match frame {
                Ok(Some(Ok(PeerMsg::Request { chunk, block }))) => {
                    if !unchoked {
                        continue; // choked: requests are dropped, as the downloader knows
                    }
                    up.requested(id);
                    if seed && laters.now(&up, source.name(), meta.block_index(chunk, block)) {
                        if send(&mut framed, PeerMsg::Later { chunk, block }).await.is_err() {
                            return;
                        }
                    } else if queue.len() >= MAX_QUEUED {
                        if send(&mut framed, PeerMsg::Reject { chunk, block }).await.is_err() {
                            return;
                        }
                    } else {
                        queue.push_back((chunk, block));
                    }
                }
                Ok(Some(Ok(PeerMsg::Cancel { chunk, block }))) => {
                    queue.retain(|&r| r != (chunk, block));
                }
                Ok(Some(Ok(PeerMsg::WantHashes { chunk, batch }))) => {
                    let leaves = lib.leaves(source.name(), chunk);
                    let msg = match leaves.and_then(|l| Some((merkle::batch_proof(&l, batch)?, l))) {
                        Some((proof, l)) => {
                            let (first, len) = merkle::batch_range(l.len() as u32, batch)
                                .expect("a proof means the batch exists");
                            let leaves = l[first as usize..(first + len) as usize].to_vec();
                            PeerMsg::Hashes { chunk, batch, leaves, proof }
                        }
                        None => PeerMsg::NoHashes { chunk, batch },
                    };
                    if send(&mut framed, msg).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(PeerMsg::NotInterested))) => up.interest(id, false),
                Ok(Some(Ok(PeerMsg::Interested { name: again }))) if again == *source.name() => {
                    up.interest(id, true);
                }
                // Closed, idle, junk, or a frame that has no place here.
                _ => return,
            },
            news = verified.recv() => match news {
                Ok((file, gained)) if file == *source.name() => {
                    let msg = match gained {
                        Gained::Chunk(chunk) => {
                            seed = lib.have(source.name()).len() as u32 == meta.chunk_count();
                            PeerMsg::Have { chunk }
                        }
                        Gained::Block(chunk, block) => PeerMsg::HaveBlock { chunk, block },
                    };
                    if send(&mut framed, msg).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = std::future::ready(()), if unchoked && !queue.is_empty() => {
                let (chunk, block) = queue.pop_front().expect("not empty");
                // Asked again now it is its turn: a copy may have gone to someone else
                // while this request waited (two downloaders asking for one block at
                // once both pass the check on arrival).
                if seed && laters.now(&up, source.name(), meta.block_index(chunk, block)) {
                    if send(&mut framed, PeerMsg::Later { chunk, block }).await.is_err() {
                        return;
                    }
                    continue;
                }
                let msg = match source.read(chunk, block).await {
                    Some(bytes) => {
                        if let Some(l) = &up.limiter {
                            l.take(bytes.len()).await;
                        }
                        let index = meta.block_index(chunk, block).unwrap_or(0);
                        up.sent(id, source.name(), chunk, index, bytes.len() as u64);
                        PeerMsg::Block { chunk, block, bytes }
                    }
                    None => PeerMsg::Reject { chunk, block },
                };
                if send(&mut framed, msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Queues `msg` to go out with the next [`send`], under the same deadline.
async fn feed(framed: &mut PeerFramed, msg: PeerMsg) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_STALL, framed.feed(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

/// Reads blocks of one file we hold, checking now and then that it is still there.
struct Source {
    name: FileName,
    lib: Arc<Library>,
    /// The open file and which path it is (a download's part file is renamed when done).
    file: Option<(std::path::PathBuf, Arc<File>)>,
    checked: Option<Instant>,
}

impl Source {
    fn new(name: FileName, lib: Arc<Library>) -> Source {
        Source {
            name,
            lib,
            file: None,
            checked: None,
        }
    }

    fn name(&self) -> &FileName {
        &self.name
    }

    /// Block `block` of `chunk`, if we hold that chunk and can read it.
    async fn read(&mut self, chunk: u32, block: u32) -> Option<bytes::Bytes> {
        let recheck = self.checked.is_none_or(|t| t.elapsed() >= RECHECK);
        if recheck {
            let (lib, name) = (self.lib.clone(), self.name.clone());
            let there = tokio::task::spawn_blocking(move || lib.still_there(&name))
                .await
                .unwrap_or(false);
            if !there {
                return None;
            }
            self.checked = Some(Instant::now());
        }
        let mut src = self.lib.block_source(&self.name, chunk, block)?;
        if self.file.as_ref().is_none_or(|(p, _)| *p != src.path) {
            // Opening can block (a slow or network disk): not on an async worker. A file
            // replaced by a FIFO or a device since it was shared is not served.
            let open = |path: std::path::PathBuf| async move {
                tokio::task::spawn_blocking(move || crate::library::open_regular(&path))
                    .await
                    .ok()
                    .and_then(Result::ok)
            };
            let f = match open(src.path.clone()).await {
                Some(f) => f,
                // A download finishing renames its part file between our lookup and our
                // open: look again, once.
                None => {
                    src = self.lib.block_source(&self.name, chunk, block)?;
                    open(src.path.clone()).await?
                }
            };
            self.file = Some((src.path.clone(), Arc::new(f)));
        }
        let (at, len) = (src.offset, src.len);
        let f = self.file.as_ref().expect("opened above").1.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(len as usize);
            f.read_exact_at(&mut buf, at).map(|_| buf.freeze())
        })
        .await
        .ok()?
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_downloader_that_stopped_reading_is_given_up_on() {
        use crate::p2p::Counted;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_theirs, _) = theirs.unwrap(); // asks, then never reads
        let mut framed = tokio_util::codec::Framed::new(
            Counted::new(Box::new(ours.unwrap()) as link::Stream),
            wire::codec::WireCodec::with_max(wire::MAX_FRAME_LEN),
        );
        let block = bytes::Bytes::from(vec![0u8; 256 * 1024]);
        let mut sent = 0;
        let gave_up = loop {
            let started = Instant::now();
            let msg = PeerMsg::Block {
                chunk: 0,
                block: 0,
                bytes: block.clone(),
            };
            if send(&mut framed, msg).await.is_err() {
                break started.elapsed();
            }
            sent += 1;
            assert!(sent < 1000, "the socket buffers never filled");
        };
        // A block gets the stall deadline plus its time at the slowest rate we serve.
        assert_eq!(gave_up, WRITE_STALL + Duration::from_secs(64));
    }

    fn choker() -> Choker {
        Choker::new(2, Duration::from_secs(20), Duration::from_secs(2))
    }

    #[test]
    fn slots_fill_in_arrival_order() {
        let mut c = choker();
        for id in 0..4 {
            c.join(id, 1000, id);
        }
        assert_eq!(c.rechoke(10), [(0, true), (1, true)]);
        assert_eq!(c.rechoke(11), [], "nothing changed");
    }

    #[test]
    fn a_turn_ends_with_its_quota_and_the_next_in_line_is_served() {
        let mut c = choker();
        for id in 0..3 {
            c.join(id, 1000, id);
        }
        c.rechoke(10);
        c.requested(0, 100);
        c.requested(1, 100);
        assert!(!c.sent(0, 999));
        assert!(c.sent(0, 1));
        assert_eq!(c.rechoke(200), [(0, false), (2, true)]);
        // 0 now waits behind nobody but is not served while 1 and 2 hold the slots.
        c.requested(1, 300);
        c.requested(2, 300);
        assert_eq!(c.rechoke(300), []);
        // 1's turn runs out in time; 0 is next.
        c.requested(1, 20_000);
        c.requested(2, 20_000);
        assert_eq!(c.rechoke(20_010), [(1, false), (0, true)]);
    }

    #[test]
    fn an_idle_slot_goes_to_someone_waiting_but_is_kept_if_nobody_waits() {
        let mut c = choker();
        c.join(0, 1000, 0);
        c.rechoke(0);
        assert_eq!(c.rechoke(10_000), [], "alone: keeps its slot however idle");
        c.join(1, 1000, 10_000);
        c.join(2, 1000, 10_000);
        assert_eq!(c.rechoke(10_001), [(0, false), (1, true), (2, true)]);
    }

    #[test]
    fn only_the_interested_are_served() {
        let mut c = choker();
        for id in 0..3 {
            c.join(id, 1000, id);
        }
        c.rechoke(10);
        // 0 has all it needs from us: its slot goes to 2 at once.
        assert!(c.interest(0, false, 20));
        assert_eq!(c.rechoke(20), [(2, true)]);
        // It needs something again: it waits at the back of the line.
        assert!(!c.interest(0, true, 30));
        assert_eq!(c.rechoke(30), []);
        c.leave(1);
        assert_eq!(c.rechoke(40), [(0, true)]);
    }

    #[test]
    fn the_least_sent_count_follows_every_copy() {
        let mut c = Copies::default();
        assert_eq!(c.least(3), 0);
        c.add(0);
        c.add(1);
        c.add(0);
        assert_eq!((c.of(0), c.of(1), c.of(2)), (2, 1, 0));
        assert_eq!(c.least(3), 0, "block 2 was never sent");
        c.add(2);
        assert_eq!(c.least(3), 1);
        c.add(1);
        c.add(2);
        assert_eq!(c.least(3), 2);
    }

    #[test]
    fn crowded_means_more_interested_than_slots() {
        let mut c = choker();
        for id in 0..2 {
            c.join(id, 10, 0);
        }
        assert!(!c.crowded());
        c.join(2, 10, 0);
        assert!(c.crowded());
        c.interest(2, false, 1);
        assert!(!c.crowded());
    }

    #[test]
    fn leaving_frees_a_slot() {
        let mut c = choker();
        for id in 0..3 {
            c.join(id, 1000, id);
        }
        c.rechoke(10);
        c.leave(0);
        assert_eq!(c.rechoke(11), [(2, true)]);
    }
}
