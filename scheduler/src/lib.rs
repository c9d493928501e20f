//! Which peer to ask for which chunk: a sans-IO state machine (see `STATE.md`).
//!
//! Inputs are events, each with `now` in milliseconds; outputs are [`Action`]s to poll. No
//! I/O, no clock, no unseeded randomness: the same inputs and seed give the same actions,
//! which is what lets the property tests below explore thousands of downloads exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A chunk number, 0-based.
pub type Chunk = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A chunk in flight this long without an answer: drop that peer and ask elsewhere.
    pub stall_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { stall_ms: 60_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `chunk`.
    Fetch { peer: P, chunk: Chunk },
    /// `peer` stalled; close its connection. Its chunks will be asked elsewhere.
    DropPeer { peer: P },
    /// Every chunk is done.
    Finished,
    /// No usable peer holds these chunks; everything else is done.
    Stuck { missing: Vec<Chunk> },
}

/// How a fetch went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The bytes did not match the chunk's hash: the peer is not asked again.
    Corrupt,
    /// The peer said it does not hold the chunk.
    Refused,
    /// The transfer broke off.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State<P> {
    Missing,
    InFlight { peer: P, since: u64 },
    Done,
}

#[derive(Debug, Clone)]
struct Peer {
    has: BTreeSet<Chunk>,
    excluded: BTreeSet<Chunk>,
    in_flight: u32,
    assigned: u64,
    banned: bool,
}

impl Peer {
    fn candidate_for(&self, c: Chunk) -> bool {
        !self.banned && self.has.contains(&c) && !self.excluded.contains(&c)
    }
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
    config: Config,
    chunks: Vec<State<P>>,
    peers: BTreeMap<P, Peer>,
    rng: Rng,
    out: VecDeque<Action<P>>,
    ended: bool,
}

impl<P: Ord + Clone> Scheduler<P> {
    /// A download of `count` chunks, of which `have` are already held.
    pub fn new(
        count: u32,
        have: impl IntoIterator<Item = Chunk>,
        seed: u64,
        config: Config,
    ) -> Self {
        let mut chunks = vec![State::Missing; count as usize];
        for c in have {
            if let Some(s) = chunks.get_mut(c as usize) {
                *s = State::Done;
            }
        }
        Scheduler {
            config,
            chunks,
            peers: BTreeMap::new(),
            rng: Rng(seed),
            out: VecDeque::new(),
            ended: false,
        }
    }

    /// `peer` holds `chunks` (added to what it was known to hold). Nothing is scheduled
    /// until the next event or [`Scheduler::start`], so a batch of peers is seen as a whole
    /// (the first peer added must not look like the only one).
    pub fn add_peer(&mut self, peer: P, chunks: impl IntoIterator<Item = Chunk>) {
        let count = self.chunks.len() as Chunk;
        let p = self.peers.entry(peer).or_insert_with(|| Peer {
            has: BTreeSet::new(),
            excluded: BTreeSet::new(),
            in_flight: 0,
            assigned: 0,
            banned: false,
        });
        p.has.extend(chunks.into_iter().filter(|&c| c < count));
    }

    /// Schedules after peers were added (and ends at once if nothing can be done).
    pub fn start(&mut self, now: u64) {
        self.schedule(now);
    }

    pub fn completed(&mut self, peer: &P, chunk: Chunk, now: u64) {
        if self.take_in_flight(peer, chunk) {
            self.chunks[chunk as usize] = State::Done;
        }
        self.schedule(now);
    }

    pub fn failed(&mut self, peer: &P, chunk: Chunk, failure: Failure, now: u64) {
        if self.take_in_flight(peer, chunk) {
            self.chunks[chunk as usize] = State::Missing;
            if let Some(p) = self.peers.get_mut(peer) {
                p.excluded.insert(chunk);
                if failure == Failure::Corrupt {
                    p.banned = true;
                }
            }
        }
        self.schedule(now);
    }

    /// `peer` left (or its connection failed): everything it was fetching is missing again.
    pub fn peer_gone(&mut self, peer: &P, now: u64) {
        self.remove_peer(peer);
        self.schedule(now);
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.chunks
            .iter()
            .filter_map(|s| match s {
                State::InFlight { since, .. } => Some(since + self.config.stall_ms),
                _ => None,
            })
            .min()
    }

    /// Drops peers whose fetch has stalled.
    pub fn handle_timeout(&mut self, now: u64) {
        let stalled: BTreeSet<P> = self
            .chunks
            .iter()
            .filter_map(|s| match s {
                State::InFlight { peer, since } if now >= since + self.config.stall_ms => {
                    Some(peer.clone())
                }
                _ => None,
            })
            .collect();
        for peer in stalled {
            self.remove_peer(&peer);
            self.out.push_back(Action::DropPeer { peer });
        }
        self.schedule(now);
    }

    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.out.pop_front()
    }

    pub fn is_done(&self, chunk: Chunk) -> bool {
        matches!(self.chunks.get(chunk as usize), Some(State::Done))
    }

    pub fn done_count(&self) -> usize {
        self.chunks
            .iter()
            .filter(|s| matches!(s, State::Done))
            .count()
    }

    fn take_in_flight(&mut self, peer: &P, chunk: Chunk) -> bool {
        match self.chunks.get(chunk as usize) {
            Some(State::InFlight { peer: p, .. }) if p == peer => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight -= 1;
                }
                true
            }
            _ => false,
        }
    }

    fn remove_peer(&mut self, peer: &P) {
        self.peers.remove(peer);
        for s in &mut self.chunks {
            if matches!(s, State::InFlight { peer: p, .. } if p == peer) {
                *s = State::Missing;
            }
        }
    }

    fn usable_peers(&self) -> usize {
        self.peers.values().filter(|p| !p.banned).count()
    }

    /// Applies the rule in STATE.md until nothing more can be assigned.
    fn schedule(&mut self, now: u64) {
        if self.ended {
            return;
        }
        let limit = if self.usable_peers() == 1 { 2 } else { 1 };
        loop {
            // Rarest missing chunk that has an idle candidate.
            let mut best: Option<(usize, u64, Chunk)> = None; // (rarity, tie, chunk)
            for (i, s) in self.chunks.iter().enumerate() {
                if !matches!(s, State::Missing) {
                    continue;
                }
                let c = i as Chunk;
                let mut rarity = 0;
                let mut idle = false;
                for p in self.peers.values() {
                    if p.candidate_for(c) {
                        rarity += 1;
                        idle |= p.in_flight < limit;
                    }
                }
                if !idle {
                    continue;
                }
                let tie = self.rng.next();
                if best.is_none_or(|(r, t, _)| (rarity, tie) < (r, t)) {
                    best = Some((rarity, tie, c));
                }
            }
            let Some((_, _, chunk)) = best else { break };
            // Least-used idle candidate.
            let mut pick: Option<(u32, u64, u64, P)> = None; // (in_flight, assigned, tie, peer)
            for (id, p) in &self.peers {
                if p.candidate_for(chunk) && p.in_flight < limit {
                    let key = (p.in_flight, p.assigned, self.rng.next());
                    if pick.as_ref().is_none_or(|(f, a, t, _)| key < (*f, *a, *t)) {
                        pick = Some((key.0, key.1, key.2, id.clone()));
                    }
                }
            }
            let (_, _, _, peer) = pick.expect("an idle candidate exists");
            let p = self.peers.get_mut(&peer).expect("picked from peers");
            p.in_flight += 1;
            p.assigned += 1;
            self.chunks[chunk as usize] = State::InFlight {
                peer: peer.clone(),
                since: now,
            };
            self.out.push_back(Action::Fetch { peer, chunk });
        }
        let in_flight = self
            .chunks
            .iter()
            .any(|s| matches!(s, State::InFlight { .. }));
        if self.chunks.iter().all(|s| matches!(s, State::Done)) {
            self.ended = true;
            self.out.push_back(Action::Finished);
        } else if !in_flight {
            self.ended = true;
            let missing = self
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s, State::Missing))
                .map(|(i, _)| i as Chunk)
                .collect();
            self.out.push_back(Action::Stuck { missing });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    type S = Scheduler<u8>;

    fn drain(s: &mut S) -> Vec<Action<u8>> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    #[test]
    fn rarest_chunk_first() {
        // Peer 1 holds chunks 0..4, peer 2 holds 0..3: chunk 3 is the rarest.
        let mut s = S::new(4, [], 7, Config::default());
        s.add_peer(1, [0, 1, 2, 3]);
        s.start(0);
        let first = drain(&mut s);
        assert_eq!(first.len(), 2, "a lone peer gets two in flight: {first:?}");
        let mut s = S::new(4, [], 7, Config::default());
        s.add_peer(2, [0, 1, 2]);
        s.add_peer(1, [0, 1, 2, 3]);
        s.start(0);
        let acts = drain(&mut s);
        assert!(
            acts.contains(&Action::Fetch { peer: 1, chunk: 3 }),
            "{acts:?}"
        );
    }

    #[test]
    fn corrupt_peer_is_banned_and_chunk_refetched_elsewhere() {
        let mut s = S::new(2, [], 1, Config::default());
        s.add_peer(1, [0, 1]);
        s.add_peer(2, [0, 1]);
        s.start(0);
        let acts = drain(&mut s);
        let Action::Fetch { peer, chunk } = acts.last().unwrap().clone() else {
            panic!()
        };
        s.failed(&peer, chunk, Failure::Corrupt, 1);
        // The other peer is now the only usable one: it gets the chunk at once, pipelined
        // behind the one it is already fetching.
        let other = if peer == 1 { 2 } else { 1 };
        assert_eq!(drain(&mut s), [Action::Fetch { peer: other, chunk }]);
        s.completed(&other, 1 - chunk, 2);
        assert!(drain(&mut s).is_empty());
        // A late answer from the banned peer changes nothing.
        s.completed(&peer, chunk, 3);
        assert!(drain(&mut s).is_empty());
        s.completed(&other, chunk, 4);
        assert_eq!(drain(&mut s), [Action::Finished]);
    }

    #[test]
    fn stalled_peer_is_dropped_and_its_chunk_reassigned() {
        let mut s = S::new(2, [], 3, Config { stall_ms: 1000 });
        s.add_peer(1, [0, 1]);
        s.add_peer(2, [0, 1]);
        s.start(0);
        drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(1000));
        s.completed(&2, 0, 10);
        s.completed(&2, 1, 10); // not in flight from 2: ignored
        drain(&mut s);
        s.handle_timeout(999);
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(1000);
        let acts = drain(&mut s);
        assert!(acts.contains(&Action::DropPeer { peer: 1 }), "{acts:?}");
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Fetch { peer: 2, .. })),
            "{acts:?}"
        );
    }

    #[test]
    fn nothing_to_do_when_everything_is_held() {
        let mut s = S::new(3, [0, 1, 2], 0, Config::default());
        s.start(0);
        assert_eq!(drain(&mut s), [Action::Finished]);
        let mut s = S::new(3, [0, 1], 0, Config::default());
        s.start(0);
        assert_eq!(drain(&mut s), [Action::Stuck { missing: vec![2] }]);
    }

    /// A simulated download: random holdings, some peers flaky (fail, corrupt, or leave),
    /// transfers completing in a random order. Checks the rule on every action.
    #[derive(Debug, Clone)]
    struct World {
        count: u32,
        have: Vec<Chunk>,
        holdings: Vec<Vec<Chunk>>,
        flaky: Vec<bool>,
        seed: u64,
        choices: Vec<u16>,
    }

    fn world() -> impl Strategy<Value = World> {
        (1u32..24, 1usize..6).prop_flat_map(|(count, npeers)| {
            (
                Just(count),
                proptest::collection::vec(0..count, 0..4),
                proptest::collection::vec(
                    proptest::collection::vec(0..count, 0..count as usize + 1),
                    npeers,
                ),
                proptest::collection::vec(any::<bool>(), npeers),
                any::<u64>(),
                proptest::collection::vec(any::<u16>(), 400),
            )
                .prop_map(|(count, have, holdings, flaky, seed, choices)| World {
                    count,
                    have,
                    holdings,
                    flaky,
                    seed,
                    choices,
                })
        })
    }

    struct Outcome {
        done: BTreeSet<Chunk>,
        served: BTreeMap<u8, u32>,
        end: Option<Action<u8>>,
    }

    /// Runs the world to the end, asserting the rule on every step.
    fn run(w: &World) -> Outcome {
        let mut s = S::new(w.count, w.have.iter().copied(), w.seed, Config::default());
        let holds = |p: u8, c: Chunk| w.holdings[p as usize].contains(&c);
        for (i, h) in w.holdings.iter().enumerate() {
            s.add_peer(i as u8, h.iter().copied());
        }
        s.start(0);
        let mut in_flight: Vec<(u8, Chunk)> = Vec::new();
        let mut done: BTreeSet<Chunk> = w.have.iter().copied().collect();
        let mut served: BTreeMap<u8, u32> = BTreeMap::new();
        let mut banned: BTreeSet<u8> = BTreeSet::new();
        let mut gone: BTreeSet<u8> = BTreeSet::new();
        let mut end = None;
        let mut choices = w.choices.iter().cycle();
        for step in 0..10_000u64 {
            while let Some(a) = s.poll_action() {
                match a {
                    Action::Fetch { peer, chunk } => {
                        assert!(holds(peer, chunk), "asked {peer} for {chunk} it lacks");
                        assert!(!banned.contains(&peer) && !gone.contains(&peer));
                        assert!(!done.contains(&chunk), "refetch of done chunk {chunk}");
                        assert!(
                            !in_flight.iter().any(|&(_, c)| c == chunk),
                            "chunk {chunk} twice"
                        );
                        let usable = w.holdings.len() - banned.len() - gone.len();
                        let mine = in_flight.iter().filter(|&&(p, _)| p == peer).count();
                        assert!(
                            mine < if usable == 1 { 2 } else { 1 },
                            "peer {peer} overloaded"
                        );
                        in_flight.push((peer, chunk));
                    }
                    Action::Finished | Action::Stuck { .. } => {
                        assert!(end.is_none(), "ended twice");
                        assert!(in_flight.is_empty());
                        end = Some(a);
                    }
                    Action::DropPeer { .. } => panic!("no timeouts in this world"),
                }
            }
            if end.is_some() {
                break;
            }
            assert!(!in_flight.is_empty(), "stalled without ending");
            let pick = *choices.next().unwrap() as usize;
            let (peer, chunk) = in_flight.swap_remove(pick % in_flight.len());
            let now = step + 1;
            if w.flaky[peer as usize] {
                match pick % 4 {
                    0 => {
                        banned.insert(peer);
                        s.failed(&peer, chunk, Failure::Corrupt, now);
                    }
                    1 => {
                        gone.insert(peer);
                        in_flight.retain(|&(p, _)| p != peer);
                        s.peer_gone(&peer, now);
                    }
                    2 => s.failed(&peer, chunk, Failure::Broken, now),
                    _ => {
                        done.insert(chunk);
                        *served.entry(peer).or_default() += 1;
                        s.completed(&peer, chunk, now);
                    }
                }
            } else {
                done.insert(chunk);
                *served.entry(peer).or_default() += 1;
                s.completed(&peer, chunk, now);
            }
        }
        Outcome { done, served, end }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every chunk that some reliable peer holds gets done; the download ends exactly
        /// once, with Finished iff all chunks are done, else Stuck naming exactly the rest.
        #[test]
        fn finishes_whatever_a_reliable_peer_holds(w in world()) {
            let out = run(&w);
            for c in 0..w.count {
                let reliable = w.holdings.iter().zip(&w.flaky).any(|(h, f)| !f && h.contains(&c));
                if reliable {
                    prop_assert!(out.done.contains(&c), "chunk {} not done", c);
                }
            }
            match out.end {
                Some(Action::Finished) => prop_assert_eq!(out.done.len(), w.count as usize),
                Some(Action::Stuck { missing }) => {
                    prop_assert!(!missing.is_empty());
                    let all: BTreeSet<Chunk> = (0..w.count).collect();
                    let rest: Vec<Chunk> = all.difference(&out.done).copied().collect();
                    prop_assert_eq!(missing, rest);
                }
                other => prop_assert!(false, "no end: {:?}", other),
            }
        }

        /// Chunks nobody holds make the download stuck, never finished.
        #[test]
        fn gives_up_on_chunks_nobody_holds(mut w in world()) {
            let orphan = w.count; // one extra chunk that no peer holds
            w.count += 1;
            let out = run(&w);
            match out.end {
                Some(Action::Stuck { missing }) => prop_assert!(missing.contains(&orphan)),
                other => prop_assert!(false, "expected Stuck, got {:?}", other),
            }
        }

        /// The first fetch is for a rarest chunk.
        #[test]
        fn first_fetch_is_rarest(w in world()) {
            let mut s = S::new(w.count, w.have.iter().copied(), w.seed, Config::default());
            for (i, h) in w.holdings.iter().enumerate() {
                s.add_peer(i as u8, h.iter().copied());
            }
            s.start(0);
            let rarity = |c: Chunk| w.holdings.iter().filter(|h| h.contains(&c)).count();
            let needed: Vec<Chunk> = (0..w.count)
                .filter(|c| !w.have.contains(c) && rarity(*c) > 0)
                .collect();
            if let Some(Action::Fetch { chunk, .. }) = s.poll_action() {
                let min = needed.iter().map(|&c| rarity(c)).min().unwrap();
                prop_assert_eq!(rarity(chunk), min);
            } else {
                prop_assert!(needed.is_empty());
            }
        }

        /// Peers holding everything, equally fast: each serves its share, within one chunk.
        #[test]
        fn spreads_load_evenly(count in 1u32..60, npeers in 2u8..6, seed: u64) {
            let mut s = S::new(count, [], seed, Config::default());
            for p in 0..npeers {
                s.add_peer(p, 0..count);
            }
            s.start(0);
            let mut served = vec![0u32; npeers as usize];
            let mut queue: VecDeque<(u8, Chunk)> = VecDeque::new();
            for now in 1..10_000u64 {
                while let Some(a) = s.poll_action() {
                    if let Action::Fetch { peer, chunk } = a {
                        queue.push_back((peer, chunk));
                    }
                }
                let Some((peer, chunk)) = queue.pop_front() else { break };
                served[peer as usize] += 1;
                s.completed(&peer, chunk, now);
            }
            prop_assert_eq!(served.iter().sum::<u32>(), count);
            let (min, max) = (served.iter().min().unwrap(), served.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{:?}", served);
        }
    }

    #[test]
    fn no_peer_serves_everything_while_others_hold_chunks() {
        // Many random worlds where two reliable peers hold every chunk: both serve.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..200 {
            let w = world().new_tree(&mut runner).unwrap().current();
            if w.count < 2 || w.holdings.len() < 2 {
                continue;
            }
            let mut w = w;
            w.have.clear();
            w.holdings[0] = (0..w.count).collect();
            w.holdings[1] = (0..w.count).collect();
            w.flaky = vec![false; w.holdings.len()];
            let out = run(&w);
            assert!(out.served.len() >= 2, "{:?}", out.served);
        }
    }
}
