//! The client on a real terminal (tmux): typed-ahead and pasted lines, Ctrl-C, and what
//! stays on screen while a download runs.

use harness::tty::Tty;
use harness::*;

/// Lines typed faster than the client answers (typed ahead, or sent by `tmux send-keys`
/// in one go) all run, in order.
#[test]
fn typed_ahead_lines_all_run_in_order() {
    let t = Tracker::start(60, 120);
    let mut yoda = t.login("yoda");
    let dir = tempfile::tempdir().unwrap();
    let hans = Tty::peer(t.addr, dir.path(), &[]);
    hans.login("hans");
    yoda.expect("hans logged in");
    hans.type_text("message yoda one\rmessage yoda two\rmessage yoda three\r");
    yoda.expect("hans: one");
    assert_eq!(yoda.next_line(), "hans: two");
    assert_eq!(yoda.next_line(), "hans: three");
}

/// A paste of several lines (a bracketed paste: the editor holds it until Enter, as a
/// shell does) runs each line, as if typed.
#[test]
fn a_pasted_block_of_lines_runs_line_by_line() {
    let t = Tracker::start(60, 120);
    let mut yoda = t.login("yoda");
    let dir = tempfile::tempdir().unwrap();
    let hans = Tty::peer(t.addr, dir.path(), &[]);
    hans.login("hans");
    yoda.expect("hans logged in");
    hans.paste("message yoda first\nmessage yoda second");
    hans.wait_for("message yoda second");
    hans.key("Enter");
    yoda.expect("hans: first");
    assert_eq!(yoda.next_line(), "hans: second");
    let screen = hans.screen().join("\n");
    assert!(!screen.contains("control character"), "{screen}");
}

/// Logs `user` in (piped) and shares a new random file of `len` bytes as `name`.
fn share(t: &Tracker, user: &str, name: &str, len: usize) -> (Peer, Vec<u8>) {
    let mut p = t.login(user);
    let data = random_bytes(len, 9);
    std::fs::write(p.dir.join(name), &data).unwrap();
    p.send(&format!("register {name}"));
    p.expect(&format!("{name} registered"));
    (p, data)
}

/// Ctrl-C during a download leaves as `logout` does: the tracker is told, what was
/// verified is kept, and the next download resumes from it.
#[test]
fn ctrl_c_during_a_download_logs_out_and_keeps_what_was_verified() {
    let t = Tracker::start(60, 120);
    let (_hans, data) = share(&t, "hans", "big.bin", 12_000_000);
    let mut yoda = t.login("yoda");
    let dir = tempfile::tempdir().unwrap();
    let luke = Tty::peer(t.addr, dir.path(), &["--down-limit", "2M"]);
    luke.login("luke");
    yoda.expect("luke logged in");
    luke.type_text("download big.bin\r");
    luke.wait_for("big.bin: 10%");
    luke.key("C-c");
    luke.wait_for("Logged out");
    assert_eq!(luke.wait_exit(), 0);
    yoda.expect("luke logged out");
    // Resumed from what was verified.
    let mut luke = t.login_in("luke", dir.path());
    luke.send("download big.bin");
    luke.expect("Downloaded big.bin (");
    let resumed = luke.expect("(resumed: ");
    assert!(!resumed.contains("resumed: 0 "), "{resumed}");
    assert!(std::fs::read(dir.path().join("big.bin")).unwrap() == data);
}

/// Ctrl-C at the password prompt leaves quietly and gives the terminal back as it was
/// (echo on).
#[test]
fn ctrl_c_at_the_password_prompt_leaves_quietly() {
    let t = Tracker::start(60, 120);
    let dir = tempfile::tempdir().unwrap();
    let p = Tty::peer(t.addr, dir.path(), &[]);
    p.wait_for("Username:");
    p.type_text("hans\r");
    p.wait_for("Password:");
    p.key("C-c");
    assert_eq!(p.wait_exit(), 0);
    let screen = p.screen().join("\n");
    assert!(!screen.contains("Welcome"), "{screen}");
}

/// A line being typed while a download prints its progress stays whole, and the screen
/// holds no progress bars: only whole lines above the prompt.
#[test]
fn progress_never_mangles_the_line_being_typed() {
    let t = Tracker::start(60, 120);
    let (_hans, _) = share(&t, "hans", "big.bin", 8_000_000);
    let dir = tempfile::tempdir().unwrap();
    let luke = Tty::peer(t.addr, dir.path(), &["--down-limit", "2M"]);
    luke.login("luke");
    luke.type_text("download big.bin\r");
    luke.type_text("message hans half typed");
    luke.wait_for("big.bin: ");
    let screen = luke.wait_for("Downloaded big.bin (");
    let last = screen.iter().rev().find(|l| !l.is_empty()).unwrap();
    assert_eq!(last, "> message hans half typed", "{}", screen.join("\n"));
    assert!(
        !screen.iter().any(|l| l.contains("[=") || l.contains("=>")),
        "{}",
        screen.join("\n")
    );
}
