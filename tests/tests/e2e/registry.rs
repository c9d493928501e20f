//! The registry's memory (issue 12): names with spaces, replacing and withdrawing a file,
//! files changed on disk, and names released when nobody holds them.

use std::time::{Duration, Instant};

use harness::*;

/// A file made for a test: `len` bytes from `seed`.
fn write(dir: &std::path::Path, name: &str, len: usize, seed: u64) -> Vec<u8> {
    let bytes = random_bytes(len, seed);
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

#[test]
fn file_names_with_spaces_are_shared_in_double_quotes() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let bytes = write(&hans.dir, "my notes.txt", 50_000, 1);
    assert_eq!(
        hans.run("register my notes.txt"),
        [r#"Error. A file name with spaces goes in double quotes: register "my notes.txt""#]
    );
    hans.send(r#"register "my notes.txt" 4"#);
    assert_eq!(
        hans.expect("registered"),
        "my notes.txt registered (48.8 KiB, 4 chunks)"
    );
    let mut yoda = t.login("yoda");
    assert_eq!(
        yoda.run(r#"searchFile "my notes.txt""#),
        ["Available", "hans"]
    );
    assert_eq!(
        yoda.run(r#"searchChunk "my notes.txt" 4"#),
        ["Available", "Chunk 4: hans"]
    );
    yoda.send(r#"download "my notes.txt""#);
    yoda.expect("Downloaded my notes.txt");
    assert_eq!(std::fs::read(yoda.dir.join("my notes.txt")).unwrap(), bytes);
    // One chunk from one user, over a private session, by the quoted name too.
    let mut luke = t.login("luke");
    luke.open_private(&mut yoda);
    luke.send(r#"private yoda download "my notes.txt" 2"#);
    luke.expect("Downloaded chunk 2 of my notes.txt from yoda");
    assert_eq!(
        luke.run(r#"download "my notes.txt"#),
        [
            r#"Error. A quote is not closed: a file name with spaces goes in double quotes, as in register "my notes.txt""#
        ]
    );
}

#[test]
fn the_owner_replaces_a_file_and_holders_of_the_old_version_are_told() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    write(&hans.dir, "f.bin", 40_000, 1);
    hans.send("register f.bin");
    hans.expect("f.bin registered");
    let mut yoda = t.login("yoda");
    yoda.send("download f.bin");
    yoda.expect("Downloaded f.bin");
    // Only hans may register other contents under the name.
    write(&yoda.dir, "g.bin", 1_000, 2);
    std::fs::rename(yoda.dir.join("g.bin"), yoda.dir.join("f.bin")).unwrap();
    let new = write(&hans.dir, "f.bin", 30_000, 3);
    hans.send("register f.bin");
    assert_eq!(
        hans.expect("f.bin registered"),
        "f.bin registered (29.3 KiB, 10 chunks); it replaces your earlier version, whose holders were told"
    );
    yoda.expect(
        "hans replaced f.bin with a new version: your copy stays in your folder but is no \
         longer shared; move it aside, then download f.bin gets the new one",
    );
    let mut luke = t.login("luke");
    assert_eq!(luke.run("searchFile f.bin"), ["Available", "hans"]);
    luke.send("download f.bin");
    luke.expect("Downloaded f.bin (29.3 KiB) from hans");
    assert_eq!(std::fs::read(luke.dir.join("f.bin")).unwrap(), new);
    // yoda's (edited) copy cannot take the name.
    yoda.send("register f.bin");
    yoda.expect("Error. A different file named f.bin is already registered");
}

#[test]
fn unregister_withdraws_a_file_for_everyone_only_from_its_owner() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    write(&hans.dir, "f.bin", 20_000, 1);
    hans.send("register f.bin");
    hans.expect("f.bin registered");
    let mut yoda = t.login("yoda");
    yoda.send("download f.bin");
    yoda.expect("Downloaded f.bin");
    // vader downloads it too, and is away when it is withdrawn.
    let vader_dir = tempfile::tempdir().unwrap();
    let mut vader = t.login_in("vader", vader_dir.path());
    vader.send("download f.bin");
    vader.expect("Downloaded f.bin");
    vader.send("logout");
    assert!(vader.wait_exit().success());

    let mut luke = t.login("luke");
    // (Presence notices so far are not what this test reads.)
    yoda.sync();
    hans.sync();
    assert_eq!(
        luke.run("unregister f.bin"),
        ["Error. You are not sharing f.bin"]
    );
    assert_eq!(
        yoda.run("unregister f.bin"),
        ["Stopped sharing f.bin (your copy stays in your folder; others who hold it may still share it)"]
    );
    assert!(yoda.dir.join("f.bin").exists());
    assert_eq!(luke.run("searchFile f.bin"), ["Available", "hans"]);
    // yoda shares its copy again; then hans withdraws the name.
    yoda.send("register f.bin");
    yoda.expect("f.bin registered");
    assert_eq!(
        hans.run("unregister f.bin"),
        ["f.bin unregistered: nobody can download it now (your copy stays in your folder)"]
    );
    yoda.expect("hans withdrew f.bin: your copy stays in your folder but is no longer shared");
    assert_eq!(luke.run("searchFile f.bin"), ["Not available"]);
    // vader's client is told at its next login, and stops announcing it.
    let mut vader = t.login_in("vader", vader_dir.path());
    vader.expect(
        "f.bin is no longer registered (withdrawn by the user who registered it, or held by \
         nobody for long): your copy is not shared; register f.bin shares it again",
    );
    luke.sync(); // vader logged in
    assert_eq!(luke.run("searchFile f.bin"), ["Not available"]);
    // The name is free for anyone.
    write(&luke.dir, "f.bin", 5_000, 9);
    luke.send("register f.bin");
    luke.expect("f.bin registered (4.9 KiB, 10 chunks)");
    vader.send("logout");
    assert!(vader.wait_exit().success());
}

#[test]
fn a_file_changed_while_the_client_was_off_is_read_again_at_login() {
    let t = Tracker::start(60, 120);
    let hans_dir = tempfile::tempdir().unwrap();
    let mut hans = t.login_in("hans", hans_dir.path());
    write(&hans.dir, "a.bin", 20_000, 1);
    write(&hans.dir, "b.bin", 20_000, 2);
    for f in ["a.bin", "b.bin"] {
        hans.send(&format!("register {f}"));
        hans.expect(&format!("{f} registered"));
    }
    let yoda_dir = tempfile::tempdir().unwrap();
    let mut yoda = t.login_in("yoda", yoda_dir.path());
    yoda.send("download b.bin");
    yoda.expect("Downloaded b.bin");
    for p in [&mut hans, &mut yoda] {
        p.send("logout");
        assert!(p.wait_exit().success());
    }
    // Away: hans edits a.bin and only touches b.bin; yoda edits its copy of b.bin.
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    let new_a = write(hans_dir.path(), "a.bin", 25_000, 3);
    let b = std::fs::File::options()
        .write(true)
        .open(hans_dir.path().join("b.bin"))
        .unwrap();
    b.set_modified(later).unwrap();
    write(yoda_dir.path(), "b.bin", 20_000, 4);

    let mut hans = t.login_in("hans", hans_dir.path());
    let a_path = hans_dir.path().join("a.bin");
    let b_path = hans_dir.path().join("b.bin");
    hans.expect_all(&[
        format!("{} changed on disk; reading it again", a_path.display()),
        format!("{} changed on disk; reading it again", b_path.display()),
        "a.bin registered (24.4 KiB, 10 chunks); it replaces your earlier version".into(),
        "b.bin has the same contents; still sharing it".into(),
    ]);
    hans.sync(); // its announcement of b.bin is in
                 // A downloaded copy that changed is not the user's to register: only no longer shared.
    let mut yoda = t.login_in("yoda", yoda_dir.path());
    let yoda_b = yoda_dir.path().join("b.bin");
    yoda.expect(&format!(
        "{} changed on disk; no longer sharing it",
        yoda_b.display()
    ));
    let mut luke = t.login("luke");
    assert_eq!(luke.run("searchFile b.bin"), ["Available", "hans"]);
    luke.send("download a.bin");
    luke.expect("Downloaded a.bin");
    assert_eq!(std::fs::read(luke.dir.join("a.bin")).unwrap(), new_a);
}

#[test]
fn a_name_nobody_holds_is_released_after_the_configured_time() {
    let t = Tracker::start_args(60, 120, &["--release-after", "1"]);
    let mut hans = t.login("hans");
    write(&hans.dir, "f.bin", 1_000, 1);
    hans.send("register f.bin");
    hans.expect("f.bin registered");
    let mut luke = t.login("luke");
    write(&luke.dir, "f.bin", 2_000, 2);
    luke.send("register f.bin");
    luke.expect("Error. A different file named f.bin is already registered");
    hans.send("logout");
    assert!(hans.wait_exit().success());
    // Released about a second after hans left (the tracker looks once a second).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        luke.send("register f.bin");
        let line = luke.expect_any(
            &["f.bin registered", "Error. A different file"],
            Duration::from_secs(10),
        );
        if line.contains("registered (") {
            assert_eq!(line, "f.bin registered (2.0 KiB, 10 chunks)");
            break;
        }
        assert!(Instant::now() < deadline, "never released");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_file_edited_while_shared_is_never_served_stale_and_its_new_version_replaces_it() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    write(&hans.dir, "f.bin", 40_000, 1);
    hans.send("register f.bin");
    hans.expect("f.bin registered");
    // hans edits it in place, same size (the modification time tells).
    let new = write(&hans.dir, "f.bin", 40_000, 2);
    std::fs::File::options()
        .write(true)
        .open(hans.dir.join("f.bin"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    let mut yoda = t.login("yoda");
    yoda.send("download f.bin");
    let path = hans.dir.join("f.bin");
    hans.expect(&format!(
        "{} changed on disk; reading it again",
        path.display()
    ));
    hans.expect("f.bin registered (39.1 KiB, 10 chunks); it replaces your earlier version");
    yoda.expect(
        "hans replaced f.bin with a new version: its download stopped; download f.bin gets \
         the new one",
    );
    // The stopped download is gone from `transfers` once it has wound down.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !yoda.run("transfers").iter().any(|l| l == "No downloads") {
        assert!(Instant::now() < deadline, "the download never stopped");
    }
    yoda.send("download f.bin");
    yoda.expect("Downloaded f.bin (39.1 KiB) from hans");
    assert_eq!(std::fs::read(yoda.dir.join("f.bin")).unwrap(), new);
}

/// More files than the tracker takes announcements of at once (512): the client paces its
/// login announcements by the tracker's answers, so every file is shared again and the
/// user sees no error.
#[test]
fn a_client_sharing_more_files_than_one_burst_announces_them_all_at_login() {
    const FILES: usize = 520;
    let t = Tracker::start(60, 120);
    let dir = tempfile::tempdir().unwrap();
    let mut hans = t.login_in("hans", dir.path());
    for i in 0..FILES {
        std::fs::write(dir.path().join(format!("f{i:03}")), [i as u8; 3]).unwrap();
    }
    // `register` itself is limited to 300 at once (each read on a thread of its own, so
    // they answer in any order), then one per 50 ms.
    for i in 0..300 {
        hans.send(&format!("register f{i:03}"));
    }
    let all: Vec<String> = (0..300).map(|i| format!("f{i:03} registered")).collect();
    hans.expect_all(&all);
    for i in 300..FILES {
        std::thread::sleep(Duration::from_millis(60));
        hans.send(&format!("register f{i:03}"));
        hans.expect(&format!("f{i:03} registered"));
    }
    hans.send("logout");
    assert!(hans.wait_exit().success());
    let mut hans = t.login_in("hans", dir.path());
    let mut luke = t.login("luke");
    // Told on two connections: wait until the last one is announced, then check both.
    let deadline = Instant::now() + Duration::from_secs(10);
    while luke.run(&format!("searchFile f{:03}", FILES - 1)) != ["Available", "hans"] {
        assert!(Instant::now() < deadline, "never announced");
        // (Within luke's own limits on searches.)
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(luke.run("searchFile f000"), ["Available", "hans"]);
    let after_login: Vec<String> = hans
        .sync()
        .into_iter()
        .filter(|l| l.starts_with("Error"))
        .collect();
    assert_eq!(after_login, Vec::<String>::new());
}
