//! Servers a test needs beside the tracker: a PostgreSQL of its own (and, for the cluster,
//! a NATS server), each in a temp dir on a free port of 127.0.0.1, stopped by PID when
//! dropped (also when the test fails). Nothing shared with other tests or the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;

/// A PostgreSQL server of this test's own.
pub struct Postgres {
    child: Child,
    pub port: u16,
    bin: PathBuf,
    /// Data, socket and log; removed when dropped, after the server stopped.
    _dir: tempfile::TempDir,
}

/// Where Debian keeps PostgreSQL's server programs (not on PATH): the newest version's.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "PostgreSQL's server programs are missing (Debian: apt-get install postgresql; \
         or set PG_BIN to the folder holding initdb)",
    )
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
fn as_postgres(cmd: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam reads the password database; the pointer is checked and read at
    // once, before any other call could reuse its buffer.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "running as root needs a `postgres` user");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    for entry in walk(dir) {
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown temp dir");
    }
    cmd.uid(uid).gid(gid);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A port nothing listens on just now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Postgres {
    /// A fresh server for tests: no fsync (a test's data need not survive a power cut).
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// A fresh server; `durable`: as a production server runs (fsync on every commit),
    /// for benchmarks whose figures must mean something.
    pub fn start_with(durable: bool) -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "swarm", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .env("LC_ALL", "C")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_postgres(&mut initdb, dir.path());
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A port picked free may be taken before the server binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", if durable { "fsync=on" } else { "fsync=off" }])
                .args(["-c", "max_connections=50", "-c", "shared_buffers=32MB"])
                .env("LC_ALL", "C")
                .stdout(Stdio::null())
                .stderr(log);
            as_postgres(&mut cmd, dir.path());
            let mut child = cmd.spawn().expect("start postgres");
            if ready(&mut child, &bin, port) {
                return Postgres {
                    child,
                    port,
                    bin,
                    _dir: dir,
                };
            }
            stop(&mut child);
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    /// A new, empty database on this server; its URL.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "swarm",
            ])
            .arg(name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://swarm@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database, reached through the server's Unix socket (from inside a lab
    /// host too: the file system is shared, the network is not); its URL.
    pub fn socket_database(&self, name: &str) -> String {
        self.database(name);
        let dir = self._dir.path().to_str().expect("a UTF-8 temp path");
        let host: String = dir.replace('/', "%2F");
        format!("postgres://swarm@{host}:{}/{name}", self.port)
    }
}

/// Waits (bounded) until the server accepts queries; `false` if it exited or never did.
fn ready(child: &mut Child, bin: &Path, port: u16) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ok = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Stops a server at once (SIGQUIT: PostgreSQL's immediate shutdown, which ends its
/// workers too), then by SIGKILL if it lingers.
fn stop(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A NATS server of this test's own (`nats-server`, Debian's package), on a free port of
/// 127.0.0.1; killed by PID when dropped.
pub struct Nats {
    child: Child,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Nats {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server (Debian: apt-get install nats-server)");
            // Ready once it greets a connection with its INFO line.
            let until = Instant::now() + WAIT;
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    use std::io::Read;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut greeting = [0u8; 4];
                    if (&s).read_exact(&mut greeting).is_ok() && &greeting == b"INFO" {
                        return Nats { child, port };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not start");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A NATS server on 127.0.0.1 inside `place` (a lab host): ready once it says so.
    pub fn start_on(place: &crate::lab::Place) -> Nats {
        use std::io::BufRead;
        let port = 4222;
        let mut child = place
            .command("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server (Debian: apt-get install nats-server)");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(WAIT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start in the lab");
        }
        Nats { child, port }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
