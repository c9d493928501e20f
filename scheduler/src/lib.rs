//! Which peer to ask for which block of one download: a sans-IO state machine (see
//! `STATE.md` for the rule it keeps).
//!
//! Inputs are events, each with `now` in milliseconds; outputs are [`Action`]s to poll. No
//! I/O, no clock, no unseeded randomness: the same inputs and seed give the same actions,
//! which is what lets the simulation in `sim.rs` run whole swarms on links of different
//! speeds, in virtual time, exactly.
//!
//! A file is split into chunks (what the tracker registers and announces) and each chunk
//! into blocks (what one request asks for, and what is verified: the driver checks every
//! block against its merkle leaf before the scheduler sees it, so a liar is caught by the
//! first bad block and blamed exactly). Peers may hold chunks whole or only some of their
//! blocks (they are downloading the file too), and are asked only for blocks they hold. A peer is asked for several blocks at once,
//! as many as it delivers in [`Config::queue_ms`], so a fast link never idles between
//! requests; a chunk's blocks normally come from the one peer that started it, in order;
//! a faster idle peer may take the tail of a slow peer's chunk, and at the very end ask for
//! blocks already asked of a slower peer (end game): the first copy is kept, the other
//! request cancelled. Stalls are judged by progress: a peer that sends nothing for
//! [`Config::snub_ms`] while asked for something loses its work to others.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[cfg(test)]
mod sim;

/// A chunk number, 0-based.
pub type Chunk = u32;
/// A block number within its chunk, 0-based.
pub type Block = u32;

/// How a file divides into chunks and blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub chunk_size: u64,
    pub block_len: u64,
}

impl Layout {
    pub fn chunk_count(&self) -> u32 {
        self.size.div_ceil(self.chunk_size.max(1)) as u32
    }

    pub fn chunk_len(&self, c: Chunk) -> u64 {
        let start = c as u64 * self.chunk_size;
        self.chunk_size.min(self.size.saturating_sub(start))
    }

    pub fn block_count(&self, c: Chunk) -> u32 {
        self.chunk_len(c).div_ceil(self.block_len.max(1)) as u32
    }

    /// Offset of block `b` within its chunk, and its length.
    pub fn block_range(&self, c: Chunk, b: Block) -> (u64, u64) {
        let start = b as u64 * self.block_len;
        (start, self.block_len.min(self.chunk_len(c) - start))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A peer asked for blocks that sends nothing for this long is *snubbed*: others may
    /// take or duplicate its work, and it is asked for one block at a time.
    pub snub_ms: u64,
    /// A peer asked for blocks that sends nothing for this long is given up on.
    pub drop_ms: u64,
    /// Requests kept in flight per peer: what it delivers in this long at its measured rate,
    /// within `min_queue..=max_queue` blocks.
    pub queue_ms: u64,
    pub min_queue: u32,
    pub max_queue: u32,
    /// Connections to peers at once.
    pub max_peers: usize,
    /// A chunk a peer said to fetch elsewhere first (`later`) is not asked of it for this
    /// long.
    pub defer_ms: u64,
    /// A download waiting on a connected peer that gained a block this recently is not
    /// stuck: more is coming (it is downloading the file too).
    pub fellow_ms: u64,
    /// Whether a download that cannot progress waits for new holders (`Stuck` is a notice)
    /// or ends (`Stuck` is final), as a one-chunk fetch from a named user does.
    pub wait_for_holders: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            snub_ms: 10_000,
            drop_ms: 60_000,
            queue_ms: 1_000,
            min_queue: 2,
            max_queue: 64,
            max_peers: 32,
            defer_ms: 2_000,
            fellow_ms: 5_000,
            wait_for_holders: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Open a transfer connection to `peer`; answer with `connected` or `peer_gone`.
    Connect { peer: P },
    /// Close the connection to `peer`: it lied or stalled for good.
    Disconnect { peer: P },
    /// Tell `peer` we need something it has (again), so it gives us an upload slot.
    Interested { peer: P },
    /// Tell `peer` it has nothing we need for now, so it gives its slot to others.
    NotInterested { peer: P },
    /// Ask `peer` for block `block` of `chunk`.
    Request { peer: P, chunk: Chunk, block: Block },
    /// Withdraw that request: another copy arrived first, or it is no longer wanted.
    Cancel { peer: P, chunk: Chunk, block: Block },
    /// Every block of `chunk` is in: check its hash and answer with `verified`.
    Verify { chunk: Chunk },
    /// Every chunk is done.
    Finished,
    /// Nothing can progress now: no peer we know of can supply these chunks. Final unless
    /// [`Config::wait_for_holders`].
    Stuck { missing: Vec<Chunk> },
}

/// What to do with a block that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it: it answers a live request and is the first copy.
    Keep,
    /// Drop it: a copy is already kept, the chunk is done, or nobody asked this peer.
    Discard,
}

/// A peer's rate is measured over windows this long (and smoothed across them): short
/// enough that a slow peer is known for one within a fraction of a second, long enough to
/// span several TCP segments at a few hundred kbit/s.
const RATE_WINDOW_MS: u64 = 250;

/// Index of a peer in `peers`.
type Pid = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Known to hold chunks; no connection.
    Known,
    Connecting,
    /// `interested`: what we last told it (a new connection starts interested).
    Connected {
        choked: bool,
        interested: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Req {
    chunk: Chunk,
    block: Block,
    len: u64,
}

#[derive(Debug, Clone)]
struct PeerState<P> {
    id: P,
    /// Chunks it holds whole.
    has: Vec<bool>,
    /// Blocks it holds of chunks it does not hold whole (it is downloading the file too).
    part: BTreeMap<Chunk, BTreeSet<Block>>,
    /// It is downloading the file: worth a connection even before it holds anything,
    /// since it tells us of every block it gains.
    fellow: bool,
    /// When it last told us of a block or chunk it gained: a download fed by a fellow
    /// that keeps gaining is not stuck, even while it has nothing new for us.
    gained_at: Option<u64>,
    /// Chunks it said it cannot serve.
    excluded: BTreeSet<Chunk>,
    /// Blocks it said to fetch elsewhere first, until when.
    deferred: BTreeMap<(Chunk, Block), u64>,
    /// Until when it counts as a seed in a crowd (it said `later` in the last
    /// `defer_ms`), whose uplink should carry only what nobody else has: it is asked only
    /// for blocks no other peer holds. Once the crowd is gone it is asked for anything.
    crowded: u64,
    /// Its suggested order for chunks to fetch from it (the ones it has sent least):
    /// rank by chunk, lower first; chunks it did not name rank last.
    suggested: Vec<u32>,
    link: Link,
    /// Requests in flight, oldest first.
    queue: VecDeque<Req>,
    queued_bytes: u64,
    /// Measured payload rate, bytes per ms; `None` until a first window is measured.
    rate: Option<f64>,
    window_start: u64,
    window_bytes: u64,
    total: u64,
    last_progress: u64,
    snubbed: bool,
    /// Reached only through the tracker's relay (see [`Scheduler::relayed`]).
    relayed: bool,
    /// Blocks kept from it.
    kept: u64,
}

impl<P> PeerState<P> {
    fn unchoked(&self) -> bool {
        matches!(self.link, Link::Connected { choked: false, .. })
    }

    fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    /// Holds some of chunk `c` and has not refused it.
    fn can_serve(&self, c: Chunk) -> bool {
        (self.has[c as usize] || self.part.contains_key(&c)) && !self.excluded.contains(&c)
    }

    fn can_serve_block(&self, c: Chunk, b: Block) -> bool {
        (self.has[c as usize] || self.part.get(&c).is_some_and(|s| s.contains(&b)))
            && !self.excluded.contains(&c)
            && !self.deferred.contains_key(&(c, b))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    Missing,
    /// Asked of one peer, or two in end game.
    Requested([Option<Pid>; 2]),
    /// Kept (it matched its hash on arrival), from that peer.
    Have(Pid),
    /// Held from before this download started (a resumed download).
    Held,
}

#[derive(Debug, Clone)]
struct Active {
    blocks: Vec<BlockState>,
    /// Blocks nobody has or was asked for.
    missing: BTreeSet<Block>,
    have: u32,
    /// The peer fetching it from the front, in order (the blocks it holds, for a peer
    /// holding the chunk in part).
    owner: Option<Pid>,
}

#[derive(Debug, Clone)]
enum ChunkState {
    Missing,
    Active(Active),
    Verifying { from: Vec<Pid> },
    Done,
}

/// SplitMix64: tiny, seeded, good enough to break ties.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone)]
pub struct Scheduler<P: Ord + Clone> {
    layout: Layout,
    config: Config,
    chunks: Vec<ChunkState>,
    peers: Vec<Option<PeerState<P>>>,
    /// Every peer's name by index, also after it left (blocks it sent stay its own).
    #[cfg_attr(not(test), allow(dead_code))]
    names: Vec<P>,
    index: BTreeMap<P, Pid>,
    /// Peers never to be used again in this download (corrupt, or silent for `drop_ms`).
    banned: BTreeSet<P>,
    rng: Rng,
    /// The latest `now` seen.
    clock: u64,
    out: VecDeque<Action<P>>,
    started: bool,
    ended: bool,
    stuck: bool,
}

/// What one peer looks like to the user (`transfers`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo<P> {
    pub peer: P,
    pub connected: bool,
    pub choked: bool,
    pub snubbed: bool,
    /// Bytes per second, once measured.
    pub rate: Option<f64>,
    pub in_flight: usize,
}

impl<P: Ord + Clone> Scheduler<P> {
    /// A download of `layout`, of which chunks `have` are already held.
    pub fn new(
        layout: Layout,
        have: impl IntoIterator<Item = Chunk>,
        seed: u64,
        config: Config,
    ) -> Self {
        let count = layout.chunk_count() as usize;
        let mut chunks = vec![ChunkState::Missing; count];
        for c in have {
            if let Some(s) = chunks.get_mut(c as usize) {
                *s = ChunkState::Done;
            }
        }
        Scheduler {
            layout,
            config,
            chunks,
            peers: Vec::new(),
            names: Vec::new(),
            index: BTreeMap::new(),
            banned: BTreeSet::new(),
            rng: Rng(seed),
            clock: 0,
            out: VecDeque::new(),
            started: false,
            ended: false,
            stuck: false,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    // ---- inputs -------------------------------------------------------------------

    /// `peer` holds `chunks` (added to what it was known to hold). Nothing is scheduled
    /// before [`Scheduler::start`], so a batch of peers is seen as a whole.
    pub fn add_peer(&mut self, peer: P, chunks: impl IntoIterator<Item = Chunk>, now: u64) {
        if self.banned.contains(&peer) {
            return;
        }
        let count = self.chunks.len();
        let pid = match self.index.get(&peer) {
            Some(&pid) => pid,
            None => {
                let pid = self.peers.len() as Pid;
                self.peers.push(Some(PeerState {
                    id: peer.clone(),
                    has: vec![false; count],
                    part: BTreeMap::new(),
                    fellow: false,
                    gained_at: None,
                    excluded: BTreeSet::new(),
                    deferred: BTreeMap::new(),
                    crowded: 0,
                    suggested: vec![u32::MAX; count],
                    link: Link::Known,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    rate: None,
                    window_start: now,
                    window_bytes: 0,
                    total: 0,
                    last_progress: now,
                    snubbed: false,
                    relayed: false,
                    kept: 0,
                }));
                self.names.push(peer.clone());
                self.index.insert(peer, pid);
                pid
            }
        };
        let p = self.peer_mut(pid);
        for c in chunks {
            if let Some(h) = p.has.get_mut(c as usize) {
                if !*h && matches!(p.link, Link::Connected { .. }) {
                    p.gained_at = Some(now);
                }
                *h = true;
                p.part.remove(&c);
            }
        }
        self.schedule(now);
    }

    /// Blocks of `chunk` already held and verified (a resumed download): never fetched.
    /// Before [`Scheduler::start`] only.
    pub fn held_blocks(&mut self, chunk: Chunk, blocks: impl IntoIterator<Item = Block>) {
        let n = self.layout.block_count(chunk);
        let Some(state) = self.chunks.get_mut(chunk as usize) else {
            return;
        };
        if !matches!(state, ChunkState::Missing) {
            return;
        }
        let mut a = Active {
            blocks: vec![BlockState::Missing; n as usize],
            missing: (0..n).collect(),
            have: 0,
            owner: None,
        };
        for b in blocks.into_iter().filter(|&b| b < n) {
            if a.missing.remove(&b) {
                a.blocks[b as usize] = BlockState::Held;
                a.have += 1;
            }
        }
        if a.have == 0 {
            return;
        }
        let complete = a.missing.is_empty();
        *state = ChunkState::Active(a);
        if complete {
            self.complete(chunk);
        }
    }

    /// `peer` is downloading this file too (it may hold nothing yet): connect to it, to
    /// hear of the blocks it gains.
    pub fn add_fellow(&mut self, peer: P, now: u64) {
        self.add_peer(peer.clone(), [], now);
        if let Some(pid) = self.pid(&peer) {
            self.peer_mut(pid).fellow = true;
            self.schedule(now);
        }
    }

    /// `peer` holds these verified blocks of `chunk` (added to what it was known to hold).
    pub fn add_blocks(
        &mut self,
        peer: &P,
        chunk: Chunk,
        blocks: impl IntoIterator<Item = Block>,
        now: u64,
    ) {
        let n = self.layout.block_count(chunk);
        let Some(pid) = self.pid(peer) else { return };
        let p = self.peer_mut(pid);
        if chunk as usize >= p.has.len() || p.has[chunk as usize] {
            return;
        }
        p.gained_at = Some(now);
        let set = p.part.entry(chunk).or_default();
        set.extend(blocks.into_iter().filter(|&b| b < n));
        if set.is_empty() {
            p.part.remove(&chunk);
        } else if set.len() == n as usize {
            p.part.remove(&chunk);
            p.has[chunk as usize] = true;
        }
        self.schedule(now);
    }

    /// Schedules after the first peers were added (and ends at once if nothing can be done).
    pub fn start(&mut self, now: u64) {
        self.started = true;
        self.schedule(now);
    }

    /// The connection to `peer` is open and it says it holds `chunks` whole and blocks
    /// `partial` of others (replacing what we were told before). It starts choked.
    pub fn connected(
        &mut self,
        peer: &P,
        chunks: impl IntoIterator<Item = Chunk>,
        partial: impl IntoIterator<Item = (Chunk, Vec<Block>)>,
        now: u64,
    ) {
        let Some(pid) = self.pid(peer) else { return };
        let layout = self.layout;
        let p = self.peer_mut(pid);
        if p.link != Link::Connecting {
            return;
        }
        p.has.iter_mut().for_each(|h| *h = false);
        p.part.clear();
        for c in chunks {
            if let Some(h) = p.has.get_mut(c as usize) {
                *h = true;
            }
        }
        for (c, blocks) in partial {
            if (c as usize) < p.has.len() && !p.has[c as usize] {
                let n = layout.block_count(c);
                let set: BTreeSet<Block> = blocks.into_iter().filter(|&b| b < n).collect();
                if !set.is_empty() {
                    p.part.insert(c, set);
                }
            }
        }
        p.link = Link::Connected {
            choked: true,
            interested: true,
        };
        p.last_progress = now;
        p.window_start = now;
        self.schedule(now);
    }

    /// `peer` is reached through the tracker's relay, whose bandwidth is capped and shared:
    /// asked last in every round, and only for a block while no direct peer would deliver
    /// it sooner, so the relay carries what nobody else can.
    pub fn relayed(&mut self, peer: &P) {
        if let Some(pid) = self.pid(peer) {
            self.peer_mut(pid).relayed = true;
        }
    }

    pub fn unchoked(&mut self, peer: &P, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        let p = self.peer_mut(pid);
        if let Link::Connected { choked, .. } = &mut p.link {
            *choked = false;
            p.last_progress = now;
        }
        self.schedule(now);
    }

    /// `peer` suggests fetching `chunks` from it in this order: it has sent them least, so
    /// they are likely the rarest in the swarm, counting copies still on their way (which
    /// holdings do not show). Used to break ties between equally rare chunks.
    pub fn suggested(&mut self, peer: &P, chunks: impl IntoIterator<Item = Chunk>, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        let p = self.peer_mut(pid);
        p.suggested.iter_mut().for_each(|r| *r = u32::MAX);
        for (rank, c) in chunks.into_iter().enumerate() {
            if let Some(r) = p.suggested.get_mut(c as usize) {
                *r = (*r).min(rank as u32);
            }
        }
        self.schedule(now);
    }

    /// `peer` choked us: it dropped every request we had with it.
    pub fn choked(&mut self, peer: &P, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        if let Link::Connected { choked, .. } = &mut self.peer_mut(pid).link {
            *choked = true;
        }
        self.release_all(pid, false);
        self.disown(pid);
        self.schedule(now);
    }

    /// The connection to `peer` failed or closed, or it left: its requests go to others.
    pub fn peer_gone(&mut self, peer: &P, now: u64) {
        if let Some(pid) = self.pid(peer) {
            self.remove(pid);
        }
        self.schedule(now);
    }

    /// `peer` has sent `total` bytes so far (payload or not): it is making progress.
    pub fn progress(&mut self, peer: &P, total: u64, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        let p = self.peer_mut(pid);
        if total > p.total {
            p.total = total;
            p.last_progress = now;
        }
        let span = now.saturating_sub(p.window_start);
        if span >= RATE_WINDOW_MS {
            let got = p.total - p.window_bytes;
            // A window in which nothing was asked of it and nothing came says nothing
            // about its speed.
            if got > 0 || !p.queue.is_empty() {
                let inst = got as f64 / span as f64;
                p.rate = Some(match p.rate {
                    Some(r) => 0.5 * r + 0.5 * inst,
                    None => inst,
                });
            }
            p.window_start = now;
            p.window_bytes = p.total;
            // A new estimate may make stealing or end game worthwhile.
            self.schedule(now);
        }
    }

    /// Block `block` of `chunk` arrived from `peer`. Only a [`Verdict::Keep`] may be written.
    pub fn block(&mut self, peer: &P, chunk: Chunk, block: Block, now: u64) -> Verdict {
        let Some(pid) = self.pid(peer) else {
            return Verdict::Discard;
        };
        if !self.unqueue(pid, chunk, block) {
            return Verdict::Discard; // not asked of it (any more)
        }
        {
            let p = self.peer_mut(pid);
            p.last_progress = now;
            p.snubbed = false;
        }
        let mut duplicates = Vec::new();
        let mut complete = false;
        let verdict = match self.chunks.get_mut(chunk as usize) {
            Some(ChunkState::Active(a)) => match a.blocks[block as usize] {
                BlockState::Requested(by) if by.contains(&Some(pid)) => {
                    a.blocks[block as usize] = BlockState::Have(pid);
                    a.have += 1;
                    complete = a.have as usize == a.blocks.len();
                    duplicates.extend(by.into_iter().flatten().filter(|&o| o != pid));
                    Verdict::Keep
                }
                _ => Verdict::Discard,
            },
            _ => Verdict::Discard,
        };
        for other in duplicates {
            self.cancel(other, chunk, block);
        }
        if verdict == Verdict::Keep {
            self.peer_mut(pid).kept += 1;
        }
        if complete {
            self.complete(chunk);
        }
        self.schedule(now);
        verdict
    }

    /// Block `block` of `chunk` from `peer` did not match its hash (or came with no hash to
    /// check it by): the peer lied, and is not used again; only that block is fetched
    /// again, since every other block was checked on its own.
    pub fn bad_block(&mut self, peer: &P, chunk: Chunk, block: Block, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        let _ = (chunk, block);
        self.ban(pid);
        self.schedule(now);
    }

    /// `peer` sends block `block` of `chunk` to others first (a seed in a crowd spreading
    /// what it sent nobody yet): that block is asked of others, or of it again after
    /// [`Config::defer_ms`]; its other blocks are still asked of it.
    pub fn later(&mut self, peer: &P, chunk: Chunk, block: Block, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        if self.unqueue(pid, chunk, block) {
            self.release_block(pid, chunk, block);
        }
        let until = now + self.config.defer_ms;
        let p = self.peer_mut(pid);
        p.deferred.insert((chunk, block), until);
        p.crowded = until;
        self.schedule(now);
    }

    /// `peer` will not serve `chunk` (it does not hold it, or cannot read it now).
    pub fn rejected(&mut self, peer: &P, chunk: Chunk, block: Block, now: u64) {
        let Some(pid) = self.pid(peer) else { return };
        if self.unqueue(pid, chunk, block) {
            self.release_block(pid, chunk, block);
        }
        self.peer_mut(pid).excluded.insert(chunk);
        // Whatever else it was asked of that chunk is refused too; ask elsewhere now.
        let queued: Vec<Req> = self.peer(pid).queue.iter().copied().collect();
        for r in queued.into_iter().filter(|r| r.chunk == chunk) {
            self.unqueue(pid, r.chunk, r.block);
            self.release_block(pid, r.chunk, r.block);
            self.out.push_back(Action::Cancel {
                peer: self.peer(pid).id.clone(),
                chunk: r.chunk,
                block: r.block,
            });
        }
        if let Some(ChunkState::Active(a)) = self.chunks.get_mut(chunk as usize) {
            if a.owner == Some(pid) {
                a.owner = None;
            }
        }
        self.schedule(now);
    }

    /// The hash check asked for by `Verify { chunk }`. Every block of the chunk matched its
    /// own hash on arrival, so a failure here means the file's description disagrees with
    /// itself (or the disk failed): the chunk is fetched again, from other peers.
    pub fn verified(&mut self, chunk: Chunk, ok: bool, now: u64) {
        let Some(ChunkState::Verifying { from }) = self.chunks.get(chunk as usize) else {
            return;
        };
        let from = from.clone();
        if ok {
            self.chunks[chunk as usize] = ChunkState::Done;
        } else {
            self.chunks[chunk as usize] = ChunkState::Missing;
            for pid in from {
                self.ban(pid);
            }
        }
        self.schedule(now);
    }

    /// When [`Scheduler::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let stall = self
            .live()
            .filter(|(_, p)| !p.queue.is_empty())
            .map(|(_, p)| {
                p.last_progress
                    + if p.snubbed {
                        self.config.drop_ms
                    } else {
                        self.config.snub_ms
                    }
            });
        let deferral = self.live().flat_map(|(_, p)| {
            p.deferred
                .values()
                .copied()
                .chain(Some(p.crowded).filter(|&t| t > self.clock))
                .chain(
                    p.gained_at
                        .map(|t| t + self.config.fellow_ms)
                        .filter(|&t| t > self.clock),
                )
        });
        stall.chain(deferral).min()
    }

    /// Snubs peers that stopped sending, gives up on those silent for too long.
    pub fn handle_timeout(&mut self, now: u64) {
        let silent: Vec<(Pid, u64, bool)> = self
            .live()
            .filter(|(_, p)| !p.queue.is_empty())
            .map(|(pid, p)| (pid, now.saturating_sub(p.last_progress), p.snubbed))
            .collect();
        for (pid, idle, snubbed) in silent {
            if idle >= self.config.drop_ms {
                self.ban(pid);
            } else if idle >= self.config.snub_ms && !snubbed {
                self.peer_mut(pid).snubbed = true;
                self.disown(pid);
            }
        }
        self.schedule(now);
    }

    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.out.pop_front()
    }

    #[cfg(test)]
    fn is_banned(&self, peer: &P) -> bool {
        self.banned.contains(peer)
    }

    /// Who sent the copy of (chunk, block) that is kept, if one is.
    #[cfg(test)]
    fn held(&self, chunk: Chunk, block: Block) -> Option<&P> {
        match self.chunks.get(chunk as usize)? {
            ChunkState::Active(a) => match a.blocks[block as usize] {
                BlockState::Have(pid) => Some(&self.names[pid as usize]),
                _ => None,
            },
            _ => None,
        }
    }

    // ---- queries ------------------------------------------------------------------

    pub fn is_done(&self, chunk: Chunk) -> bool {
        matches!(self.chunks.get(chunk as usize), Some(ChunkState::Done))
    }

    pub fn done_count(&self) -> usize {
        self.chunks
            .iter()
            .filter(|s| matches!(s, ChunkState::Done))
            .count()
    }

    /// Whether nothing can progress now (since the last `Stuck`).
    pub fn is_stuck(&self) -> bool {
        self.stuck
    }

    /// Chunks not done, for a "waiting for" line.
    pub fn missing(&self) -> Vec<Chunk> {
        (0..self.chunks.len() as Chunk)
            .filter(|&c| !self.is_done(c))
            .collect()
    }

    pub fn peers(&self) -> Vec<PeerInfo<P>> {
        self.live()
            .map(|(_, p)| PeerInfo {
                peer: p.id.clone(),
                connected: p.is_connected(),
                choked: matches!(p.link, Link::Connected { choked: true, .. }),
                snubbed: p.snubbed,
                rate: p.rate.map(|r| r * 1000.0),
                in_flight: p.queue.len(),
            })
            .collect()
    }

    // ---- the rule -----------------------------------------------------------------

    fn pid(&self, peer: &P) -> Option<Pid> {
        self.index.get(peer).copied()
    }

    fn peer(&self, pid: Pid) -> &PeerState<P> {
        self.peers[pid as usize].as_ref().expect("live peer")
    }

    fn peer_mut(&mut self, pid: Pid) -> &mut PeerState<P> {
        self.peers[pid as usize].as_mut().expect("live peer")
    }

    fn live(&self) -> impl Iterator<Item = (Pid, &PeerState<P>)> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as Pid, p)))
    }

    /// Takes the request for (chunk, block) off `pid`'s queue; `false` if it was not there.
    fn unqueue(&mut self, pid: Pid, chunk: Chunk, block: Block) -> bool {
        let p = self.peer_mut(pid);
        match p
            .queue
            .iter()
            .position(|r| r.chunk == chunk && r.block == block)
        {
            Some(i) => {
                let r = p.queue.remove(i).expect("found");
                p.queued_bytes -= r.len;
                true
            }
            None => false,
        }
    }

    /// `pid` no longer fetches (chunk, block): the block is missing again unless another
    /// peer was also asked for it.
    fn release_block(&mut self, pid: Pid, chunk: Chunk, block: Block) {
        if let Some(ChunkState::Active(a)) = self.chunks.get_mut(chunk as usize) {
            if let BlockState::Requested(by) = &mut a.blocks[block as usize] {
                for slot in by.iter_mut() {
                    if *slot == Some(pid) {
                        *slot = None;
                    }
                }
                if by.iter().all(Option::is_none) {
                    a.blocks[block as usize] = BlockState::Missing;
                    a.missing.insert(block);
                }
            }
        }
    }

    /// Everything asked of `pid` is no longer expected from it; with `cancel`, tell it.
    fn release_all(&mut self, pid: Pid, cancel: bool) {
        let queued: Vec<Req> = self.peer_mut(pid).queue.drain(..).collect();
        self.peer_mut(pid).queued_bytes = 0;
        for r in queued {
            self.release_block(pid, r.chunk, r.block);
            if cancel {
                self.out.push_back(Action::Cancel {
                    peer: self.peer(pid).id.clone(),
                    chunk: r.chunk,
                    block: r.block,
                });
            }
        }
    }

    /// Withdraws the duplicate request for (chunk, block) from `pid`.
    fn cancel(&mut self, pid: Pid, chunk: Chunk, block: Block) {
        if self.unqueue(pid, chunk, block) {
            self.out.push_back(Action::Cancel {
                peer: self.peer(pid).id.clone(),
                chunk,
                block,
            });
        }
    }

    /// `pid` no longer owns the chunks it was fetching in order: others may continue them.
    fn disown(&mut self, pid: Pid) {
        for c in 0..self.chunks.len() {
            if let ChunkState::Active(a) = &mut self.chunks[c] {
                if a.owner == Some(pid) {
                    a.owner = None;
                }
            }
        }
    }

    /// `chunk` started by `owner`, nothing of it received.
    fn fresh(&self, chunk: Chunk, owner: Pid) -> ChunkState {
        let n = self.layout.block_count(chunk);
        ChunkState::Active(Active {
            blocks: vec![BlockState::Missing; n as usize],
            missing: (0..n).collect(),
            have: 0,
            owner: Some(owner),
        })
    }

    /// Every block of `chunk` is in: it is checked next.
    fn complete(&mut self, chunk: Chunk) {
        let ChunkState::Active(a) = &self.chunks[chunk as usize] else {
            return;
        };
        let mut from: Vec<Pid> = a
            .blocks
            .iter()
            .filter_map(|b| match b {
                BlockState::Have(p) => Some(*p),
                _ => None,
            })
            .collect();
        from.sort_unstable();
        from.dedup();
        self.chunks[chunk as usize] = ChunkState::Verifying { from: from.clone() };
        self.out.push_back(Action::Verify { chunk });
    }

    /// Forgets `pid`: its requests go back, the chunks it owned are open to others.
    fn remove(&mut self, pid: Pid) {
        self.release_all(pid, false);
        self.disown(pid);
        let p = self.peers[pid as usize].take().expect("live peer");
        self.index.remove(&p.id);
    }

    /// `pid` is not to be used again in this download; what was asked of it goes to
    /// others.
    fn ban(&mut self, pid: Pid) {
        if self.peers[pid as usize].is_none() {
            return;
        }
        let id = self.peer(pid).id.clone();
        let connected = self.peer(pid).link != Link::Known;
        self.release_all(pid, false);
        self.disown(pid);
        // Blocks it sent before are kept: each matched its hash on arrival.
        self.peers[pid as usize] = None;
        self.index.remove(&id);
        self.banned.insert(id.clone());
        if connected {
            self.out.push_back(Action::Disconnect { peer: id });
        }
    }

    /// Is chunk `c` still to be fetched (not done, not being checked)?
    fn needed(&self, c: usize) -> bool {
        matches!(self.chunks[c], ChunkState::Missing | ChunkState::Active(_))
    }

    /// How many requests `p` should have in flight.
    fn depth(&self, p: &PeerState<P>) -> usize {
        if p.snubbed {
            return 1;
        }
        let blocks = match p.rate {
            Some(r) => (r * self.config.queue_ms as f64 / self.layout.block_len as f64).ceil(),
            None => 0.0,
        };
        (blocks as u32).clamp(self.config.min_queue, self.config.max_queue) as usize
    }

    /// Would `p` deliver `mine` more bytes (after its queue) sooner than `q` delivers
    /// `theirs` more bytes after its queue? A peer whose rate is not measured yet is
    /// assumed as fast as the other; a snubbed one is slower than anyone.
    fn sooner(&self, p: &PeerState<P>, mine: u64, q: &PeerState<P>, theirs: u64) -> bool {
        if p.snubbed || q.snubbed {
            return !p.snubbed;
        }
        if p.relayed != q.relayed {
            return !p.relayed;
        }
        let (a, b) = (
            (p.queued_bytes + mine) as f64,
            (q.queued_bytes + theirs) as f64,
        );
        match (p.rate, q.rate) {
            (Some(rp), Some(rq)) => a * rq < b * rp,
            _ => a < b,
        }
    }

    /// Asks `pid` for (chunk, block).
    fn request(&mut self, pid: Pid, chunk: Chunk, block: Block) {
        let (_, len) = self.layout.block_range(chunk, block);
        let ChunkState::Active(a) = &mut self.chunks[chunk as usize] else {
            unreachable!("requests are only for active chunks")
        };
        match &mut a.blocks[block as usize] {
            s @ BlockState::Missing => {
                *s = BlockState::Requested([Some(pid), None]);
                a.missing.remove(&block);
            }
            BlockState::Requested(by) => {
                let free = by.iter_mut().find(|s| s.is_none()).expect("a free slot");
                *free = Some(pid);
            }
            BlockState::Have(_) | BlockState::Held => {
                unreachable!("never asked for a block we have")
            }
        }
        let p = self.peer_mut(pid);
        p.queue.push_back(Req { chunk, block, len });
        p.queued_bytes += len;
        let peer = p.id.clone();
        self.out.push_back(Action::Request { peer, chunk, block });
    }

    /// The next block `pid` should be asked for, per the rule in STATE.md.
    fn pick(&mut self, pid: Pid) -> Option<(Chunk, Block)> {
        let count = self.chunks.len();
        // The rarest missing block of an active chunk that `pid` can serve, the first of
        // those in order: a block only one fellow holds (just in from a seed) spreads
        // first, and blocks held by all come in order.
        let first = |s: &Self, c: usize| -> Option<Block> {
            let ChunkState::Active(a) = &s.chunks[c] else {
                return None;
            };
            // When every peer that has any of it has all of it, all blocks are equally
            // rare: the first will do, without counting holders block by block.
            let uniform = s
                .live()
                .all(|(_, q)| q.has[c] || !q.part.contains_key(&(c as Chunk)))
                && s.live().all(|(_, q)| q.deferred.is_empty());
            if uniform {
                return a
                    .missing
                    .iter()
                    .copied()
                    .find(|&b| s.offers(pid, c as Chunk, b));
            }
            a.missing
                .iter()
                .copied()
                .filter(|&b| s.offers(pid, c as Chunk, b))
                .min_by_key(|&b| {
                    let holders = s
                        .live()
                        .filter(|(_, q)| q.can_serve_block(c as Chunk, b))
                        .count();
                    (holders, b)
                })
        };
        // 1. Continue a chunk it owns, in order (the blocks it holds, if it holds it in
        //    part).
        for c in 0..count {
            if matches!(&self.chunks[c], ChunkState::Active(a) if a.owner == Some(pid)) {
                if let Some(b) = first(self, c) {
                    return Some((c as Chunk, b));
                }
            }
        }
        // 2. Take over a chunk nobody owns (its owner left, choked or stalled, or it was
        //    held in part when the download started), in order.
        for c in 0..count {
            if !matches!(&self.chunks[c], ChunkState::Active(a) if a.owner.is_none()) {
                continue;
            }
            if let Some(b) = first(self, c) {
                if let ChunkState::Active(a) = &mut self.chunks[c] {
                    a.owner = Some(pid);
                }
                return Some((c as Chunk, b));
            }
        }
        // 3. Start the rarest chunk it can serve that nobody has started; a second one at
        //    once only if that leaves one for every other peer still without a chunk.
        let unstarted = |c: usize| matches!(self.chunks[c], ChunkState::Missing);
        let owns = |q: Pid| {
            self.chunks
                .iter()
                .any(|s| matches!(s, ChunkState::Active(a) if a.owner == Some(q)))
        };
        let me = self.peer(pid);
        let startable = (0..count)
            .filter(|&c| unstarted(c) && me.can_serve(c as Chunk))
            .count();
        let waiting = self
            .live()
            .filter(|&(q, p)| {
                q != pid
                    && p.link != Link::Known
                    && !owns(q)
                    && (0..count).any(|c| unstarted(c) && p.can_serve(c as Chunk))
            })
            .count();
        let room = !owns(pid) || startable > waiting;
        let mut best: Option<(usize, u32, u64, usize)> = None; // (holders, rank, tie, chunk)
        let ranks = me.suggested.clone();
        let candidates: Vec<usize> = (0..count)
            .filter(|&c| room && unstarted(c) && me.can_serve(c as Chunk))
            // Through the relay, only what no direct peer we are connected to holds.
            .filter(|&c| {
                !me.relayed
                    || !self.live().any(|(q, p)| {
                        q != pid && !p.relayed && p.link != Link::Known && p.can_serve(c as Chunk)
                    })
            })
            .filter(|&c| {
                me.crowded <= self.clock
                    || (0..self.layout.block_count(c as Chunk))
                        .any(|b| self.offers(pid, c as Chunk, b))
            })
            .collect();
        for c in candidates {
            let holders = self.live().filter(|(_, q)| q.can_serve(c as Chunk)).count();
            let key = (holders, ranks[c], self.rng.next());
            if best.is_none_or(|(h, r, t, _)| key < (h, r, t)) {
                best = Some((key.0, key.1, key.2, c));
            }
        }
        if let Some((_, _, _, c)) = best {
            self.chunks[c] = self.fresh(c as Chunk, pid);
            return Some((c as Chunk, first(self, c).expect("it holds some of it")));
        }
        let p = self.peer(pid);
        let block = self.layout.block_len;
        // 4. Take the last missing block it can serve of another peer's chunk: at once if
        //    the owner cannot serve that block (it holds the chunk in part), else if we
        //    would have it sooner than the owner would get to it.
        let mut steal: Option<(u64, Chunk, Block)> = None; // (missing blocks, chunk, block)
        for c in 0..count {
            let ChunkState::Active(a) = &self.chunks[c] else {
                continue;
            };
            let Some(owner) = a.owner else { continue };
            let Some(b) = a
                .missing
                .iter()
                .rev()
                .copied()
                .find(|&b| self.offers(pid, c as Chunk, b))
            else {
                continue;
            };
            let q = self.peer(owner);
            // The owner fetches from the front: its queue, then every missing block up to
            // and including `b`.
            let left = if q.can_serve_block(c as Chunk, b) {
                a.missing.range(..=b).count() as u64
            } else {
                u64::MAX
            };
            if (left == u64::MAX || self.sooner(p, block, q, left * block))
                && steal.is_none_or(|(l, _, _)| left > l)
            {
                steal = Some((left, c as Chunk, b));
            }
        }
        if let Some((_, c, b)) = steal {
            return Some((c, b));
        }
        // 5. End game: ask for a block already asked of a peer that would deliver it at
        //    least twice as late. Only on measured rates (or a snubbed peer): a duplicate
        //    costs the sender's upload. And only once nothing is left that some peer could
        //    be asked for first: in a crowd every uplink is busy, and a copy that loses the
        //    race is an upload taken from someone who needed it.
        if !self.end_game() {
            return None;
        }
        let mut dup: Option<(f64, Chunk, Block)> = None;
        for (qid, q) in self.live() {
            if qid == pid {
                continue;
            }
            let mut ahead = 0;
            for r in &q.queue {
                ahead += r.len;
                if !self.offers(pid, r.chunk, r.block) {
                    continue;
                }
                let ChunkState::Active(a) = &self.chunks[r.chunk as usize] else {
                    continue;
                };
                let BlockState::Requested(by) = a.blocks[r.block as usize] else {
                    continue;
                };
                if by.iter().all(Option::is_some) {
                    continue;
                }
                let theirs = match q.rate {
                    _ if q.snubbed => f64::INFINITY,
                    Some(rate) if rate > 0.0 => ahead as f64 / rate,
                    Some(_) => f64::INFINITY,
                    None => continue,
                };
                let mine = match p.rate {
                    _ if p.snubbed => continue,
                    Some(rate) if rate > 0.0 => (p.queued_bytes + r.len) as f64 / rate,
                    _ if theirs.is_infinite() => 0.0,
                    _ => continue,
                };
                // Only for a clear gain: two requests per block at most, and the second
                // should not go to a peer barely faster than the first.
                if 2.0 * mine < theirs && dup.is_none_or(|(t, _, _)| theirs > t) {
                    dup = Some((theirs, r.chunk, r.block));
                }
            }
        }
        dup.map(|(_, c, b)| (c, b))
    }

    /// Whether every block still wanted is asked of someone, or held by nobody we could
    /// ask: the end game, when duplicate requests may go out.
    fn end_game(&self) -> bool {
        let anyone = |c: Chunk, b: Block| self.live().any(|(q, _)| self.offers(q, c, b));
        self.chunks.iter().enumerate().all(|(c, s)| {
            let c = c as Chunk;
            match s {
                ChunkState::Missing => !(0..self.layout.block_count(c)).any(|b| anyone(c, b)),
                ChunkState::Active(a) => !a.missing.iter().any(|&b| anyone(c, b)),
                ChunkState::Verifying { .. } | ChunkState::Done => true,
            }
        })
    }

    /// Whether `pid` may be asked for block `b` of `c`: it holds it (and did not defer
    /// it), and, if it is a crowded seed, nobody else holds it.
    fn offers(&self, pid: Pid, c: Chunk, b: Block) -> bool {
        let p = self.peer(pid);
        p.can_serve_block(c, b)
            && (p.crowded <= self.clock
                || !self
                    .live()
                    .any(|(q, o)| q != pid && o.can_serve_block(c, b)))
    }

    /// Whether `pid` may be asked for a block we still need (not kept, not held, chunk not
    /// done).
    fn useful(&self, pid: Pid) -> bool {
        let p = self.peer(pid);
        (0..self.chunks.len()).any(|c| {
            if !p.can_serve(c as Chunk) {
                return false;
            }
            let c = c as Chunk;
            match &self.chunks[c as usize] {
                ChunkState::Done => false,
                ChunkState::Missing | ChunkState::Verifying { .. } => {
                    (0..self.layout.block_count(c)).any(|b| self.offers(pid, c, b))
                }
                // Missing blocks first (a set: no walk over the blocks already in), then
                // those asked of someone else.
                ChunkState::Active(a) => {
                    a.missing.iter().any(|&b| self.offers(pid, c, b))
                        || a.blocks.iter().enumerate().any(|(b, s)| {
                            matches!(s, BlockState::Requested(_)) && self.offers(pid, c, b as Block)
                        })
                }
            }
        })
    }

    /// Applies the rule in STATE.md until nothing more can be asked.
    fn schedule(&mut self, now: u64) {
        if self.ended || !self.started {
            return;
        }
        self.clock = self.clock.max(now);
        for p in self.peers.iter_mut().flatten() {
            p.deferred.retain(|_, until| *until > now);
        }
        let count = self.chunks.len();
        // Connections: open those with something for us (interest told as it changes).
        let mut connecting = 0;
        let pids: Vec<Pid> = self.live().map(|(pid, _)| pid).collect();
        for &pid in &pids {
            let p = self.peer(pid);
            let useful = self.useful(pid);
            match p.link {
                Link::Connected { interested, .. } => {
                    connecting += 1;
                    if interested != useful && p.queue.is_empty() {
                        let peer = p.id.clone();
                        if let Link::Connected { interested, .. } = &mut self.peer_mut(pid).link {
                            *interested = useful;
                        }
                        self.out.push_back(if useful {
                            Action::Interested { peer }
                        } else {
                            Action::NotInterested { peer }
                        });
                    }
                }
                Link::Connecting => connecting += 1,
                Link::Known => {}
            }
        }
        for &pid in &pids {
            let Some(p) = self.peers[pid as usize].as_ref() else {
                continue;
            };
            if p.link == Link::Known
                && connecting < self.config.max_peers
                && (p.fellow || self.useful(pid))
            {
                let peer = p.id.clone();
                self.peer_mut(pid).link = Link::Connecting;
                connecting += 1;
                self.out.push_back(Action::Connect { peer });
            }
        }
        // Requests: one at a time to each unchoked peer in turn, the least busy first,
        // until every queue is full or nothing is left to ask, so each peer starts a chunk
        // of its own before any starts a second. Peers behind the relay come last.
        let mut order: Vec<(bool, usize, u64, Pid)> = self
            .live()
            .filter(|(_, p)| p.unchoked())
            .map(|(pid, p)| (p.relayed, p.queue.len(), 0, pid))
            .collect();
        for o in &mut order {
            o.2 = self.rng.next();
        }
        order.sort_unstable();
        let order: Vec<Pid> = order.into_iter().map(|(_, _, _, pid)| pid).collect();
        // A peer with nothing to do leaves the round; if the round itself starts the end
        // game (the last blocks asked of others), the peers that left get a second round,
        // now allowed duplicates.
        let mut end_game = self.end_game();
        for _round in 0..2 {
            let mut open = order.clone();
            while !open.is_empty() {
                open.retain(|&pid| {
                    let wants = self.peers[pid as usize]
                        .as_ref()
                        .is_some_and(|p| p.unchoked() && p.queue.len() < self.depth(p));
                    wants
                        && match self.pick(pid) {
                            Some((c, b)) => {
                                self.request(pid, c, b);
                                true
                            }
                            None => false,
                        }
                });
            }
            if end_game || !self.end_game() {
                break;
            }
            end_game = true;
        }
        // Outcomes.
        if self.chunks.iter().all(|s| matches!(s, ChunkState::Done)) {
            self.ended = true;
            self.out.push_back(Action::Finished);
            return;
        }
        let progressing = self
            .chunks
            .iter()
            .any(|s| matches!(s, ChunkState::Verifying { .. }))
            || self.live().any(|(pid, p)| {
                !p.queue.is_empty()
                    || p.link == Link::Connecting
                    || (p.is_connected() && self.useful(pid))
                    || (p.is_connected()
                        && p.gained_at.is_some_and(|t| now < t + self.config.fellow_ms))
            });
        if progressing {
            self.stuck = false;
        } else if !self.stuck {
            self.stuck = true;
            if !self.config.wait_for_holders {
                self.ended = true;
            }
            let missing = (0..count)
                .filter(|&c| self.needed(c))
                .map(|c| c as Chunk)
                .collect();
            self.out.push_back(Action::Stuck { missing });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Scheduler<u8>;

    const BLOCK: u64 = 100;

    fn layout(chunks: u32, blocks: u32) -> Layout {
        Layout {
            size: chunks as u64 * blocks as u64 * BLOCK,
            chunk_size: blocks as u64 * BLOCK,
            block_len: BLOCK,
        }
    }

    fn drain(s: &mut S) -> Vec<Action<u8>> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn requests(acts: &[Action<u8>]) -> Vec<(u8, Chunk, Block)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Request { peer, chunk, block } => Some((*peer, *chunk, *block)),
                _ => None,
            })
            .collect()
    }

    /// Peers `ids` known, connected holding everything, unchoked.
    fn ready(s: &mut S, ids: &[u8], all: u32) -> Vec<Action<u8>> {
        for &p in ids {
            s.add_peer(p, 0..all, 0);
        }
        s.start(0);
        let acts = drain(s);
        for &p in ids {
            assert!(acts.contains(&Action::Connect { peer: p }), "{acts:?}");
            s.connected(&p, 0..all, [], 0);
            s.unchoked(&p, 0);
        }
        drain(s)
    }

    #[test]
    fn rarest_chunk_first_and_blocks_in_order() {
        let mut s = S::new(layout(4, 3), [], 7, Config::default());
        s.add_peer(1, [0, 1, 2, 3], 0);
        s.add_peer(2, [0, 1, 2], 0);
        s.start(0);
        drain(&mut s);
        s.connected(&1, [0, 1, 2, 3], [], 0);
        s.connected(&2, [0, 1, 2], [], 0);
        s.unchoked(&1, 0);
        let reqs = requests(&drain(&mut s));
        // Only peer 1 holds chunk 3: its first request; then blocks in order.
        assert_eq!(reqs, [(1, 3, 0), (1, 3, 1)], "min_queue of 2");
    }

    #[test]
    fn a_relayed_peer_is_asked_only_for_what_no_direct_peer_holds() {
        for seed in 0..20 {
            let mut s = S::new(layout(4, 1), [], seed, Config::default());
            // Peer 1 (relayed) holds everything; peer 2 (direct) chunks 0-2.
            s.add_peer(1, 0..4, 0);
            s.add_peer(2, [0, 1, 2], 0);
            s.start(0);
            drain(&mut s);
            s.relayed(&1);
            s.connected(&1, 0..4, [], 0);
            s.connected(&2, [0, 1, 2], [], 0);
            s.unchoked(&1, 0);
            s.unchoked(&2, 0);
            let reqs = requests(&drain(&mut s));
            assert!(
                reqs.iter().all(|&(p, c, _)| p == 2 || c == 3),
                "the relay only for chunk 3: {reqs:?}"
            );
            assert!(reqs.iter().any(|&(p, c, _)| p == 1 && c == 3), "{reqs:?}");
        }
    }

    #[test]
    fn suggestions_break_ties_between_equally_rare_chunks() {
        for seed in 0..20 {
            let mut s = S::new(layout(4, 1), [], seed, Config::default());
            s.add_peer(1, 0..4, 0);
            s.add_peer(2, [3], 0);
            s.start(0);
            drain(&mut s);
            s.connected(&1, 0..4, [], 0);
            s.suggested(&1, [2, 1, 0, 3], 0);
            s.unchoked(&1, 0);
            // Chunks 0-2 are equally rare (one holder): the suggestion orders them.
            assert_eq!(requests(&drain(&mut s)), [(1, 2, 0), (1, 1, 0)]);
        }
    }

    #[test]
    fn a_block_is_kept_once_and_only_from_whom_it_was_asked() {
        let mut s = S::new(layout(1, 2), [], 1, Config::default());
        let reqs = requests(&ready(&mut s, &[1], 1));
        assert_eq!(reqs, [(1, 0, 0), (1, 0, 1)]);
        assert_eq!(s.block(&2, 0, 0, 1), Verdict::Discard, "never asked");
        assert_eq!(s.block(&1, 0, 0, 1), Verdict::Keep);
        assert_eq!(s.block(&1, 0, 0, 2), Verdict::Discard, "a second copy");
        assert_eq!(s.block(&1, 0, 1, 3), Verdict::Keep);
        assert_eq!(drain(&mut s), [Action::Verify { chunk: 0 }]);
        assert_eq!(s.block(&1, 0, 1, 4), Verdict::Discard, "being checked");
        s.verified(0, true, 5);
        assert_eq!(
            drain(&mut s),
            [Action::NotInterested { peer: 1 }, Action::Finished]
        );
    }

    #[test]
    fn no_duplicate_request_while_something_is_left_to_ask_for() {
        // Chunk 0 held by peers 1 and 2; chunk 1 only by peer 3, which chokes us.
        let mut s = S::new(layout(2, 2), [], 5, Config::default());
        for p in [1, 2] {
            s.add_peer(p, [0], 0);
        }
        s.add_peer(3, [1], 0);
        s.start(0);
        drain(&mut s);
        for p in [1, 2, 3] {
            s.connected(&p, [if p == 3 { 1 } else { 0 }], [], 0);
        }
        s.unchoked(&1, 0);
        s.unchoked(&2, 0);
        let reqs = requests(&drain(&mut s));
        assert_eq!(
            reqs.len(),
            2,
            "both blocks of chunk 0, of one peer: {reqs:?}"
        );
        let (slow, fast) = (reqs[0].0, 3 - reqs[0].0);
        // The owner turns out far slower than the other: worth a second request, but not
        // while chunk 1 is still to be asked of peer 3.
        let rate = |s: &mut S, p: u8, r: f64| {
            let pid = s.pid(&p).unwrap();
            s.peers[pid as usize].as_mut().unwrap().rate = Some(r);
        };
        rate(&mut s, slow, 0.001);
        rate(&mut s, fast, 100.0);
        s.schedule(10);
        assert_eq!(
            requests(&drain(&mut s)),
            [],
            "no copies before the end game"
        );
        // Peer 3 unchokes: chunk 1 is asked of it, nothing is left unasked, and the fast
        // peer is asked for what waits on the slow one.
        s.unchoked(&3, 20);
        let reqs = requests(&drain(&mut s));
        assert!(
            reqs.contains(&(3, 1, 0)) && reqs.contains(&(3, 1, 1)),
            "{reqs:?}"
        );
        assert!(
            reqs.iter().any(|&(p, c, _)| p == fast && c == 0),
            "{reqs:?}"
        );
    }

    #[test]
    fn a_lone_liar_is_banned_and_its_chunk_fetched_elsewhere() {
        let mut s = S::new(layout(2, 1), [], 1, Config::default());
        let reqs = requests(&ready(&mut s, &[1, 2], 2));
        let (liar, chunk, _) = reqs[0];
        assert_eq!(s.block(&liar, chunk, 0, 1), Verdict::Keep);
        drain(&mut s);
        s.verified(chunk, false, 2);
        let acts = drain(&mut s);
        let other = 3 - liar;
        assert!(
            acts.contains(&Action::Disconnect { peer: liar }),
            "{acts:?}"
        );
        assert!(
            requests(&acts).contains(&(other, chunk, 0)),
            "refetched from the other: {acts:?}"
        );
        // Its name is not accepted again in this download.
        s.add_peer(liar, [0, 1], 3);
        assert!(!drain(&mut s).contains(&Action::Connect { peer: liar }));
    }

    #[test]
    fn a_bad_block_bans_its_sender_and_only_that_block_is_fetched_again() {
        // One chunk of 4 blocks, two holders.
        let mut s = S::new(layout(1, 4), [], 3, Config::default());
        let reqs = requests(&ready(&mut s, &[1, 2], 1));
        let (owner, _, _) = reqs[0];
        let other = 3 - owner;
        assert_eq!(s.block(&owner, 0, 0, 1), Verdict::Keep);
        assert_eq!(s.block(&owner, 0, 1, 1), Verdict::Keep);
        drain(&mut s);
        s.bad_block(&owner, 0, 2, 2);
        let acts = drain(&mut s);
        assert!(
            acts.contains(&Action::Disconnect { peer: owner }),
            "{acts:?}"
        );
        // Blocks 0 and 1 matched their hashes and stay; 2 and 3 come from the other.
        assert_eq!(s.held(0, 0), Some(&owner));
        assert_eq!(
            s.block(&other, 0, 0, 3),
            Verdict::Discard,
            "never asked again"
        );
        assert_eq!(s.block(&other, 0, 2, 3), Verdict::Keep);
        assert_eq!(s.block(&other, 0, 3, 3), Verdict::Keep);
        assert!(drain(&mut s).contains(&Action::Verify { chunk: 0 }));
    }

    #[test]
    fn a_partial_holder_is_asked_only_for_blocks_it_has_and_a_fellow_is_connected_early() {
        let mut s = S::new(layout(1, 4), [], 5, Config::default());
        s.add_fellow(1, 0);
        s.start(0);
        assert!(
            drain(&mut s).contains(&Action::Connect { peer: 1 }),
            "a fellow holding nothing"
        );
        s.connected(&1, [], [(0, vec![1, 3])], 1);
        s.unchoked(&1, 1);
        let got: BTreeSet<(u8, Chunk, Block)> = requests(&drain(&mut s)).into_iter().collect();
        assert_eq!(got, BTreeSet::from([(1, 0, 1), (1, 0, 3)]));
        // It gains block 0: asked for it as soon as its queue has room.
        assert_eq!(s.block(&1, 0, 1, 2), Verdict::Keep);
        drain(&mut s);
        s.add_blocks(&1, 0, [0], 2);
        assert_eq!(requests(&drain(&mut s)), [(1, 0, 0)]);
    }

    #[test]
    fn a_crowded_seed_is_asked_only_for_what_nobody_else_has_until_the_crowd_goes() {
        let mut s = S::new(layout(1, 4), [], 9, Config::default());
        let reqs = requests(&ready(&mut s, &[1], 1));
        assert!(reqs.contains(&(1, 0, 0)), "{reqs:?}");
        // A fellow holds blocks 0 and 1; the seed says block 0 goes to others first.
        s.add_fellow(2, 1);
        drain(&mut s);
        s.connected(&2, [], [(0, vec![0, 1])], 1);
        drain(&mut s);
        s.later(&1, 0, 0, 2);
        let acts = drain(&mut s);
        assert!(
            !requests(&acts).iter().any(|&(p, _, b)| p == 1 && b < 2),
            "{acts:?}"
        );
        s.unchoked(&2, 3);
        let got = requests(&drain(&mut s));
        assert!(
            got.contains(&(2, 0, 0)),
            "the fellow serves the deferred block: {got:?}"
        );
        // Two seconds on, the crowd is over: the seed may be asked for anything again.
        let at = s.poll_timeout().expect("the deferral ends");
        assert_eq!(at, 2 + Config::default().defer_ms);
    }

    #[test]
    fn a_silent_peer_is_snubbed_then_dropped_and_others_take_its_work() {
        let config = Config {
            snub_ms: 1000,
            drop_ms: 5000,
            ..Config::default()
        };
        let mut s = S::new(layout(2, 4), [], 3, config);
        let first = ready(&mut s, &[1, 2], 2);
        // Peer 2 delivers at once whatever it is asked; peer 1 is silent.
        let step = |s: &mut S, acts: Vec<Action<u8>>, now: u64| {
            for a in acts {
                match a {
                    Action::Request {
                        peer: 2,
                        chunk,
                        block,
                    } => {
                        s.block(&2, chunk, block, now);
                    }
                    Action::Verify { chunk } => s.verified(chunk, true, now),
                    _ => {}
                }
            }
            s.progress(&2, now * 10, now);
        };
        step(&mut s, first, 0);
        let mut now = 0;
        while now < 900 {
            now += 100;
            let acts = drain(&mut s);
            step(&mut s, acts, now);
        }
        assert_eq!(s.done_count(), 1, "peer 2's own chunk");
        assert_eq!(s.poll_timeout(), Some(1000), "peer 1 silent since 0");
        s.handle_timeout(1000);
        assert!(s.peers().iter().any(|p| p.peer == 1 && p.snubbed));
        // Peer 2 finishes peer 1's chunk: its blocks were open to others once it was
        // snubbed.
        for _ in 0..10 {
            now += 100;
            let acts = drain(&mut s);
            step(&mut s, acts, now);
            s.handle_timeout(now);
        }
        assert_eq!(s.done_count(), 2);
    }

    #[test]
    fn nothing_to_do_when_everything_is_held() {
        let mut s = S::new(layout(3, 1), [0, 1, 2], 0, Config::default());
        s.start(0);
        assert_eq!(drain(&mut s), [Action::Finished]);
        let mut s = S::new(layout(3, 1), [0, 1], 0, Config::default());
        s.start(0);
        assert_eq!(drain(&mut s), [Action::Stuck { missing: vec![2] }]);
        // A holder appears: the download goes on.
        s.add_peer(9, [2], 1);
        assert_eq!(drain(&mut s), [Action::Connect { peer: 9 }]);
    }

    #[test]
    fn choke_voids_requests_and_unchoke_resumes() {
        let mut s = S::new(layout(1, 4), [], 0, Config::default());
        assert_eq!(requests(&ready(&mut s, &[1], 1)).len(), 2);
        s.choked(&1, 10);
        assert!(requests(&drain(&mut s)).is_empty());
        assert_eq!(
            s.block(&1, 0, 0, 11),
            Verdict::Discard,
            "voided by the choke"
        );
        s.unchoked(&1, 12);
        assert_eq!(requests(&drain(&mut s)), [(1, 0, 0), (1, 0, 1)]);
    }
}
