//! Several trackers sharing one PostgreSQL (`--store`): what the store alone makes one
//! service of them — one session per user, wrong passwords counted once, stored messages
//! delivered wherever their recipient logs in, a dead tracker's users free to log in
//! elsewhere after its lease.

use std::time::{Duration, Instant};

use harness::servers::{Nats, Postgres};
use harness::{Peer, Raw, Tracker, WAIT};

const ALREADY: &str = "is already logged in";
const WELCOME: &str = "Welcome to the greatest messaging application ever!";

/// Two trackers on one fresh database, each in its own folder.
fn two_trackers(pg: &Postgres, block_duration: u64) -> (Tracker, Tracker) {
    let url = pg.database("swarmchat");
    let a = Tracker::start_args(block_duration, 120, &["--store", &url]);
    let b = Tracker::start_args(block_duration, 120, &["--store", &url]);
    (a, b)
}

/// A cluster: two trackers on one fresh database and one NATS server.
fn cluster(pg: &Postgres, nats: &Nats) -> (Tracker, Tracker) {
    let url = pg.database("swarmchat");
    let bus = nats.url();
    let args = ["--store", &url, "--bus", &bus];
    let a = Tracker::start_args(60, 120, &args);
    let b = Tracker::start_args(60, 120, &args);
    (a, b)
}

/// Waits until `who`'s tracker lists `other` as online. News of a login on another tracker
/// travels on its own (one presence batch every 50 ms): `who` may or may not have been told
/// `other logged in` by then, and `whoelse` consumes that line if so. Once listed, no such
/// notice is still to come (a reply goes out after the presence news before it).
fn see(who: &mut Peer, other: &str) {
    let deadline = Instant::now() + WAIT;
    while !who.run("whoelse").iter().any(|l| l == other) {
        assert!(Instant::now() < deadline, "{other} never listed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until each tracker has heard everything the other did (so it knows where
/// clients reach it, and takes its users' logins as real).
fn settle(a: &Tracker, b: &Tracker) {
    harness::service::settle(&[a, b]);
}

/// A login of `user` with `password` through `t`: the line it ended with.
fn attempt(t: &Tracker, user: &str, password: &str, wants: &[&str]) -> (Peer, String) {
    let mut p = t.peer();
    p.expect("Username:");
    p.send(user);
    p.expect("Password:");
    p.send(password);
    let line = p.expect_any(wants, WAIT);
    (p, line)
}

#[test]
fn a_user_online_through_one_tracker_cannot_log_in_through_another() {
    let pg = Postgres::start();
    let (a, b) = two_trackers(&pg, 60);
    let mut luke = a.login("luke");
    let (mut second, line) = attempt(&b, "luke", "lightsaber", &[ALREADY, WELCOME]);
    assert!(line.contains("luke is already logged in"), "{line}");
    assert!(!second.wait_exit().success());
    // Once logged out through the first, the second lets luke in.
    luke.send("logout");
    assert!(luke.wait_exit().success());
    let _luke = b.login("luke");
}

#[test]
fn wrong_passwords_through_two_trackers_count_toward_one_lock() {
    let pg = Postgres::start();
    let (a, b) = two_trackers(&pg, 60);
    let bad = "Invalid Password. Please try again";
    let locked_now = "Invalid Password. Your account has been blocked. Please try again later";
    let locked = "Your account is blocked due to multiple login failures. Please try again later";
    // Two wrong through the first tracker, the third through the second.
    let mut p = a.peer();
    p.expect("Username:");
    p.send("yoda");
    for guess in ["weird", "green"] {
        p.expect("Password:");
        p.send(guess);
        p.expect(bad);
    }
    drop(p);
    let (mut third, line) = attempt(&b, "yoda", "password", &[bad, locked_now]);
    assert_eq!(line, locked_now);
    assert!(!third.wait_exit().success());
    // Locked on both, even with the right password.
    for t in [&a, &b] {
        let (mut p, line) = attempt(t, "yoda", "wise", &[locked, WELCOME]);
        assert_eq!(line, locked);
        assert!(!p.wait_exit().success());
    }
}

#[test]
fn a_message_stored_through_one_tracker_is_delivered_at_login_through_the_other() {
    let pg = Postgres::start();
    let (a, b) = two_trackers(&pg, 60);
    let mut hans = a.login("hans");
    assert_eq!(
        hans.run("message luke stored through a"),
        ["luke is offline; the message will be delivered when they log in"]
    );
    let mut luke = b.login("luke");
    assert_eq!(luke.next_line(), "hans: stored through a");
    // Acknowledged through b, so not delivered again through a.
    luke.send("logout");
    assert!(luke.wait_exit().success());
    let mut luke = a.login("luke");
    assert_eq!(luke.run("whoelse"), ["hans"]);
}

/// A tracker killed with `kill -9` cannot log its users out; they may log in through
/// another tracker once its lease (3 s) has run out, not before it is known dead.
#[test]
fn after_kill_9_its_users_log_in_through_another_tracker_once_its_lease_ends() {
    let pg = Postgres::start();
    let (a, b) = two_trackers(&pg, 60);
    let mut hans = a.login("hans");
    let killed = Instant::now();
    let mut a = a;
    a.kill();
    assert!(!hans.wait_exit().success());
    // Its last renewal was at most 1 s before it died, so its lease runs at least 2 s more.
    let surely_live = killed + Duration::from_secs(2);
    let deadline = killed + WAIT;
    loop {
        let (_p, line) = attempt(&b, "hans", "falcon", &[ALREADY, WELCOME]);
        if line == WELCOME {
            assert!(
                Instant::now() >= surely_live,
                "let in while the dead tracker's lease still ran"
            );
            break;
        }
        assert!(Instant::now() < deadline, "hans never got in through b");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn users_on_different_trackers_see_each_other_and_chat() {
    let (pg, nats) = (Postgres::start(), Nats::start());
    let (a, b) = cluster(&pg, &nats);
    let mut hans = a.login("hans");
    let mut luke = b.login("luke");
    see(&mut hans, "luke");
    see(&mut luke, "hans");
    assert_eq!(hans.run("message luke hello across"), Vec::<String>::new());
    luke.expect("hans: hello across");
    assert_eq!(luke.run("message hans and back"), Vec::<String>::new());
    hans.expect("luke: and back");
    // A broadcast reaches both trackers' users.
    let mut yoda = a.login("yoda");
    hans.expect("yoda logged in");
    luke.expect("yoda logged in");
    see(&mut yoda, "luke");
    luke.send("broadcast to everyone");
    hans.expect("luke: to everyone");
    yoda.expect("luke: to everyone");
    // Logging out through one is seen through the other.
    yoda.send("logout");
    assert!(yoda.wait_exit().success());
    luke.expect("yoda logged out");
}

#[test]
fn a_block_set_through_one_tracker_holds_through_the_other() {
    let (pg, nats) = (Postgres::start(), Nats::start());
    let (a, b) = cluster(&pg, &nats);
    let mut luke = a.login("luke");
    let mut hans = b.login("hans");
    let mut yoda = b.login("yoda");
    see(&mut luke, "hans");
    see(&mut hans, "luke");
    see(&mut yoda, "luke");
    assert_eq!(luke.run("block hans"), ["hans is blocked"]);
    // At once, whatever the other tracker heard yet: luke's tracker decides.
    assert_eq!(
        hans.run("message luke let me in"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
    // And while luke is offline, nothing is kept for him. (hans is not told luke left:
    // he is blocked; yoda, on hans's tracker, is.)
    luke.send("logout");
    assert!(luke.wait_exit().success());
    yoda.expect("luke logged out");
    assert_eq!(
        hans.run("message luke still me"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
}

/// `kill -9` of a tracker: its users are seen logged out through the others within its
/// lease (3 s without a heartbeat).
#[test]
fn the_users_of_a_killed_tracker_are_seen_logged_out_through_the_others() {
    let (pg, nats) = (Postgres::start(), Nats::start());
    let (mut a, b) = cluster(&pg, &nats);
    // A bare client: it does not fail over to b (see the next tests for one that does).
    let _hans = Raw::login(a.addr, "hans");
    let mut luke = b.login("luke");
    see(&mut luke, "hans");
    a.kill();
    luke.expect("hans logged out");
    assert_eq!(luke.run("whoelse"), ["No other users are online"]);
    // And hans may log in through b (the lease in the store ran out with the heartbeats).
    let deadline = Instant::now() + WAIT;
    loop {
        let (_p, line) = attempt(&b, "hans", "falcon", &[ALREADY, WELCOME]);
        if line == WELCOME {
            break;
        }
        assert!(Instant::now() < deadline, "hans never got in through b");
        std::thread::sleep(Duration::from_millis(200));
    }
    luke.expect("hans logged in");
}

/// `kill -9` of a tracker while its user's messages are in flight: every message the user
/// was told is stored reaches its recipient, who logs in through the other tracker; the
/// user goes on through the other tracker without typing the password again.
#[test]
fn kill_9_with_messages_in_flight_loses_nothing_acknowledged() {
    let (pg, nats) = (Postgres::start(), Nats::start());
    let (mut a, b) = cluster(&pg, &nats);
    let stored = "luke is offline; the message will be delivered when they log in";
    let mut hans = a.login("hans");
    settle(&a, &b);
    // Typed without waiting for the answers: the tracker dies with some in flight.
    for i in 0..200 {
        hans.send(&format!("message luke m{i}"));
    }
    for _ in 0..20 {
        hans.expect(stored);
    }
    a.kill();
    hans.expect(&format!("Lost the connection to the server at {}", a.addr));
    let back = hans.expect_within(
        &format!("Reconnected to the server at {} as hans", b.addr),
        WAIT,
    );
    assert!(back.starts_with("Reconnected"), "{back}");
    let acked = hans.transcript().matches(stored).count();
    assert!(acked >= 20);
    let mut luke = b.login("luke");
    // Acknowledged in order, so m0 .. m{acked-1}; any stored but not acknowledged follow.
    for i in 0..acked {
        assert_eq!(luke.next_line(), format!("hans: m{i}"));
    }
    // hans's session goes on through b.
    see(&mut luke, "hans");
    hans.send("message luke still here");
    luke.expect("hans: still here");
    assert_eq!(
        hans.transcript().matches("Password:").count(),
        1,
        "asked for the password again"
    );
}

/// A client that logged in before the other tracker started is told of it when it starts,
/// and goes on through it when its own dies.
#[test]
fn a_tracker_started_later_is_told_to_clients_already_logged_in() {
    let (pg, nats) = (Postgres::start(), Nats::start());
    let url = pg.database("swarmchat");
    let bus = nats.url();
    let args = ["--store", url.as_str(), "--bus", bus.as_str()];
    let mut a = Tracker::start_args(60, 120, &args);
    let mut hans = a.login("hans");
    let b = Tracker::start_args(60, 120, &args);
    // Once a heard b's heartbeats, hans was told (the next second's heartbeat at most).
    settle(&a, &b);
    settle(&a, &b);
    a.kill();
    hans.expect_within(
        &format!("Reconnected to the server at {} as hans", b.addr),
        WAIT,
    );
    // luke logs in after hans is back, through the same tracker: hans is told.
    let mut luke = b.login("luke");
    hans.expect("luke logged in");
    assert_eq!(hans.run("message luke hi"), Vec::<String>::new());
    luke.expect("hans: hi");
}

/// The failover a session is told of at login: the other tracker, with its key; and a
/// token that is no good is refused, with the password asked for instead.
#[test]
fn a_session_is_told_where_to_fail_over_and_a_bad_token_is_refused() {
    use wire::{ClientMsg, Event, LoginResult, PeerKey, ResumeToken, ServerMsg, UserName};
    let (pg, nats) = (Postgres::start(), Nats::start());
    let (a, b) = cluster(&pg, &nats);
    settle(&a, &b);
    let mut hans = Raw::login(a.addr, "hans");
    let Some(ServerMsg::Event(Event::Failover { token, trackers })) = hans.recv() else {
        panic!("no failover after the welcome")
    };
    assert_eq!(trackers.len(), 1);
    assert_eq!(trackers[0].addr, b.addr);
    assert_eq!(
        trackers[0]
            .fingerprint
            .map(link::Fingerprint)
            .map(|f| f.to_string()),
        Some(b.fingerprint())
    );
    let hello = |raw: &mut Raw| {
        raw.send(&ClientMsg::Hello {
            version: wire::PROTOCOL_VERSION,
        });
        assert!(matches!(raw.recv(), Some(ServerMsg::Hello { .. })));
    };
    // a is alive: its session is not b's to take, even with the right token.
    let mut other = Raw::connect(b.addr);
    hello(&mut other);
    other.send(&ClientMsg::Resume {
        user: UserName::new("hans").unwrap(),
        token,
        p2p_port: 0,
        key: PeerKey([0; 32]),
        lan_ip: None,
    });
    assert_eq!(
        other.recv(),
        Some(ServerMsg::Login(LoginResult::AlreadyLoggedIn))
    );
    let mut forged = Raw::connect(b.addr);
    hello(&mut forged);
    forged.send(&ClientMsg::Resume {
        user: UserName::new("hans").unwrap(),
        token: ResumeToken([1; 32]),
        p2p_port: 0,
        key: PeerKey([0; 32]),
        lan_ip: None,
    });
    assert_eq!(
        forged.recv(),
        Some(ServerMsg::Login(LoginResult::ResumeRefused))
    );
}

/// Two users on different trackers register one name for different content at the same
/// moment: one gets it, the other is told it is taken, and both trackers agree on whose
/// it is.
#[test]
fn a_name_registered_through_two_trackers_at_once_goes_to_one() {
    let s = harness::service::Service::cluster(60, 120);
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    std::fs::write(hans.dir.join("x.bin"), b"hans's content").unwrap();
    std::fs::write(yoda.dir.join("x.bin"), b"yoda's other content").unwrap();
    hans.send("register x.bin");
    yoda.send("register x.bin");
    let ends = ["x.bin registered", "Error. A different file named x.bin"];
    let (h, y) = (hans.expect_any(&ends, WAIT), yoda.expect_any(&ends, WAIT));
    let won: Vec<bool> = [&h, &y]
        .iter()
        .map(|l| l.starts_with("x.bin registered"))
        .collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{h} / {y}");
    let winner = if won[0] { "hans" } else { "yoda" };
    s.settle();
    let mut luke = s.login("luke");
    let mut vader = s.login("vader");
    luke.expect("vader logged in");
    for p in [&mut luke, &mut vader] {
        assert_eq!(p.run("searchFile x.bin"), ["Available", winner]);
    }
}
