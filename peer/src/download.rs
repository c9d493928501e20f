//! One download (a whole file, or one chunk from one user): the glue between the
//! sans-IO scheduler, the fetch tasks, the library and the screen.
//!
//! The scheduler decides; this module only does what it says and tells it what happened,
//! with `now` measured from the start of the download.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use scheduler::{Action, Config, Failure, Scheduler};
use tokio::sync::mpsc;
use wire::{FileMeta, FileName, Holder, UserName};

use crate::library::Library;
use crate::render::human_size;
use crate::terminal::Printer;
use crate::transfer::{fetch, FetchTarget, Fetched, PartWriter};

/// What to download.
pub struct Plan {
    pub meta: FileMeta,
    pub holders: Vec<Holder>,
    /// One chunk (0-based) from the single holder, instead of the whole file.
    pub only: Option<u32>,
}

/// What a download tells the session.
#[derive(Debug)]
pub enum JobEvent {
    /// `register` finished reading and hashing the file.
    Described {
        name: FileName,
        result: Result<FileMeta, String>,
    },
    /// A chunk was verified and kept: announce it to the tracker now.
    Have { name: FileName, chunk: u32 },
    /// The download is over; show these lines and take commands again.
    Done { lines: Vec<String> },
}

/// Runs the download to its end, reporting through `jobs`.
pub async fn run(
    plan: Plan,
    lib: Arc<Library>,
    out: Printer,
    jobs: mpsc::UnboundedSender<JobEvent>,
) {
    let lines = drive(plan, lib, &out, &jobs).await;
    let _ = jobs.send(JobEvent::Done { lines });
}

struct Conn {
    jobs: mpsc::UnboundedSender<u32>,
    received: Arc<AtomicU64>,
}

async fn drive(
    plan: Plan,
    lib: Arc<Library>,
    out: &Printer,
    jobs: &mpsc::UnboundedSender<JobEvent>,
) -> Vec<String> {
    let meta = Arc::new(plan.meta);
    let name = meta.name().clone();
    let count = meta.chunk_count();
    let held = {
        let (lib, meta) = (lib.clone(), meta.clone());
        match tokio::task::spawn_blocking(move || lib.prepare(&meta)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return vec![format!("Error. {e}")],
            Err(e) => return vec![format!("Error. {e}")],
        }
    };
    let wanted: Vec<u32> = match plan.only {
        Some(c) if c >= count => {
            return vec![format!(
                "Error. There is no chunk {}: {name} has chunks 1 to {count}",
                c as u64 + 1
            )];
        }
        Some(c) if held.contains(&c) => {
            return vec![format!("You already have chunk {} of {name}", c + 1)];
        }
        Some(c) => vec![c],
        None => (0..count).filter(|c| !held.contains(c)).collect(),
    };
    if wanted.is_empty() {
        return finish(&lib, &name, &meta, "You already have").await;
    }
    let writer = match lib.part_file(&name) {
        Ok(f) => PartWriter::start(f),
        Err(e) => return vec![format!("Error. {e}")],
    };

    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64;
    let skip = (0..count).filter(|c| !wanted.contains(c));
    let mut sched = Scheduler::new(count, skip, rand::random(), Config::default());
    let mut addrs = HashMap::new();
    for h in &plan.holders {
        sched.add_peer(h.user.clone(), h.chunks.iter().copied());
        addrs.insert(h.user.clone(), (h.addr, h.ticket));
    }
    sched.start(now());

    let wanted_bytes: u64 = wanted
        .iter()
        .filter_map(|&c| meta.chunk_range(c))
        .map(|(_, l)| l)
        .sum();
    let mut progress = Progress::new(out, &name, wanted_bytes, plan.only.is_none());
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut conns: HashMap<UserName, Conn> = HashMap::new();
    let mut served: BTreeMap<UserName, u32> = BTreeMap::new();
    let mut why_not: HashMap<u32, String> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));

    let outcome = 'run: loop {
        while let Some(action) = sched.poll_action() {
            match action {
                Action::Fetch { peer, chunk } => {
                    let conn = conns.entry(peer.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let received = Arc::new(AtomicU64::new(0));
                        let (addr, ticket) = addrs[&peer];
                        let target = FetchTarget {
                            meta: meta.clone(),
                            writer: writer.clone(),
                            received: received.clone(),
                        };
                        tokio::spawn(fetch(
                            peer.clone(),
                            addr,
                            ticket,
                            target,
                            rx,
                            results_tx.clone(),
                        ));
                        progress.add_peer(&peer);
                        Conn { jobs: tx, received }
                    });
                    let _ = conn.jobs.send(chunk);
                }
                Action::DropPeer { peer } => {
                    conns.remove(&peer);
                }
                Action::Finished => break 'run Ok(()),
                Action::Stuck { missing } => break 'run Err(missing),
            }
        }
        let stall = sched
            .poll_timeout()
            .map(|ms| started + Duration::from_millis(ms));
        tokio::select! {
            Some(r) = results.recv() => match r {
                Fetched::Verified { peer, chunk } => {
                    let (l, n) = (lib.clone(), name.clone());
                    let saved = tokio::task::spawn_blocking(move || l.verified(&n, chunk)).await;
                    if let Ok(Err(e)) = saved {
                        out.line(format!("Error. {e}"));
                    }
                    let _ = jobs.send(JobEvent::Have { name: name.clone(), chunk });
                    *served.entry(peer.clone()).or_default() += 1;
                    progress.chunk_done(chunk, count, &peer);
                    sched.completed(&peer, chunk, now());
                }
                Fetched::Refused { peer, chunk } => {
                    why_not.insert(chunk, format!("{peer} does not have chunk {} of {name}", chunk + 1));
                    sched.failed(&peer, chunk, Failure::Refused, now());
                }
                Fetched::Corrupt { peer, chunk } => {
                    why_not.insert(chunk, format!("chunk {} of {name} from {peer} failed verification", chunk + 1));
                    progress.note(format!("Chunk {} of {name} from {peer} failed verification; not using {peer}", chunk + 1));
                    conns.remove(&peer);
                    sched.failed(&peer, chunk, Failure::Corrupt, now());
                }
                Fetched::Gone { peer, chunk, why } => {
                    if let Some(c) = chunk {
                        why_not.insert(c, format!("{peer} could not send chunk {} of {name}: {why}", c + 1));
                    } else {
                        for c in &wanted {
                            why_not.entry(*c).or_insert_with(|| format!("cannot reach {peer}: {why}"));
                        }
                    }
                    conns.remove(&peer);
                    sched.peer_gone(&peer, now());
                }
            },
            _ = sleep_until(stall) => sched.handle_timeout(now()),
            _ = ticker.tick() => {}
        }
        progress.update(
            conns
                .iter()
                .map(|(u, c)| (u, c.received.load(Ordering::Relaxed))),
        );
    };
    progress.clear();
    let from: Vec<&str> = served.keys().map(|u| u.as_str()).collect();
    match (outcome, plan.only) {
        (Ok(()), Some(c)) => {
            let mut lines = vec![format!(
                "Downloaded chunk {} of {name} from {}",
                c + 1,
                from.join(", ")
            )];
            if lib.have(&name).len() as u32 == count {
                lines.extend(finish(&lib, &name, &meta, "Completed").await);
            }
            lines
        }
        (Ok(()), None) => {
            let done = finish(&lib, &name, &meta, "Downloaded").await;
            if done.first().is_some_and(|l| l.starts_with("Error")) {
                return done;
            }
            vec![format!(
                "Downloaded {name} ({}) from {}",
                human_size(meta.size()),
                from.join(", ")
            )]
        }
        (Err(_), Some(c)) => {
            let user = plan
                .holders
                .first()
                .map(|h| h.user.to_string())
                .unwrap_or_default();
            vec![format!(
                "Error. {}",
                why_not
                    .remove(&c)
                    .unwrap_or_else(|| format!("{user} does not have chunk {} of {name}", c + 1))
            )]
        }
        (Err(missing), None) => {
            let kept = count as usize - missing.len();
            if plan.holders.is_empty() {
                return vec![format!(
                    "Error. {name} is not available from any online user"
                )];
            }
            let list: Vec<String> = missing.iter().map(|c| (c + 1).to_string()).collect();
            let mut lines = vec![format!(
                "Error. Could not download {name}: no reachable peer has chunk {} ({kept} of {count} chunks kept; run download {name} again later)",
                list.join(", ")
            )];
            lines.extend(
                missing
                    .iter()
                    .filter_map(|c| why_not.get(c))
                    .map(|w| format!("  {w}")),
            );
            lines
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Moves the finished file into place. On success, one line starting with `verb`; on
/// failure, an error line.
async fn finish(lib: &Arc<Library>, name: &FileName, meta: &FileMeta, verb: &str) -> Vec<String> {
    let (l, n) = (lib.clone(), name.clone());
    match tokio::task::spawn_blocking(move || l.finish(&n)).await {
        Ok(Ok(path)) => vec![format!(
            "{verb} {name} ({}) at {}",
            human_size(meta.size()),
            path.display()
        )],
        Ok(Err(e)) => vec![format!("Error. {e}")],
        Err(e) => vec![format!("Error. {e}")],
    }
}

/// Progress on screen: bars on a terminal, one line per verified chunk otherwise, nothing
/// for a single chunk (its result line says it all).
enum Progress {
    Quiet {
        out: Printer,
    },
    Lines {
        out: Printer,
        name: FileName,
    },
    Bars {
        out: Printer,
        multi: MultiProgress,
        total: ProgressBar,
        peers: HashMap<UserName, ProgressBar>,
    },
}

impl Progress {
    fn new(out: &Printer, name: &FileName, bytes: u64, whole: bool) -> Progress {
        if !whole {
            return Progress::Quiet { out: out.clone() };
        }
        if !std::io::stdout().is_terminal() {
            return Progress::Lines {
                out: out.clone(),
                name: name.clone(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{msg:>16} [{bar:32}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let total = multi.add(
            ProgressBar::new(bytes)
                .with_style(style)
                .with_message(name.to_string()),
        );
        // Lines printed while the bars are up (incoming messages) go above them.
        out.set_progress(Some(multi.clone()));
        Progress::Bars {
            out: out.clone(),
            multi,
            total,
            peers: HashMap::new(),
        }
    }

    fn add_peer(&mut self, peer: &UserName) {
        if let Progress::Bars { multi, peers, .. } = self {
            let style = ProgressStyle::with_template("{msg:>16}  {bytes:>10} {bytes_per_sec:>12}")
                .expect("valid template");
            let bar = multi.add(
                ProgressBar::no_length()
                    .with_style(style)
                    .with_message(format!("from {peer}")),
            );
            peers.insert(peer.clone(), bar);
        }
    }

    fn update<'a>(&mut self, received: impl Iterator<Item = (&'a UserName, u64)>) {
        if let Progress::Bars { total, peers, .. } = self {
            let mut sum = 0;
            for (u, n) in received {
                if let Some(b) = peers.get(u) {
                    b.set_position(n);
                }
                sum += n;
            }
            // Bytes of peers already dropped stay counted in the total.
            total.set_position(sum.max(total.position()));
        }
    }

    fn chunk_done(&mut self, chunk: u32, count: u32, peer: &UserName) {
        if let Progress::Lines { out, name } = self {
            out.line(format!(
                "Chunk {}/{count} of {name} verified (from {peer})",
                chunk + 1
            ));
        }
    }

    fn note(&self, line: String) {
        match self {
            Progress::Quiet { out } | Progress::Lines { out, .. } | Progress::Bars { out, .. } => {
                out.line(line)
            }
        }
    }

    fn clear(&mut self) {
        if let Progress::Bars {
            out,
            multi,
            total,
            peers,
        } = self
        {
            total.finish_and_clear();
            for b in peers.values() {
                b.finish_and_clear();
            }
            let _ = multi.clear();
            out.set_progress(None);
        }
    }
}
