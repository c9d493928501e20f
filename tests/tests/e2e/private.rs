//! Private (peer-to-peer) chat: section 8's sample 7, the refusals, session lifetime, and
//! that nobody can pose as someone else on a peer's listener.

use std::time::Duration;

use wire::{
    PeerMsg, PeerRefusal, Purpose, Refusal, Reply, Request, Text, Ticket, UserName,
    PROTOCOL_VERSION,
};

use harness::service::Service;
use harness::*;

on_both!(sample_7_private_messages_both_ways, 60, 120);
on_both!(
    stopprivate_tells_the_other_side_and_ends_the_session,
    60,
    120
);
on_both!(end_of_input_closes_private_sessions, 60, 120);
on_both!(a_peer_killed_mid_session_is_reported_gone, 60, 120);

/// Sample 7 line by line.
fn sample_7_private_messages_both_ways(s: &Service) {
    let mut hans = s.login("hans");
    let mut yoda = s.login("yoda");
    let mut luke = s.login("luke");
    hans.sync();
    yoda.sync();

    assert_eq!(
        hans.run("private luke hey dude"),
        ["Error. Private messaging to luke not enabled"]
    );
    hans.open_private(&mut luke);
    hans.send("private luke hey dude");
    luke.expect("hans(private): hey dude");
    // luke answers without a startprivate of his own.
    luke.send("private hans hello");
    hans.expect("luke(private): hello");
    // Relayed messages still work alongside.
    hans.send("message yoda force is strong");
    yoda.expect("hans: force is strong");
    hans.send("logout");
    assert!(hans.wait_exit().success());
    yoda.expect("hans logged out");
    // The farewell comes over the private connection, the notice from the tracker: they
    // arrive in either order.
    luke.expect_all(&[
        "hans stopped private messaging".into(),
        "hans logged out".into(),
    ]);
    assert!(
        !yoda.transcript().contains("(private)"),
        "yoda saw none of it"
    );
}

#[test]
fn startprivate_refusals() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut luke = t.login("luke");
    hans.sync();
    assert_eq!(hans.run("startprivate bob"), ["Error. Invalid user"]);
    assert_eq!(
        hans.run("startprivate hans"),
        ["Error. Cannot start private messaging with self"]
    );
    assert_eq!(hans.run("startprivate vader"), ["Error. vader is offline"]);
    assert_eq!(luke.run("block hans"), ["hans is blocked"]);
    assert_eq!(
        hans.run("startprivate luke"),
        ["Error. Cannot start private messaging as luke has blocked you"]
    );
    // Refused while luke is offline too, without saying whether he is online.
    luke.send("logout");
    assert!(luke.wait_exit().success());
    assert_eq!(
        hans.run("startprivate luke"),
        ["Error. Cannot start private messaging as luke has blocked you"]
    );
    // The block is one-way.
    let mut luke = t.login("luke");
    luke.open_private(&mut hans);
}

/// The spec: a session started before a block stays usable.
#[test]
fn a_session_started_before_a_block_stays_usable() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut luke = t.login("luke");
    hans.open_private(&mut luke);
    assert_eq!(luke.run("block hans"), ["hans is blocked"]);
    hans.send("private luke still here");
    luke.expect("hans(private): still here");
    assert_eq!(
        hans.run("message luke relayed"),
        ["Your message could not be delivered as the recipient has blocked you"]
    );
}

fn stopprivate_tells_the_other_side_and_ends_the_session(s: &Service) {
    let mut hans = s.login("hans");
    let mut luke = s.login("luke");
    hans.open_private(&mut luke);
    assert_eq!(
        hans.run("startprivate luke"),
        ["Private messaging with luke is already enabled"]
    );
    assert_eq!(
        hans.run("stopprivate luke"),
        ["Stopped private messaging with luke"]
    );
    luke.expect("hans stopped private messaging");
    assert_eq!(
        luke.run("private hans are you there"),
        ["Error. Private messaging to hans not enabled"]
    );
    assert_eq!(
        hans.run("stopprivate luke"),
        ["Error. No private messaging session with luke"]
    );
    // It can be started again.
    luke.send("startprivate hans");
    luke.expect("Start private messaging with hans");
    luke.send("private hans back again");
    hans.expect("luke(private): back again");
}

/// End of input logs out and closes private sessions, telling the other side.
fn end_of_input_closes_private_sessions(s: &Service) {
    let mut hans = s.login("hans");
    let mut luke = s.login("luke");
    let mut leia = s.login("leia");
    hans.send("startprivate luke");
    hans.expect("Start private messaging with luke");
    hans.send("startprivate leia");
    hans.expect("Start private messaging with leia");
    hans.close_stdin();
    assert!(hans.wait_exit().success());
    luke.expect("hans stopped private messaging");
    leia.expect("hans stopped private messaging");
}

/// A peer killed mid-session: the other side is told it is gone when it next writes.
fn a_peer_killed_mid_session_is_reported_gone(s: &Service) {
    let mut hans = s.login("hans");
    let mut luke = s.login("luke");
    hans.open_private(&mut luke);
    luke.kill();
    hans.expect("luke logged out");
    assert_eq!(
        hans.run("private luke hello?"),
        ["luke is no longer online"]
    );
    // Once told, it reads as any private message to an offline user (spec 3.4).
    assert_eq!(hans.run("private luke hello?"), ["Error. luke is offline"]);
}

/// Private commands count as activity: hans types only private messages and stays logged
/// in past the 2-second timeout; idle luke is logged out, and the session with him ends.
#[test]
fn private_commands_count_as_activity() {
    // A 3 s timeout: luke, idle, is logged out after it; hans, typing a private message
    // every 0.4 s until well past it, never is. (With a 2 s timeout and a message every
    // 0.5 s the test failed once, the whole suite running beside a busy loop on 2 cores.)
    let t = Tracker::start(60, 3);
    let mut hans = t.login("hans");
    let mut luke = t.login("luke");
    hans.send("startprivate luke");
    hans.expect("Start private messaging with luke");
    for i in 0..12 {
        hans.send(&format!("private luke tick {i}"));
        std::thread::sleep(Duration::from_millis(400));
    }
    luke.expect("You have been logged out due to inactivity");
    assert!(luke.wait_exit().success());
    // Two connections (tracker and private), so either order.
    hans.expect_all(&[
        "luke logged out".into(),
        "luke stopped private messaging".into(),
    ]);
    assert!(!hans.transcript().contains("You have been logged out"));
}

fn grant_of(reply: Reply) -> (std::net::SocketAddr, Ticket, wire::PeerKey) {
    match reply {
        Reply::PrivateGranted {
            addr, ticket, key, ..
        } => (addr, ticket, key),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn hello(ticket: Ticket) -> PeerMsg {
    PeerMsg::Hello {
        version: PROTOCOL_VERSION,
        ticket,
        purpose: Purpose::Chat,
    }
}

/// Nobody can pose as someone else: the listener takes the sender's name from a ticket the
/// tracker issued *and* the key the tracker vouched for with it; each ticket works once; a
/// program holding another key gets nowhere even with a real ticket (which stays good for
/// its owner); a dialler is told when the listener does not hold the key the tracker gave;
/// forged tickets and junk get nowhere; and the real session is undisturbed throughout.
#[test]
fn forged_stolen_and_reused_tickets_are_refused() {
    let t = Tracker::start(60, 120);
    let mut hans = t.login("hans");
    let mut luke = t.login("luke");
    hans.open_private(&mut luke);

    // yoda, speaking the protocol by hand, is granted a ticket. Someone else who got hold
    // of it (a program holding another key) is refused, and the ticket is not used up...
    let mut yoda = Raw::login(t.addr, "yoda");
    let (addr, ticket, luke_key) = grant_of(yoda.request(Request::StartPrivate {
        user: UserName::new("luke").unwrap(),
    }));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let thief = link::noise::Identity::generate();
    let (_, answer) = Raw::dial_peer(addr, &thief, &luke_key, &hello(ticket)).unwrap();
    assert_eq!(answer, PeerMsg::Refused(PeerRefusal::WrongKey));

    // ...so yoda still opens the session with it, and luke sees the name that came with
    // the ticket.
    let (mut p2p, answer) =
        Raw::dial_peer(addr, &yoda.identity, &luke_key, &hello(ticket)).unwrap();
    assert_eq!(answer, PeerMsg::Accepted);
    p2p.send(&PeerMsg::Text {
        text: Text::new("it is me, yoda").unwrap(),
    });
    luke.expect("yoda(private): it is me, yoda");

    // The same ticket again: refused.
    let (mut reuse, answer) =
        Raw::dial_peer(addr, &yoda.identity, &luke_key, &hello(ticket)).unwrap();
    assert_eq!(answer, PeerMsg::Refused(PeerRefusal::BadTicket));
    assert_eq!(reuse.recv::<PeerMsg>(), None, "and closed");

    // A listener that does not hold the key the tracker gave (yoda dials luke's port
    // believing it holds hans's key): the handshake fails on yoda's side.
    let (_, _, hans_key) = grant_of(yoda.request(Request::StartPrivate {
        user: UserName::new("hans").unwrap(),
    }));
    let (_, fresh, _) = grant_of(yoda.request(Request::StartPrivate {
        user: UserName::new("luke").unwrap(),
    }));
    assert!(Raw::dial_peer(addr, &yoda.identity, &hans_key, &hello(fresh)).is_err());

    // A blocked user scanning for the port with a made-up ticket: refused.
    assert_eq!(luke.run("block vader"), ["vader is blocked"]);
    let mut vader = Raw::login(t.addr, "vader");
    assert_eq!(
        vader.request(Request::StartPrivate {
            user: UserName::new("luke").unwrap()
        }),
        Reply::Refused(Refusal::BlockedByRecipient {
            user: UserName::new("luke").unwrap()
        })
    );
    let forged = Raw::dial_peer(addr, &vader.identity, &luke_key, &hello(Ticket([0x42; 16])));
    assert_eq!(forged.unwrap().1, PeerMsg::Refused(PeerRefusal::BadTicket));

    // A frame in clear, junk, and an oversized length: closed without an answer.
    let mut early = Raw::connect_plain(addr);
    early.send(&PeerMsg::Text {
        text: Text::new("hans here, honest").unwrap(),
    });
    assert_eq!(early.recv::<PeerMsg>(), None);
    let mut junk = Raw::connect_plain(addr);
    junk.send_bytes(b"\x00\x03abc");
    assert_eq!(junk.recv::<PeerMsg>(), None);
    let mut huge = Raw::connect_plain(addr);
    huge.send_bytes(&u16::MAX.to_be_bytes());
    assert_eq!(huge.recv::<PeerMsg>(), None);

    // The real session kept working, both ways.
    hans.send("private luke still fine?");
    luke.expect("hans(private): still fine?");
    luke.send("private hans yes");
    hans.expect("luke(private): yes");
    assert!(!luke.transcript().contains("hans here, honest"));
}

/// A client can only name a port, never an address: the tracker sends others to the
/// address the client's connection comes from, after checking that something answers
/// there. One that names a port it does not listen on is told nobody can reach it, and a
/// peer asking to talk to it is not sent to that port: the liar is asked to connect out.
#[test]
fn a_client_naming_a_port_it_does_not_listen_on_gains_nothing() {
    use wire::{Event, ServerMsg, Via};
    let t = Tracker::start(60, 120);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut liar = Raw::login_p2p(t.addr, "vader", port);
    let told = (0..8).find_map(|_| match liar.recv::<ServerMsg>() {
        Some(ServerMsg::Event(Event::Reachability {
            observed,
            reachable,
        })) => Some((observed, reachable)),
        _ => None,
    });
    let (observed, reachable) = told.expect("a reachability event");
    assert!(!reachable, "nothing listens on {port}");
    assert_eq!(observed.ip(), std::net::Ipv4Addr::LOCALHOST);
    let mut hans = t.login("hans");
    hans.reachability();
    hans.send("startprivate vader");
    // vader is asked to connect to hans's real listener, not hans to vader's claim.
    let ticket = (0..8).find_map(|_| match liar.recv::<ServerMsg>() {
        Some(ServerMsg::Event(Event::PrivateTicket { via, addr, .. })) => Some((via, addr)),
        _ => None,
    });
    let (via, addr) = ticket.expect("a ticket for vader");
    assert!(matches!(via, Via::Reversed { .. }), "{via:?}");
    assert_ne!(addr.port(), port);
    // Nobody connects back for the liar, so hans's start fails in a while, with the reason.
    hans.expect_within(
        "Error. Could not start private messaging with vader: cannot be reached, and did not connect to us in turn",
        Duration::from_secs(15),
    );
}
