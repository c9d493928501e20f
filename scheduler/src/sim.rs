//! A simulated swarm driving the real scheduler in virtual time, as libtorrent tests its
//! swarms on a network simulator: peers with upload rates that serve their request queue in
//! order, links that take time to open, peers that lie, leave, stall, slow down, refuse or
//! appear mid-download, or download the file too and gain blocks as they go. Like the real
//! driver, the simulated network checks every block against its hash before the scheduler
//! sees it. The rule in STATE.md is asserted on every action; the properties below check
//! what a user sees: the download finishes whenever an honest holder of each block stays,
//! no block is asked of a peer that lacks it, no block is kept twice, from someone who was
//! not asked, or unverified, and the end is not held up by a slow peer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

/// Milliseconds per simulation step.
const TICK: u64 = 10;
/// Time to open a connection.
const CONNECT_MS: u64 = 30;
const BLOCK: u64 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Honest,
    /// Every byte it sends is wrong.
    Corrupt,
    /// Leaves (its connection breaks) at this time.
    Leaves(u64),
    /// Stops sending at this time, connection kept open.
    Stalls(u64),
    /// Its rate drops to 1/20 at this time.
    Slows(u64),
    /// Says it does not have this chunk (its copy changed on disk).
    Refuses(Chunk),
    /// Cannot be connected to.
    Unreachable,
    /// Becomes known (logs in, or verifies its chunks) at this time.
    Joins(u64),
    /// Downloads the file too: known from the start but holding nothing; gains its blocks
    /// (`blocks`, then its whole chunks) one every this many ms, telling us of each.
    Fellow(u64),
}

impl Kind {
    /// Stays, sends, and sends the truth: the scheduler can count on it.
    fn reliable(&self) -> bool {
        matches!(
            self,
            Kind::Honest | Kind::Slows(_) | Kind::Joins(_) | Kind::Fellow(_)
        )
    }
}

#[derive(Debug, Clone)]
struct SimPeer {
    /// Upload rate, bytes per ms.
    rate: f64,
    has: Vec<Chunk>,
    /// Blocks it holds of chunks it does not hold whole.
    blocks: Vec<(Chunk, Block)>,
    kind: Kind,
}

impl SimPeer {
    /// Everything it will hold, block by block, in the order a fellow gains it.
    fn gains(&self, layout: Layout) -> Vec<(Chunk, Block)> {
        let mut all = self.blocks.clone();
        for &c in &self.has {
            all.extend((0..layout.block_count(c)).map(|b| (c, b)));
        }
        all
    }
}

#[derive(Debug, Clone)]
struct World {
    chunks: u32,
    blocks: u32,
    have: Vec<Chunk>,
    peers: Vec<SimPeer>,
    seed: u64,
}

impl World {
    fn layout(&self) -> Layout {
        Layout {
            size: (self.chunks * self.blocks) as u64 * BLOCK,
            chunk_size: self.blocks as u64 * BLOCK,
            block_len: BLOCK,
        }
    }

    /// The best any scheduler could do: the bytes still missing over the summed rates of
    /// the peers that keep sending (ignoring who holds what).
    fn ideal_ms(&self) -> f64 {
        let missing =
            (self.chunks as usize - self.have.len()) as f64 * (self.blocks as u64 * BLOCK) as f64;
        let rate: f64 = self
            .peers
            .iter()
            .filter(|p| p.kind == Kind::Honest)
            .map(|p| p.rate)
            .sum();
        missing / rate
    }
}

/// Per-peer state of the simulated network.
#[derive(Default)]
struct Wire {
    connect_at: Option<u64>,
    connected: bool,
    gone: bool,
    queue: VecDeque<(Chunk, Block, u64)>,
    sent: u64,
    rejects: Vec<(Chunk, Block)>,
    joined: bool,
    /// We told it we need nothing it has.
    uninterested: bool,
    /// What it holds and told us of, as blocks.
    holds: BTreeSet<(Chunk, Block)>,
    /// A fellow: how many of its gains it has told us of.
    gained: usize,
}

struct Outcome {
    end: Option<Action<u8>>,
    at: u64,
    done: BTreeSet<Chunk>,
    stuck: Vec<Vec<Chunk>>,
    /// Blocks kept from each peer.
    served: BTreeMap<u8, u32>,
}

/// The simulated network around one scheduler. Like the real driver, it carries out what
/// the scheduler asks right after every input.
struct Net<'w> {
    w: &'w World,
    layout: Layout,
    config: Config,
    s: Scheduler<u8>,
    wires: Vec<Wire>,
    /// Who supplied each kept block of a chunk not yet verified.
    kept: BTreeMap<(Chunk, Block), u8>,
    done: BTreeSet<Chunk>,
    verify: Vec<Chunk>,
    end: Option<Action<u8>>,
    stuck: Vec<Vec<Chunk>>,
    served: BTreeMap<u8, u32>,
    now: u64,
}

impl Net<'_> {
    /// Carries out every pending action, asserting the rule on each.
    fn pump(&mut self) {
        // Blocks the scheduler dropped (a chunk started over, a liar's blocks) are no
        // longer kept.
        let s = &self.s;
        self.kept.retain(|&(c, b), p| {
            s.held(c, b) == Some(p) || matches!(s.chunks[c as usize], ChunkState::Verifying { .. })
        });
        let now = self.now;
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Connect { peer } => {
                    let wire = &mut self.wires[peer as usize];
                    assert!(!self.s.is_banned(&peer), "connect to banned {peer}");
                    assert!(!wire.gone, "connect to {peer}, which left");
                    wire.connect_at = Some(now + CONNECT_MS);
                }
                Action::Disconnect { peer } => {
                    let wire = &mut self.wires[peer as usize];
                    wire.connected = false;
                    wire.connect_at = None;
                    wire.queue.clear();
                }
                Action::Interested { peer } => self.wires[peer as usize].uninterested = false,
                Action::NotInterested { peer } => self.wires[peer as usize].uninterested = true,
                Action::Request { peer, chunk, block } => {
                    let sp = &self.w.peers[peer as usize];
                    let wire = &mut self.wires[peer as usize];
                    assert!(wire.connected, "request to unconnected {peer}");
                    assert!(
                        !wire.uninterested,
                        "request to {peer}, told we need nothing"
                    );
                    let _ = sp;
                    assert!(
                        wire.holds.contains(&(chunk, block)),
                        "asked {peer} for {chunk}/{block}, which it lacks"
                    );
                    assert!(!self.done.contains(&chunk), "asked for done chunk {chunk}");
                    assert!(block < self.layout.block_count(chunk));
                    if sp.kind == Kind::Refuses(chunk) {
                        wire.rejects.push((chunk, block));
                    } else {
                        let (_, len) = self.layout.block_range(chunk, block);
                        wire.queue.push_back((chunk, block, len));
                    }
                }
                Action::Cancel { peer, chunk, block } => {
                    let wire = &mut self.wires[peer as usize];
                    // Only a block not yet being sent can be withdrawn.
                    let (_, len) = self.layout.block_range(chunk, block);
                    if let Some(i) = wire
                        .queue
                        .iter()
                        .position(|&(c, b, _)| (c, b) == (chunk, block))
                    {
                        if i > 0 || wire.queue[0].2 == len {
                            wire.queue.remove(i);
                        }
                    }
                }
                Action::Verify { chunk } => self.verify.push(chunk),
                Action::Finished => {
                    assert_eq!(self.done.len(), self.w.chunks as usize, "finished early");
                    assert!(self.end.is_none(), "ended twice");
                    self.end = Some(Action::Finished);
                }
                Action::Stuck { missing } => {
                    if !self.config.wait_for_holders {
                        assert!(self.end.is_none(), "ended twice");
                        self.end = Some(Action::Stuck {
                            missing: missing.clone(),
                        });
                    }
                    self.stuck.push(missing);
                }
            }
        }
    }

    /// Checks the chunks the scheduler asked to verify: always right, since every block
    /// was checked on arrival and no liar's block was ever kept.
    fn check(&mut self) {
        for chunk in std::mem::take(&mut self.verify) {
            let n = self.layout.block_count(chunk);
            for b in 0..n {
                let from = self.kept.remove(&(chunk, b));
                assert!(
                    from.is_none_or(|p| self.w.peers[p as usize].kind != Kind::Corrupt),
                    "kept a corrupt block {chunk}/{b}"
                );
            }
            assert!(self.done.insert(chunk), "chunk {chunk} done twice");
            self.s.verified(chunk, true, self.now);
            self.pump();
        }
    }

    /// One tick of the network: peers join, leave, connect, refuse and send.
    fn tick(&mut self) {
        self.now += TICK;
        let now = self.now;
        for (i, sp) in self.w.peers.iter().enumerate() {
            let peer = i as u8;
            if matches!(sp.kind, Kind::Joins(t) if now >= t) && !self.wires[i].joined {
                self.wires[i].joined = true;
                announce(&mut self.s, peer, sp, now);
                self.pump();
            }
            if let Kind::Fellow(every) = sp.kind {
                let gains = sp.gains(self.layout);
                let due = ((now / every.max(1)) as usize).min(gains.len());
                while self.wires[i].gained < due {
                    let wire = &mut self.wires[i];
                    let (c, b) = gains[wire.gained];
                    wire.gained += 1;
                    wire.holds.insert((c, b));
                    if wire.connected {
                        self.s.add_blocks(&peer, c, [b], now);
                        self.pump();
                    }
                }
            }
            if self.wires[i].gone {
                continue;
            }
            if matches!(sp.kind, Kind::Leaves(t) if now >= t) {
                let wire = &mut self.wires[i];
                wire.gone = true;
                wire.connected = false;
                wire.connect_at = None;
                self.s.peer_gone(&peer, now);
                self.pump();
                continue;
            }
            if self.wires[i].connect_at.is_some_and(|t| t <= now) {
                self.wires[i].connect_at = None;
                if sp.kind == Kind::Unreachable {
                    self.s.peer_gone(&peer, now);
                } else {
                    self.wires[i].connected = true;
                    self.wires[i].uninterested = false;
                    if !matches!(sp.kind, Kind::Fellow(_)) {
                        self.wires[i].holds = sp.gains(self.layout).into_iter().collect();
                    }
                    // What it holds now: whole chunks, and blocks of the others.
                    let holds = &self.wires[i].holds;
                    let layout = self.layout;
                    let whole: Vec<Chunk> = (0..self.w.chunks)
                        .filter(|&c| (0..layout.block_count(c)).all(|b| holds.contains(&(c, b))))
                        .collect();
                    let mut partial: BTreeMap<Chunk, Vec<Block>> = BTreeMap::new();
                    for &(c, b) in holds.iter().filter(|(c, _)| !whole.contains(c)) {
                        partial.entry(c).or_default().push(b);
                    }
                    self.s.connected(&peer, whole, partial, now);
                    self.pump();
                    self.s.unchoked(&peer, now);
                }
                self.pump();
            }
            if !self.wires[i].connected {
                continue;
            }
            for (c, b) in std::mem::take(&mut self.wires[i].rejects) {
                self.s.rejected(&peer, c, b, now);
                self.pump();
            }
            let stalled = matches!(sp.kind, Kind::Stalls(t) if now >= t);
            let rate = match sp.kind {
                Kind::Slows(t) if now >= t => sp.rate / 20.0,
                _ => sp.rate,
            };
            let mut budget = if stalled { 0.0 } else { rate * TICK as f64 };
            while budget > 0.0 && self.wires[i].connected {
                let wire = &mut self.wires[i];
                let Some(head) = wire.queue.front_mut() else {
                    break;
                };
                let take = (head.2 as f64).min(budget).ceil() as u64;
                head.2 -= take.min(head.2);
                budget -= take as f64;
                wire.sent += take;
                if head.2 == 0 {
                    let (c, b, _) = wire.queue.pop_front().expect("head");
                    if sp.kind == Kind::Corrupt {
                        // Its hash does not match: the scheduler only hears of a bad block.
                        self.s.bad_block(&peer, c, b, now);
                    } else if self.s.block(&peer, c, b, now) == Verdict::Keep {
                        assert!(!self.done.contains(&c), "kept a block of done chunk {c}");
                        let first = self.kept.insert((c, b), peer).is_none();
                        assert!(first, "block {c}/{b} kept twice");
                        *self.served.entry(peer).or_default() += 1;
                    }
                    self.pump();
                }
            }
            let sent = self.wires[i].sent;
            self.s.progress(&peer, sent, now);
            self.pump();
        }
        if self.s.poll_timeout().is_some_and(|t| t <= now) {
            self.s.handle_timeout(now);
            self.pump();
        }
    }
}

/// Makes a holder known: its whole chunks (what the tracker says) and its blocks of
/// other chunks (in the real swarm only learnt once connected; told up front here so
/// holders of nothing but blocks are connected to at all).
fn announce(s: &mut Scheduler<u8>, peer: u8, p: &SimPeer, now: u64) {
    let mut part: BTreeMap<Chunk, Vec<Block>> = BTreeMap::new();
    for &(c, b) in &p.blocks {
        part.entry(c).or_default().push(b);
    }
    s.add_peer(peer, p.has.iter().copied(), now);
    for (c, bs) in part {
        s.add_blocks(&peer, c, bs, now);
    }
}

fn run(w: &World, config: Config, limit_ms: u64) -> Outcome {
    let layout = w.layout();
    let mut net = Net {
        w,
        layout,
        config,
        s: Scheduler::new(layout, w.have.iter().copied(), w.seed, config),
        wires: w.peers.iter().map(|_| Wire::default()).collect(),
        kept: BTreeMap::new(),
        done: w.have.iter().copied().collect(),
        verify: Vec::new(),
        end: None,
        stuck: Vec::new(),
        served: BTreeMap::new(),
        now: 0,
    };
    for (i, p) in w.peers.iter().enumerate() {
        match p.kind {
            Kind::Joins(_) => {}
            Kind::Fellow(_) => net.s.add_fellow(i as u8, 0),
            _ => announce(&mut net.s, i as u8, p, 0),
        }
    }
    net.s.start(0);
    net.pump();
    while net.now <= limit_ms && net.end.is_none() {
        net.check();
        if net.end.is_some() {
            break;
        }
        net.tick();
    }
    Outcome {
        end: net.end,
        at: net.now,
        done: net.done,
        stuck: net.stuck,
        served: net.served,
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Honest),
        1 => Just(Kind::Corrupt),
        1 => (0u64..3000).prop_map(|t| Kind::Leaves(t / TICK * TICK)),
        1 => (0u64..3000).prop_map(|t| Kind::Stalls(t / TICK * TICK)),
        1 => (0u64..3000).prop_map(|t| Kind::Slows(t / TICK * TICK)),
        1 => (0u32..8).prop_map(Kind::Refuses),
        1 => Just(Kind::Unreachable),
        1 => (0u64..3000).prop_map(|t| Kind::Joins(t / TICK * TICK + TICK)),
        2 => (1u64..200).prop_map(Kind::Fellow),
    ]
}

fn world() -> impl Strategy<Value = World> {
    (1u32..8, 1u32..6, 1usize..6).prop_flat_map(|(chunks, blocks, npeers)| {
        let peer = (
            // 100 KB/s to 5 MB/s.
            100.0f64..5000.0,
            proptest::collection::btree_set(0..chunks, 0..=chunks as usize),
            // Blocks of other chunks (those of held chunks are dropped below).
            proptest::collection::btree_set((0..chunks, 0..blocks), 0..=(chunks * blocks) as usize),
            kind(),
        )
            .prop_map(|(rate, has, blocks, kind)| SimPeer {
                rate,
                blocks: blocks
                    .into_iter()
                    .filter(|(c, _)| !has.contains(c))
                    .collect(),
                has: has.into_iter().collect(),
                kind,
            });
        (
            Just(chunks),
            Just(blocks),
            proptest::collection::btree_set(0..chunks, 0..2),
            proptest::collection::vec(peer, npeers),
            any::<u64>(),
        )
            .prop_map(|(chunks, blocks, have, peers, seed)| World {
                chunks,
                blocks,
                have: have.into_iter().collect(),
                peers,
                seed,
            })
    })
}

/// Short timeouts so stalls are seen within the simulated minutes.
fn config() -> Config {
    Config {
        snub_ms: 2_000,
        drop_ms: 10_000,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Every chunk each of whose blocks a reliable peer holds gets done, and then the
    /// download finishes; chunks only unreliable peers hold are done or named when the
    /// download waits.
    #[test]
    fn finishes_whatever_reliable_peers_hold(w in world()) {
        let out = run(&w, config(), 600_000);
        let layout = w.layout();
        let reliable = |c: Chunk| {
            w.have.contains(&c)
                || (0..layout.block_count(c)).all(|b| {
                    w.peers
                        .iter()
                        .any(|p| p.kind.reliable() && p.gains(layout).contains(&(c, b)))
                })
        };
        if (0..w.chunks).all(reliable) {
            prop_assert_eq!(&out.end, &Some(Action::Finished), "at {} ms", out.at);
        }
        for c in (0..w.chunks).filter(|&c| reliable(c)) {
            prop_assert!(out.done.contains(&c), "chunk {} not done", c);
        }
        if out.end.is_none() {
            // Waiting for holders: it said which chunks it waits for, and only those no
            // reliable peer holds.
            let last = out.stuck.last().expect("a Stuck notice while waiting");
            prop_assert!(last.iter().all(|&c| !out.done.contains(&c)));
        }
    }

    /// A one-chunk fetch (no waiting) ends exactly once: Finished, or Stuck naming the
    /// chunks not done.
    #[test]
    fn without_waiting_it_ends_once(w in world()) {
        let config = Config { wait_for_holders: false, ..config() };
        let out = run(&w, config, 600_000);
        match out.end {
            Some(Action::Finished) => prop_assert_eq!(out.done.len(), w.chunks as usize),
            Some(Action::Stuck { missing }) => {
                let rest: Vec<Chunk> = (0..w.chunks).filter(|c| !out.done.contains(c)).collect();
                prop_assert_eq!(missing, rest);
            }
            other => prop_assert!(false, "no end: {:?}", other),
        }
    }

    /// Honest peers holding everything, at rates up to 100x apart: the last block does not
    /// wait on the slowest peer. Within 1.3x of the ideal, plus the second it takes to
    /// measure the rates and the start-up of the connections.
    #[test]
    fn a_slow_peer_does_not_hold_up_the_end(
        rates in proptest::collection::vec(50.0f64..5000.0, 2..6),
        chunks in 2u32..12,
        blocks in 4u32..16,
        seed: u64,
    ) {
        let w = World {
            chunks,
            blocks,
            have: vec![],
            peers: rates
                .iter()
                .map(|&rate| SimPeer { rate, has: (0..chunks).collect(), blocks: vec![], kind: Kind::Honest })
                .collect(),
            seed,
        };
        let out = run(&w, config(), 600_000);
        prop_assert_eq!(out.end, Some(Action::Finished));
        let bound = 1.1 * w.ideal_ms() + 300.0 + 2.0 * CONNECT_MS as f64;
        prop_assert!(
            (out.at as f64) <= bound,
            "{} ms, ideal {:.0} ms, bound {:.0} ms", out.at, w.ideal_ms(), bound
        );
    }
}

proptest! {
    /// Peers holding everything at similar rates each serve a share: nobody serves it all
    /// while others hold what we need.
    #[test]
    fn every_holder_serves_a_share(
        npeers in 2usize..6,
        extra in 0u32..6,
        blocks in 1u32..8,
        seed: u64,
    ) {
        let chunks = npeers as u32 + extra;
        let w = World {
            chunks,
            blocks,
            have: vec![],
            peers: (0..npeers)
                .map(|i| SimPeer {
                    rate: 1000.0 + 100.0 * i as f64,
                    has: (0..chunks).collect(),
                    blocks: vec![],
                    kind: Kind::Honest,
                })
                .collect(),
            seed,
        };
        let out = run(&w, config(), 600_000);
        prop_assert_eq!(out.end, Some(Action::Finished));
        for p in 0..npeers as u8 {
            prop_assert!(out.served.get(&p).is_some_and(|&n| 2 * n >= blocks), "{:?}", out.served);
        }
    }
}

/// One seeder slows to a trickle mid-download: the others finish its work.
#[test]
fn a_seeder_slowing_to_a_trickle_loses_its_work() {
    let mut w = World {
        chunks: 10,
        blocks: 16,
        have: vec![],
        peers: vec![
            SimPeer {
                rate: 1000.0,
                has: (0..10).collect(),
                blocks: vec![],
                kind: Kind::Honest,
            };
            4
        ],
        seed: 1,
    };
    w.peers[3].kind = Kind::Slows(500);
    // Ideal with three peers from the start: 2.6 MB at 3 MB/s.
    let ideal = (10 * 16 * BLOCK) as f64 / 3000.0;
    let out = run(&w, config(), 600_000);
    assert_eq!(out.end, Some(Action::Finished));
    assert!(
        (out.at as f64) < ideal * 1.3,
        "{} ms against an ideal of {ideal:.0} ms",
        out.at
    );
}
