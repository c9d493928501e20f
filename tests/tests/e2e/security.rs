//! What crosses the network: TLS to the tracker (nothing a user types in clear on the
//! tracker's port), the tracker's key trusted on first use, a changed key refused, a
//! pinned one accepted.

use std::time::Duration;

use harness::*;

/// Peer `user` through `via`, with extra command-line `args`, logged in.
fn peer_via(via: std::net::SocketAddr, user: &str, args: &[&str]) -> Peer {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut p = Peer::start_on(&Place::local(), via, dir, Some(tmp), args);
    p.login(user);
    p
}

/// A tap between the clients and the tracker sees every byte of two users logging in,
/// messaging and broadcasting; none of it is a password or a text. The same through a
/// tracker and clients started `--insecure-plaintext` shows both in clear (so the tap
/// does see what crosses it).
#[test]
fn nothing_a_user_types_crosses_the_trackers_port_in_clear() {
    let said = "the plans are in the droid";
    let shouted = "everyone to the escape pods";
    for (extra, clear) in [(&[][..], false), (&["--insecure-plaintext"][..], true)] {
        let t = Tracker::start_args(60, 120, extra);
        let tap = Tap::start(t.addr);
        let mut hans = peer_via(tap.addr, "hans", extra);
        let mut yoda = peer_via(tap.addr, "yoda", extra);
        hans.expect("yoda logged in");
        hans.send(&format!("message yoda {said}"));
        yoda.expect(&format!("hans: {said}"));
        yoda.send(&format!("broadcast {shouted}"));
        hans.expect(&format!("yoda: {shouted}"));
        assert!(
            tap.len() > 300,
            "the tap carried the sessions: {} bytes",
            tap.len()
        );
        for secret in [password("hans"), password("yoda"), said, shouted] {
            assert_eq!(
                tap.saw(secret),
                clear,
                "{secret:?} in clear: {}",
                tap.saw(secret)
            );
        }
    }
}

/// First connection: the client says it now remembers the tracker's key; the next one
/// says nothing. The tracker comes back with a new key at the same address: refused, and
/// the user is told what to do; pinning the new key (what `tracker fingerprint` prints)
/// lets them in, pinning the old one does not.
#[test]
fn a_changed_tracker_key_is_refused_and_a_pinned_one_decides() {
    let t = Tracker::start(60, 120);
    let dir = tempfile::tempdir().unwrap();
    let old = t.fingerprint();

    let mut first = Peer::start_in(t.addr, dir.path().to_owned(), None);
    let line = first.expect("First connection to the server at");
    assert!(line.contains(&old), "{line}");
    assert!(line.contains("known_trackers"), "{line}");
    first.login("hans");
    first.send("logout");
    assert!(first.wait_exit().success());

    let mut second = Peer::start_in(t.addr, dir.path().to_owned(), None);
    second.login("hans");
    let shown = second.transcript();
    assert!(!shown.contains("First connection"), "{shown}");
    second.send("logout");
    assert!(second.wait_exit().success());

    let t = t.restart_with_new_key();
    let new = t.fingerprint();
    assert_ne!(new, old);
    let mut refused = Peer::start_in(t.addr, dir.path().to_owned(), None);
    let line = refused.expect_any(&["Error.", "Username:"], WAIT);
    assert!(
        line.contains(&format!(
            "presented the key {new}, not the key {old} remembered in"
        )) && line.contains("delete its line from that file"),
        "{line}"
    );
    assert!(!refused.wait_exit().success());

    let pin = |fp: &str| {
        let args = ["--tracker-fingerprint", fp];
        Peer::start_on(&Place::local(), t.addr, dir.path().to_owned(), None, &args)
    };
    let mut pinned = pin(&new);
    pinned.login("hans");
    pinned.send("logout");
    assert!(pinned.wait_exit().success());
    let mut wrong = pin(&old);
    let line = wrong.expect_any(&["Error.", "Username:"], Duration::from_secs(15));
    assert!(line.contains("given with --tracker-fingerprint"), "{line}");
    assert!(!wrong.wait_exit().success());
}

/// Between two peers: a private chat and a chunk fetched over it cross loopback only
/// encrypted (a packet capture of the whole interface never holds the text or 64 bytes of
/// the file); with `--insecure-plaintext` on all sides the same capture holds both.
#[test]
fn nothing_crosses_between_peers_in_clear() {
    let data = random_bytes(300_000, 0x5eed_0013);
    let window = &data[150_000..150_064];
    for (extra, clear) in [(&[][..], false), (&["--insecure-plaintext"][..], true)] {
        let said = format!("meet me at docking bay {}", if clear { 94 } else { 327 });
        let sniffer = Sniffer::start();
        let t = Tracker::start_args(60, 120, extra);
        let mut hans = t.login_args("hans", extra);
        let mut luke = t.login_args("luke", extra);
        std::fs::write(hans.dir.join("plans.bin"), &data).unwrap();
        hans.send("register plans.bin 1");
        hans.expect("plans.bin registered");
        luke.open_private(&mut hans);
        luke.send(&format!("private hans {said}"));
        hans.expect(&format!("luke(private): {said}"));
        luke.send("private hans download plans.bin 1");
        luke.expect("Downloaded chunk 1 of plans.bin from hans");
        assert!(std::fs::read(luke.dir.join("plans.bin")).unwrap() == data);
        sniffer.catch_up();
        assert_eq!(
            sniffer.saw(said.as_bytes()),
            clear,
            "the text, clear={clear}"
        );
        assert_eq!(
            sniffer.saw(window),
            clear,
            "the file's bytes, clear={clear}"
        );
    }
}
