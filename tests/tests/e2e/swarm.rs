//! File sharing: register, searchFile, searchChunk, one-chunk and whole-file downloads from
//! several peers, and what happens when peers lie, die or refuse.

use std::net::{TcpListener, TcpStream};
use std::path::Path;

use wire::{FileMeta, FileName, PeerMsg, Reply, Request};

use harness::service::Service;
use harness::*;

on_both!(register_search_and_single_chunk_downloads, 60, 120);
on_both!(download_draws_on_every_holder, 60, 120);
on_both!(downloaders_serve_after_the_owner_leaves, 60, 120);

/// Logs `user` in and shares a new random file of `len` bytes as `name`.
fn share(t: &Tracker, user: &str, name: &str, len: usize, seed: u64) -> (Peer, Vec<u8>) {
    share_as(t.login(user), name, len, seed)
}

/// `share` on a service: once it returns, every tracker knows of the file.
fn share_on(s: &Service, user: &str, name: &str, len: usize, seed: u64) -> (Peer, Vec<u8>) {
    let shared = share_as(s.login(user), name, len, seed);
    s.settle();
    shared
}

/// `p` shares a new random file of `len` bytes as `name`.
fn share_as(mut p: Peer, name: &str, len: usize, seed: u64) -> (Peer, Vec<u8>) {
    let data = random_bytes(len, seed);
    std::fs::write(p.dir.join(name), &data).unwrap();
    p.send(&format!("register {name}"));
    p.expect(&format!("{name} registered"));
    (p, data)
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_default()
}

/// What a one-chunk fetch ends with: its result, or a refusal.
const FETCHED: &[&str] = &["Downloaded chunk", "Error.", "You already have"];

/// Runs `private <user> download <file> <chunk>` and returns what it printed.
fn fetch(p: &mut Peer, cmd: &str) -> Vec<String> {
    p.send_until(cmd, FETCHED)
}

/// Runs a download and returns the final line, asserting the file arrived intact.
fn download(p: &mut Peer, name: &str, want: &[u8]) -> String {
    p.send(&format!("download {name}"));
    let done = p.expect(&format!("Downloaded {name} ("));
    assert!(file(&p.dir, name) == want, "{} has wrong content", p.name);
    done
}

/// The spec's flows and every refusal, one command at a time.
fn register_search_and_single_chunk_downloads(s: &Service) {
    let (mut hans, data) = share_on(s, "hans", "movie.bin", 100_000, 1);
    hans.sync();
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    hans.sync();
    yoda.expect("luke logged in");

    assert_eq!(yoda.run("searchFile movie.bin"), ["Available", "hans"]);
    assert_eq!(yoda.run("searchFile nope.bin"), ["Not available"]);
    assert_eq!(
        yoda.run("searchChunk movie.bin 1 10"),
        ["Available", "Chunk 1: hans", "Chunk 10: hans"]
    );
    assert_eq!(
        yoda.run("searchChunk movie.bin 11"),
        ["Error. There is no chunk 11: the file has chunks 1 to 10"]
    );
    assert_eq!(yoda.run("searchChunk nope.bin 1"), ["Not available"]);

    // Spec 3.5: a chunk is asked of a user we have a private session with.
    assert_eq!(
        fetch(&mut yoda, "private hans download movie.bin 3"),
        ["Error. No private messaging session with hans: type startprivate hans first"]
    );
    yoda.open_private(&mut hans);
    assert_eq!(
        fetch(&mut yoda, "private hans download movie.bin 3"),
        ["Downloaded chunk 3 of movie.bin from hans"]
    );
    // yoda's announcement of the chunk travels on yoda's connection (and on to the other
    // trackers): wait for it.
    yoda.sync();
    s.settle();
    assert_eq!(
        luke.run("searchChunk movie.bin 3 4"),
        ["Available", "Chunk 3: hans, yoda", "Chunk 4: hans"]
    );
    // A downloader serves only what it verified.
    luke.open_private(&mut yoda);
    assert_eq!(
        fetch(&mut luke, "private yoda download movie.bin 4"),
        ["Error. yoda does not have chunk 4 of movie.bin"]
    );
    assert_eq!(
        fetch(&mut luke, "private yoda download movie.bin 3"),
        ["Downloaded chunk 3 of movie.bin from yoda"]
    );
    assert_eq!(
        fetch(&mut luke, "private yoda download movie.bin 3"),
        ["You already have chunk 3 of movie.bin"]
    );
    luke.open_private(&mut hans);
    assert_eq!(
        fetch(&mut luke, "private hans download movie.bin 11"),
        ["Error. There is no chunk 11: movie.bin has chunks 1 to 10"]
    );

    // The same refusals as startprivate.
    assert_eq!(
        fetch(&mut luke, "private bob download movie.bin 1"),
        ["Error. Invalid user"]
    );
    assert_eq!(
        fetch(&mut luke, "private luke download movie.bin 1"),
        ["Error. Cannot download from self"]
    );
    assert_eq!(
        fetch(&mut luke, "private vader download movie.bin 1"),
        ["Error. vader is offline"]
    );
    assert_eq!(hans.run("block luke"), ["luke is blocked"]);
    s.settle();
    assert_eq!(
        fetch(&mut luke, "private hans download movie.bin 1"),
        ["Error. Cannot download from hans as hans has blocked you"]
    );
    assert_eq!(
        luke.send_until("download nope.bin", &["Error."]),
        ["Error. No file named nope.bin is registered"]
    );

    // Names must be plain; content under a taken name must match.
    assert_eq!(
        luke.run("register ../etc/passwd"),
        ["Error. file names must be plain names: no path separators, not . or .."]
    );
    assert_eq!(
        luke.run("searchFile a/b"),
        ["Error. file names must be plain names: no path separators, not . or .."]
    );
    std::fs::write(luke.dir.join("movie.bin"), b"something else entirely").unwrap();
    luke.send("register movie.bin");
    let line = luke.expect("A different file named movie.bin is already registered");
    assert_eq!(
        line,
        "Error. A different file named movie.bin is already registered"
    );
    luke.send("register missing.bin");
    luke.expect("missing.bin: No such file or directory");

    // Registering identical content adds a holder.
    let mut leia = s.login("leia");
    std::fs::write(leia.dir.join("movie.bin"), &data).unwrap();
    leia.send("register movie.bin");
    leia.expect("movie.bin registered (97.7 KiB, 10 chunks)");
    yoda.expect("leia logged in");
    s.settle();
    assert_eq!(
        yoda.run("searchChunk movie.bin 4"),
        ["Available", "Chunk 4: hans, leia"]
    );
    // hans blocked luke: luke is not shown hans as a holder.
    luke.expect("leia logged in");
    assert_eq!(
        luke.run("searchChunk movie.bin 4"),
        ["Available", "Chunk 4: leia"]
    );
}

/// Four peers hold the file: a fifth downloads from all of them, and gets it right.
fn download_draws_on_every_holder(s: &Service) {
    let (_hans, data) = share_on(s, "hans", "f.bin", 1_000_000, 2);
    let mut seeders = Vec::new();
    for user in ["yoda", "luke", "leia"] {
        let mut p = s.login(user);
        download(&mut p, "f.bin", &data);
        seeders.push(p);
    }
    for p in &mut seeders {
        p.sync();
    }
    s.settle();
    // At 1 MiB/s the connections to all four are open long before the chunks run out
    // (on loopback, unlimited, the first to connect could take them all).
    let mut vader = s.login_args("vader", &["--down-limit", "1M"]);
    let done = download(&mut vader, "f.bin", &data);
    assert_eq!(
        done,
        "Downloaded f.bin (976.6 KiB) from hans, leia, luke, yoda"
    );
}

/// After the original owner leaves, downloaders serve what they verified: two peers with
/// half each are enough for a third.
fn downloaders_serve_after_the_owner_leaves(s: &Service) {
    let (mut hans, data) = share_on(s, "hans", "f.bin", 300_000, 3);
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    yoda.open_private(&mut hans);
    luke.open_private(&mut hans);
    for c in 1..=5 {
        yoda.send(&format!("private hans download f.bin {c}"));
        yoda.expect(&format!("Downloaded chunk {c} of f.bin from hans"));
        luke.send(&format!("private hans download f.bin {}", c + 5));
        luke.expect(&format!("Downloaded chunk {} of f.bin from hans", c + 5));
    }
    // Their announcements of those chunks travel on their own connections: wait for them.
    yoda.sync();
    luke.sync();
    hans.send("logout");
    assert!(hans.wait_exit().success());
    s.settle();
    let mut leia = s.login("leia");
    assert_eq!(leia.run("searchFile f.bin"), ["Available", "luke", "yoda"]);
    let done = download(&mut leia, "f.bin", &data);
    assert_eq!(done, "Downloaded f.bin (293.0 KiB) from luke, yoda");
    // And a whole-file holder now: leia serves everything.
    let mut vader = s.login("vader");
    yoda.send("logout");
    luke.send("logout");
    assert!(yoda.wait_exit().success() && luke.wait_exit().success());
    s.settle();
    assert_eq!(
        download(&mut vader, "f.bin", &data),
        "Downloaded f.bin (293.0 KiB) from leia"
    );
}

/// Verified chunks survive a client restart; the next download fetches only the rest.
#[test]
fn downloads_resume_after_a_restart() {
    let t = Tracker::start(60, 120);
    let (mut hans, data) = share(&t, "hans", "f.bin", 200_000, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut yoda = t.login_in("yoda", dir.path());
    yoda.open_private(&mut hans);
    for c in [2, 7] {
        yoda.send(&format!("private hans download f.bin {c}"));
        yoda.expect(&format!("Downloaded chunk {c} of f.bin from hans"));
    }
    yoda.kill(); // no clean logout: what was verified is on disk already
    let mut yoda = t.login_in("yoda", dir.path());
    yoda.sync(); // its re-announcement at login is in
    let mut luke = t.login("luke");
    // Re-announced at login.
    assert_eq!(
        luke.run("searchChunk f.bin 2 3"),
        ["Available", "Chunk 2: hans, yoda", "Chunk 3: hans"]
    );
    download(&mut yoda, "f.bin", &data);
    yoda.expect("(resumed: 2 of 10 chunks were already here)");
    assert_eq!(
        yoda.send_until("download f.bin", &["You already have"]),
        [format!(
            "You already have f.bin (195.3 KiB) at {}",
            dir.path().join("f.bin").display()
        )]
    );
}

/// How a test double misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Misbehave {
    /// Sends blocks of the right size, all wrong.
    Corrupt,
    /// Sends the right bytes for its first few requests, then vanishes (its tracker
    /// connection too), like a killed peer.
    DiesMidChunk,
}

/// A seeder speaking the wire protocol by hand: logs in as `user`, registers the file
/// `data` is the content of, and serves it badly. Threads end with the test process.
fn bad_seeder(t: &Tracker, user: &str, name: &str, data: &[u8], how: Misbehave) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut tracker = Raw::login_p2p(t.addr, user, port);
    let name = FileName::new(name).unwrap();
    let Reply::Located { meta, .. } = tracker.request(Request::Locate { name, from: None }) else {
        panic!("the file is registered");
    };
    let have = (0..meta.chunk_count()).collect();
    assert!(matches!(
        tracker.request(Request::Register {
            meta: meta.clone(),
            have
        }),
        Reply::Registered { .. }
    ));
    let data = data.to_vec();
    let identity = tracker.identity.clone();
    std::thread::spawn(move || {
        // A handful of connections is all one test needs.
        for stream in listener.incoming().take(4) {
            let Ok(stream) = stream else { return };
            if serve_badly(stream, &identity, &meta, &data, how) {
                drop(tracker); // vanish from the tracker too
                return;
            }
        }
        drop(tracker);
    });
}

/// Serves one connection badly; `true` when the double has "died".
fn serve_badly(
    stream: TcpStream,
    me: &link::noise::Identity,
    meta: &FileMeta,
    data: &[u8],
    how: Misbehave,
) -> bool {
    // Any ticket will do: this double is not the one being tested.
    let Some((mut s, PeerMsg::Hello { .. }, _)) = Raw::accept_peer(stream, me, &PeerMsg::Accepted)
    else {
        return false;
    };
    let Some(PeerMsg::Interested { .. }) = s.try_recv() else {
        return false;
    };
    s.send(&PeerMsg::Holding {
        chunks: (0..meta.chunk_count()).collect(),
        partial: vec![],
    });
    s.send(&PeerMsg::Unchoke);
    let mut answered = 0;
    for _ in 0..4096 {
        let (chunk, block) = match s.try_recv() {
            Some(PeerMsg::Request { chunk, block }) => (chunk, block),
            // The right block hashes, so each bad block is caught on its own.
            Some(PeerMsg::WantHashes { chunk, batch }) => {
                let leaves = leaves_of(meta, data, chunk);
                let (first, len) = merkle::batch_range(leaves.len() as u32, batch).unwrap();
                s.send(&PeerMsg::Hashes {
                    chunk,
                    batch,
                    proof: merkle::batch_proof(&leaves, batch).unwrap(),
                    leaves: leaves[first as usize..(first + len) as usize].to_vec(),
                });
                continue;
            }
            Some(_) => continue, // cancels
            None => return false,
        };
        let (at, len) = meta.block_range(chunk, block).unwrap();
        let bytes = match how {
            Misbehave::Corrupt => vec![0xAA; len as usize],
            Misbehave::DiesMidChunk if answered == 2 => {
                s.shutdown();
                return true;
            }
            Misbehave::DiesMidChunk => data[at as usize..(at + len) as usize].to_vec(),
        };
        s.send(&PeerMsg::Block {
            chunk,
            block,
            bytes: bytes.into(),
        });
        answered += 1;
    }
    false
}

/// The merkle leaves of `chunk` of `data`.
fn leaves_of(meta: &FileMeta, data: &[u8], chunk: u32) -> Vec<wire::Digest> {
    (0..meta.block_count(chunk).unwrap())
        .map(|b| {
            let (at, len) = meta.block_range(chunk, b).unwrap();
            merkle::leaf(&data[at as usize..(at + len) as usize])
        })
        .collect()
}

/// A peer sending corrupt bytes for the chunks only it has: each is rejected, the peer is
/// dropped, the download waits, and finishes when an honest holder of them logs in.
#[test]
fn corrupt_chunks_are_rejected_and_fetched_elsewhere() {
    let t = Tracker::start(60, 120);
    let (mut hans, data) = share(&t, "hans", "f.bin", 400_000, 5);
    let mut yoda = t.login("yoda");
    yoda.open_private(&mut hans);
    for c in 1..=5 {
        let got = fetch(&mut yoda, &format!("private hans download f.bin {c}"));
        assert_eq!(got, [format!("Downloaded chunk {c} of f.bin from hans")]);
    }
    yoda.sync(); // its announcements are in
    hans.send("logout");
    assert!(hans.wait_exit().success());
    bad_seeder(&t, "vader", "f.bin", &data, Misbehave::Corrupt);
    let mut luke = t.login("luke");
    assert_eq!(luke.run("searchFile f.bin"), ["Available", "vader", "yoda"]);
    luke.send("download f.bin");
    luke.expect("of f.bin from vader failed verification; not using vader again");
    luke.expect("Waiting for chunks 6-10 of f.bin");
    // A failure costs only what it touches, at once, and says why: the client answers
    // while it waits, and `transfers` shows what it waits for.
    let why = luke.next_line();
    assert!(why.contains("from vader failed verification"), "{why}");
    let mut who = luke.run("whoelse");
    who.sort();
    assert_eq!(who, ["vader", "yoda"]);
    let transfers = luke.run("transfers");
    assert!(
        transfers
            .iter()
            .any(|l| l.starts_with("f.bin: 195.3 KiB of 390.6 KiB (50%); Waiting for chunks 6-10")),
        "{transfers:?}\n{}",
        luke.transcript()
    );
    // hans comes back online: the download learns of him from the tracker and finishes.
    let _hans = t.login_in("hans", &hans.dir);
    let done = luke.expect("Downloaded f.bin (");
    assert_eq!(done, "Downloaded f.bin (390.6 KiB) from hans, yoda");
    assert!(file(&luke.dir, "f.bin") == data);
    // The bad bytes never counted: luke serves only verified chunks, all of them good.
    luke.sync(); // its announcements are in
    let mut leia = t.login("leia");
    assert_eq!(
        leia.run("searchChunk f.bin 6"),
        ["Available", "Chunk 6: hans, luke, vader"]
    );
}

/// A seeder that dies in the middle of the only copy of a chunk: the blocks it sent are
/// kept, the download waits for another holder and takes the rest from it.
#[test]
fn a_seeder_dying_mid_chunk_does_not_stop_the_download() {
    let t = Tracker::start(60, 120);
    // Two chunks of four blocks: the double sends two blocks, then dies.
    let mut hans = t.login("hans");
    let data = random_bytes(2_000_000, 6);
    std::fs::write(hans.dir.join("f.bin"), &data).unwrap();
    hans.send("register f.bin 2");
    hans.expect("f.bin registered");
    let mut yoda = t.login("yoda");
    yoda.open_private(&mut hans);
    fetch(&mut yoda, "private hans download f.bin 1");
    hans.send("logout");
    assert!(hans.wait_exit().success());
    bad_seeder(&t, "vader", "f.bin", &data, Misbehave::DiesMidChunk);
    let mut luke = t.login("luke");
    luke.send("download f.bin");
    luke.expect("Waiting for chunk 2 of f.bin");
    let _hans = t.login_in("hans", &hans.dir);
    let done = luke.expect("Downloaded f.bin (1.9 MiB) from ");
    assert!(done.contains("hans"), "{done}");
    assert!(file(&luke.dir, "f.bin") == data);
}

/// A real seeder process killed while the download runs: the rest comes from the others.
#[test]
fn a_real_seeder_killed_during_a_download() {
    let t = Tracker::start(60, 120);
    let (_hans, data) = share(&t, "hans", "big.bin", 24_000_000, 7);
    let mut yoda = t.login("yoda");
    download(&mut yoda, "big.bin", &data);
    // Slow enough to kill yoda midway: 24 MB at 8 MiB/s.
    let mut luke = t.login_args("luke", &["--down-limit", "8M"]);
    luke.send("download big.bin");
    luke.expect("big.bin: ");
    yoda.kill();
    luke.expect("Downloaded big.bin (");
    assert!(file(&luke.dir, "big.bin") == data);
}

/// Ctrl-C (SIGINT) of a scripted client during a download: it logs out as `logout` does.
#[test]
fn sigint_during_a_download_logs_out() {
    let t = Tracker::start(60, 120);
    let (_hans, _) = share(&t, "hans", "big.bin", 8_000_000, 11);
    let mut yoda = t.login("yoda");
    let mut luke = t.login_args("luke", &["--down-limit", "2M"]);
    yoda.expect("luke logged in");
    luke.send("download big.bin");
    luke.expect("big.bin: ");
    // SAFETY: a plain syscall on the child's pid.
    unsafe {
        libc::kill(luke.pid() as i32, libc::SIGINT);
    }
    luke.expect("Logged out");
    assert!(luke.wait_exit().success());
    yoda.expect("luke logged out");
}

/// A file deleted from `--dir` after it was downloaded: the client no longer serves it,
/// withdraws it from the tracker, and a later `download` fetches it again.
#[test]
fn a_deleted_file_is_no_longer_claimed_or_served() {
    let t = Tracker::start(60, 120);
    let (_hans, data) = share(&t, "hans", "f.bin", 300_000, 12);
    let mut luke = t.login("luke");
    download(&mut luke, "f.bin", &data);
    std::fs::remove_file(luke.dir.join("f.bin")).unwrap();
    let mut yoda = t.login("yoda");
    yoda.open_private(&mut luke);
    assert_eq!(
        fetch(&mut yoda, "private luke download f.bin 1"),
        ["Error. luke does not have chunk 1 of f.bin"]
    );
    luke.expect("f.bin was deleted; no longer sharing it");
    luke.sync(); // the withdrawal has reached the tracker
    assert_eq!(yoda.run("searchFile f.bin"), ["Available", "hans"]);
    assert_eq!(
        download(&mut luke, "f.bin", &data),
        "Downloaded f.bin (293.0 KiB) from hans"
    );
}

/// Holders nobody can reach: the download says once which chunks it waits for (as
/// ranges) and why, one line per holder that failed, and keeps answering.
#[test]
fn an_unreachable_swarm_is_explained_in_a_few_lines() {
    let t = Tracker::start(60, 120);
    let (mut hans, _) = share(&t, "hans", "f.bin", 1_000_000, 13);
    let mut raws = Vec::new();
    for user in ["vader", "leia"] {
        // A port that was free a moment ago: nothing listens there now.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut raw = Raw::login_p2p(t.addr, user, closed);
        let name = FileName::new("f.bin").unwrap();
        let Reply::Located { meta, .. } = raw.request(Request::Locate { name, from: None }) else {
            panic!("registered");
        };
        let have = (0..meta.chunk_count()).collect();
        assert!(matches!(
            raw.request(Request::Register { meta, have }),
            Reply::Registered { .. }
        ));
        raws.push(raw);
    }
    hans.send("logout");
    assert!(hans.wait_exit().success());
    let mut luke = t.login("luke");
    // Once the tracker knows luke can be reached, they are asked to connect to him.
    luke.reachability();
    let out = luke.send_until("download f.bin", &["Waiting for"]);
    assert_eq!(
        out.last().unwrap(),
        "Waiting for chunks 1-10 of f.bin: no online user can send them; it resumes when one can (cancel f.bin to stop)"
    );
    let causes = [luke.next_line(), luke.next_line()];
    for (cause, user) in causes.iter().zip(["leia", "vader"]) {
        assert!(
            cause == &format!("  {user}: cannot be reached, and did not connect to us in turn"),
            "{cause}"
        );
    }
    // Said once, not once per chunk; and the client still answers.
    let mut who = luke.run("whoelse");
    who.sort();
    assert_eq!(who, ["leia", "vader"]);
    assert_eq!(
        luke.send_until("cancel f.bin", &["Cancelled"]),
        ["Cancelled download of f.bin: 0 of 10 chunks kept; download f.bin resumes it"]
    );
}

/// Scripted (piped) output stays readable for a file of many chunks: progress comes a
/// few times, not once per chunk.
#[test]
fn progress_is_a_few_lines_even_for_many_chunks() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let data = random_bytes(4_000_000, 14);
    std::fs::write(hans.dir.join("many.bin"), &data).unwrap();
    hans.send("register many.bin 256");
    hans.expect("many.bin registered (3.8 MiB, 256 chunks)");
    let mut luke = t.login_args("luke", &["--down-limit", "1M"]);
    let done = download(&mut luke, "many.bin", &data);
    assert_eq!(done, "Downloaded many.bin (3.8 MiB) from hans");
    let progress = luke.transcript().matches("many.bin: ").count();
    assert!((1..=9).contains(&progress), "{}", luke.transcript());
}
