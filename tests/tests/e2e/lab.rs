//! The swarm on shaped links: the real binaries in the network lab (one namespace per
//! host, tbf-shaped uplinks and downlinks; see tests/src/lab.rs). Needs root.
//!
//! Each test asserts what a user sees (a download finishing, from whom, what `transfers`
//! says); deadlines are generous and only there so a broken swarm fails instead of hanging.

use std::time::{Duration, Instant};

use harness::*;

/// A lab whose host 0 runs the tracker, unshaped; the other hosts get `links`.
struct Net {
    lab: Lab,
    tracker: Tracker,
}

fn net(links: &[Link]) -> Net {
    let mut all = vec![Link::FREE];
    all.extend(links);
    let lab = Lab::new(&all).unwrap_or_else(|e| panic!("the network lab: {e}"));
    let tracker = Tracker::start_on(lab.place(0), lab.ip(0), 60, 600);
    Net { lab, tracker }
}

impl Net {
    /// `user` logged in on `host`, with extra command-line `args`.
    fn peer(&self, host: usize, user: &str, args: &[&str]) -> Peer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut p = Peer::start_on(
            &self.lab.place(host),
            self.tracker.addr,
            dir,
            Some(tmp),
            args,
        );
        p.login(user);
        p
    }

    /// `user` on `host` sharing `data` as `name` in `chunks` chunks.
    fn seed(&self, host: usize, user: &str, name: &str, data: &[u8], chunks: u32) -> Peer {
        let mut p = self.peer(host, user, &[]);
        std::fs::write(p.dir.join(name), data).unwrap();
        p.send(&format!("register {name} {chunks}"));
        p.expect(&format!("{name} registered"));
        p
    }
}

fn file(p: &Peer, name: &str) -> Vec<u8> {
    std::fs::read(p.dir.join(name)).unwrap_or_default()
}

const LONG: Duration = Duration::from_secs(120);

/// A seeder that slows to a trickle mid-download: the download finishes from the others
/// (its chunk would take two minutes at the trickle).
#[test]
fn a_seeder_slowing_to_a_trickle_does_not_hold_up_the_download() {
    let n = net(&[
        Link::up_mbit(20.0),
        Link::up_mbit(20.0),
        Link::up_mbit(20.0),
        Link::FREE,
    ]);
    let data = random_bytes(16 << 20, 21);
    let _seeds: Vec<Peer> = ["hans", "yoda", "luke"]
        .iter()
        .enumerate()
        .map(|(i, u)| n.seed(i + 1, u, "f.bin", &data, 10))
        .collect();
    let mut leia = n.peer(4, "leia", &[]);
    leia.send("download f.bin");
    leia.expect("f.bin: ");
    n.lab.shape(1, Link::up_mbit(0.1)).unwrap();
    leia.expect_within("Downloaded f.bin (16.0 MiB) from ", Duration::from_secs(60));
    assert!(file(&leia, "f.bin") == data);
}

/// A download started while only a slow holder exists picks up faster holders as they log
/// in, and finishes from them.
#[test]
fn a_download_picks_up_holders_as_they_appear() {
    let n = net(&[
        Link::up_mbit(2.0),
        Link::FREE,
        Link::up_mbit(40.0),
        Link::up_mbit(40.0),
    ]);
    let data = random_bytes(8 << 20, 22);
    let _hans = n.seed(1, "hans", "f.bin", &data, 10);
    let mut leia = n.peer(2, "leia", &[]);
    leia.send("download f.bin");
    leia.expect_progress("f.bin", 10);
    // At 2 Mbit/s the rest would take half a minute; two fast holders arrive.
    let _yoda = n.seed(3, "yoda", "f.bin", &data, 10);
    let _luke = n.seed(4, "luke", "f.bin", &data, 10);
    let done = leia.expect_within("Downloaded f.bin (8.0 MiB) from ", LONG);
    assert!(done.contains("luke") && done.contains("yoda"), "{done}");
    assert!(file(&leia, "f.bin") == data);
}

/// Leechers starting together serve each other: each gets chunks from other leechers,
/// and the seed sends far less than a copy per leecher.
#[test]
fn leechers_serve_each_other_in_a_crowd() {
    let mut links = vec![Link::up_mbit(20.0)];
    links.extend([Link::mbit(20.0, 200.0); 4]);
    let n = net(&links);
    let data = random_bytes(8 << 20, 23);
    let _hans = n.seed(1, "hans", "f.bin", &data, 10);
    let users = ["yoda", "luke", "leia", "vader"];
    let mut crowd: Vec<Peer> = users
        .iter()
        .enumerate()
        .map(|(i, u)| n.peer(i + 2, u, &[]))
        .collect();
    let (sent_before, _) = n.lab.counters(1);
    for p in &mut crowd {
        p.send("download f.bin");
    }
    for p in &mut crowd {
        let done = p.expect_within("Downloaded f.bin (8.0 MiB) from ", LONG);
        let others = users.iter().filter(|u| **u != p.name);
        assert!(others.into_iter().any(|u| done.contains(u)), "{done}");
        assert!(file(p, "f.bin") == data);
    }
    let (sent_after, _) = n.lab.counters(1);
    let copies = (sent_after - sent_before) as f64 / data.len() as f64;
    assert!(
        copies < 3.0,
        "the seed sent {copies:.2} copies to 4 leechers"
    );
}

/// A chunk that takes more than a minute on a slow link completes: stalls are judged by
/// progress, not by how long a chunk takes.
#[test]
fn a_chunk_longer_than_a_minute_on_a_slow_link_completes() {
    let n = net(&[Link::up_mbit(1.0), Link::FREE]);
    let data = random_bytes(8_000_000, 24);
    let _hans = n.seed(1, "hans", "f.bin", &data, 1);
    let mut leia = n.peer(2, "leia", &[]);
    let start = Instant::now();
    leia.send("download f.bin");
    leia.expect_within(
        "Downloaded f.bin (7.6 MiB) from hans",
        Duration::from_secs(150),
    );
    assert!(
        start.elapsed() > Duration::from_secs(60),
        "the chunk took over a minute"
    );
    assert!(file(&leia, "f.bin") == data);
}

/// Two downloads at once, in the background, while messages keep flowing both ways.
#[test]
fn two_downloads_at_once_while_messages_flow() {
    let n = net(&[Link::up_mbit(8.0), Link::up_mbit(8.0), Link::FREE]);
    let (one, two) = (random_bytes(6 << 20, 25), random_bytes(6 << 20, 26));
    let mut hans = n.seed(1, "hans", "one.bin", &one, 10);
    let _yoda = n.seed(2, "yoda", "two.bin", &two, 10);
    let mut leia = n.peer(3, "leia", &[]);
    leia.send("download one.bin");
    leia.send("download two.bin");
    leia.expect_progress("one.bin", 10);
    leia.expect_progress("two.bin", 10);
    leia.send("message hans still here?");
    hans.expect("leia: still here?");
    hans.send("message leia yes");
    leia.expect("hans: yes");
    let transfers = leia.run("transfers");
    assert!(transfers[0].starts_with("one.bin: "), "{transfers:?}");
    assert!(transfers[1].starts_with("two.bin: "), "{transfers:?}");
    leia.expect_all(&[
        "Downloaded one.bin (6.0 MiB) from hans".into(),
        "Downloaded two.bin (6.0 MiB) from yoda".into(),
    ]);
    assert!(file(&leia, "one.bin") == one && file(&leia, "two.bin") == two);
}

/// `cancel` stops a download and keeps what it verified; `download` resumes from there.
#[test]
fn cancel_then_resume() {
    let n = net(&[Link::up_mbit(8.0), Link::FREE]);
    let data = random_bytes(8 << 20, 27);
    let _hans = n.seed(1, "hans", "f.bin", &data, 10);
    let mut leia = n.peer(2, "leia", &[]);
    leia.send("download f.bin");
    leia.expect_progress("f.bin", 30);
    let cancelled = leia.send_until("cancel f.bin", &["Cancelled download of f.bin"]);
    let kept: usize = cancelled
        .last()
        .unwrap()
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap();
    assert!((3..10).contains(&kept), "{cancelled:?}");
    assert_eq!(leia.run("transfers")[0], "No downloads");
    leia.send("download f.bin");
    leia.expect_within("Downloaded f.bin (8.0 MiB) from hans", LONG);
    // What was kept: the verified chunks, and the verified blocks of others.
    leia.expect(&format!("(resumed: {kept} of 10 chunks"));
    assert!(file(&leia, "f.bin") == data);
}

/// `--down-limit` and `--up-limit` hold within 10%, measured over a whole download.
#[test]
fn rate_limits_are_respected_within_ten_percent() {
    let n = net(&[Link::FREE, Link::FREE, Link::FREE]);
    let data = random_bytes(6 << 20, 28);
    let limit = 2.0 * (1 << 20) as f64;
    let _hans = n.seed(1, "hans", "down.bin", &data, 10);
    let mut yoda = n.peer(2, "yoda", &["--up-limit", "2M"]);
    std::fs::write(yoda.dir.join("up.bin"), &data).unwrap();
    yoda.send("register up.bin 10");
    yoda.expect("up.bin registered");
    let mut leia = n.peer(3, "leia", &["--down-limit", "2M"]);
    let transfers = leia.run("transfers");
    assert!(
        transfers.contains(&"Limits: download 2.0 MiB/s, upload none".to_string()),
        "{transfers:?}"
    );
    let mut luke = n.peer(3, "luke", &[]);
    for (p, name) in [(&mut leia, "down.bin"), (&mut luke, "up.bin")] {
        let start = Instant::now();
        p.send(&format!("download {name}"));
        p.expect_within(&format!("Downloaded {name} (6.0 MiB)"), LONG);
        let at = p.last_line_at().unwrap();
        let rate = data.len() as f64 / at.duration_since(start).as_secs_f64();
        assert!(
            (0.9..=1.1).contains(&(rate / limit)),
            "{name}: {:.2} MiB/s against a limit of 2 MiB/s",
            rate / (1 << 20) as f64
        );
    }
}

/// Downloaders trade blocks before any of them holds a whole chunk: the file is one
/// chunk, its only seeder blocked the second downloader, and the second downloader gets
/// the file from the first, receiving blocks while the first is still downloading.
#[test]
fn a_leecher_serves_blocks_of_a_chunk_it_has_not_completed() {
    let n = net(&[Link::up_mbit(8.0), Link::FREE, Link::FREE]);
    let data = random_bytes(6 << 20, 31);
    let mut hans = n.seed(1, "hans", "f.bin", &data, 1);
    assert_eq!(hans.run("block leia"), ["leia is blocked"]);
    let mut yoda = n.peer(2, "yoda", &[]);
    let mut leia = n.peer(3, "leia", &[]);
    assert_eq!(leia.run("searchFile f.bin"), ["Not available"]);
    yoda.send("download f.bin");
    yoda.expect_progress("f.bin", 10);
    leia.send("download f.bin");
    leia.expect_progress("f.bin", 20);
    let leia_had_blocks = leia.last_line_at().expect("a progress line");
    yoda.expect_within("Downloaded f.bin (6.0 MiB) from hans", LONG);
    let yoda_done = yoda.last_line_at().expect("the completion line");
    assert!(
        leia_had_blocks < yoda_done,
        "leia had a fifth of the file before yoda held its only chunk"
    );
    leia.expect_within("Downloaded f.bin (6.0 MiB) from yoda", LONG);
    assert!(file(&leia, "f.bin") == data);
}

/// One chunk, two seeders: its blocks come from both.
#[test]
fn blocks_of_one_chunk_come_from_several_peers() {
    let n = net(&[Link::up_mbit(8.0), Link::up_mbit(8.0), Link::FREE]);
    let data = random_bytes(6 << 20, 32);
    let _hans = n.seed(1, "hans", "f.bin", &data, 1);
    let _yoda = n.seed(2, "yoda", "f.bin", &data, 1);
    let mut leia = n.peer(3, "leia", &[]);
    leia.send("download f.bin");
    leia.expect_within("Downloaded f.bin (6.0 MiB) from hans, yoda", LONG);
    assert!(file(&leia, "f.bin") == data);
}

/// A download killed mid-chunk keeps the blocks it had verified: started again, it says
/// how much was already there, and fetches only the rest.
#[test]
fn a_download_killed_mid_chunk_resumes_from_its_verified_blocks() {
    let n = net(&[Link::up_mbit(8.0), Link::FREE]);
    let data = random_bytes(6 << 20, 33);
    let _hans = n.seed(1, "hans", "f.bin", &data, 1);
    let home = tempfile::tempdir().unwrap();
    let start = || {
        let mut p = Peer::start_on(
            &n.lab.place(2),
            n.tracker.addr,
            home.path().to_owned(),
            None,
            &[],
        );
        p.login("leia");
        p
    };
    let mut leia = start();
    leia.send("download f.bin");
    leia.expect_progress("f.bin", 40);
    leia.kill();
    let mut leia = start();
    leia.send("download f.bin");
    leia.expect_within("Downloaded f.bin (6.0 MiB) from hans", LONG);
    let resumed = leia.expect("(resumed: 0 of 1 chunks and ");
    let kept: f64 = resumed
        .split(" and ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!((2.0..6.0).contains(&kept), "{resumed}");
    assert!(file(&leia, "f.bin") == data);
}

/// A seeder whose disk rotted after it registered (same size and time, other bytes): its
/// first bad block gets it banned and named, that block is fetched again from the others,
/// and the file is right.
#[test]
fn a_seeder_with_rotted_blocks_is_banned_and_only_its_bad_block_fetched_again() {
    let n = net(&[
        Link::up_mbit(20.0),
        Link::up_mbit(20.0),
        Link::up_mbit(20.0),
        Link::FREE,
    ]);
    let data = random_bytes(8 << 20, 34);
    let _hans = n.seed(1, "hans", "f.bin", &data, 10);
    let _yoda = n.seed(2, "yoda", "f.bin", &data, 10);
    let vader = n.seed(3, "vader", "f.bin", &data, 10);
    harness::bench::rot(&vader.dir.join("f.bin"), 0, u64::MAX);
    let mut leia = n.peer(4, "leia", &[]);
    leia.send("download f.bin");
    leia.expect("of f.bin from vader failed verification; not using vader again");
    let done = leia.expect_within("Downloaded f.bin (8.0 MiB) from ", LONG);
    assert!(done.contains("hans") && done.contains("yoda"), "{done}");
    leia.expect("(fetched again: 256.0 KiB that failed verification, from vader)");
    assert!(file(&leia, "f.bin") == data);
}

/// One address can keep only [`tracker::gate`]'s 16 connections waiting to log in: a
/// program holding 16 silent connections shuts out a 17th from its address (the user is
/// told why), not a user elsewhere; and the tracker drops silent connections after its
/// Hello deadline, so the address can log in again.
#[test]
fn one_address_cannot_hold_the_trackers_connections_waiting_to_log_in() {
    use std::io::BufRead;
    let n = net(&[Link::FREE, Link::FREE]);
    let (ip, port) = (n.tracker.addr.ip(), n.tracker.addr.port());
    // 16 connections that never say Hello, held open by a shell on host 1.
    let script = format!(
        "for i in $(seq 16); do exec {{fd}}<>/dev/tcp/{ip}/{port}; done; echo ready; sleep 60"
    );
    let mut holder = n
        .lab
        .place(1)
        .command("bash")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut ready = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _holder = Kill(holder);
    assert_eq!(ready.trim(), "ready");
    let opened = Instant::now();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut shut_out = Peer::start_on(&n.lab.place(1), n.tracker.addr, dir, Some(tmp), &[]);
    let line = shut_out.expect("Error.");
    assert!(
        line.contains("too many connections from this address"),
        "{line}"
    );
    assert!(!shut_out.wait_exit().success());
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "within the Hello deadline"
    );

    // Someone on another address is not affected.
    let mut hans = n.peer(2, "hans", &[]);
    // The silent ones are dropped after 10 s: the address may log in again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut p = Peer::start_on(&n.lab.place(1), n.tracker.addr, dir, Some(tmp), &[]);
        p.send("yoda");
        p.send(password("yoda"));
        let line = p.expect_any(&["Welcome to the", "Error."], Duration::from_secs(15));
        if line.starts_with("Welcome") {
            hans.expect("yoda logged in");
            break;
        }
        assert!(Instant::now() < deadline, "still shut out: {line}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A connect flood from one address is shunned: past its limits and 64 turn-aways, the
/// tracker's kernel drops that address's connection attempts (no accept, no reset), so a
/// client there is told the server is not answering, while a user on another address
/// logs in as usual.
#[test]
fn a_connect_flood_gets_its_address_shunned_and_nobody_else() {
    let n = net(&[Link::FREE, Link::FREE]);
    let (ip, port) = (n.tracker.addr.ip(), n.tracker.addr.port());
    // Connections opened and closed at once, as fast as a shell goes, until one goes
    // unanswered (timeout's status 124).
    let script = format!(
        "for i in $(seq 400); do timeout 0.5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>/dev/null; \
         if [ $? = 124 ]; then echo unanswered after $i; exit 0; fi; done; echo always answered"
    );
    let out = n
        .lab
        .place(1)
        .command("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let after: u32 = said
        .trim()
        .strip_prefix("unanswered after ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the flood was never shunned: {said}"));
    // 32 admitted, 64 turned away, then shunned (a token or two more refill meanwhile).
    let least = tracker::gate::NEW_CONNECTIONS.burst + tracker::gate::TURNED_AWAY.burst;
    assert!(
        (least..least + 40).contains(&after),
        "shunned after {after}"
    );

    // Someone on another address logs in as usual, at once.
    let started = Instant::now();
    let _hans = n.peer(2, "hans", &[]);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A client on the shunned address is told the server does not answer.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut shunned = Peer::start_on(&n.lab.place(1), n.tracker.addr, dir, Some(tmp), &[]);
    let line = shunned.expect_any(&["Error.", "Username"], Duration::from_secs(20));
    assert!(line.contains("is not answering"), "{line}");
    assert!(!shunned.wait_exit().success());
}
