//! One download (a whole file, or one chunk from one user), running in the background
//! while the user keeps chatting: the glue between the sans-IO scheduler, the connections
//! to holders (`fetch`), the part file (`store`) and the screen.
//!
//! The scheduler decides; this module only does what it says and tells it what happened,
//! with `now` measured from the start of the download. Every block is checked against its
//! hash (a leaf of its chunk's merkle tree) before the scheduler hears of it, and only
//! blocks the scheduler keeps are written, so a connection given up on, beaten to a block
//! or lying writes nothing. A chunk's block hashes are asked of the first peer asked for
//! one of its blocks, before that block, on the same connection; they are checked against
//! the chunk's root from the file's description.

mod fetch;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scheduler::{Action, Config, Layout, Scheduler, Verdict};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire::{FileMeta, FileName, Holder, UserName, BLOCK_LEN};

use crate::establish::Path;
use crate::library::{Leaves, Library};
use crate::p2p::{Dialer, Grant};
use crate::ratelimit::RateLimiter;
use crate::render::{chunk_list, human_rate, human_size, plural};
use crate::terminal::Printer;
use store::{Checked, Store};

/// What to download.
pub struct Plan {
    pub meta: FileMeta,
    pub holders: Vec<Holder>,
    /// One chunk (0-based) from the single holder, instead of the whole file.
    pub only: Option<u32>,
}

/// What the session tells a running download.
#[derive(Debug)]
pub enum Control {
    /// The tracker says `user` now also holds `chunks`.
    Holders { user: UserName, chunks: Vec<u32> },
    /// The tracker says `user` holds none of it any more.
    HolderGone { user: UserName },
    /// The tracker introduced us to a holder we asked for: its address and a ticket.
    Introduced(Holder),
    /// The tracker would not introduce us to `user`.
    NotIntroduced { user: UserName, why: String },
    /// `cancel`, or logging out: stop, keeping the verified chunks.
    Cancel,
}

/// What a download tells the session.
#[derive(Debug)]
pub enum JobEvent {
    /// `register` finished reading and hashing the file.
    Described {
        name: FileName,
        result: Result<crate::library::Described, String>,
    },
    /// A chunk was verified and kept: announce it to the tracker now.
    Have { name: FileName, chunk: u32 },
    /// Ask the tracker for an address and a ticket to fetch `name` from `user`.
    Introduce { name: FileName, user: UserName },
    /// The download is over; show these lines.
    Done { name: FileName, lines: Vec<String> },
}

/// How a download is doing, for `transfers`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Bytes to fetch in all (what was missing when it started), and verified so far.
    pub wanted: u64,
    pub verified: u64,
    /// Bytes per second over the last seconds.
    pub rate: f64,
    /// Peers connected, and of those sending to us now.
    pub peers: usize,
    pub sending: usize,
    /// Why it cannot progress, while it cannot.
    pub waiting: Option<String>,
    /// Still asking the tracker where the file is.
    pub locating: bool,
}

/// The session's end of a download.
pub struct Handle {
    pub control: mpsc::UnboundedSender<Control>,
    pub status: Arc<Mutex<Status>>,
    /// One chunk (0-based), or the whole file.
    pub only: Option<u32>,
}

/// The download's end, handed to [`run`] once the tracker has located the file.
pub struct Inbox {
    control: mpsc::UnboundedReceiver<Control>,
    status: Arc<Mutex<Status>>,
}

/// A download about to be located. Controls sent before it runs wait in its inbox.
pub fn prepare(only: Option<u32>) -> (Handle, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(Status {
        locating: true,
        ..Status::default()
    }));
    (
        Handle {
            control: tx,
            status: status.clone(),
            only,
        },
        Inbox {
            control: rx,
            status,
        },
    )
}

/// What every download shares.
#[derive(Clone)]
pub struct Context {
    pub lib: Arc<Library>,
    pub out: Printer,
    pub jobs: mpsc::UnboundedSender<JobEvent>,
    pub down: Option<Arc<RateLimiter>>,
    /// How connections to holders are opened (encrypted or not, with our key).
    pub dialer: Dialer,
}

/// Runs the download to its end, reporting through `ctx.jobs`.
pub async fn run(plan: Plan, inbox: Inbox, ctx: Context) {
    let name = plan.meta.name().clone();
    let lines = Driver::new(plan, inbox, ctx.clone()).drive().await;
    let _ = ctx.jobs.send(JobEvent::Done { name, lines });
}

/// Tickets from the tracker are for one connection and expire at the holder after 60 s;
/// an older one is not tried, a fresh introduction is asked for instead.
const TICKET_FRESH: Duration = Duration::from_secs(45);
/// How often connections' byte counts are read (progress, rates) and the status updated.
const TICK: Duration = Duration::from_millis(100);
/// Progress lines: at each tenth of the file, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

struct Conn {
    cmds: mpsc::UnboundedSender<fetch::Cmd>,
    task: JoinHandle<()>,
    /// Bytes read from it, once it is open.
    received: Option<Arc<AtomicU64>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum End {
    Finished,
    Stuck(Vec<u32>),
    Cancelled,
    Failed(String),
}

struct Driver {
    meta: Arc<FileMeta>,
    name: FileName,
    only: Option<u32>,
    ctx: Context,
    inbox: Inbox,
    started: Instant,
    tickets: HashMap<UserName, (Grant, Instant)>,
    /// Peers we asked the tracker to introduce, waiting for its answer.
    introducing: BTreeSet<UserName>,
    conns: HashMap<UserName, Conn>,
    /// Why each peer that failed us did, for the user.
    why: BTreeMap<UserName, String>,
    /// Who sent the blocks of each chunk not yet verified, and of all verified ones.
    senders: HashMap<u32, BTreeSet<UserName>>,
    served: BTreeSet<UserName>,
    /// How each connection was made, and the bytes kept per path.
    paths: HashMap<UserName, Path>,
    by_path: BTreeMap<Path, u64>,
    /// The holders the tracker listed at the start.
    holders: Vec<Holder>,
    /// Chunks already held when the download started.
    resumed: usize,
    /// Bytes of blocks of other chunks already held when it started.
    resumed_blocks: u64,
    /// Bytes received that failed verification, by sender (each fetched again elsewhere).
    bad_bytes: BTreeMap<UserName, u64>,
    /// For a one-chunk fetch: the user it is from.
    from: Option<UserName>,
    /// Block hashes of each chunk, once checked against its root.
    leaves: HashMap<u32, Leaves>,
    /// Batches of hashes received so far, for chunks of several batches.
    batches: HashMap<u32, Vec<Option<Vec<wire::Digest>>>>,
    /// Peers asked for the hashes of a chunk.
    hashes_asked: BTreeSet<(UserName, u32)>,
    /// Peers found sending a bad block or bad hashes.
    liars: BTreeSet<UserName>,
}

impl Driver {
    fn new(plan: Plan, inbox: Inbox, ctx: Context) -> Driver {
        let now = Instant::now();
        let tickets = plan
            .holders
            .iter()
            .map(|h| (h.user.clone(), (Grant::of(h), now)))
            .collect();
        Driver {
            name: plan.meta.name().clone(),
            meta: Arc::new(plan.meta),
            only: plan.only,
            ctx,
            inbox,
            started: now,
            tickets,
            introducing: BTreeSet::new(),
            conns: HashMap::new(),
            why: BTreeMap::new(),
            senders: HashMap::new(),
            served: BTreeSet::new(),
            paths: HashMap::new(),
            by_path: BTreeMap::new(),
            from: plan.holders.first().map(|h| h.user.clone()),
            holders: plan.holders,
            resumed: 0,
            resumed_blocks: 0,
            bad_bytes: BTreeMap::new(),
            leaves: HashMap::new(),
            batches: HashMap::new(),
            hashes_asked: BTreeSet::new(),
            liars: BTreeSet::new(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn note(&self, line: String) {
        self.ctx.out.line(line);
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Library) -> T + Send + 'static,
    ) -> Option<T> {
        let lib = self.ctx.lib.clone();
        tokio::task::spawn_blocking(move || f(&lib)).await.ok()
    }

    async fn drive(mut self) -> Vec<String> {
        let holders = std::mem::take(&mut self.holders);
        let name = self.name.clone();
        let count = self.meta.chunk_count();
        let meta = self.meta.clone();
        let prepared = match self.blocking(move |lib| lib.prepare(&meta)).await {
            Some(Ok(h)) => h,
            Some(Err(e)) => return vec![format!("Error. {e}")],
            None => return vec![format!("Error. could not prepare {name}")],
        };
        let wanted: Vec<u32> = match self.only {
            Some(c) if c >= count => {
                return vec![format!(
                    "Error. There is no chunk {}: {name} has chunks 1 to {count}",
                    c as u64 + 1
                )];
            }
            Some(c) if prepared.have.contains(&c) => {
                return vec![format!("You already have chunk {} of {name}", c + 1)];
            }
            Some(c) => vec![c],
            None => (0..count).filter(|c| !prepared.have.contains(c)).collect(),
        };
        if wanted.is_empty() {
            return self.finish("You already have").await;
        }
        self.resumed = prepared.have.len();
        self.leaves = prepared.leaves.clone().into_iter().collect();
        if self.only.is_none() && holders.is_empty() {
            return vec![format!(
                "Error. {name} is not available from any online user"
            )];
        }
        let n = name.clone();
        let part = match self.blocking(move |lib| lib.part_file(&n)).await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return vec![format!("Error. {e}")],
            None => return vec!["Error. could not open the download's file".into()],
        };
        let (checked_tx, mut checked) = mpsc::unbounded_channel();
        let (lib, file) = (self.ctx.lib.clone(), name.clone());
        let written = Box::new(move |c, b| lib.block_verified(&file, c, b));
        let store = Store::start(part, self.meta.clone(), checked_tx, written);

        let layout = Layout {
            size: self.meta.size(),
            chunk_size: self.meta.chunk_size(),
            block_len: BLOCK_LEN as u64,
        };
        let skip = (0..count).filter(|c| !wanted.contains(c));
        let config = Config {
            wait_for_holders: self.only.is_none(),
            ..Config::default()
        };
        let mut sched = Scheduler::new(layout, skip, rand::random(), config);
        let mut resumed_bytes = 0;
        for (&c, blocks) in prepared.blocks.iter().filter(|(c, _)| wanted.contains(c)) {
            sched.held_blocks(c, blocks.iter().copied());
            resumed_bytes += blocks
                .iter()
                .filter_map(|&b| self.meta.block_range(c, b))
                .map(|(_, l)| l)
                .sum::<u64>();
        }
        for h in &holders {
            if h.chunks.is_empty() && self.only.is_none() {
                sched.add_fellow(h.user.clone(), 0);
            } else {
                sched.add_peer(h.user.clone(), h.chunks.iter().copied(), 0);
            }
        }
        sched.start(self.now());

        let total: u64 = wanted
            .iter()
            .filter_map(|&c| self.meta.chunk_range(c))
            .map(|(_, l)| l)
            .sum();
        let mut progress = Progress::new(total, self.only.is_none());
        progress.verified(resumed_bytes);
        self.resumed_blocks = resumed_bytes;
        self.set_status(|s| {
            s.locating = false;
            s.wanted = total;
        });
        // Blocks waiting for the download's attention (4 MiB): beyond, connections stop reading.
        let (events_tx, mut events) = mpsc::channel(16);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting_said: Option<String> = None;

        let end = 'run: loop {
            while let Some(action) = sched.poll_action() {
                match action {
                    Action::Connect { peer } => self.connect(peer, &events_tx),
                    Action::Disconnect { peer } => {
                        self.conns.remove(&peer);
                    }
                    Action::Request { peer, chunk, block } => {
                        if !self.leaves.contains_key(&chunk)
                            && self.hashes_asked.insert((peer.clone(), chunk))
                        {
                            let n = self.meta.block_count(chunk).unwrap_or(0);
                            for batch in 0..merkle::batch_count(n) {
                                self.tell(&peer, fetch::Cmd::WantHashes { chunk, batch });
                            }
                        }
                        self.tell(&peer, fetch::Cmd::Request { chunk, block });
                    }
                    Action::Cancel { peer, chunk, block } => {
                        self.tell(&peer, fetch::Cmd::Cancel { chunk, block });
                    }
                    Action::Interested { peer } => self.tell(&peer, fetch::Cmd::Interested),
                    Action::NotInterested { peer } => self.tell(&peer, fetch::Cmd::NotInterested),
                    // Every block matched its hash on arrival: the chunk only has to be
                    // made durable before it is recorded.
                    Action::Verify { chunk } => store.complete(chunk).await,
                    Action::Finished => break 'run End::Finished,
                    Action::Stuck { missing } => {
                        if self.only.is_some() {
                            break 'run End::Stuck(missing);
                        }
                        let why = self.waiting_for(&missing);
                        if waiting_said.as_ref() != Some(&why) {
                            self.note(why.clone());
                            waiting_said = Some(why.clone());
                        }
                        self.set_status(|s| s.waiting = Some(why));
                    }
                }
            }
            let stall = sched
                .poll_timeout()
                .map(|ms| self.started + Duration::from_millis(ms));
            tokio::select! {
                Some(ev) = events.recv() => {
                    let now = self.now();
                    match ev {
                        fetch::Event::Connected { peer, chunks, partial, received, path } => {
                            if let Some(c) = self.conns.get_mut(&peer) {
                                c.received = Some(received);
                                if path == Path::Relayed {
                                    sched.relayed(&peer);
                                }
                                self.paths.insert(peer.clone(), path);
                                sched.connected(&peer, chunks, partial, now);
                            }
                        }
                        fetch::Event::Choked { peer } => sched.choked(&peer, now),
                        fetch::Event::Unchoked { peer } => sched.unchoked(&peer, now),
                        fetch::Event::Block { peer, chunk, block, bytes, leaf } => {
                            let right = self
                                .leaves
                                .get(&chunk)
                                .and_then(|l| l.get(block as usize));
                            if right != Some(&leaf) {
                                // Its hashes came before it on this connection, or it
                                // refused them: either way, a block we cannot trust.
                                self.liar(&peer, format!(
                                    "block {} of chunk {} of {name} from {peer} failed verification; not using {peer} again",
                                    block + 1,
                                    chunk + 1
                                ));
                                *self.bad_bytes.entry(peer.clone()).or_default() += bytes.len() as u64;
                                self.conns.remove(&peer);
                                sched.bad_block(&peer, chunk, block, now);
                            } else if sched.block(&peer, chunk, block, now) == Verdict::Keep {
                                // Checked against its hash already: it counts as verified.
                                progress.received(bytes.len() as u64);
                                progress.verified(bytes.len() as u64);
                                let path = self.paths.get(&peer).copied().unwrap_or(Path::Direct);
                                *self.by_path.entry(path).or_default() += bytes.len() as u64;
                                self.senders.entry(chunk).or_default().insert(peer);
                                store.write(chunk, block, bytes).await;
                            }
                        }
                        fetch::Event::Hashes { peer, chunk, batch, leaves, proof } => {
                            if let Err(why) = self.hashes(chunk, batch, leaves, proof).await {
                                self.liar(&peer, format!(
                                    "{peer} sent wrong block hashes for chunk {} of {name} ({why}); not using {peer} again",
                                    chunk + 1
                                ));
                                self.conns.remove(&peer);
                                sched.bad_block(&peer, chunk, 0, now);
                            }
                        }
                        fetch::Event::NoHashes { peer, chunk } => {
                            self.why.insert(
                                peer.clone(),
                                format!("{peer} no longer has chunk {}", chunk + 1),
                            );
                            sched.rejected(&peer, chunk, u32::MAX, now);
                        }
                        fetch::Event::Later { peer, chunk, block } => {
                            sched.later(&peer, chunk, block, now);
                        }
                        fetch::Event::HaveBlock { peer, chunk, block } => {
                            sched.add_blocks(&peer, chunk, [block], now);
                        }
                        fetch::Event::Have { peer, chunk } => sched.add_peer(peer, [chunk], now),
                        fetch::Event::Suggest { peer, chunks } => sched.suggested(&peer, chunks, now),
                        fetch::Event::Rejected { peer, chunk, block } => {
                            self.why.insert(
                                peer.clone(),
                                format!("{peer} no longer has chunk {}", chunk + 1),
                            );
                            sched.rejected(&peer, chunk, block, now);
                        }
                        fetch::Event::Closed { peer, why } => {
                            if self.conns.remove(&peer).is_some() {
                                self.why.insert(peer.clone(), format!("{peer}: {why}"));
                                sched.peer_gone(&peer, now);
                            }
                        }
                    }
                }
                Some(Checked { chunk, outcome }) = checked.recv() => {
                    let now = self.now();
                    match outcome {
                        Ok(()) => {
                            let n = name.clone();
                            if let Some(Err(e)) = self.blocking(move |lib| lib.verified(&n, chunk)).await {
                                break 'run End::Failed(e.to_string());
                            }
                            let _ = self.ctx.jobs.send(JobEvent::Have { name: name.clone(), chunk });
                            if let Some(from) = self.senders.remove(&chunk) {
                                self.served.extend(from);
                            }
                            // `transfers` is current at every chunk, not only every tick.
                            let verified = progress.verified;
                            self.set_status(|s| s.verified = verified);
                            sched.verified(chunk, true, now);
                        }
                        Err(kind) => {
                            break 'run End::Failed(format!(
                                "cannot write {}: {}",
                                self.ctx.lib.path_of(&name).display(),
                                std::io::Error::from(kind)
                            ));
                        }
                    }
                }
                Some(ctl) = self.inbox.control.recv() => {
                    let now = self.now();
                    match ctl {
                        Control::Holders { user, chunks } if chunks.is_empty() => {
                            if self.only.is_none() {
                                sched.add_fellow(user, now);
                            }
                        }
                        Control::Holders { user, chunks } => sched.add_peer(user, chunks, now),
                        Control::HolderGone { user } => {
                            self.conns.remove(&user);
                            self.tickets.remove(&user);
                            sched.peer_gone(&user, now);
                        }
                        Control::Introduced(h) => {
                            self.tickets.insert(h.user.clone(), (Grant::of(&h), Instant::now()));
                            if self.introducing.remove(&h.user) {
                                self.connect(h.user, &events_tx);
                            }
                        }
                        Control::NotIntroduced { user, why } => {
                            if self.introducing.remove(&user) {
                                self.why.insert(user.clone(), why);
                                sched.peer_gone(&user, now);
                            }
                        }
                        Control::Cancel => break 'run End::Cancelled,
                    }
                }
                _ = sleep_until(stall) => sched.handle_timeout(self.now()),
                _ = ticker.tick() => {
                    let now = self.now();
                    for (peer, c) in &mut self.conns {
                        if let Some(r) = &c.received {
                            let total = r.load(Ordering::Relaxed);
                            sched.progress(peer, total, now);
                        }
                    }
                    let info = sched.peers();
                    let sending = info
                        .iter()
                        .filter(|p| p.connected && !p.choked && p.in_flight > 0)
                        .count();
                    let connected = info.iter().filter(|p| p.connected).count();
                    let rate = progress.rate(self.started.elapsed());
                    let (verified, stuck) = (progress.verified, sched.is_stuck());
                    // While it waits, the "Waiting for" line says where it is.
                    if let Some(line) = progress.line(&name, connected).filter(|_| !stuck) {
                        self.note(line);
                    }
                    if !stuck {
                        waiting_said = None;
                    }
                    self.set_status(|s| {
                        s.verified = verified;
                        s.rate = rate;
                        s.peers = connected;
                        s.sending = sending;
                        if !stuck {
                            s.waiting = None;
                        }
                    });
                }
            }
        };
        self.conns.clear();
        drop(store);
        self.outcome(end, count).await
    }

    /// `peer` sent a bad block or bad hashes: told once, remembered as the reason.
    fn liar(&mut self, peer: &UserName, line: String) {
        if self.liars.insert(peer.clone()) {
            self.note(line.clone());
        }
        self.why.insert(peer.clone(), line);
    }

    /// Checks a batch of `chunk`'s block hashes against its root; once every batch is in,
    /// they are the chunk's hashes (and saved for a restart and for other downloaders).
    async fn hashes(
        &mut self,
        chunk: u32,
        batch: u32,
        leaves: Vec<wire::Digest>,
        proof: Vec<wire::Digest>,
    ) -> Result<(), &'static str> {
        if self.leaves.contains_key(&chunk) {
            return Ok(()); // another peer's came first
        }
        let (Some(root), Some(n)) = (self.meta.chunk_root(chunk), self.meta.block_count(chunk))
        else {
            return Err("no such chunk");
        };
        if !merkle::check_batch(root, n, batch, &leaves, &proof) {
            return Err("they do not match the chunk's root");
        }
        let batches = self
            .batches
            .entry(chunk)
            .or_insert_with(|| vec![None; merkle::batch_count(n) as usize]);
        batches[batch as usize] = Some(leaves);
        if batches.iter().any(Option::is_none) {
            return Ok(());
        }
        let all: Vec<wire::Digest> = self
            .batches
            .remove(&chunk)
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .collect();
        let all = Leaves::from(all);
        self.leaves.insert(chunk, all.clone());
        let name = self.name.clone();
        // Losing them costs only asking again after a restart.
        let _ = self
            .blocking(move |lib| lib.set_leaves(&name, chunk, all))
            .await;
        Ok(())
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.inbox.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn tell(&self, peer: &UserName, cmd: fetch::Cmd) {
        if let Some(c) = self.conns.get(peer) {
            let _ = c.cmds.send(cmd);
        }
    }

    /// Opens a connection to `peer` with a fresh ticket, or asks the tracker for one.
    fn connect(&mut self, peer: UserName, events: &mpsc::Sender<fetch::Event>) {
        let fresh = self
            .tickets
            .get(&peer)
            .is_some_and(|(_, at)| at.elapsed() < TICKET_FRESH);
        let Some((grant, _)) = self.tickets.remove(&peer).filter(|_| fresh) else {
            if self.introducing.insert(peer.clone()) {
                let _ = self.ctx.jobs.send(JobEvent::Introduce {
                    name: self.name.clone(),
                    user: peer,
                });
            }
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let target = fetch::Target {
            meta: self.meta.clone(),
            down: self.ctx.down.clone(),
            dialer: self.ctx.dialer.clone(),
        };
        let task = tokio::spawn(fetch::run(peer.clone(), grant, target, rx, events.clone()));
        self.conns.insert(
            peer,
            Conn {
                cmds: tx,
                task,
                received: None,
            },
        );
    }

    /// The line said when the download cannot progress.
    fn waiting_for(&self, missing: &[u32]) -> String {
        let mut lines = vec![format!(
            "Waiting for {} of {}: no online user can send {}; it resumes when one can (cancel {} to stop)",
            chunk_list(missing),
            self.name,
            if missing.len() == 1 { "it" } else { "them" },
            self.name
        )];
        lines.extend(causes(&self.why));
        lines.join("\n")
    }

    /// Moves the finished file into place. On success, one line starting with `verb`.
    async fn finish(&self, verb: &str) -> Vec<String> {
        let n = self.name.clone();
        let size = self.meta.size();
        match self.blocking(move |lib| lib.finish(&n)).await {
            Some(Ok(path)) => vec![format!(
                "{verb} {} ({}) at {}",
                self.name,
                human_size(size),
                path.display()
            )],
            Some(Err(e)) => vec![format!("Error. {e}")],
            None => vec![format!("Error. could not finish {}", self.name)],
        }
    }

    async fn outcome(&self, end: End, count: u32) -> Vec<String> {
        let name = &self.name;
        let from: Vec<&str> = self.served.iter().map(|u| u.as_str()).collect();
        match (end, self.only) {
            (End::Finished, Some(c)) => {
                let mut lines = vec![format!(
                    "Downloaded chunk {} of {name} from {}",
                    c + 1,
                    from.join(", ")
                )];
                if self.ctx.lib.have(name).len() as u32 == count {
                    lines.extend(self.finish("Completed").await);
                }
                lines
            }
            (End::Finished, None) => {
                let done = self.finish("Downloaded").await;
                if done.first().is_some_and(|l| l.starts_with("Error")) {
                    return done;
                }
                let mut lines = vec![format!(
                    "Downloaded {name} ({}) from {}",
                    human_size(self.meta.size()),
                    from.join(", ")
                )];
                match (self.resumed, self.resumed_blocks) {
                    (0, 0) => {}
                    (chunks, 0) => lines.push(format!(
                        "  (resumed: {chunks} of {count} chunks were already here)"
                    )),
                    (chunks, bytes) => lines.push(format!(
                        "  (resumed: {chunks} of {count} chunks and {} of others were already here)",
                        human_size(bytes)
                    )),
                }
                // Said only when some bytes came another way than directly.
                if self.by_path.keys().any(|p| *p != Path::Direct) {
                    let parts: Vec<String> = self
                        .by_path
                        .iter()
                        .map(|(p, n)| format!("{} {}", p.name(), human_size(*n)))
                        .collect();
                    lines.push(format!("  (paths: {})", parts.join(", ")));
                }
                if !self.bad_bytes.is_empty() {
                    let total: u64 = self.bad_bytes.values().sum();
                    let who: Vec<&str> = self.bad_bytes.keys().map(|u| u.as_str()).collect();
                    lines.push(format!(
                        "  (fetched again: {} that failed verification, from {})",
                        human_size(total),
                        who.join(", ")
                    ));
                }
                lines
            }
            (End::Stuck(_), Some(c)) => {
                let user = self.from.as_ref().map(|u| u.as_str()).unwrap_or_default();
                let why =
                    self.why.values().next().cloned().unwrap_or_else(|| {
                        format!("{user} does not have chunk {} of {name}", c + 1)
                    });
                vec![format!("Error. {why}")]
            }
            (End::Stuck(missing), None) => {
                // Not reached: a whole-file download waits instead.
                vec![format!(
                    "Error. Could not download {name}: nobody can send {}",
                    chunk_list(&missing)
                )]
            }
            (End::Cancelled, _) => {
                let kept = self.ctx.lib.have(name).len();
                let blocks: u64 = self
                    .ctx
                    .lib
                    .partial(name)
                    .iter()
                    .flat_map(|(&c, bs)| {
                        bs.iter().filter_map(move |&b| self.meta.block_range(c, b))
                    })
                    .map(|(_, len)| len)
                    .sum();
                let others = if blocks > 0 {
                    format!(" and {} of others", human_size(blocks))
                } else {
                    String::new()
                };
                vec![format!(
                    "Cancelled download of {name}: {kept} of {count} chunks{others} kept; download {} resumes it",
                    crate::command::typed(name)
                )]
            }
            (End::Failed(e), _) => vec![format!("Error. {e}")],
        }
    }
}

/// One line per distinct reason peers failed us, naming who.
fn causes(why: &BTreeMap<UserName, String>) -> Vec<String> {
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (user, w) in why {
        by.entry(w.as_str()).or_default().push(user.as_str());
    }
    by.into_keys().map(|w| format!("  {w}")).collect()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Verified bytes, the recent rate, and when to say how far it is.
struct Progress {
    total: u64,
    verified: u64,
    received: u64,
    /// Progress lines are for whole files only.
    lines: bool,
    last_line: Option<Instant>,
    /// Tenths of the file said so far.
    said: u64,
    window: (Duration, u64),
    rate: f64,
}

impl Progress {
    fn new(total: u64, lines: bool) -> Progress {
        Progress {
            total,
            verified: 0,
            received: 0,
            lines,
            last_line: None,
            said: 0,
            window: (Duration::ZERO, 0),
            rate: 0.0,
        }
    }

    fn received(&mut self, n: u64) {
        self.received += n;
    }

    fn verified(&mut self, n: u64) {
        self.verified += n;
    }

    /// Bytes per second, smoothed over windows of a second.
    fn rate(&mut self, elapsed: Duration) -> f64 {
        let (start, bytes) = self.window;
        let span = elapsed.saturating_sub(start);
        if span >= Duration::from_secs(1) {
            let inst = (self.received - bytes) as f64 / span.as_secs_f64();
            self.rate = if start.is_zero() {
                inst
            } else {
                0.5 * self.rate + 0.5 * inst
            };
            self.window = (elapsed, self.received);
        }
        self.rate
    }

    /// A progress line when another tenth of the file is verified (not the last: its
    /// completion line says it), at most once a second.
    fn line(&mut self, name: &FileName, peers: usize) -> Option<String> {
        if !self.lines || self.total == 0 {
            return None;
        }
        let tenths = self.verified * 10 / self.total;
        if tenths <= self.said || tenths >= 10 {
            return None;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return None;
        }
        self.said = tenths;
        self.last_line = Some(Instant::now());
        let eta = if self.rate > 0.0 {
            let secs = (self.total - self.verified) as f64 / self.rate;
            format!(", ETA {}", crate::render::human_secs(secs))
        } else {
            String::new()
        };
        Some(format!(
            "{name}: {}% ({} of {}) at {} from {peers} peer{}{eta}",
            self.verified * 100 / self.total,
            human_size(self.verified),
            human_size(self.total),
            human_rate(self.rate),
            plural(peers as u64),
        ))
    }
}
