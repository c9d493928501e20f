//! The network lab: hosts as network namespaces joined by one bridge, each host's upload
//! and download rate shaped with `tbf`, so tests and benchmarks see what real links do
//! (bandwidth, queueing) instead of loopback's gigabytes per second.
//!
//! Topology: a switch namespace holds the bridge `br0`; host `i` is a namespace whose
//! `eth0` (address `10.77.0.<i+1>/16`) is one end of a veth pair, the other end (`v<i>`)
//! enslaved to the bridge. A host's upload rate is a `tbf` on its own `eth0` (what it
//! sends), its download rate a `tbf` on its switch port (what the switch sends it). Nothing
//! leaves these namespaces: they have no route anywhere else.
//!
//! A host may instead sit behind a home router of its own ([`Lab::add_behind_nat`]): a
//! router namespace on the bridge that masquerades the host's home network (`nftables`)
//! and drops connections from outside it did not see opened from inside.
//!
//! Every namespace is named `swl<pid>x<n>...` after the process that made it. Dropping the
//! [`Lab`] kills whatever still runs inside and deletes the namespaces; a new lab also
//! removes the namespaces of processes that no longer exist (a test killed before it could
//! clean up). Needs root and iproute2's `ip` and `tc`.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where a process runs: this machine's own network stack, or inside a lab host.
#[derive(Clone, Debug, Default)]
pub struct Place {
    netns: Option<String>,
}

impl Place {
    /// This machine, outside any lab (tests on 127.0.0.1).
    pub fn local() -> Place {
        Place::default()
    }

    /// A command that runs `program` here.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs the program: same PID, so
                // killing the child kills the program.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }

    pub fn is_local(&self) -> bool {
        self.netns.is_none()
    }
}

/// A link's rates in bits per second; `None` leaves that direction unshaped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    pub up: Option<u64>,
    pub down: Option<u64>,
}

impl Link {
    /// Unshaped both ways.
    pub const FREE: Link = Link {
        up: None,
        down: None,
    };

    /// `up` and `down` in Mbit/s.
    pub fn mbit(up: f64, down: f64) -> Link {
        Link {
            up: Some((up * 1e6) as u64),
            down: Some((down * 1e6) as u64),
        }
    }

    /// Upload shaped to `up` Mbit/s, download unshaped.
    pub fn up_mbit(up: f64) -> Link {
        Link {
            up: Some((up * 1e6) as u64),
            down: None,
        }
    }
}

struct Host {
    ns: String,
    ip: Ipv4Addr,
    /// For a host behind a home router: the router's namespace and its address on the
    /// shared segment (what everyone else sees the host as).
    router: Option<(String, Ipv4Addr)>,
}

/// How a home router translates addresses. Both drop connections from outside that are
/// not part of one opened from inside, as home routers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Masquerade that keeps a connection's source port when it can (Linux's default):
    /// the same inside port goes out as the same outside port, whoever it talks to, so
    /// two peers dialling each other at once can meet (TCP hole punching).
    Cone,
    /// Masquerade with `fully-random` ports: every connection goes out from a port of its
    /// own, so nobody outside can predict one ("symmetric" NAT).
    Symmetric,
}

pub struct Lab {
    id: String,
    switch: String,
    hosts: Vec<Host>,
}

const PREFIX: &str = "swl";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; `Err` with its output when it fails.
/// Runs `ip` with `args`, `input` on its standard input; its complaint if it fails.
fn run_fed(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn output(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills everything running in `ns`, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = output(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: a plain syscall; a pid that is already gone only makes it fail.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Namespaces left behind by lab processes that are no longer running.
fn remove_stale() {
    let Ok(list) = output(&["ip", "netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_namespace(ns);
    }
}

impl Lab {
    /// A lab with one host per link, `10.77.0.1` first.
    pub fn new(links: &[Link]) -> Result<Lab, String> {
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the network lab needs root (network namespaces, tc)".into());
        }
        if links.len() > 250 {
            return Err("at most 250 hosts".into());
        }
        remove_stale();
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            id: id.clone(),
            switch: format!("{id}sw"),
            hosts: Vec::new(),
        };
        // From here on, dropping `lab` removes whatever was made, also on error.
        run(&["ip", "netns", "add", &lab.switch])?;
        let sw = lab.switch.clone();
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        for (i, link) in links.iter().enumerate() {
            let ns = format!("{id}h{i}");
            run(&["ip", "netns", "add", &ns])?;
            let ip = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip,
                router: None,
            });
            let port = format!("v{i}");
            run(&[
                "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/16"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            lab.shape(i, *link)?;
        }
        Ok(lab)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// `host`'s own address (behind a router: its address in its home network).
    pub fn ip(&self, host: usize) -> Ipv4Addr {
        self.hosts[host].ip
    }

    /// Runs `f` on a thread of its own inside `host`'s namespace: the sockets it opens are
    /// `host`'s (a test double of a peer, in the lab).
    pub fn run_in<T: Send>(&self, host: usize, f: impl FnOnce() -> T + Send) -> T {
        let ns = &self.hosts[host].ns;
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
                // SAFETY: setns on a descriptor we own; it moves only this thread.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// The address others see `host` as: its own, or its router's.
    pub fn public_ip(&self, host: usize) -> Ipv4Addr {
        self.hosts[host]
            .router
            .as_ref()
            .map_or(self.hosts[host].ip, |r| r.1)
    }

    /// Adds a host behind a home router of its own: the router sits on the shared segment
    /// (address `10.77.0.<i+1>`), the host on its home network (`192.168.<i+1>.2`, routed
    /// through the router at `.1`). The router translates what the host sends out as
    /// `nat` says and drops what comes in unasked. `link` shapes the host's link to its
    /// router. Returns the host's index.
    pub fn add_behind_nat(&mut self, link: Link, nat: Nat) -> Result<usize, String> {
        let i = self.hosts.len();
        if i >= 250 {
            return Err("at most 250 hosts".into());
        }
        let (ns, router) = (format!("{}h{i}", self.id), format!("{}r{i}", self.id));
        let wan = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
        let ip = Ipv4Addr::new(192, 168, i as u8 + 1, 2);
        let gw = Ipv4Addr::new(192, 168, i as u8 + 1, 1);
        run(&["ip", "netns", "add", &router])?;
        // From here on, dropping the lab removes both namespaces.
        self.hosts.push(Host {
            ns: ns.clone(),
            ip,
            router: Some((router.clone(), wan)),
        });
        run(&["ip", "netns", "add", &ns])?;
        let sw = self.switch.clone();
        let port = format!("v{i}");
        run(&[
            "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "wan", "netns",
            &router,
        ])?;
        run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        run(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{wan}/16"),
            "dev",
            "wan",
        ])?;
        run(&["ip", "-n", &router, "link", "set", "wan", "up"])?;
        run(&["ip", "-n", &router, "link", "set", "lo", "up"])?;
        // The home network: a bridge in the router (its address the hosts' gateway), one
        // port per host (`add_beside` adds more).
        run(&["ip", "-n", &router, "link", "add", "lan", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan",
        ])?;
        run(&["ip", "-n", &router, "link", "set", "lan", "up"])?;
        self.plug_home_host(&router, &ns, i, ip, gw)?;
        run(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        let random = match nat {
            Nat::Cone => "",
            Nat::Symmetric => " fully-random",
        };
        let rules = format!(
            "table ip nat {{
  chain leaving {{
    type nat hook postrouting priority 100;
    oifname \"wan\" masquerade{random}
  }}
}}
table ip filter {{
  chain passing {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname \"lan\" accept
  }}
  chain arriving {{
    type filter hook input priority 0; policy accept;
    iifname \"wan\" ct state != established,related drop
  }}
}}
"
        );
        run_fed(&["netns", "exec", &router, "nft", "-f", "-"], &rules).map_err(|e| {
            format!("nft rules for the router failed (apt-get install nftables?): {e}")
        })?;
        self.shape(i, link)?;
        Ok(i)
    }

    /// Gives `host` `n` (at most 250) more addresses, `10.77.<host+1>.1` on: for tests of
    /// limits per address, many users each on an address of their own. All of `10.77/16`
    /// is on the one bridge, so every host reaches them.
    pub fn add_addresses(&self, host: usize, n: usize) -> Result<Vec<Ipv4Addr>, String> {
        if n > 250 || host >= 250 {
            return Err("at most 250 addresses per host".into());
        }
        let ns = &self.hosts[host].ns;
        let ips: Vec<Ipv4Addr> = (1..=n as u8)
            .map(|k| Ipv4Addr::new(10, 77, host as u8 + 1, k))
            .collect();
        let mut batch = String::new();
        for ip in &ips {
            batch.push_str(&format!("address add {ip}/16 dev eth0\n"));
        }
        run_fed(&["-n", ns, "-batch", "-"], &batch)
            .map_err(|e| format!("adding addresses failed: {e}"))?;
        Ok(ips)
    }

    /// Where to run a process on `host`.
    pub fn place(&self, host: usize) -> Place {
        Place {
            netns: Some(self.hosts[host].ns.clone()),
        }
    }

    /// Adds a host on the home network of `neighbour` (a host behind a router): same
    /// router, next address (`192.168.<n>.3`, `.4`, ...). `link` shapes its link to the
    /// router. Returns its index.
    pub fn add_beside(&mut self, neighbour: usize, link: Link) -> Result<usize, String> {
        let Some((router, wan)) = self.hosts[neighbour].router.clone() else {
            return Err(format!("host {neighbour} has no router"));
        };
        let i = self.hosts.len();
        let o = self.hosts[neighbour].ip.octets();
        let taken = self
            .hosts
            .iter()
            .filter(|h| h.router.as_ref().is_some_and(|r| r.0 == router))
            .count();
        if taken >= 200 {
            return Err("at most 200 hosts behind one router".into());
        }
        let ip = Ipv4Addr::new(o[0], o[1], o[2], 2 + taken as u8);
        let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let ns = format!("{}h{i}", self.id);
        self.hosts.push(Host {
            ns: ns.clone(),
            ip,
            router: Some((router.clone(), wan)),
        });
        run(&["ip", "netns", "add", &ns])?;
        self.plug_home_host(&router, &ns, i, ip, gw)?;
        self.shape(i, link)?;
        Ok(i)
    }

    /// Connects host `i` (namespace `ns`, address `ip`) to its router's home network.
    fn plug_home_host(
        &self,
        router: &str,
        ns: &str,
        i: usize,
        ip: Ipv4Addr,
        gw: Ipv4Addr,
    ) -> Result<(), String> {
        let port = format!("l{i}");
        run(&[
            "ip", "-n", router, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])?;
        run(&[
            "ip", "-n", router, "link", "set", &port, "master", "lan", "up",
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ])?;
        Ok(())
    }

    /// Sets (or changes, mid-test) `host`'s rates.
    pub fn shape(&self, host: usize, link: Link) -> Result<(), String> {
        let h = &self.hosts[host];
        tbf(&h.ns, "eth0", link.up)?;
        match &h.router {
            // What the router sends the host.
            Some((router, _)) => tbf(router, &format!("l{host}"), link.down),
            None => tbf(&self.switch, &format!("v{host}"), link.down),
        }
    }

    /// Bytes `host` has sent and received on its link so far (IP packets, headers
    /// included).
    pub fn counters(&self, host: usize) -> (u64, u64) {
        let ns = &self.hosts[host].ns;
        let read = |what: &str| {
            output(&[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/sys/class/net/eth0/statistics/{what}"),
            ])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
        };
        (read("tx_bytes"), read("rx_bytes"))
    }

    /// [`Lab::counters`] of every host at once (one process, read on the switch side:
    /// what port `v<i>` received host `i` sent), cheap enough to sample several times a
    /// second during a benchmark.
    pub fn all_counters(&self) -> Vec<(u64, u64)> {
        let mut script = String::new();
        for i in 0..self.hosts.len() {
            script.push_str(&format!(
                "cat /sys/class/net/v{i}/statistics/rx_bytes /sys/class/net/v{i}/statistics/tx_bytes;"
            ));
        }
        let out =
            output(&["ip", "netns", "exec", &self.switch, "sh", "-c", &script]).unwrap_or_default();
        let n: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (0..self.hosts.len())
            .map(|i| {
                (
                    n.get(2 * i).copied().unwrap_or(0),
                    n.get(2 * i + 1).copied().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// Shapes what `dev` in `ns` sends to `rate` bits per second (or removes the shaping).
///
/// The bucket holds 10 ms at the rate (at least 16 KiB; tbf splits larger GSO segments)
/// and the queue 100 ms (at least 128 KiB). Measured with iperf3 through one such link:
/// TCP then carries 96% of the rate at 2, 4, 40, 100 and 400 Mbit/s, which is what
/// 1500-byte packets leave after headers; with a 48 KiB queue a 2 Mbit/s link carried
/// only 77% (drops kept TCP from ever filling it).
fn tbf(ns: &str, dev: &str, rate: Option<u64>) -> Result<(), String> {
    let Some(bits) = rate else {
        // No qdisc to delete is fine.
        let _ = run(&[
            "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
        ]);
        return Ok(());
    };
    let bytes = bits / 8;
    let burst = (bytes / 100).max(16 * 1024);
    let limit = (bytes / 10).max(128 * 1024);
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "tc",
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &format!("{bits}bit"),
        "burst",
        &burst.to_string(),
        "limit",
        &limit.to_string(),
    ])
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_namespace(&h.ns);
            if let Some((router, _)) = &h.router {
                remove_namespace(router);
            }
        }
        remove_namespace(&self.switch);
    }
}

/// Removes every namespace this process's labs made: for a benchmark interrupted with
/// Ctrl-C, which never reaches the labs' `Drop`.
pub fn remove_all_of_this_process() {
    let Ok(list) = output(&["ip", "netns", "list"]) else {
        return;
    };
    let mine = format!("{PREFIX}{}x", std::process::id());
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&mine) {
            remove_namespace(ns);
        }
    }
}

/// For benchmarks: on Ctrl-C or SIGTERM, remove this process's labs (and every process
/// in them) before leaving. Call first thing in `main`, before any thread exists.
pub fn remove_on_signal() {
    // SAFETY: signal masks and sigwait are plain libc calls on values we own; the mask is
    // set before any other thread exists, so every thread inherits it and only the
    // waiting thread below receives these signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("interrupted: removing the network lab");
            remove_all_of_this_process();
            std::process::exit(130);
        });
    }
}
