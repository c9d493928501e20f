//! What the benchmarks share: sizes, test files, and a real BitTorrent swarm (aria2c with
//! opentracker) to measure ours against on the same machine or the same lab topology.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::lab::Place;

/// Bytes from a size with an optional K/M/G suffix (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?}: a size is a number with an optional K/M/G suffix"))
}

pub fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Writes `size` pseudo-random (incompressible) bytes to `path`, returning their SHA-256.
pub fn make_file(path: &Path, size: u64, seed: u64) -> [u8; 32] {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    hasher.finalize().into()
}

/// SHA-256 of a file's contents (all zeros if it cannot be read).
pub fn sha256_file(path: &Path) -> [u8; 32] {
    let Ok(mut f) = std::fs::File::open(path) else {
        return [0; 32];
    };
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return hasher.finalize().into(),
            Ok(n) => hasher.update(&buf[..n]),
        }
    }
}

/// A port free right now on this machine (the OS picks it; it is released for the tool to
/// take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Kills the child it holds when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One machine of a BitTorrent swarm: where its processes run and its address there.
#[derive(Clone)]
pub struct BtHost {
    pub place: Place,
    pub ip: IpAddr,
}

/// A real BitTorrent swarm for `source`: opentracker on `tracker`, an aria2c seeder on each
/// of `seeds` (seeding until the end), then an aria2c downloader on each of `leechers`,
/// all started at once; DHT, PEX and LPD off, so peers are found through the tracker
/// only. Leechers keep seeding once complete, as ours do. Pieces are 2^`piece_log2`
/// bytes. Returns each leecher's seconds to a complete, identical file, or why it could
/// not run.
pub fn aria2c_swarm(
    source: &Path,
    piece_log2: u32,
    tracker: &BtHost,
    seeds: &[BtHost],
    leechers: &[BtHost],
    deadline: Duration,
) -> Result<Vec<f64>, String> {
    let missing: Vec<&str> = ["aria2c", "mktorrent", "opentracker"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not installed (apt-get install aria2 mktorrent opentracker)",
            missing.join(", ")
        ));
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let port = free_port();
    let announce = format!("http://{}:{port}/announce", tracker.ip);
    let torrent = w.join("swarm.torrent");
    let ok = Command::new("mktorrent")
        .args(["-a", &announce, "-l", &piece_log2.to_string(), "-o"])
        .arg(&torrent)
        .arg(source)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !ok.success() {
        return Err("mktorrent failed".into());
    }
    let info = Command::new("aria2c")
        .arg("-S")
        .arg(&torrent)
        .output()
        .map_err(|e| e.to_string())?;
    let hash = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(str::to_owned))
        .ok_or("no info hash from aria2c -S")?;
    // Debian's opentracker only serves whitelisted torrents; it chroots into -d first.
    let ot = w.join("ot");
    std::fs::create_dir(&ot).unwrap();
    std::fs::write(ot.join("whitelist.txt"), format!("{hash}\n")).unwrap();
    let p = port.to_string();
    let ip = tracker.ip.to_string();
    let _tracker = Proc(
        tracker
            .place
            .command("opentracker")
            .args(["-i", &ip, "-p", &p, "-P", &p, "-w", "/whitelist.txt", "-d"])
            .arg(&ot)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    // aria2c runs this once a download is complete; the file it touches is how we see it.
    let hook = w.join("done.sh");
    std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.complete\"\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let common = [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--console-log-level=error",
        "--summary-interval=0",
        "--file-allocation=none",
        "--seed-ratio=0.0",
        "-q",
    ];
    let spawn = |host: &BtHost, dir: &Path, extra: &[&str]| -> Result<Proc, String> {
        Ok(Proc(
            host.place
                .command("aria2c")
                .args(common)
                .args(extra)
                .arg(format!("--listen-port={}", free_port()))
                .arg(format!("--dir={}", dir.display()))
                .arg(&torrent)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?,
        ))
    };
    let file_name = source.file_name().unwrap();
    let mut procs = Vec::new();
    for (i, host) in seeds.iter().enumerate() {
        let dir = w.join(format!("seed{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::hard_link(source, dir.join(file_name)).unwrap();
        procs.push(spawn(host, &dir, &["--bt-seed-unverified=true"])?);
    }
    // Let the seeders announce before the downloaders ask for peers.
    std::thread::sleep(Duration::from_millis(1500));
    // Called when a download is complete, before it starts seeding (`--on-download-complete`
    // would wait for the seeding to end).
    let on_done = format!("--on-bt-download-complete={}", hook.display());
    let mut dirs: Vec<PathBuf> = Vec::new();
    let start = Instant::now();
    for (i, host) in leechers.iter().enumerate() {
        let dir = w.join(format!("leech{i}"));
        std::fs::create_dir(&dir).unwrap();
        procs.push(spawn(host, &dir, &[&on_done])?);
        dirs.push(dir);
    }
    let mut done: Vec<Option<f64>> = vec![None; dirs.len()];
    while done.iter().any(Option::is_none) {
        if start.elapsed() > deadline {
            return Err(format!(
                "{} of {} aria2c downloads did not finish in {deadline:?}",
                done.iter().filter(|d| d.is_none()).count(),
                dirs.len()
            ));
        }
        for (d, dir) in done.iter_mut().zip(&dirs) {
            let mut marker = dir.join(file_name).into_os_string();
            marker.push(".complete");
            if d.is_none() && Path::new(&marker).exists() {
                *d = Some(start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let want = sha256_file(source);
    for dir in &dirs {
        if sha256_file(&dir.join(file_name)) != want {
            return Err("an aria2c download differs from the source".into());
        }
    }
    Ok(done.into_iter().map(|d| d.unwrap_or_default()).collect())
}

/// A disk that rotted under a seeder: changes one byte in every 256 KiB block of the byte
/// range `from..to` of `path`, keeping its size and modification time (all a client checks
/// without reading the file).
pub fn rot(path: &Path, from: u64, to: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let meta = f.metadata().unwrap();
    let (mtime, to) = (meta.modified().unwrap(), to.min(meta.len()));
    let mut at = from + 7;
    while at < to {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[!b[0]], at).unwrap();
        at += 256 * 1024;
    }
    f.set_modified(mtime).unwrap();
}
