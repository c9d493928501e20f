//! Bad input and crashes: junk on the tracker port, a connection that never logs in, bad
//! command lines and credentials files, `kill -9` of the tracker.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

/// Junk, an oversized length prefix, a valid frame of the wrong kind and a silent
/// connection each cost only their own connection; logged-in users keep chatting.
#[test]
fn junk_on_the_tracker_port_does_not_disturb_logged_in_users() {
    let mut t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut yoda = t.login("yoda");
    hans.sync();

    let silent = TcpStream::connect(t.addr).unwrap();
    // Junk where TLS is expected (an HTTP request, a frame in clear), and junk inside TLS.
    let mut junk = TcpStream::connect(t.addr).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut clear = TcpStream::connect(t.addr).unwrap();
    clear
        .write_all(&bytes_of(&wire::ClientMsg::Hello {
            version: wire::PROTOCOL_VERSION,
        }))
        .unwrap();
    for (name, mut s) in [("junk", junk), ("a frame in clear", clear)] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(
            r.is_ok() || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{name}: {r:?}"
        );
    }
    let mut huge = Raw::connect(t.addr);
    huge.send_bytes(&u32::MAX.to_be_bytes());
    huge.send_bytes(&[0u8; 1024]);
    let mut no_hello = Raw::connect(t.addr);
    no_hello.send(&wire::ClientMsg::Request(wire::Request::WhoElse));
    // The tracker closes each bad connection: reads reach end of stream.
    for (name, mut s) in [("huge", huge), ("no hello", no_hello)] {
        assert_eq!(s.recv::<wire::ServerMsg>(), None, "{name}");
    }

    hans.send("message yoda still here");
    yoda.expect("hans: still here");
    let mut luke = t.login("luke");
    hans.expect("luke logged in");
    assert_eq!(luke.run("message hans hi"), Vec::<String>::new());
    hans.expect("luke: hi");
    assert!(t.alive());
    drop(silent);
    let log = t.log();
    assert!(log.contains("exceeds the 32768-byte limit"), "{log}");
}

fn bytes_of(msg: &wire::ClientMsg) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    wire::encode(msg, &mut buf, wire::MAX_FRAME_LEN).unwrap();
    buf.to_vec()
}

/// `kill -9` of the tracker loses nothing that was acknowledged: offline messages and
/// block lists survive a restart on the same state.
#[test]
fn kill_9_keeps_offline_messages_and_blocks() {
    kill_9_keeps_what_was_acknowledged(Tracker::start(60, 120));
}

/// The same with the state in PostgreSQL (`--store`).
#[test]
fn kill_9_keeps_offline_messages_and_blocks_in_postgres() {
    let pg = harness::servers::Postgres::start();
    let url = pg.database("swarmchat");
    kill_9_keeps_what_was_acknowledged(Tracker::start_args(60, 120, &["--store", &url]));
}

fn kill_9_keeps_what_was_acknowledged(t: Tracker) {
    let port = t.port();
    let mut hans = t.login("hans");
    let mut yoda = t.login("yoda");
    hans.expect("yoda logged in");
    assert_eq!(yoda.run("block hans"), ["hans is blocked"]);
    assert_eq!(
        hans.run("message luke first"),
        ["luke is offline; the message will be delivered when they log in"]
    );
    assert_eq!(
        hans.run("message luke second"),
        ["luke is offline; the message will be delivered when they log in"]
    );
    let t = t.crash_and_restart();
    // The clients notice the tracker went away and exit with an error status.
    assert!(!hans.wait_exit().success());
    assert!(!yoda.wait_exit().success());
    assert_ne!(t.port(), 0);
    let _ = port;

    let mut luke = t.login("luke");
    assert_eq!(luke.next_line(), "hans: first");
    assert_eq!(luke.next_line(), "hans: second");
    let mut hans = t.login("hans");
    assert_eq!(
        hans.run("message yoda after restart"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
}

/// The tracker prints nothing at all without `-d`.
#[test]
fn tracker_is_silent_without_debug_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.txt"), CREDENTIALS).unwrap();
    // Without -d the tracker cannot tell us its port, so reserve one from the OS first.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin("tracker"))
        .args([&port.to_string(), "60", "120", "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut connected = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(connected, "tracker did not start listening");
    {
        let mut hans = Peer::start(addr);
        hans.login("hans");
        hans.run("whatsthetime");
        hans.send("logout");
        assert!(hans.wait_exit().success());
        assert!(
            !hans.transcript().contains("[stderr]"),
            "{}",
            hans.transcript()
        );
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_tracker(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("tracker"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn bad_tracker_command_lines_and_credentials_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_tracker(dir.path(), &["4000", "60"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));

    let out = run_tracker(dir.path(), &["4000", "sixty", "120"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BLOCK_DURATION"));

    // Missing file: named.
    let out = run_tracker(dir.path(), &["0", "60", "120", "--bind", "127.0.0.1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials.txt"));

    // Malformed line: file and line named.
    std::fs::write(dir.path().join("creds.txt"), "hans falcon\r\nyoda\r\n").unwrap();
    let out = run_tracker(
        dir.path(),
        &[
            "0",
            "60",
            "120",
            "--bind",
            "127.0.0.1",
            "--credentials",
            "creds.txt",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("creds.txt:2"), "{err}");

    // A store that is not PostgreSQL's, and one nobody answers at: named.
    std::fs::write(dir.path().join("credentials.txt"), "hans falcon\n").unwrap();
    let base = ["0", "60", "120", "--bind", "127.0.0.1", "--store"];
    let out = run_tracker(dir.path(), &[&base[..], &["mysql://db/chat"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--store") && err.contains("postgres://"),
        "{err}"
    );
    let nobody = format!(
        "postgres://swarm@127.0.0.1:{}/chat",
        harness::servers::free_port()
    );
    let out = run_tracker(dir.path(), &[&base[..], &[nobody.as_str()]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the state database") && err.contains(&nobody),
        "{err}"
    );
}

#[test]
fn bad_peer_command_lines_are_reported() {
    let out = Command::new(bin("peer")).arg("127.0.0.1").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));

    // Nothing listens on a port we just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No `--dir`: the default, the working folder, is a temp one so nothing is left here.
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(bin("peer"))
        .args(["127.0.0.1", &port.to_string()])
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot connect to the server"));
}

/// A client that pipelines many requests in one write gets every reply, in order: none is
/// lost when the tracker batches its answers.
#[test]
fn pipelined_requests_all_get_replies_in_order() {
    use wire::{ClientMsg, Reply, Request, ServerMsg, Text, UserName};
    let t = Tracker::start(60, 120);
    let mut yoda = t.login("yoda");
    let mut raw = Raw::login(t.addr, "hans");
    let mut burst = bytes::BytesMut::new();
    let n = 1000;
    for i in 0..n {
        let req = if i % 2 == 0 {
            Request::Activity
        } else {
            Request::Message {
                to: UserName::new("yoda").unwrap(),
                text: Text::new(format!("burst {i}")).unwrap(),
            }
        };
        wire::encode(&ClientMsg::Request(req), &mut burst, wire::MAX_FRAME_LEN).unwrap();
    }
    raw.send_bytes(&burst);
    for i in 0..n {
        let reply = loop {
            match raw.recv::<ServerMsg>() {
                Some(ServerMsg::Reply(r)) => break r,
                Some(ServerMsg::Event(_)) => continue,
                other => panic!("reply {i}: {other:?}"),
            }
        };
        if i % 2 == 0 {
            assert_eq!(reply, Reply::Active, "reply {i}");
        } else {
            assert!(
                matches!(reply, Reply::Sent { stored: false, .. }),
                "reply {i}: {reply:?}"
            );
        }
    }
    yoda.expect("hans: burst 999");
    let received = yoda.transcript().matches("hans: burst").count();
    assert_eq!(received, n / 2);
}
