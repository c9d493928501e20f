//! What a remote party that stops reading, or stops answering, can do to us: nothing that
//! outlasts a deadline.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use harness::*;
use wire::{Request, Text, UserName};

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process we started and still own.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops `pid` (SIGSTOP) and waits until every one of its threads is stopped: the signal
/// is asynchronous, and a thread that had not stopped yet could still answer.
fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command name in parentheses.
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('T'))
            })
    };
    let deadline = Instant::now() + WAIT;
    while !all_stopped() {
        assert!(Instant::now() < deadline, "{pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until the tracker's debug log contains `want`.
fn log_says(t: &Tracker, want: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if t.log().contains(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A logged-in client that stops reading while messages pile up for it: senders are told
/// it is not keeping up (nobody can flood it into being logged out), and after the write
/// deadline its connection is dropped (before: its task stayed parked in a write for good,
/// holding a connection slot). It can log in again at once and finds what was sent after
/// it was cut off stored for it.
#[test]
fn a_client_that_stops_reading_is_cut_off_and_can_log_in_again() {
    let t = Tracker::start(60, 600);
    let stalled = Raw::login(t.addr, "yoda"); // never reads again
    let text = Text::new("x".repeat(wire::ids::MAX_TEXT_LEN)).unwrap();
    let message = wire::ClientMsg::Request(Request::Message {
        to: UserName::new("yoda").unwrap(),
        text,
    });
    // 16 MiB of long messages, far more than yoda's socket buffers and queue hold: four
    // senders, each within the 4 MiB a sender may send at once.
    let mut busy = 0;
    let mut senders: Vec<Raw> = ["hans", "luke", "vader", "r2d2"]
        .iter()
        .map(|u| Raw::login(t.addr, u))
        .collect();
    for s in &mut senders {
        for _ in 0..5 {
            for _ in 0..200 {
                s.send(&message);
            }
            let mut replies = 0;
            while replies < 200 {
                replies += 1;
                match s.recv() {
                    Some(wire::ServerMsg::Reply(wire::Reply::Sent { stored: false, .. })) => {}
                    Some(wire::ServerMsg::Reply(wire::Reply::Refused(
                        wire::Refusal::RecipientBusy { .. },
                    ))) => busy += 1,
                    Some(wire::ServerMsg::Event(_)) => replies -= 1, // the others logging in
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    let mut hans = senders.swap_remove(0);
    assert!(busy > 0, "hans was told yoda is not keeping up");
    assert!(
        log_says(&t, "the client stopped reading", Duration::from_secs(40)),
        "{}",
        t.log()
    );
    assert!(matches!(
        hans.request(Request::Message {
            to: UserName::new("yoda").unwrap(),
            text: Text::new("later").unwrap(),
        }),
        wire::Reply::Sent { stored: true, .. }
    ));
    drop(stalled);
    // Logged in again: a fresh session, not refused as a duplicate.
    let mut yoda = Raw::login(t.addr, "yoda");
    let Some(wire::ServerMsg::Event(wire::Event::Offline { messages })) = yoda.recv() else {
        panic!("the stored message comes first");
    };
    assert_eq!(messages.len(), 1);
}

/// `peer` pointed at a port that accepts connections and never speaks says the server is
/// not answering and exits, instead of waiting forever without a prompt.
#[test]
fn a_server_that_never_answers_is_reported() {
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let mut p = Peer::start(addr);
    let line = p.expect_within("Error.", Duration::from_secs(20));
    assert!(line.contains("is not answering"), "{line}");
    assert!(!p.wait_exit().success());
    drop(mute);
}

/// With the tracker stopped (SIGSTOP), a request is reported as unanswered and `logout`
/// still leaves; the tracker, continued, serves everyone else as before.
#[test]
fn a_paused_tracker_cannot_hang_the_client() {
    let mut t = Tracker::start(60, 600);
    let mut hans = t.login("hans");
    let mut yoda = t.login("yoda");
    hans.sync();
    stop(t.pid());
    struct Continue(u32);
    impl Drop for Continue {
        fn drop(&mut self) {
            signal(self.0, libc::SIGCONT);
        }
    }
    let paused = Continue(t.pid());
    yoda.send("whoelse");
    let line = yoda.expect_within("has not answered", Duration::from_secs(30));
    assert!(line.starts_with("Error."), "{line}");
    let asked = Instant::now();
    yoda.send("logout");
    yoda.expect_within("did not answer", Duration::from_secs(15));
    assert!(!yoda.wait_exit().success());
    assert!(asked.elapsed() < Duration::from_secs(15));
    drop(paused);
    // yoda's connection closed while the tracker was stopped: it notices once continued.
    hans.expect("yoda logged out");
    let said = hans.run("whoelse");
    assert!(!said.iter().any(|l| l == "yoda"), "{said:?}");
    assert!(t.alive());
}

/// A user spamming broadcasts is told to slow down after a burst; the users flooded stay
/// logged in and keep chatting.
#[test]
fn a_broadcast_flood_is_refused_and_its_targets_stay() {
    let t = Tracker::start(60, 600);
    let mut hans = t.login("hans");
    let mut yoda = t.login("yoda");
    let mut luke = t.login("luke");
    hans.sync();
    for i in 0..40 {
        hans.send(&format!("broadcast spam {i}"));
    }
    hans.expect("Error. Too many requests of this kind; try again in");
    yoda.expect("hans: spam 0");
    luke.send("message yoda still here");
    yoda.expect("luke: still here");
    let said = luke.run("whoelse");
    assert!(said.iter().any(|l| l == "yoda"), "{said:?}");
}

/// A connection reset right after its login (before the welcome could be written) leaves
/// no ghost: the user is not kept "online", and logs in again at once.
#[test]
fn a_login_cut_off_before_its_welcome_leaves_no_ghost() {
    use wire::{LoginResult, ServerMsg};
    let t = Tracker::start(60, 600);
    let mut hans = t.login("hans");
    for _ in 0..5 {
        let raw = Raw::send_login(t.addr, "yoda", 0);
        // Logged in (the others hear of it); then a reset instead of a close, with the
        // welcome unread: the connection ends under the tracker while it writes.
        hans.expect("yoda logged in");
        raw.reset();
        hans.expect("yoda logged out");
    }
    let mut again = Raw::send_login(t.addr, "yoda", 0);
    assert_eq!(
        again.recv::<ServerMsg>(),
        Some(ServerMsg::Login(LoginResult::Welcome)),
        "not refused as already logged in"
    );
    hans.expect("yoda logged in");
    let said = hans.run("whoelse");
    assert_eq!(said, ["yoda"]);
}

/// `searchChunk` naming one chunk thousands of times costs what naming it once does, and
/// its answer lists each chunk once.
#[test]
fn a_search_naming_a_chunk_thousands_of_times_is_answered_once_per_chunk() {
    let t = Tracker::start(60, 600);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), random_bytes(300_000, 3)).unwrap();
    let mut yoda = t.login_in("yoda", dir.path());
    yoda.send("register f.bin 3");
    yoda.expect("f.bin registered");
    let mut raw = Raw::login(t.addr, "hans");
    let name = wire::FileName::new("f.bin").unwrap();
    let started = Instant::now();
    let reply = raw.request(Request::SearchChunk {
        name: name.clone(),
        chunks: [vec![1u32; 7_000], vec![0, 2, 1]].concat(),
    });
    let took = started.elapsed();
    let wire::Reply::ChunkHolders { chunks, .. } = reply else {
        panic!("{reply:?}")
    };
    let yoda_name = UserName::new("yoda").unwrap();
    let listed: Vec<(u32, Vec<UserName>, u32)> = chunks;
    assert_eq!(
        listed,
        [
            (1, vec![yoda_name.clone()], 0),
            (0, vec![yoda_name.clone()], 0),
            (2, vec![yoda_name], 0)
        ]
    );
    // Printed, not asserted (no timed tests): what the request cost end to end.
    eprintln!("searchChunk of 7,003 entries answered in {took:?}");
}

/// `whoelsesince` with the largest number a user can type covers everyone ever seen, with
/// no overflow and no error.
#[test]
fn the_largest_whoelsesince_covers_everyone_seen() {
    let t = Tracker::start(60, 600);
    let mut luke = t.login("luke");
    luke.send("logout");
    luke.expect("Logged out");
    let mut hans = t.login("hans");
    let said = hans.run("whoelsesince 18446744073709551615");
    assert_eq!(said, ["luke"]);
    // Any number past 64 bits means the same: since ever (issue 12).
    assert_eq!(hans.run("whoelsesince 18446744073709551616"), ["luke"]);
    assert_eq!(hans.run("whoelsesince 99999999999999999999999"), ["luke"]);
}

/// A user flooded with messages by another stays logged in, is served (their own
/// `block` goes through while the flood runs), and the flood ends at the block.
#[test]
fn a_flooded_user_is_served_and_never_logged_out() {
    let t = Tracker::start(60, 600);
    let mut yoda = t.login("yoda");
    let mut spammer = Raw::login(t.addr, "hans");
    let flood = std::thread::spawn(move || {
        let text = Text::new("y".repeat(2000)).unwrap();
        let spam = wire::ClientMsg::Request(Request::Message {
            to: UserName::new("yoda").unwrap(),
            text,
        });
        // Past the sender's burst and yoda's queue, as fast as it goes, until blocked.
        for round in 0..1000 {
            for _ in 0..200 {
                spammer.send(&spam);
            }
            let mut blocked = false;
            for _ in 0..200 {
                match spammer.recv() {
                    Some(wire::ServerMsg::Reply(wire::Reply::Refused(
                        wire::Refusal::BlockedByRecipient { .. },
                    ))) => blocked = true,
                    Some(wire::ServerMsg::Reply(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            if blocked {
                return (round, spammer);
            }
        }
        panic!("never blocked");
    });
    yoda.expect("hans: yyyy");
    let said = yoda.run("block hans");
    assert!(said.iter().any(|l| l == "hans is blocked"), "{said:?}");
    let (rounds, _spammer) = flood.join().unwrap();
    eprintln!("blocked after {} rounds of 200 messages", rounds + 1);
    let said = yoda.run("whoelse");
    assert_eq!(said, ["hans"]);
}

/// One user with many tickets who asks a seeder for blocks and never reads the answers
/// gets a few of the seeder's listener slots, not all of them: someone else downloads
/// from that seeder meanwhile.
#[test]
fn a_requester_that_never_reads_cannot_shut_a_seeders_listener() {
    use wire::{FileName, PeerMsg, PeerRefusal, Purpose, Reply, PROTOCOL_VERSION};
    let t = Tracker::start(60, 600);
    let mut yoda = t.login("yoda");
    let data = random_bytes(1_500_000, 11);
    std::fs::write(yoda.dir.join("f.bin"), &data).unwrap();
    yoda.send("register f.bin 2");
    yoda.expect("f.bin registered");
    let name = FileName::new("f.bin").unwrap();
    let mut hans = Raw::login(t.addr, "hans");
    let (mut accepted, mut busy) = (Vec::new(), 0);
    // More tickets than the listener has slots (256).
    let mut tries = 0;
    while accepted.len() + busy < 260 {
        tries += 1;
        assert!(tries < 1000);
        let holders = match hans.request(Request::Locate {
            name: name.clone(),
            from: None,
        }) {
            Reply::Located { holders, .. } => holders,
            Reply::Refused(wire::Refusal::TooFast { retry_ms }) => {
                // The tracker's own rate: wait as told.
                std::thread::sleep(Duration::from_millis(retry_ms.into()));
                continue;
            }
            other => panic!("{other:?}"),
        };
        let h = &holders[0];
        let hello = PeerMsg::Hello {
            version: PROTOCOL_VERSION,
            ticket: h.ticket,
            purpose: Purpose::Transfer,
        };
        let (mut c, answer) = Raw::dial_peer(h.addr, &hans.identity, &h.key, &hello).unwrap();
        match Some(answer) {
            Some(PeerMsg::Accepted) => {
                c.send(&PeerMsg::Interested { name: name.clone() });
                for block in 0..4 {
                    c.send(&PeerMsg::Request { chunk: 0, block });
                }
                accepted.push(c); // and never read again
            }
            Some(PeerMsg::Refused(PeerRefusal::Busy)) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted.len(), 4, "a few transfer connections per user");
    assert_eq!(busy, 256);
    let mut luke = t.login("luke");
    luke.send("download f.bin");
    luke.expect_within("Downloaded f.bin (", Duration::from_secs(60));
    assert_eq!(std::fs::read(luke.dir.join("f.bin")).unwrap(), data);
    drop(accepted);
}

/// A private-chat partner that accepts the connection and then never reads: the user is
/// told the partner is not reading once the queue fills, and `stopprivate` (and then
/// `logout`) return at once instead of waiting behind it.
#[test]
fn stopprivate_returns_with_a_partner_that_stopped_reading() {
    use wire::{PeerMsg, Purpose};
    let t = Tracker::start(60, 600);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hans = Raw::login_p2p(t.addr, "hans", port);
    let mut yoda = t.login("yoda");
    yoda.send("startprivate hans");
    // The tracker's reachability probe (a connection that says nothing) comes too, before
    // or after yoda's: the first connection that says hello is yoda's.
    let hello = (0..3).find_map(|_| {
        let (stream, _) = listener.accept().unwrap();
        // The ticket is not checked here: this partner only pretends, then stops reading.
        Raw::accept_peer(stream, &hans.identity, &PeerMsg::Accepted)
    });
    let Some((
        partner,
        PeerMsg::Hello {
            purpose: Purpose::Chat,
            ..
        },
        _,
    )) = hello
    else {
        panic!("no chat hello")
    };
    yoda.expect("Start private messaging with hans");
    let long = "z".repeat(4000);
    let mut told = None;
    for i in 0..2000 {
        yoda.send(&format!("private hans {i} {long}"));
        if i % 100 == 99 {
            let said = yoda.run("whoelse");
            if let Some(l) = said
                .iter()
                .find(|l| l.contains("is not reading private messages"))
            {
                told = Some(l.clone());
                break;
            }
        }
    }
    assert!(told.is_some(), "yoda was never told hans is not reading");
    let asked = Instant::now();
    let said = yoda.run("stopprivate hans");
    assert!(
        said.iter()
            .any(|l| l == "Stopped private messaging with hans"),
        "{said:?}"
    );
    eprintln!("stopprivate returned after {:?}", asked.elapsed());
    yoda.send("logout");
    yoda.expect("Logged out");
    assert!(yoda.wait_exit().success());
    drop(partner);
}
