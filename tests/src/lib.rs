//! Harness for the end-to-end tests and benchmarks: starts the real `tracker` and `peer`
//! binaries on 127.0.0.1 with OS-picked ports and temp dirs, reads their output on
//! threads, and kills every process it started (by PID, on drop). Every wait is bounded by
//! a deadline.

pub mod bench;
pub mod lab;
pub mod servers;
pub mod service;
pub mod tty;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use lab::{Lab, Link, Nat, Place};

/// Longest wait for any expected line; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// The fixture users and passwords.
pub const CREDENTIALS: &str = include_str!("../../fixtures/credentials.txt");

pub fn password(user: &str) -> &'static str {
    CREDENTIALS
        .lines()
        .find_map(|l| l.strip_prefix(user).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{user} is not a fixture user"))
}

/// A built binary of this workspace, in the profile directory (`target/debug`,
/// `target/release`) of the running test or example executable
/// (`target/<profile>/deps/<test>` or `target/<profile>/examples/<example>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as the README's test command does)",
        path.display()
    );
    path
}

/// Reads a child's output lines on a thread into a channel, keeping a transcript.
struct Lines {
    rx: Receiver<(Instant, String)>,
    transcript: Arc<Mutex<Vec<String>>>,
    /// When the line last received was read from the child.
    last_at: std::cell::Cell<Option<Instant>>,
}

impl Lines {
    fn spawn(r: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let t = transcript.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                t.lock().unwrap().push(line.clone());
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            transcript,
            last_at: Default::default(),
        }
    }

    fn recv_timeout(&self, wait: Duration) -> Result<String, RecvTimeoutError> {
        let (at, line) = self.rx.recv_timeout(wait)?;
        self.last_at.set(Some(at));
        Ok(line)
    }

    fn transcript(&self) -> String {
        self.transcript.lock().unwrap().join("\n")
    }
}

pub struct Tracker {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr: Lines,
    args: (u64, u64),
    extra: Vec<String>,
}

impl Tracker {
    /// A tracker on the fixture credentials with the given block duration and timeout (s).
    pub fn start(block_duration: u64, timeout: u64) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), CREDENTIALS).unwrap();
        Self::start_in(dir, block_duration, timeout)
    }

    /// A tracker for benchmarks: `credentials` as given, logging only what it must (its
    /// port) so logging costs nothing measurable.
    pub fn start_quiet(credentials: &str, timeout: u64) -> Tracker {
        Self::start_quiet_on(Place::local(), Ipv4Addr::LOCALHOST, credentials, timeout)
    }

    /// `start_quiet` with more command-line options (`--insecure-plaintext`).
    pub fn start_quiet_with(credentials: &str, timeout: u64, extra: &[&str]) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), credentials).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let local = Ipv4Addr::LOCALHOST.into();
        Self::launch_with(
            Place::local(),
            local,
            dir,
            (60, timeout),
            "tracker=info",
            extra,
        )
    }

    /// `start_quiet` on a lab host whose address is `ip`.
    pub fn start_quiet_on(place: Place, ip: Ipv4Addr, credentials: &str, timeout: u64) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), credentials).unwrap();
        Self::launch(place, ip.into(), dir, 60, timeout, "tracker=info")
    }

    /// A tracker on the fixture credentials on a lab host whose address is `ip`.
    pub fn start_on(place: Place, ip: Ipv4Addr, block_duration: u64, timeout: u64) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), CREDENTIALS).unwrap();
        Self::launch(place, ip.into(), dir, block_duration, timeout, "debug")
    }

    /// `start_on`, with more command-line options.
    pub fn start_on_args(place: Place, ip: Ipv4Addr, extra: &[&str]) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), CREDENTIALS).unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Self::launch_with(place, ip.into(), dir, (60, 600), "debug", extra)
    }

    /// Starts (or restarts) a tracker whose credentials and state live in `dir`.
    pub fn start_in(dir: tempfile::TempDir, block_duration: u64, timeout: u64) -> Tracker {
        let local = Ipv4Addr::LOCALHOST.into();
        Self::launch(Place::local(), local, dir, block_duration, timeout, "debug")
    }

    /// `start`, with more command-line options (`--release-after 1`).
    pub fn start_args(block_duration: u64, timeout: u64, extra: &[&str]) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credentials.txt"), CREDENTIALS).unwrap();
        let local = Ipv4Addr::LOCALHOST.into();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch_with(
            Place::local(),
            local,
            dir,
            (block_duration, timeout),
            "debug",
            extra,
        )
    }

    fn launch(
        place: Place,
        bind: IpAddr,
        dir: tempfile::TempDir,
        block_duration: u64,
        timeout: u64,
        log: &str,
    ) -> Tracker {
        Self::launch_with(place, bind, dir, (block_duration, timeout), log, Vec::new())
    }

    fn launch_with(
        place: Place,
        bind: IpAddr,
        dir: tempfile::TempDir,
        args: (u64, u64),
        log: &str,
        extra: Vec<String>,
    ) -> Tracker {
        Self::launch_at(place, bind, 0, dir, args, log, extra)
    }

    fn launch_at(
        place: Place,
        bind: IpAddr,
        port: u16,
        dir: tempfile::TempDir,
        (block_duration, timeout): (u64, u64),
        log: &str,
        extra: Vec<String>,
    ) -> Tracker {
        let mut child = place
            .command(bin("tracker"))
            .args([
                &port.to_string(),
                &block_duration.to_string(),
                &timeout.to_string(),
                "-d",
            ])
            .args(["--bind", &bind.to_string()])
            .args(&extra)
            .current_dir(dir.path())
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracker");
        let stderr = Lines::spawn(child.stderr.take().unwrap());
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening addr=").nth(1) {
                        break rest.split_whitespace().next().unwrap().parse().unwrap();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("tracker did not start:\n{}", stderr.transcript());
                }
            }
        };
        Tracker {
            child,
            addr,
            dir,
            stderr,
            args: (block_duration, timeout),
            extra,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A peer connected to this tracker, not logged in yet, with its own temp folder.
    pub fn peer(&self) -> Peer {
        Peer::start(self.addr)
    }

    /// A peer logged in as `user` whose folder is `dir` (kept by the caller).
    pub fn login_in(&self, user: &str, dir: &Path) -> Peer {
        let mut p = Peer::start_in(self.addr, dir.to_owned(), None);
        p.login(user);
        p
    }

    /// A peer logged in as `user`, started with extra command-line `args`.
    pub fn login_args(&self, user: &str, args: &[&str]) -> Peer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut p = Peer::start_on(&Place::local(), self.addr, dir, Some(tmp), args);
        p.login(user);
        p
    }

    /// A peer logged in as `user`.
    pub fn login(&self, user: &str) -> Peer {
        let mut p = self.peer();
        p.login(user);
        p
    }

    /// `kill -9`, then a new tracker process on the same state, credentials and port.
    pub fn crash_and_restart(mut self) -> Tracker {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let extra = std::mem::take(&mut self.extra);
        let local = Ipv4Addr::LOCALHOST.into();
        Tracker::launch_with(Place::local(), local, dir, self.args, "debug", extra)
    }

    /// Stops the tracker and starts it again on the same port and state, with a new TLS
    /// key (as if its operator had made one, or someone else answered at its address).
    pub fn restart_with_new_key(mut self) -> Tracker {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        for f in ["tracker.cert.pem", "tracker.key.pem"] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let extra = std::mem::take(&mut self.extra);
        let local = Ipv4Addr::LOCALHOST.into();
        let port = self.addr.port();
        Tracker::launch_at(Place::local(), local, port, dir, self.args, "debug", extra)
    }

    /// The fingerprint of the tracker's TLS key, as `tracker fingerprint` prints it.
    pub fn fingerprint(&self) -> String {
        let out = std::process::Command::new(bin("tracker"))
            .arg("fingerprint")
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        self.stderr.transcript()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current resident memory of the tracker process, in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Tracker {
    /// `kill -9`: the process dies without closing anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the tracker's answer to `unblock <self>` prints: the round-trip marker of
/// [`Peer::sync`].
const SYNC_MARK: &str = "Error. Cannot unblock self";

pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    /// The peer's `--dir`.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub name: String,
}

impl Peer {
    /// A peer with a fresh temp folder.
    pub fn start(tracker: SocketAddr) -> Peer {
        let tmp = tempfile::tempdir().unwrap();
        Peer::start_in(tracker, tmp.path().to_owned(), Some(tmp))
    }

    pub fn start_in(tracker: SocketAddr, dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Peer {
        Peer::start_on(&Place::local(), tracker, dir, tmp, &[])
    }

    /// A peer on a lab host (or locally), with extra command-line `args`.
    pub fn start_on(
        place: &Place,
        tracker: SocketAddr,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        args: &[&str],
    ) -> Peer {
        let mut child = place
            .command(bin("peer"))
            .arg(tracker.ip().to_string())
            .arg(tracker.port().to_string())
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peer");
        let stdin = child.stdin.take();
        // Anything on stderr is a bug (debug output must never reach a user's terminal);
        // fold it into the transcript so a test that checks output sees it.
        let out = Lines::spawn(child.stdout.take().unwrap());
        let err = child.stderr.take().unwrap();
        let transcript = out.transcript.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                transcript.lock().unwrap().push(format!("[stderr] {line}"));
            }
        });
        Peer {
            child,
            stdin,
            out,
            dir,
            _tmp: tmp,
            name: String::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes standard input (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for a line containing `want` and returns it; panics with the transcript if it
    /// does not come in time. Lines before it are consumed.
    pub fn expect(&mut self, want: &str) -> String {
        self.expect_within(want, WAIT)
    }

    /// `expect` with a deadline of its own (benchmarks moving gigabytes).
    pub fn expect_within(&mut self, want: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line containing {want:?} within {wait:?}. Transcript:\n{}",
                    self.name,
                    self.out.transcript()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: output ended before {want:?}. Transcript:\n{}",
                    self.name,
                    self.out.transcript()
                ),
            }
        }
    }

    /// Sends `line` and returns every line printed up to and including the first that
    /// contains one of `ends`: for commands whose answer comes from somewhere other than
    /// the tracker (a download running in the background).
    pub fn send_until(&mut self, line: &str, ends: &[&str]) -> Vec<String> {
        self.send(line);
        let mut got = Vec::new();
        loop {
            let l = self.next_line();
            let done = ends.iter().any(|e| l.contains(e));
            got.push(l);
            if done {
                return got;
            }
        }
    }

    /// Waits for a progress line of the download of `name` saying at least `pct` percent
    /// (progress is printed at most once a second, so a given tenth may be skipped).
    pub fn expect_progress(&mut self, name: &str, pct: u32) -> String {
        let prefix = format!("{name}: ");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.out.recv_timeout(left) {
                Ok(l) => l,
                Err(e) => panic!(
                    "{}: no progress of {name} to {pct}% ({e:?}). Transcript:\n{}",
                    self.name,
                    self.out.transcript()
                ),
            };
            let at = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('%').next())
                .and_then(|n| n.parse::<u32>().ok());
            if at.is_some_and(|at| at >= pct) {
                return line;
            }
        }
    }

    /// Waits for a line containing any of `wants` and returns it.
    pub fn expect_any(&mut self, wants: &[&str], wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) if wants.iter().any(|w| line.contains(w)) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: no line containing any of {wants:?} within {wait:?} ({e:?}). Transcript:\n{}",
                    self.name,
                    self.out.transcript()
                ),
            }
        }
    }

    /// Waits until a line containing each of `wants` has appeared, in any order.
    pub fn expect_all(&mut self, wants: &[String]) {
        let mut missing: Vec<&String> = wants.iter().collect();
        let deadline = Instant::now() + WAIT;
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = missing.iter().position(|w| line.contains(w.as_str())) {
                        missing.swap_remove(i);
                    }
                }
                Err(e) => panic!(
                    "{}: still missing {missing:?} ({e:?}). Transcript:\n{}",
                    self.name,
                    self.out.transcript()
                ),
            }
        }
    }

    /// The next line, exactly.
    pub fn next_line(&mut self) -> String {
        match self.out.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(e) => panic!(
                "{}: no next line ({e:?}). Transcript:\n{}",
                self.name,
                self.out.transcript()
            ),
        }
    }

    /// Runs `line` and returns every line printed until a following round trip to the
    /// tracker completes. Events queued before `line`'s reply are included, since the
    /// tracker writes queued events before a reply.
    pub fn run(&mut self, line: &str) -> Vec<String> {
        self.send(line);
        self.sync()
    }

    /// Everything printed since the last read, up to a round trip to the tracker.
    pub fn sync(&mut self) -> Vec<String> {
        assert!(!self.name.is_empty(), "sync needs a logged-in peer");
        let marker = format!("unblock {}", self.name);
        self.send(&marker);
        let mut got = Vec::new();
        loop {
            let l = self.next_line();
            if l == SYNC_MARK {
                return got;
            }
            got.push(l);
        }
    }

    /// Logs in as `user` and waits for the welcome.
    pub fn login(&mut self, user: &str) {
        self.login_as(user, password(user));
    }

    /// Logs in as `user` with `password` (users that are not in the fixture).
    pub fn login_as(&mut self, user: &str, password: &str) {
        self.name = user.to_owned();
        self.expect("Username:");
        self.send(user);
        self.expect("Password:");
        self.send(password);
        self.expect("Welcome to the greatest messaging application ever!");
    }

    /// Starts a private session with `other`; waits until both sides have seen it open
    /// (each hears of it on its own connection, in either order).
    /// Waits until the tracker has told this peer whether others can connect to it (it
    /// tries just after login, for up to 2 s), and returns `transfers`' line about it.
    pub fn reachability(&mut self) -> String {
        for _ in 0..40 {
            let lines = self.run("transfers");
            if let Some(l) = lines
                .iter()
                .find(|l| l.starts_with("Reachability: the server sees"))
            {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: reachability never known. Transcript:\n{}",
            self.name,
            self.transcript()
        );
    }

    pub fn open_private(&mut self, other: &mut Peer) {
        self.send(&format!("startprivate {}", other.name));
        self.expect(&format!("Start private messaging with {}", other.name));
        other.expect(&format!("{} started private messaging with you", self.name));
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not exit. Transcript:\n{}",
            self.name,
            self.out.transcript()
        );
    }

    pub fn transcript(&self) -> String {
        self.out.transcript()
    }

    /// When the line the last `expect` (or `next_line`) returned was printed.
    pub fn last_line_at(&self) -> Option<Instant> {
        self.out.last_at.get()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A program speaking the wire protocol directly over a blocking socket: a test double for
/// clients that do not behave (forgers, scanners, junk senders). To the tracker it speaks
/// TLS (accepting any key, as a client meeting it for the first time); to peers, Noise IK
/// with a key of its own ([`Raw::identity`], the one it gives the tracker at login).
pub struct Raw {
    stream: Box<dyn RawStream>,
    buf: bytes::BytesMut,
    /// This double's long-term key.
    pub identity: link::noise::Identity,
}

/// Mixed into every peer handshake (the peer's `p2p::PROLOGUE`).
pub const PEER_PROLOGUE: &[u8] = b"swarmchat peer connection, Noise IK";

/// A blocking Noise session over TCP (or over the relay): what a test double of a peer
/// speaks.
pub struct NoiseTcp {
    tcp: Box<dyn RawStream>,
    transport: link::noise::Transport,
    rbuf: Vec<u8>,
    plain: Vec<u8>,
    ppos: usize,
}

impl NoiseTcp {
    fn new(tcp: Box<dyn RawStream>, transport: link::noise::Transport) -> NoiseTcp {
        NoiseTcp {
            tcp,
            transport,
            rbuf: Vec::new(),
            plain: Vec::new(),
            ppos: 0,
        }
    }
}

impl std::io::Read for NoiseTcp {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.ppos < self.plain.len() {
                let n = out.len().min(self.plain.len() - self.ppos);
                out[..n].copy_from_slice(&self.plain[self.ppos..self.ppos + n]);
                self.ppos += n;
                return Ok(n);
            }
            if let Some(body) = link::noise::split(&self.rbuf, link::noise::MAX_MESSAGE)? {
                self.plain = vec![0u8; body.len()];
                let n = self
                    .transport
                    .open(&self.rbuf[body.clone()], &mut self.plain)?;
                self.plain.truncate(n);
                self.ppos = 0;
                self.rbuf.drain(..body.end);
                continue;
            }
            let mut chunk = [0u8; 16384];
            let n = self.tcp.read(&mut chunk)?;
            if n == 0 {
                return Ok(0);
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl std::io::Write for NoiseTcp {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::new();
        for part in data.chunks(link::noise::MAX_PLAINTEXT) {
            self.transport.seal(part, &mut out);
        }
        self.tcp.write_all(&out)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl RawStream for NoiseTcp {
    fn tcp(&self) -> &std::net::TcpStream {
        self.tcp.tcp()
    }
}

/// One length-prefixed handshake message read from `tcp`.
fn read_handshake(tcp: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head)?;
    let mut body = vec![0u8; u16::from_be_bytes(head) as usize];
    tcp.read_exact(&mut body)?;
    Ok(body)
}

fn frame_bytes(msg: &wire::PeerMsg) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    wire::encode(msg, &mut out, 1024).unwrap();
    out.to_vec()
}

fn frame_of(payload: &[u8]) -> Option<wire::PeerMsg> {
    wire::decode(&mut bytes::BytesMut::from(payload), 1024).ok()?
}

/// What a [`Raw`] connection is carried over: TCP, or TLS over TCP.
pub trait RawStream: std::io::Read + std::io::Write + Send {
    fn tcp(&self) -> &std::net::TcpStream;
}

impl RawStream for std::net::TcpStream {
    fn tcp(&self) -> &std::net::TcpStream {
        self
    }
}

impl RawStream for rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    fn tcp(&self) -> &std::net::TcpStream {
        &self.sock
    }
}

impl Raw {
    /// Connects to the tracker at `addr` (TLS).
    pub fn connect(addr: SocketAddr) -> Raw {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        Raw::tls_over(tcp, addr)
    }

    /// TLS to the tracker at `addr` over `tcp`, a connection made otherwise (from a
    /// chosen port, say).
    pub fn tls_over(tcp: std::net::TcpStream, addr: SocketAddr) -> Raw {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let (config, _) = link::tls::client_config(link::tls::KeyCheck::Any);
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now, so a test's first write is application data.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        Raw {
            stream: Box::new(tls),
            buf: bytes::BytesMut::new(),
            identity: link::noise::Identity::generate(),
        }
    }

    /// Dials a peer's listener at `addr` as the holder of `me`, expecting it to hold
    /// `theirs`, with `hello` in the handshake: the connection and the listener's answer,
    /// or why the handshake failed (the listener does not hold `theirs`, say).
    pub fn dial_peer(
        addr: SocketAddr,
        me: &link::noise::Identity,
        theirs: &wire::PeerKey,
        hello: &wire::PeerMsg,
    ) -> Result<(Raw, wire::PeerMsg), String> {
        let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        Raw::dial_peer_over(Box::new(tcp), me, theirs, hello)
    }

    /// `dial_peer` over a connection made otherwise (reversed, or through the relay).
    pub fn dial_peer_over(
        mut tcp: Box<dyn RawStream>,
        me: &link::noise::Identity,
        theirs: &wire::PeerKey,
        hello: &wire::PeerMsg,
    ) -> Result<(Raw, wire::PeerMsg), String> {
        let (init, msg1) =
            link::noise::Initiator::start(me, &theirs.0, PEER_PROLOGUE, &frame_bytes(hello))
                .map_err(|e| e.to_string())?;
        tcp.write_all(&msg1).map_err(|e| e.to_string())?;
        let msg2 = read_handshake(&mut tcp).map_err(|e| e.to_string())?;
        let (transport, payload) = init.finish(&msg2).map_err(|e| e.to_string())?;
        let answer = frame_of(&payload).ok_or("no answer in the handshake")?;
        let raw = Raw {
            stream: Box::new(NoiseTcp::new(tcp, transport)),
            buf: bytes::BytesMut::new(),
            identity: me.clone(),
        };
        Ok((raw, answer))
    }

    /// Joins `circuit` at the tracker's relay at `tracker`: the connection, once the
    /// relay says both sides are there, or its refusal.
    pub fn relay_join(
        tracker: SocketAddr,
        circuit: wire::Circuit,
    ) -> Result<Box<dyn RawStream>, String> {
        let mut raw = Raw::connect(tracker);
        raw.send(&wire::ClientMsg::RelayJoin {
            version: wire::PROTOCOL_VERSION,
            circuit,
        });
        match raw.recv::<wire::ServerMsg>() {
            Some(wire::ServerMsg::Relaying) => {
                // The other side says nothing before our handshake: nothing read ahead.
                assert!(raw.buf.is_empty());
                Ok(raw.stream)
            }
            Some(other) => Err(format!("{other:?}")),
            None => Err("closed".into()),
        }
    }

    /// As a peer's listener holding `me`: reads a dialler's handshake on `tcp` and answers
    /// `answer`. The connection, the dialler's hello and its proven key; `None` if what
    /// arrived was not a handshake for `me`.
    pub fn accept_peer(
        mut tcp: std::net::TcpStream,
        me: &link::noise::Identity,
        answer: &wire::PeerMsg,
    ) -> Option<(Raw, wire::PeerMsg, wire::PeerKey)> {
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let msg1 = read_handshake(&mut tcp).ok()?;
        let (resp, payload) = link::noise::Responder::read(me, PEER_PROLOGUE, &msg1).ok()?;
        let key = wire::PeerKey(resp.remote());
        let hello = frame_of(&payload)?;
        let (transport, msg2) = resp.answer(&frame_bytes(answer)).ok()?;
        tcp.write_all(&msg2).ok()?;
        let raw = Raw {
            stream: Box::new(NoiseTcp::new(Box::new(tcp), transport)),
            buf: bytes::BytesMut::new(),
            identity: me.clone(),
        };
        Some((raw, hello, key))
    }

    /// Connects in clear to `addr` (a peer's listener, or a tracker's port for junk).
    pub fn connect_plain(addr: SocketAddr) -> Raw {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        Raw::accepted(stream)
    }

    /// A connection accepted on a test's own listener (a peer dialling us).
    pub fn accepted(stream: std::net::TcpStream) -> Raw {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Raw {
            stream: Box::new(stream),
            buf: bytes::BytesMut::new(),
            identity: link::noise::Identity::generate(),
        }
    }

    pub fn send<T: serde::Serialize>(&mut self, msg: &T) {
        let mut out = bytes::BytesMut::new();
        wire::encode(msg, &mut out, wire::MAX_FRAME_LEN).unwrap();
        self.stream.write_all(&out).unwrap();
        self.stream.flush().unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// The next frame, or `None` for anything else (closed, broken, silent, junk).
    pub fn try_recv<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        use std::io::Read;
        loop {
            if let Some(m) = wire::decode(&mut self.buf, wire::MAX_FRAME_LEN).ok()? {
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Shuts the connection down both ways, as a killed peer's goes.
    pub fn shutdown(&self) {
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }

    /// The next frame, or `None` if the other side closed the connection.
    pub fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        use std::io::Read;
        loop {
            if let Some(m) = wire::decode(&mut self.buf, wire::MAX_FRAME_LEN).unwrap() {
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A reset, or a TLS connection closed without TLS's own goodbye.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("raw read: {e}"),
            }
        }
    }

    /// Ends the connection with a reset (SO_LINGER 0), as a crashed or cut-off client's
    /// does, instead of a close.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a descriptor this value owns, with a correctly sized struct.
        unsafe {
            libc::setsockopt(
                self.stream.tcp().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// Logs in to the tracker as `user` (p2p port 0), returning the connection.
    pub fn login(tracker: SocketAddr, user: &str) -> Raw {
        Raw::login_p2p(tracker, user, 0)
    }

    /// Logs in as `user`, telling the tracker our listener is on `p2p_port`.
    pub fn login_p2p(tracker: SocketAddr, user: &str, p2p_port: u16) -> Raw {
        use wire::{LoginResult, ServerMsg};
        let mut raw = Raw::send_login(tracker, user, p2p_port);
        assert_eq!(raw.recv(), Some(ServerMsg::Login(LoginResult::Welcome)));
        raw
    }

    /// Connects, says Hello, and sends `user`'s login with the right password, without
    /// reading the answer.
    pub fn send_login(tracker: SocketAddr, user: &str, p2p_port: u16) -> Raw {
        Raw::send_login_over(Raw::connect(tracker), user, p2p_port)
    }

    /// `login_p2p` on a connection to the tracker opened already (`tls_over`).
    pub fn login_over(raw: Raw, user: &str, p2p_port: u16) -> Raw {
        use wire::{LoginResult, ServerMsg};
        let mut raw = Raw::send_login_over(raw, user, p2p_port);
        assert_eq!(raw.recv(), Some(ServerMsg::Login(LoginResult::Welcome)));
        raw
    }

    fn send_login_over(mut raw: Raw, user: &str, p2p_port: u16) -> Raw {
        use wire::{ClientMsg, Password, ServerMsg, UserName, PROTOCOL_VERSION};
        raw.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        });
        assert!(matches!(raw.recv(), Some(ServerMsg::Hello { .. })));
        raw.send(&ClientMsg::Login {
            user: UserName::new(user).unwrap(),
            password: Password::new(password(user)).unwrap(),
            p2p_port,
            key: wire::PeerKey(raw.identity.public()),
            lan_ip: None,
        });
        raw
    }

    /// Sends a request and returns its reply, skipping events.
    pub fn request(&mut self, req: wire::Request) -> wire::Reply {
        self.send(&wire::ClientMsg::Request(req));
        loop {
            match self.recv() {
                Some(wire::ServerMsg::Reply(r)) => return r,
                Some(wire::ServerMsg::Event(_)) => {}
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }
}

/// A TCP relay between a client and a server that keeps a copy of every byte, both ways:
/// what anyone on the network path could read.
pub struct Tap {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// Relays connections to `target` from a port of its own on 127.0.0.1.
    pub fn start(target: SocketAddr) -> Tap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    return;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    s.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Tap { addr, seen }
    }

    /// Whether `text` crossed the tap in clear, either way.
    pub fn saw(&self, text: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(text.len()).any(|w| w == text.as_bytes())
    }

    /// Bytes that crossed so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every packet on this machine's loopback interface, copied as it passes (an `AF_PACKET`
/// socket: needs root), until dropped: what anyone watching the network between programs
/// on 127.0.0.1 could read. Packets of other tests running meanwhile are in it too, so
/// look only for bytes no other test sends.
pub struct Sniffer {
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sniffer {
    /// Most bytes kept (a test's traffic is far less).
    const KEEP: usize = 256 << 20;

    pub fn start() -> Sniffer {
        // SAFETY: plain socket calls on a descriptor this function owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as libc::c_int,
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket (root needed): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above, with correctly sized values.
        unsafe {
            let ifindex = libc::if_nametoindex(c"lo".as_ptr());
            assert!(ifindex > 0, "no loopback interface");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(r, 0, "bind to lo: {}", std::io::Error::last_os_error());
            let size: libc::c_int = 32 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    let mut seen = s.lock().unwrap();
                    if seen.len() < Sniffer::KEEP {
                        seen.extend_from_slice(&buf[..n as usize]);
                    }
                }
            }
            // SAFETY: closing the descriptor this thread owns, once.
            unsafe { libc::close(fd) };
        });
        Sniffer {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until everything sent on loopback before this call has been captured: sends
    /// a marker of its own over loopback and waits (bounded) to see it.
    pub fn catch_up(&self) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut out = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let marker = format!("sniffer marker {:?} {}", Instant::now(), std::process::id());
        out.write_all(marker.as_bytes()).unwrap();
        let deadline = Instant::now() + WAIT;
        while !self.saw(marker.as_bytes()) {
            assert!(Instant::now() < deadline, "the capture never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether `bytes` crossed loopback in clear so far.
    pub fn saw(&self, bytes: &[u8]) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(bytes.len()).any(|w| w == bytes)
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so test files are incompressible and
/// every chunk differs.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// CPU seconds (user + system) a process has used so far, from `/proc` (Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident memory of a process so far, in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
