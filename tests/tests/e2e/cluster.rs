//! Several trackers sharing one PostgreSQL (`--store`): what the store alone makes one
//! service of them — one session per user, wrong passwords counted once, stored messages
//! delivered wherever their recipient logs in, a dead tracker's users free to log in
//! elsewhere after its lease.

use std::time::{Duration, Instant};

use harness::servers::Postgres;
use harness::{Peer, Tracker, WAIT};

const ALREADY: &str = "is already logged in";
const WELCOME: &str = "Welcome to the greatest messaging application ever!";

/// Two trackers on one fresh database, each in its own folder.
fn two_trackers(pg: &Postgres, block_duration: u64) -> (Tracker, Tracker) {
    let url = pg.database("swarmchat");
    let a = Tracker::start_args(block_duration, 120, &["--store", &url]);
    let b = Tracker::start_args(block_duration, 120, &["--store", &url]);
    (a, b)
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
