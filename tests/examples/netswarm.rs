//! Swarm benchmark on shaped links: the network lab (tests/src/lab.rs) with the real
//! `tracker` and `peer` binaries, each case side by side with aria2c + opentracker on the
//! same topology when they are installed. Prints figures; never fails on speed.
//!
//! Run it with `bench/netswarm [CASE...] [--no-aria2c | --only-aria2c] [--timeline]` (builds release
//! binaries first; needs root). CASE: 1 to 4 (default: all). `bench/netswarm --nat` instead
//! measures users behind NAT routers: private chat between every pair of kinds, and a
//! download with the share of bytes per path (direct, reversed, punched, relayed).
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

/// The kinds of user `--nat` measures.
const KINDS: [(&str, Option<Nat>); 3] = [
    ("public", None),
    ("cone", Some(Nat::Cone)),
    ("symmetric", Some(Nat::Symmetric)),
];

/// A lab with a tracker on host 0 and one host per entry of `kinds` (index into
/// [`KINDS`]) on `link`: the hosts' lab indices.
fn nat_lab(kinds: &[usize], links: &[Link]) -> Result<(Lab, Vec<usize>), String> {
    let publics: Vec<Link> = kinds
        .iter()
        .zip(links)
        .filter(|(k, _)| KINDS[**k].1.is_none())
        .map(|(_, l)| *l)
        .collect();
    let mut all = vec![Link::FREE];
    all.extend(&publics);
    let mut lab = Lab::new(&all)?;
    let mut next = 1;
    let mut hosts = Vec::new();
    for (k, l) in kinds.iter().zip(links) {
        match KINDS[*k].1 {
            None => {
                hosts.push(next);
                next += 1;
            }
            Some(nat) => hosts.push(lab.add_behind_nat(*l, nat)?),
        }
    }
    Ok((lab, hosts))
}

fn nat_peer(lab: &Lab, host: usize, t: &Tracker, i: usize) -> Peer {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut p = Peer::start_on(&lab.place(host), t.addr, dir, None, &[]);
    p.login_as(&user(i), &format!("pw{i}"));
    p.reachability();
    p
}

/// `--nat`: private chat between every ordered pair of kinds of user (time until both
/// sides say it is open), then a download by one user of each kind from holders of each
/// kind, with the bytes each path carried.
fn run_nat() {
    println!("users behind NAT on the network lab (nftables masquerade routers; cone keeps ports, symmetric is fully-random)");
    println!();
    println!("private chat: startprivate until both sides say it is open, 5 times per ordered pair (ms: median / max; the lab's links add no delay)");
    let kinds: Vec<usize> = vec![0, 0, 1, 1, 2, 2];
    let (lab, hosts) = match nat_lab(&kinds, &vec![Link::FREE; kinds.len()]) {
        Ok(l) => l,
        Err(e) => {
            println!("  could not build the lab: {e}");
            std::process::exit(1);
        }
    };
    let t = Tracker::start_quiet_on(lab.place(0), lab.ip(0), &credentials(kinds.len() + 6), 3600);
    let mut users: Vec<Peer> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| nat_peer(&lab, *h, &t, i + 1))
        .collect();
    let mut bad = false;
    for (a, (from, _)) in KINDS.iter().enumerate() {
        for (b, (to, _)) in KINDS.iter().enumerate() {
            // Two users of each kind: a kind's pair with itself uses both.
            let (x, y) = (2 * a, 2 * b + usize::from(a == b));
            let mut times = Vec::new();
            let mut relayed = false;
            for _ in 0..5 {
                let (px, py) = if x < y {
                    let (l, r) = users.split_at_mut(y);
                    (&mut l[x], &mut r[0])
                } else {
                    let (l, r) = users.split_at_mut(x);
                    (&mut r[0], &mut l[y])
                };
                // startprivate is rate-limited per user (a few a second): pace the tries.
                std::thread::sleep(Duration::from_millis(1100));
                let start = Instant::now();
                px.send(&format!("startprivate {}", py.name));
                let said = px.expect_any(
                    &["Start private messaging with", "Error."],
                    Duration::from_secs(30),
                );
                let at_x = px.last_line_at().unwrap_or_else(Instant::now);
                if said.starts_with("Error.") {
                    println!("  {from} -> {to}: {said}");
                    bad = true;
                    break;
                }
                relayed |= said.contains("relay");
                py.expect_within(
                    "started private messaging with you",
                    Duration::from_secs(30),
                );
                let at_y = py.last_line_at().unwrap_or_else(Instant::now);
                times.push(at_x.max(at_y).duration_since(start).as_secs_f64() * 1000.0);
                px.send(&format!("stopprivate {}", py.name));
                py.expect("stopped private messaging");
                px.expect("Stopped private messaging");
            }
            if times.is_empty() {
                continue;
            }
            times.sort_by(f64::total_cmp);
            println!(
                "  {from:>9} -> {to:<9}  {:6.0} / {:6.0}{}",
                times[times.len() / 2],
                times[times.len() - 1],
                if relayed { "   (relayed)" } else { "" }
            );
        }
    }
    drop(users);
    drop(t);
    drop(lab);

    println!();
    let size: u64 = 32 << 20;
    println!("download: 32 MiB in 10 chunks from 3 holders (one of each kind, 40 Mbit up) by 3 users (one of each kind, 40 up / 400 down), starting together");
    let kinds: Vec<usize> = vec![0, 1, 2, 0, 1, 2];
    let mut links = vec![Link::up_mbit(40.0); 3];
    links.extend([Link::mbit(40.0, 400.0); 3]);
    let (lab, hosts) = match nat_lab(&kinds, &links) {
        Ok(l) => l,
        Err(e) => {
            println!("  could not build the lab: {e}");
            std::process::exit(1);
        }
    };
    let t = Tracker::start_quiet_on(lab.place(0), lab.ip(0), &credentials(kinds.len()), 3600);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join(NAME);
    let want = make_file(&source, size, 9);
    let mut seeds = Vec::new();
    for (i, h) in hosts.iter().take(3).enumerate() {
        let mut p = nat_peer(&lab, *h, &t, i + 1);
        std::fs::copy(&source, p.dir.join(NAME)).unwrap();
        p.send(&format!("register {NAME} 10"));
        p.expect_within(&format!("{NAME} registered"), Duration::from_secs(120));
        seeds.push(p);
    }
    let mut leechers: Vec<Peer> = hosts
        .iter()
        .enumerate()
        .skip(3)
        .map(|(i, h)| nat_peer(&lab, *h, &t, i + 1))
        .collect();
    let start = Instant::now();
    for p in &mut leechers {
        p.send(&format!("download {NAME}"));
    }
    let mut total: std::collections::BTreeMap<String, f64> = Default::default();
    for (i, p) in leechers.iter_mut().enumerate() {
        let line = p.expect_any(
            &[&format!("Downloaded {NAME} ("), "Error."],
            Duration::from_secs(600),
        );
        let at = p.last_line_at().unwrap_or_else(Instant::now);
        let said = p.sync();
        if line.starts_with("Error.") || sha256_file(&p.dir.join(NAME)) != want {
            println!("  {:>9}  failed: {line}", KINDS[kinds[i + 3]].0);
            bad = true;
            continue;
        }
        let paths = said
            .iter()
            .find_map(|l| l.trim().strip_prefix("(paths: "))
            .map(|l| l.trim_end_matches(')').to_string())
            .unwrap_or_else(|| "direct 32.0 MiB".into());
        for part in paths.split(", ") {
            if let Some((path, amount)) = part.split_once(' ') {
                *total.entry(path.to_string()).or_default() += mib(amount);
            }
        }
        println!(
            "  {:>9}  {:5.1} s   {paths}   (from {})",
            KINDS[kinds[i + 3]].0,
            at.duration_since(start).as_secs_f64(),
            line.split(" from ").nth(1).unwrap_or("?")
        );
    }
    let all: f64 = total.values().sum();
    let shares: Vec<String> = total
        .iter()
        .map(|(p, n)| format!("{p} {:.1}%", n / all * 100.0))
        .collect();
    println!(
        "  share of bytes per path, all downloads: {}",
        shares.join(", ")
    );
    println!("  (the relay's cap: 512 KiB/s per user, the tracker's default)");
    for p in leechers.iter().chain(&seeds) {
        let _ = std::fs::remove_dir_all(&p.dir);
    }
    if bad {
        std::process::exit(1);
    }
}

/// `6.0 MiB` → 6.0 (MiB).
fn mib(s: &str) -> f64 {
    let (n, unit) = s.split_once(' ').unwrap_or((s, "B"));
    let n: f64 = n.parse().unwrap_or(0.0);
    match unit {
        "GiB" => n * 1024.0,
        "MiB" => n,
        "KiB" => n / 1024.0,
        _ => n / (1024.0 * 1024.0),
    }
}

fn main() {
    lab::remove_on_signal();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--nat") {
        run_nat();
        return;
    }
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
