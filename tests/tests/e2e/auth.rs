//! Login, lockout, duplicate login, logout, end of input, timeout.

use std::time::Duration;

use harness::*;

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
#[test]
fn inactivity_timeout_logs_out_and_notifies_others() {
    let t = Tracker::start(60, 2);
    let mut idle = t.login("vader");
    let mut busy = t.login("leia");
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
