//! What a new user trips over (issue 12): things that are not files, small counts, a
//! broadcast to nobody, numbers too large to type.

use harness::*;

#[test]
fn a_broadcast_with_nobody_else_online_says_it_reached_no_one() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    assert_eq!(
        hans.run("broadcast anyone there?"),
        ["No other users are online: your broadcast reached no one"]
    );
    let mut yoda = t.login("yoda");
    hans.expect("yoda logged in");
    assert_eq!(hans.run("broadcast hi yoda"), Vec::<String>::new());
    yoda.expect("hans: hi yoda");
    // Reaching nobody because the only other user blocked us reads as the spec says.
    yoda.run("block hans");
    assert_eq!(
        hans.run("broadcast still there?"),
        ["Your message could not be delivered to some recipients"]
    );
}

#[test]
fn counts_of_one_read_as_words_and_fewer_chunks_are_explained() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    // Numbers past 64 bits: `the_largest_whoelsesince_covers_everyone_seen`.
    assert_eq!(
        hans.run("whoelsesince 12abc"),
        ["Error. Usage: whoelsesince <seconds>"]
    );

    std::fs::write(hans.dir.join("one.txt"), b"x").unwrap();
    hans.send("register one.txt");
    hans.expect(
        "one.txt registered (1 byte, 1 chunk of 1 byte: chunks are all one size, \
         so 1 byte cannot make 10)",
    );
    std::fs::write(hans.dir.join("thirteen.txt"), b"0123456789abc").unwrap();
    hans.send("register thirteen.txt");
    hans.expect(
        "thirteen.txt registered (13 bytes, 7 chunks of 2 bytes: chunks are all one size, \
         so 13 bytes cannot make 10)",
    );
    std::fs::write(hans.dir.join("twenty.txt"), [7u8; 20]).unwrap();
    hans.send("register twenty.txt");
    let line = hans.expect("twenty.txt registered");
    assert_eq!(line, "twenty.txt registered (20 bytes, 10 chunks)");
    hans.send("register twice.txt 1");
    hans.expect("twice.txt: No such file");
    std::fs::write(hans.dir.join("single.txt"), [1u8; 5]).unwrap();
    hans.send("register single.txt 1");
    let line = hans.expect("single.txt registered");
    assert_eq!(line, "single.txt registered (5 bytes, 1 chunk)");
}

#[test]
fn only_regular_files_are_shared_and_logout_still_exits() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let fifo = hans.dir.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", hans.dir.join("zeros")).unwrap();
    std::fs::create_dir(hans.dir.join("folder")).unwrap();
    for name in ["pipe", "zeros", "folder"] {
        hans.send(&format!("register {name}"));
        let line = hans.expect("is not a regular file");
        assert!(
            line.starts_with("Error. ")
                && line.ends_with(&format!(
                    "{name} is not a regular file: only regular files can be shared"
                )),
            "{line}"
        );
    }
    // Nothing was registered, and the client is not stuck on any of them.
    assert_eq!(hans.run("searchFile pipe"), ["Not available"]);
    hans.send("logout");
    hans.expect("Logged out");
    assert!(hans.wait_exit().success());
}

/// Spec 3.4: `private` without a session gives startprivate's errors for an invalid,
/// offline or own name, and sample 7's for an online user; a download with its chunk
/// number forgotten is a usage error, never chat text.
#[test]
fn private_without_a_session_says_why() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut yoda = t.login("yoda");
    hans.expect("yoda logged in");
    assert_eq!(hans.run("private bob hi"), ["Error. Invalid user"]);
    assert_eq!(
        hans.run("private hans hi"),
        ["Error. Cannot start private messaging with self"]
    );
    assert_eq!(hans.run("private vader hi"), ["Error. vader is offline"]);
    assert_eq!(
        hans.run("private yoda hi"),
        ["Error. Private messaging to yoda not enabled"]
    );
    assert_eq!(
        hans.run("private yoda download f.bin"),
        ["Error. Usage: private <user> download <file> <chunk>, chunks numbered from 1"]
    );
    yoda.run("block hans");
    assert_eq!(
        hans.run("private yoda hi"),
        ["Error. Cannot start private messaging as yoda has blocked you"]
    );
    // yoda was sent nothing, not even the malformed download.
    assert!(
        !yoda.transcript().contains("hans(private)"),
        "{}",
        yoda.transcript()
    );
}

/// Spec 3.5's `searchChunk` answer (`Available` and the holders, or `Not available`), and
/// a user's own searches count what they hold.
#[test]
fn searches_say_available_or_not_and_count_what_you_hold() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    std::fs::write(hans.dir.join("f.bin"), [9u8; 1000]).unwrap();
    hans.send("register f.bin");
    hans.expect("f.bin registered");
    assert_eq!(hans.run("searchFile f.bin"), ["Available (you hold it)"]);
    assert_eq!(
        hans.run("searchChunk f.bin 1 2"),
        ["Available", "Chunk 1: you", "Chunk 2: you"]
    );
    let mut yoda = t.login("yoda");
    yoda.open_private(&mut hans);
    yoda.send("private hans download f.bin 2");
    yoda.expect("Downloaded chunk 2 of f.bin from hans");
    yoda.sync(); // its announcement of chunk 2 is in
    assert_eq!(
        yoda.run("searchChunk f.bin 1 2"),
        ["Available", "Chunk 1: hans", "Chunk 2: you, hans"]
    );
    assert_eq!(
        hans.run("searchFile f.bin"),
        ["Available (you hold it)", "yoda"]
    );
    hans.send("logout");
    assert!(hans.wait_exit().success());
    // Told on two connections, in either order.
    yoda.expect_all(&[
        "hans stopped private messaging".into(),
        "hans logged out".into(),
    ]);
    assert_eq!(
        yoda.run("searchChunk f.bin 2"),
        ["Available", "Chunk 2: you"]
    );
    let mut luke = t.login("luke");
    assert_eq!(luke.run("searchChunk f.bin 1"), ["Not available"]);
    assert_eq!(
        luke.run("searchChunk f.bin 1 2"),
        ["Available", "Chunk 1: Not available", "Chunk 2: yoda"]
    );
}

/// A second client started on a folder in use refuses at once, before asking for a
/// name, and the first carries on.
#[test]
fn a_second_client_on_the_same_folder_refuses_to_start() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut second = Peer::start_in(t.addr, hans.dir.clone(), None);
    let line = second.expect("another client is already using the folder");
    assert!(line.ends_with("give each client its own --dir"), "{line}");
    assert!(!second.wait_exit().success());
    assert!(!second.transcript().contains("Username:"));
    assert_eq!(hans.run("whoelse"), ["No other users are online"]);
    hans.send("logout");
    assert!(hans.wait_exit().success());
    // Once the first has gone the folder is free again.
    let mut again = Peer::start_in(t.addr, hans.dir.clone(), None);
    again.login("hans");
}

/// Logging out while `register` is still reading its file says it was not registered,
/// and the client exits without waiting for the read to finish.
#[test]
fn logout_during_a_register_says_it_was_dropped_and_exits() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    // 64 GiB of holes: reading it takes far longer than the test (and costs no disk).
    let f = std::fs::File::create(hans.dir.join("huge.bin")).unwrap();
    f.set_len(64 << 30).unwrap();
    hans.send("register huge.bin");
    hans.send("logout");
    hans.expect("Error. huge.bin was still being read when you logged out; it was not registered");
    hans.expect("Logged out");
    assert!(hans.wait_exit().success());
    let mut yoda = t.login("yoda");
    assert_eq!(yoda.run("searchFile huge.bin"), ["Not available"]);
}

/// The longest name the client can keep its state for is shared and downloaded; one byte
/// more is refused before anything is registered, with the limit named.
#[test]
fn file_names_are_checked_against_what_the_folder_can_hold() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let longest = "n".repeat(wire::MAX_FILE_NAME);
    let too_long = "n".repeat(wire::MAX_FILE_NAME + 1);
    let data = random_bytes(50_000, 21);
    std::fs::write(hans.dir.join(&longest), &data).unwrap();
    std::fs::write(hans.dir.join(&too_long), &data).unwrap();
    assert_eq!(
        hans.run(&format!("register {too_long}")),
        [format!(
            "Error. file name is longer than {} bytes",
            wire::MAX_FILE_NAME
        )]
    );
    hans.send(&format!("register {longest}"));
    hans.expect(&format!("{longest} registered (48.8 KiB, 10 chunks)"));
    let mut yoda = t.login("yoda");
    yoda.send(&format!("download {longest}"));
    yoda.expect(&format!("Downloaded {longest} ("));
    assert_eq!(std::fs::read(yoda.dir.join(&longest)).unwrap(), data);
    assert_eq!(
        yoda.run(&format!("searchFile {too_long}")),
        [format!(
            "Error. file name is longer than {} bytes",
            wire::MAX_FILE_NAME
        )]
    );
}
