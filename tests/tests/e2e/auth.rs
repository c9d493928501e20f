//! Login, lockout, duplicate login, logout, end of input, timeout.

use std::time::Duration;

use harness::service::Service;
use harness::*;

// vader and leia on different trackers in the cluster.
on_both!(inactivity_timeout_logs_out_and_notifies_others, 60, 2);

#[test]
fn single_client_logs_in_and_out() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    hans.send("logout");
    hans.expect("Logged out");
    assert!(hans.wait_exit().success());
}

#[test]
fn end_of_input_logs_out_cleanly_and_others_are_told() {
    let t = Tracker::start(60, 120);
    let mut yoda = t.login("yoda");
    let mut hans = t.login("hans");
    yoda.expect("hans logged in");
    hans.close_stdin();
    assert!(hans.wait_exit().success());
    yoda.expect("hans logged out");
}

#[test]
fn unknown_user_prompts_again() {
    let t = Tracker::start(60, 120);
    let mut p = t.peer();
    p.expect("Username:");
    p.send("bob");
    p.expect("Error. Invalid user");
    p.expect("Username:");
    p.send("yoda");
    p.expect("Password:");
    p.send("wise");
    p.expect("Welcome to the greatest messaging application ever!");
}

/// Section 8, case 2, with a 2-second block: three failures lock the account (also for a
/// new connection with the right password) until the block duration has passed.
#[test]
fn three_failures_lock_the_account_until_the_block_expires() {
    let t = Tracker::start(2, 120);
    let mut p = t.peer();
    p.expect("Username:");
    p.send("yoda");
    for (i, guess) in ["weird", "green", "password"].iter().enumerate() {
        p.expect("Password:");
        p.send(guess);
        if i < 2 {
            p.expect("Invalid Password. Please try again");
        }
    }
    p.expect("Invalid Password. Your account has been blocked. Please try again later");
    assert!(
        !p.wait_exit().success(),
        "the client shuts down with an error status"
    );

    let mut again = t.peer();
    again.expect("Username:");
    again.send("yoda");
    again.expect("Password:");
    again.send("wise");
    again.expect("Your account is blocked due to multiple login failures. Please try again later");
    assert!(!again.wait_exit().success());

    // Other users are not affected by yoda's lock.
    let _hans = t.login("hans");

    // After the block duration the right password works again.
    std::thread::sleep(Duration::from_millis(2100));
    let _yoda = t.login("yoda");
}

#[test]
fn second_login_of_an_online_user_is_refused() {
    let t = Tracker::start(60, 120);
    let mut first = t.login("luke");
    let mut second = t.peer();
    second.expect("Username:");
    second.send("luke");
    second.expect("Password:");
    second.send("lightsaber");
    second.expect("luke is already logged in");
    assert!(!second.wait_exit().success());
    // The first session is untouched.
    assert_eq!(first.run("whoelse"), ["No other users are online"]);
}

/// Timeout of 2 s: an idle user is logged out and told; others see it. Commands (even
/// invalid ones) count as activity; receiving messages does not.
fn inactivity_timeout_logs_out_and_notifies_others(s: &Service) {
    let mut idle = s.login("vader");
    let mut busy = s.login("leia");
    idle.expect("leia logged in");
    // leia keeps typing for ~3 s; vader only receives.
    for _ in 0..6 {
        busy.send("message vader are you there");
        busy.send("notacommand");
        std::thread::sleep(Duration::from_millis(500));
    }
    idle.expect("You have been logged out due to inactivity");
    assert!(idle.wait_exit().success());
    busy.expect("vader logged out");
    // leia is still logged in after more than the timeout since her login.
    let out = busy.run("whoelse");
    assert_eq!(
        out.last().map(String::as_str),
        Some("No other users are online")
    );
    assert!(!busy.transcript().contains("You have been logged out"));
}

/// A tracker whose credentials file holds `text`, with a 60 s block.
fn tracker_with(text: &str) -> Tracker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.txt"), text).unwrap();
    Tracker::start_in(dir, 60, 120)
}

/// Hashed (Argon2id PHC) and plain entries in one credentials file: both users log in
/// with their passwords, and a wrong password for the hashed one is refused as usual.
#[test]
fn hashed_and_plain_credentials_both_log_in() {
    let hashed = tracker::credentials::hash(&wire::Password::new("falcon").unwrap());
    let t = tracker_with(&format!("hans {hashed}\nyoda wise\n"));
    let mut yoda = t.login("yoda");
    let mut p = t.peer();
    p.expect("Username:");
    p.send("hans");
    p.expect("Password:");
    p.send(&hashed); // the hash is not the password
    p.expect("Invalid Password. Please try again");
    p.expect("Password:");
    p.send("falcon");
    p.expect("Welcome to the greatest messaging application ever!");
    yoda.expect("hans logged in");
}

/// Guesses sent at once on six connections for a hashed account (each check takes tens
/// of ms off the async threads) still get three strikes, not six: two are told to try
/// again, one locks the account, three find it locked.
#[test]
fn parallel_guesses_at_a_hashed_password_still_get_three_strikes() {
    let hashed = tracker::credentials::hash(&wire::Password::new("wise").unwrap());
    let t = tracker_with(&format!("yoda {hashed}\nhans falcon\n"));
    let mut guessers: Vec<Peer> = (0..6).map(|_| t.peer()).collect();
    for g in &mut guessers {
        g.expect("Username:");
        g.send("yoda");
        g.expect("Password:");
    }
    for (i, g) in guessers.iter_mut().enumerate() {
        g.send(&format!("guess{i}"));
    }
    let mut seen: Vec<String> = guessers
        .iter_mut()
        .map(|g| {
            g.expect_any(
                &["Please try again", "has been blocked", "is blocked"],
                WAIT,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "Invalid Password. Please try again",
            "Invalid Password. Please try again",
            "Invalid Password. Your account has been blocked. Please try again later",
            "Your account is blocked due to multiple login failures. Please try again later",
            "Your account is blocked due to multiple login failures. Please try again later",
            "Your account is blocked due to multiple login failures. Please try again later",
        ]
    );
}

/// `tracker hash-credentials FILE` hashes every plain entry in place; after a restart on
/// the rewritten file every fixture user logs in with the same password, and the file no
/// longer holds any of them.
#[test]
fn hash_credentials_keeps_every_user_able_to_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.txt");
    std::fs::write(&file, CREDENTIALS).unwrap();
    let out = std::process::Command::new(bin("tracker"))
        .args(["hash-credentials", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let users: Vec<&str> = CREDENTIALS
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(u, _)| u))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{}: {} passwords hashed, 0 already hashed",
            file.display(),
            users.len()
        )
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for u in &users {
        assert!(!text.contains(&format!("{u} {}\n", password(u))), "{u}");
    }
    let t = Tracker::start_in(dir, 60, 120);
    let online: Vec<Peer> = users.iter().map(|u| t.login(u)).collect();
    assert_eq!(online.len(), users.len());
}
