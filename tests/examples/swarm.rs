//! Swarm benchmark: one file seeded by several real `peer` processes, downloaded by one
//! more, all on 127.0.0.1. Prints figures; never fails on speed.
//!
//! Run it with `bench/swarm [SIZE]` (builds release binaries first). SIZE: bytes, or with a
//! K/M/G suffix (binary units); default 1G.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::bench::*;
use harness::*;

const SEEDERS: [&str; 4] = ["hans", "yoda", "luke", "leia"];
const DOWNLOADER: &str = "vader";
const NAME: &str = "swarm.bin";

/// SHA-256 throughput of the implementation the peer uses, on `threads` threads at once.
fn sha_ceiling(threads: usize) -> f64 {
    let per_thread: usize = 256 << 20;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let data = vec![t as u8; 1 << 20];
                let mut h = peer::hash::Hasher::new();
                for _ in 0..per_thread >> 20 {
                    h.update(&data);
                }
                std::hint::black_box(h.finish());
            });
        }
    });
    mb_s((per_thread * threads) as u64, start.elapsed().as_secs_f64())
}

/// Raw loopback TCP throughput: one writer, one reader, 2 GiB.
fn tcp_ceiling() -> f64 {
    let total: u64 = 2 << 30;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let buf = vec![7u8; 256 << 10];
        let mut sent = 0;
        while sent < total {
            s.write_all(&buf).unwrap();
            sent += buf.len() as u64;
        }
    });
    let (mut r, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n as u64;
    }
    writer.join().unwrap();
    mb_s(total, start.elapsed().as_secs_f64())
}

/// Buffered writing of `size` bytes to a new file in `dir` (no fsync), then deleted: the
/// least a download's output costs. On this development machine (a VM) it is also the most
/// variable figure: pages the kernel has not used recently are slow to get (measured with
/// dd: 280-340 MB/s for a new 1-4 GiB file, 1.7 GB/s when the pages of a just-deleted one
/// are reused).
fn write_ceiling(dir: &std::path::Path, size: u64) -> f64 {
    let path = dir.join("write-ceiling.bin");
    let buf = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).unwrap();
    mb_s(size, secs)
}

/// One download's figures.
struct Outcome {
    secs: f64,
    done: String,
    ok: bool,
    dl_cpu: f64,
    dl_rss: u64,
    /// Per seeder: CPU seconds while serving, and what it says it uploaded.
    seeders: Vec<(f64, String)>,
}

/// Seeds `source` from [`SEEDERS`] and downloads it with [`DOWNLOADER`], every program
/// (tracker and peers) started with `extra` options; stops them all before returning.
fn swarm(source: &std::path::Path, want: &[u8; 32], extra: &[&str]) -> Outcome {
    let t = Tracker::start_args(60, 3600, extra);
    let long = Duration::from_secs(3600);
    let start_peer = |user: &str, dir: &std::path::Path| {
        let mut p = Peer::start_on(&Place::local(), t.addr, dir.to_owned(), None, extra);
        p.login(user);
        p
    };
    let mut seeders = Vec::new();
    for user in SEEDERS {
        let dir = tempfile::tempdir().unwrap();
        // Hard links: every seeder has the file without copying a gigabyte each.
        std::fs::hard_link(source, dir.path().join(NAME)).unwrap();
        let mut p = start_peer(user, dir.path());
        p.send(&format!("register {NAME}"));
        p.expect_within(&format!("{NAME} registered"), long);
        seeders.push((p, dir));
    }
    let seed_cpu: Vec<f64> = seeders
        .iter()
        .map(|(p, _)| cpu_seconds(p.pid()).unwrap_or(0.0))
        .collect();

    let dl_dir = tempfile::tempdir().unwrap();
    let mut dl = start_peer(DOWNLOADER, dl_dir.path());
    let cpu_before = cpu_seconds(dl.pid()).unwrap_or(0.0);
    let start = Instant::now();
    dl.send(&format!("download {NAME}"));
    let done = dl.expect_within(&format!("Downloaded {NAME}"), long);
    let secs = start.elapsed().as_secs_f64();
    let dl_cpu = cpu_seconds(dl.pid()).unwrap_or(0.0) - cpu_before;
    let dl_rss = peak_rss(dl.pid()).unwrap_or(0);
    let served_cpu: Vec<f64> = seeders
        .iter()
        .zip(&seed_cpu)
        .map(|((p, _), before)| cpu_seconds(p.pid()).unwrap_or(0.0) - before)
        .collect();
    let ok = &sha256_file(&dl_dir.path().join(NAME)) == want;
    // What each seeder says it uploaded.
    let uploaded: Vec<String> = seeders
        .iter_mut()
        .map(|(p, _)| {
            let line = p
                .send_until("transfers", &["uploaded in all"])
                .pop()
                .unwrap_or_default();
            let total = line.rsplit('(').next().unwrap_or_default();
            total.trim_end_matches(" uploaded in all)").to_string()
        })
        .collect();
    Outcome {
        secs,
        done,
        ok,
        dl_cpu,
        dl_rss,
        seeders: served_cpu.into_iter().zip(uploaded).collect(),
    }
}

fn report(label: &str, o: &Outcome, size: u64) {
    println!();
    println!("{label}:");
    println!("  result:        {}", o.done);
    println!(
        "  sha-256 check: {}",
        if o.ok {
            "ok (matches the source file)"
        } else {
            "MISMATCH"
        }
    );
    println!(
        "  download:      {:.2} s, {:.0} MB/s",
        o.secs,
        mb_s(size, o.secs)
    );
    println!(
        "  downloader:    {:.2} CPU s, peak RSS {:.1} MiB",
        o.dl_cpu,
        o.dl_rss as f64 / (1 << 20) as f64
    );
    for (user, (cpu, sent)) in SEEDERS.iter().zip(&o.seeders) {
        println!("  seeder {user:<6} uploaded {sent:>10}, {cpu:.2} CPU s");
    }
}

fn main() {
    let size = std::env::args()
        .nth(1)
        .map(|s| parse_size(&s).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or(1 << 30);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "swarm benchmark: {size} bytes, {} seeders, 1 downloader, 10 chunks, {cores} cores",
        SEEDERS.len()
    );

    let sha1 = sha_ceiling(1);
    let sha_all = sha_ceiling(cores);
    let tcp = tcp_ceiling();

    let work = tempfile::tempdir().unwrap();
    let write = write_ceiling(work.path(), size);
    let source = work.path().join(NAME);
    let want = make_file(&source, size, 0);

    // In clear first, then encrypted (TLS to the tracker, Noise between peers): what
    // encryption costs, in the same run.
    let clear = swarm(&source, &want, &["--insecure-plaintext"]);
    report("in clear (--insecure-plaintext)", &clear, size);
    let enc = swarm(&source, &want, &[]);
    report("encrypted (TLS, Noise)", &enc, size);
    println!(
        "encrypted / in clear:  {:.2}x the throughput",
        clear.secs / enc.secs
    );
    let (secs, ok) = (enc.secs, clear.ok && enc.ok);
    println!();
    println!("ceilings on this machine:");
    let ours = mb_s(size, secs);
    for (label, ceiling) in [
        ("SHA-256, 1 core:".to_string(), sha1),
        (format!("SHA-256, {cores} cores:"), sha_all),
        ("loopback TCP:".to_string(), tcp),
        ("file write:".to_string(), write),
    ] {
        println!(
            "  {label:<21} {ceiling:.0} MB/s   (download at {:.2}x)",
            ours / ceiling
        );
    }
    println!();
    let local = BtHost {
        place: Place::local(),
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let seeds = vec![local.clone(); SEEDERS.len()];
    let aria = aria2c_swarm(
        &source,
        22,
        &local,
        &seeds,
        std::slice::from_ref(&local),
        Duration::from_secs(1800),
    );
    match aria.map(|t| t[0]) {
        Ok(aria) => println!(
            "aria2c swarm:         {aria:.2} s, {:.0} MB/s   (ours / aria2c throughput: {:.2}x)",
            mb_s(size, aria),
            aria / secs
        ),
        Err(why) => println!("aria2c swarm:         skipped: {why}"),
    }
    if !ok {
        std::process::exit(1);
    }
}
