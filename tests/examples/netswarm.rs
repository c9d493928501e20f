//! Swarm benchmark on shaped links: the network lab (tests/src/lab.rs) with the real
//! `tracker` and `peer` binaries, each case side by side with aria2c + opentracker on the
//! same topology when they are installed. Prints figures; never fails on speed.
//!
//! Run it with `bench/netswarm [CASE...] [--no-aria2c | --only-aria2c] [--timeline]` (builds release
//! binaries first; needs root). CASE: 1 to 4 (default: all).
//!
//! "Ideal" is the lower bound on the time for every downloader to finish: for one
//! downloader the file size over the seeders' summed uplinks; in general the minimum
//! distribution time of Kumar & Ross (2006), max(F/u_seeds, F/d_min, N·F/(u_seeds + Σu)).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::bench::*;
use harness::*;

const NAME: &str = "shared.bin";
/// `--timeline`: print what the seeds sent and the leechers got every quarter second.
static TIMELINE: AtomicBool = AtomicBool::new(false);
/// BitTorrent piece size for the aria2c runs: 256 KiB, mktorrent's default.
const PIECE_LOG2: u32 = 18;

struct Case {
    title: &'static str,
    size: u64,
    chunks: u32,
    seeds: Vec<Link>,
    leechers: Vec<Link>,
    /// The last seed's copy rots in these chunks (0-based) after it registered: one byte
    /// of every block changed, size and modification time kept.
    rotted: Vec<u32>,
}

impl Case {
    fn all() -> Vec<Case> {
        vec![
            Case {
                title: "one slow seeder among four: 64 MiB in 10 chunks, seeders up 100/100/100/4 Mbit",
                size: 64 << 20,
                chunks: 10,
                seeds: vec![
                    Link::up_mbit(100.0),
                    Link::up_mbit(100.0),
                    Link::up_mbit(100.0),
                    Link::up_mbit(4.0),
                ],
                leechers: vec![Link::FREE],
                rotted: vec![],
            },
            Case {
                title: "flash crowd: 32 MiB in 10 chunks, 1 seed up 40 Mbit, 12 leechers 40 up / 400 down, starting together",
                size: 32 << 20,
                chunks: 10,
                seeds: vec![Link::up_mbit(40.0)],
                leechers: vec![Link::mbit(40.0, 400.0); 12],
                rotted: vec![],
            },
            Case {
                title: "slow links, big chunks: 32 MiB in 2 chunks, 2 seeders up 2 Mbit",
                size: 32 << 20,
                chunks: 2,
                seeds: vec![Link::up_mbit(2.0); 2],
                leechers: vec![Link::FREE],
                rotted: vec![],
            },
            Case {
                title: "a seeder's copy rotted in two chunks: 64 MiB in 10 chunks, 4 seeders up 40 Mbit, the last one's chunks 3 and 7 corrupt on disk",
                size: 64 << 20,
                chunks: 10,
                seeds: vec![Link::up_mbit(40.0); 4],
                leechers: vec![Link::FREE],
                rotted: vec![2, 6],
            },
        ]
    }

    /// Kumar & Ross's lower bound, in seconds.
    fn ideal(&self) -> f64 {
        let f = self.size as f64 * 8.0;
        let bits = |r: Option<u64>| r.map(|b| b as f64).unwrap_or(f64::INFINITY);
        let u_seeds: f64 = self.seeds.iter().map(|l| bits(l.up)).sum();
        let u_leech: f64 = self.leechers.iter().map(|l| bits(l.up)).sum();
        let d_min = self
            .leechers
            .iter()
            .map(|l| bits(l.down))
            .fold(f64::INFINITY, f64::min);
        let n = self.leechers.len() as f64;
        (f / u_seeds)
            .max(f / d_min)
            .max(n * f / (u_seeds + u_leech))
    }

    fn links(&self) -> Vec<Link> {
        let mut all = vec![Link::FREE]; // host 0: the tracker
        all.extend(&self.seeds);
        all.extend(&self.leechers);
        all
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs_f64((self.ideal() * 20.0).max(120.0))
    }
}

/// What one run of a case measured.
struct Outcome {
    /// What the downloaders said they fetched again after it failed verification.
    refetched: Vec<String>,
    /// Seconds to complete, per leecher; `None` for one that failed.
    done: Vec<Option<f64>>,
    /// Bytes the seeds sent (IP, headers included) over the file size.
    seed_upload: f64,
    failures: Vec<String>,
}

fn user(i: usize) -> String {
    format!("u{i:02}")
}

fn credentials(n: usize) -> String {
    (1..=n).map(|i| format!("{} pw{i}\n", user(i))).collect()
}

fn run_ours(case: &Case, source: &Path, want: [u8; 32]) -> Result<Outcome, String> {
    let lab = Lab::new(&case.links())?;
    let hosts = lab.len();
    let creds = credentials(hosts - 1);
    let t = Tracker::start_quiet_on(lab.place(0), lab.ip(0), &creds, 3600);
    let long = Duration::from_secs(3600);
    let mut seeds = Vec::new();
    let mut dirs = Vec::new();
    for host in 1..=case.seeds.len() {
        let dir = tempfile::tempdir().unwrap();
        let rots = host == case.seeds.len() && !case.rotted.is_empty();
        if rots {
            std::fs::copy(source, dir.path().join(NAME)).unwrap();
        } else {
            std::fs::hard_link(source, dir.path().join(NAME)).unwrap();
        }
        let mut p = Peer::start_on(&lab.place(host), t.addr, dir.path().to_owned(), None, &[]);
        p.login_as(&user(host), &format!("pw{host}"));
        p.send(&format!("register {NAME} {}", case.chunks));
        p.expect_within(&format!("{NAME} registered"), long);
        if rots {
            let chunk = case.size.div_ceil(case.chunks as u64);
            for &c in &case.rotted {
                let from = c as u64 * chunk;
                rot(&dir.path().join(NAME), from, from + chunk);
            }
        }
        seeds.push(p);
        dirs.push(dir);
    }
    let mut leechers = Vec::new();
    for host in case.seeds.len() + 1..hosts {
        let mut p = Peer::start_on(
            &lab.place(host),
            t.addr,
            tempfile::tempdir().unwrap().keep(),
            None,
            &[],
        );
        p.login_as(&user(host), &format!("pw{host}"));
        leechers.push(p);
    }
    let seed_hosts = 1..=case.seeds.len();
    let sent = |lab: &Lab| -> u64 { seed_hosts.clone().map(|h| lab.counters(h).0).sum() };
    let before = sent(&lab);
    let start = Instant::now();
    for p in &mut leechers {
        p.send(&format!("download {NAME}"));
    }
    let mut done = Vec::new();
    let mut failures = Vec::new();
    let mut refetched = Vec::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        if TIMELINE.load(Ordering::Relaxed) {
            let (lab, stop, seeds_n) = (&lab, &stop, case.seeds.len());
            let size = case.size as f64;
            s.spawn(move || {
                let base = lab.all_counters();
                let mut next = Duration::ZERO;
                println!(
                    "  timeline   t(s)  seeds sent  leechers got (min / mean / max), in files"
                );
                while !stop.load(Ordering::Relaxed) && next < Duration::from_secs(600) {
                    next += Duration::from_millis(250);
                    std::thread::sleep(next.saturating_sub(start.elapsed()));
                    let now = lab.all_counters();
                    let d = |h: usize, f: fn(&(u64, u64)) -> u64| {
                        (f(&now[h]) - f(&base[h])) as f64 / size
                    };
                    let sent: f64 = (1..=seeds_n).map(|h| d(h, |c| c.0)).sum();
                    let got: Vec<f64> = (seeds_n + 1..now.len()).map(|h| d(h, |c| c.1)).collect();
                    let mean = got.iter().sum::<f64>() / got.len() as f64;
                    let min = got.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = got.iter().copied().fold(0.0, f64::max);
                    println!(
                        "             {:5.2}  {sent:10.3}  {min:.3} / {mean:.3} / {max:.3}",
                        start.elapsed().as_secs_f64()
                    );
                }
            });
        }
        for p in &mut leechers {
            let left = case.deadline().saturating_sub(start.elapsed());
            let line = p.expect_any(&[&format!("Downloaded {NAME} ("), "Error."], left);
            let at = p.last_line_at().unwrap_or_else(Instant::now);
            if !case.rotted.is_empty() {
                let said = p.sync();
                refetched.extend(
                    said.iter()
                        .filter(|l| {
                            l.contains("fetched again") || l.contains("failed verification")
                        })
                        .map(|l| format!("{}: {}", p.name, l.trim())),
                );
            }
            if line.starts_with("Error.") || sha256_file(&p.dir.join(NAME)) != want {
                failures.push(format!("{}: {line}", p.name));
                done.push(None);
            } else {
                done.push(Some(at.duration_since(start).as_secs_f64()));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let seed_upload = (sent(&lab) - before) as f64 / case.size as f64;
    for p in &leechers {
        let _ = std::fs::remove_dir_all(&p.dir);
    }
    Ok(Outcome {
        done,
        seed_upload,
        failures,
        refetched,
    })
}

fn run_aria2c(case: &Case, source: &Path) -> Result<Outcome, String> {
    let lab = Lab::new(&case.links())?;
    let host = |i: usize| BtHost {
        place: lab.place(i),
        ip: lab.ip(i).into(),
    };
    let seeds: Vec<BtHost> = (1..=case.seeds.len()).map(host).collect();
    let leechers: Vec<BtHost> = (case.seeds.len() + 1..lab.len()).map(host).collect();
    let sent = |lab: &Lab| -> u64 { (1..=case.seeds.len()).map(|h| lab.counters(h).0).sum() };
    let before = sent(&lab);
    let times = aria2c_swarm(
        source,
        PIECE_LOG2,
        &host(0),
        &seeds,
        &leechers,
        case.deadline(),
    )?;
    Ok(Outcome {
        done: times.into_iter().map(Some).collect(),
        seed_upload: (sent(&lab) - before) as f64 / case.size as f64,
        failures: Vec::new(),
        refetched: Vec::new(),
    })
}

fn report(label: &str, ideal: f64, out: &Outcome) {
    let ok: Vec<f64> = out.done.iter().flatten().copied().collect();
    let n = out.done.len();
    let last = ok.iter().copied().fold(0.0, f64::max);
    let first = ok.iter().copied().fold(f64::INFINITY, f64::min);
    let timing = if ok.is_empty() {
        "no download finished".to_string()
    } else if n == 1 {
        format!("{last:.1} s")
    } else {
        format!("last done {last:.1} s (first {first:.1} s)")
    };
    let failed = n - ok.len();
    let status = if failed == 0 {
        String::new()
    } else {
        format!("; {failed} of {n} FAILED")
    };
    let ratio = if ok.is_empty() {
        String::new()
    } else {
        format!(", {:.2}x ideal", last / ideal)
    };
    println!(
        "  {label:<10} {timing}{ratio}; seeds sent {:.2}x the file{status}",
        out.seed_upload
    );
    for f in &out.failures {
        println!("             {f}");
    }
    for r in &out.refetched {
        println!("             {r}");
    }
}

fn main() {
    lab::remove_on_signal();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let aria = !args.iter().any(|a| a == "--no-aria2c");
    TIMELINE.store(args.iter().any(|a| a == "--timeline"), Ordering::Relaxed);
    let ours = !args.iter().any(|a| a == "--only-aria2c");
    let picked: Vec<usize> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| {
            a.parse::<usize>()
                .ok()
                .filter(|n| (1..=4).contains(n))
                .unwrap_or_else(|| {
                    eprintln!("usage: bench/netswarm [1|2|3|4]... [--no-aria2c | --only-aria2c] [--timeline]");
                    std::process::exit(2)
                })
        })
        .collect();
    println!("swarm benchmark on the network lab (tbf-shaped links, one namespace per host)");
    let work = tempfile::tempdir().unwrap();
    let mut bad = false;
    for (i, case) in Case::all().into_iter().enumerate() {
        if !picked.is_empty() && !picked.contains(&(i + 1)) {
            continue;
        }
        let ideal = case.ideal();
        println!();
        println!("case {}: {}", i + 1, case.title);
        println!("  ideal      {ideal:.1} s");
        let source = work.path().join(NAME);
        let want = make_file(&source, case.size, i as u64);
        if ours {
            match run_ours(&case, &source, want) {
                Ok(out) => {
                    bad |= !out.failures.is_empty();
                    report("swarmchat", ideal, &out);
                }
                Err(e) => {
                    println!("  swarmchat  could not run: {e}");
                    bad = true;
                }
            }
        }
        if aria && !case.rotted.is_empty() {
            // aria2c's seeders would share one good copy: not the same case.
            println!("  aria2c     not run: its seeders cannot be given a rotted copy");
        } else if aria {
            match run_aria2c(&case, &source) {
                Ok(out) => report("aria2c", ideal, &out),
                Err(e) => println!("  aria2c     skipped: {e}"),
            }
        }
        std::fs::remove_file(&source).unwrap();
    }
    if bad {
        std::process::exit(1);
    }
}
