//! Users behind home routers (the lab's NAT routers, see tests/src/lab.rs): private chat and
//! chunk transfers between every pair of a user with a public address, one behind a router
//! that keeps ports ("cone") and one behind a router that gives every connection a random
//! port ("symmetric"), each way. Needs root.
//!
//! What the tracker decides (`tracker::route`): a public target is dialled directly, a
//! target behind NAT is dialled back from a public requester (reversal), two cone users
//! punch through, and anything with a symmetric router on both ends of a punch goes through
//! the relay. Users see only the last: "(through the server's relay)".

use std::time::Duration;

use harness::*;

/// A tracker on host 0 (public), and `kinds` hosts: `None` public, `Some(nat)` behind a
/// router of that kind.
struct NatNet {
    lab: Lab,
    tracker: Tracker,
    hosts: Vec<usize>,
}

fn nat_net(kinds: &[Option<Nat>], tracker_args: &[&str]) -> NatNet {
    let publics = kinds.iter().filter(|k| k.is_none()).count();
    let mut lab =
        Lab::new(&vec![Link::FREE; 1 + publics]).unwrap_or_else(|e| panic!("the network lab: {e}"));
    let tracker = Tracker::start_on_args(lab.place(0), lab.ip(0), tracker_args);
    let mut next_public = 1;
    let hosts = kinds
        .iter()
        .map(|k| match k {
            None => {
                next_public += 1;
                next_public - 1
            }
            Some(nat) => lab
                .add_behind_nat(Link::FREE, *nat)
                .unwrap_or_else(|e| panic!("a NAT router: {e}")),
        })
        .collect();
    NatNet {
        lab,
        tracker,
        hosts,
    }
}

impl NatNet {
    /// `user` logged in on the `i`th host of `kinds`, once the tracker has told it whether
    /// others can connect to it.
    fn peer(&self, i: usize, user: &str) -> Peer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let place = self.lab.place(self.hosts[i]);
        let mut p = Peer::start_on(&place, self.tracker.addr, dir, Some(tmp), &[]);
        p.login(user);
        p.reachability();
        p
    }
}

const PUBLIC: Option<Nat> = None;
const CONE: Option<Nat> = Some(Nat::Cone);
const SYMMETRIC: Option<Nat> = Some(Nat::Symmetric);

/// Two users of each kind, on hosts of their own.
const SIX: [Option<Nat>; 6] = [PUBLIC, PUBLIC, CONE, CONE, SYMMETRIC, SYMMETRIC];

/// Indices into [`SIX`]: every ordered pair of kinds (requester or downloader first), the
/// second user of a kind for its pair with itself.
const PAIRS: [(usize, usize); 9] = [
    (0, 1),
    (0, 2),
    (0, 4),
    (2, 0),
    (2, 3),
    (2, 4),
    (4, 0),
    (4, 2),
    (4, 5),
];

/// The lab of [`SIX`], each user logged in and told its reachability.
fn six_users() -> (NatNet, Vec<Peer>) {
    let n = nat_net(&SIX, &[]);
    let names = ["hans", "yoda", "luke", "leia", "vader", "r2d2"];
    let users = names
        .iter()
        .enumerate()
        .map(|(i, u)| n.peer(i, u))
        .collect();
    (n, users)
}

/// Whether a connection between these two kinds has to go through the relay.
fn relayed(a: Option<Nat>, b: Option<Nat>) -> bool {
    !matches!(
        (a, b),
        (None, _) | (_, None) | (Some(Nat::Cone), Some(Nat::Cone))
    )
}

#[test]
fn the_tracker_tells_each_user_whether_others_can_connect_to_it() {
    let n = nat_net(&[PUBLIC, CONE, SYMMETRIC], &[]);
    let mut users: Vec<Peer> = ["hans", "luke", "vader"]
        .iter()
        .enumerate()
        .map(|(i, u)| n.peer(i, u))
        .collect();
    for (i, p) in users.iter_mut().enumerate() {
        let line = p.reachability();
        let at = n.lab.public_ip(n.hosts[i]).to_string();
        assert!(line.contains(&format!("sees you at {at};")), "{line}");
        let reachable = i == 0;
        assert_eq!(
            line.contains("others can connect to you"),
            reachable,
            "{}: {line}",
            p.name
        );
    }
}

/// Private chat opens between every pair of kinds, each way, and texts flow both ways.
#[test]
fn private_chat_opens_between_every_pair_of_public_cone_and_symmetric_users() {
    let kinds = SIX;
    // The lab and tracker live as long as `_net`.
    let (_net, mut users) = six_users();
    for (a, b) in PAIRS {
        let (ka, kb) = (kinds[a], kinds[b]);
        let (x, y) = two(&mut users, a, b);
        x.send(&format!("startprivate {}", y.name));
        // Told on two different connections: wait for both, in either order.
        let started = x.expect(&format!("Start private messaging with {}", y.name));
        let incoming = y.expect(&format!("{} started private messaging with you", x.name));
        for line in [&started, &incoming] {
            assert_eq!(
                line.contains("through the server's relay"),
                relayed(ka, kb),
                "{ka:?} -> {kb:?}: {line}"
            );
        }
        x.send(&format!("private {} from {} to {}", y.name, x.name, y.name));
        y.expect(&format!(
            "{}(private): from {} to {}",
            x.name, x.name, y.name
        ));
        y.send(&format!("private {} back from {}", x.name, y.name));
        x.expect(&format!("{}(private): back from {}", y.name, y.name));
        x.send(&format!("stopprivate {}", y.name));
        x.expect(&format!("Stopped private messaging with {}", y.name));
        y.expect(&format!("{} stopped private messaging", x.name));
    }
}

fn two(v: &mut [Peer], a: usize, b: usize) -> (&mut Peer, &mut Peer) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

/// The path a download from a holder of kind `h` by a user of kind `d` takes, as the
/// download's summary names it (`None`: direct, not named).
fn download_path(d: Option<Nat>, h: Option<Nat>) -> Option<&'static str> {
    match (d, h) {
        (_, None) => None,
        (None, Some(_)) => Some("reversed"),
        (Some(Nat::Cone), Some(Nat::Cone)) => Some("punched"),
        _ => Some("relayed"),
    }
}

/// A download from a single holder completes between every pair of kinds, each way, and
/// the summary names the path that carried it.
#[test]
fn downloads_complete_between_every_pair_of_kinds() {
    let kinds = SIX;
    // The lab and tracker live as long as `_net`.
    let (_net, mut users) = six_users();
    let data = random_bytes(256 << 10, 41);
    for (k, (d, h)) in PAIRS.into_iter().enumerate() {
        let name = format!("f{k}.bin");
        let (dl, holder) = two(&mut users, d, h);
        std::fs::write(holder.dir.join(&name), &data).unwrap();
        holder.send(&format!("register {name} 4"));
        holder.expect(&format!("{name} registered"));
        dl.send(&format!("download {name}"));
        let done = dl.expect(&format!(
            "Downloaded {name} (256.0 KiB) from {}",
            holder.name
        ));
        let after = dl.sync();
        let paths = after.iter().find(|l| l.contains("(paths: "));
        match download_path(kinds[d], kinds[h]) {
            None => assert!(paths.is_none(), "{done}: {after:?}"),
            Some(p) => {
                let paths = paths.unwrap_or_else(|| panic!("{done}: no paths in {after:?}"));
                assert!(paths.contains(&format!("{p} 256.0 KiB")), "{p}: {paths}");
            }
        }
        assert!(std::fs::read(dl.dir.join(&name)).unwrap() == data, "{name}");
    }
}

/// The relay holds each user to its connection limit: with one allowed, a second relayed
/// private chat is refused, and allowed again once the first ends.
#[test]
fn the_relay_holds_a_user_to_its_connection_limit() {
    let kinds = [SYMMETRIC, CONE, CONE];
    let n = nat_net(&kinds, &["--relay-connections", "1"]);
    let mut vader = n.peer(0, "vader");
    let mut luke = n.peer(1, "luke");
    let mut leia = n.peer(2, "leia");
    vader.open_private(&mut luke);
    vader.send("startprivate leia");
    vader.expect(
        "Error. Could not start private messaging with leia: the relay carries no more connections for one of us now",
    );
    vader.send("stopprivate luke");
    vader.expect("Stopped private messaging with luke");
    luke.expect("vader stopped private messaging");
    vader.open_private(&mut leia);
}

/// The relay holds a user to its rate: 256 KiB through a relay capped at 64 KiB/s takes
/// at least the 4 s the cap allows (less a quarter second's burst).
#[test]
fn the_relay_holds_a_user_to_its_rate() {
    let kinds = [SYMMETRIC, CONE];
    let n = nat_net(&kinds, &["--relay-rate", "64"]);
    let mut vader = n.peer(0, "vader");
    let mut luke = n.peer(1, "luke");
    let data = random_bytes(256 << 10, 42);
    std::fs::write(vader.dir.join("f.bin"), &data).unwrap();
    vader.send("register f.bin 2");
    vader.expect("f.bin registered");
    let started = std::time::Instant::now();
    luke.send("download f.bin");
    luke.expect_within(
        "Downloaded f.bin (256.0 KiB) from vader",
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3700), "{took:?}");
    assert!(std::fs::read(luke.dir.join("f.bin")).unwrap() == data);
}

/// A ticket opens one connection once on a reversed and on a relayed path too: a test
/// double of a requester (in the lab, where the tracker chooses those paths for it) uses
/// each ticket once, then presents it again on the next introduction's connection, and is
/// refused; the user behind the router sees only the first.
#[test]
fn a_ticket_opens_one_connection_once_when_reversed_and_when_relayed() {
    use wire::{PeerMsg, PeerRefusal, Purpose, Reply, Request, UserName, Via, PROTOCOL_VERSION};
    // Host 1 public (yoda, dialled back), host 2 public (vader, claims a closed port: can
    // be reached by nobody and its router keeps no port: relayed), host 3 hans behind a
    // cone router.
    let n = nat_net(&[PUBLIC, PUBLIC, CONE], &[]);
    let mut hans = n.peer(2, "hans");
    let tracker = n.tracker.addr;
    let hello = |ticket| PeerMsg::Hello {
        version: PROTOCOL_VERSION,
        ticket,
        purpose: Purpose::Chat,
    };
    let start = |raw: &mut Raw| match raw.request(Request::StartPrivate {
        user: UserName::new("hans").unwrap(),
    }) {
        Reply::PrivateGranted {
            ticket, key, via, ..
        } => (ticket, key, via),
        other => panic!("{other:?}"),
    };

    n.lab.run_in(n.hosts[0], || {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut yoda = Raw::login_p2p(tracker, "yoda", port);
        assert!(reachability(&mut yoda), "yoda's listener answers");
        let first = start(&mut yoda);
        let Via::Reversed { circuit } = first.2 else {
            panic!("{:?}", first.2)
        };
        let tcp = reversed_for(&listener, circuit);
        let (_chat, answer) =
            Raw::dial_peer_over(Box::new(tcp), &yoda.identity, &first.1, &hello(first.0)).unwrap();
        assert_eq!(answer, PeerMsg::Accepted);
        // The next introduction, with the first ticket again.
        let second = start(&mut yoda);
        let Via::Reversed { circuit } = second.2 else {
            panic!("{:?}", second.2)
        };
        let tcp = reversed_for(&listener, circuit);
        let (_, answer) =
            Raw::dial_peer_over(Box::new(tcp), &yoda.identity, &second.1, &hello(first.0)).unwrap();
        assert_eq!(answer, PeerMsg::Refused(PeerRefusal::BadTicket));
    });
    hans.expect("yoda started private messaging with you");

    n.lab.run_in(n.hosts[1], || {
        let closed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut vader = Raw::login_p2p(tracker, "vader", port);
        assert!(
            !reachability(&mut vader),
            "nothing listens where vader says"
        );
        let grant = start(&mut vader);
        let Via::Relayed { circuit } = grant.2 else {
            panic!("{:?}", grant.2)
        };
        let stream = Raw::relay_join(tracker, circuit).unwrap();
        let (_chat, answer) =
            Raw::dial_peer_over(stream, &vader.identity, &grant.1, &hello(grant.0)).unwrap();
        assert_eq!(answer, PeerMsg::Accepted);
        let again = start(&mut vader);
        let Via::Relayed { circuit } = again.2 else {
            panic!("{:?}", again.2)
        };
        let stream = Raw::relay_join(tracker, circuit).unwrap();
        let (_, answer) =
            Raw::dial_peer_over(stream, &vader.identity, &again.1, &hello(grant.0)).unwrap();
        assert_eq!(answer, PeerMsg::Refused(PeerRefusal::BadTicket));
    });
    hans.expect("vader started private messaging with you (through the server's relay)");
}

/// What the tracker's probe found for a test double just logged in.
fn reachability(raw: &mut Raw) -> bool {
    use wire::{Event, ServerMsg};
    for _ in 0..16 {
        match raw.recv::<ServerMsg>() {
            Some(ServerMsg::Event(Event::Reachability { reachable, .. })) => return reachable,
            Some(_) => {}
            None => break,
        }
    }
    panic!("no reachability event");
}

/// The reversed connection to `listener` for `circuit`, past others (the tracker's probe,
/// which says nothing).
fn reversed_for(listener: &std::net::TcpListener, circuit: wire::Circuit) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let mut tcp = match listener.accept() {
            Ok((tcp, _)) => tcp,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut opening = [0u8; 24];
        if std::io::Read::read_exact(&mut tcp, &mut opening).is_ok()
            && opening[..8] == wire::REVERSED_MAGIC
            && opening[8..] == circuit.0
        {
            return tcp;
        }
    }
    panic!("no reversed connection for the circuit");
}

/// The same on a punched path: a test double behind a router that keeps ports connects to
/// the tracker from its listening port, punches through to hans with its ticket, then
/// presents that ticket again on the next introduction's connection (the punch cannot
/// repeat while the first connection holds the same addresses, so both sides meet at the
/// relay): refused.
#[test]
fn a_ticket_opens_one_connection_once_when_punched() {
    use socket2::{Domain, Socket, Type};
    use wire::{PeerMsg, PeerRefusal, Purpose, Reply, Request, UserName, Via, PROTOCOL_VERSION};
    let n = nat_net(&[CONE, CONE], &[]);
    let mut hans = n.peer(1, "hans");
    let tracker = n.tracker.addr;
    let hello = |ticket| PeerMsg::Hello {
        version: PROTOCOL_VERSION,
        ticket,
        purpose: Purpose::Chat,
    };
    // A socket on `port` that others may share (as the client's listener and the
    // connections it opens from that port).
    let shared = |port: u16| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], port)).into())
            .unwrap();
        s
    };
    n.lab.run_in(n.hosts[0], || {
        let listener = shared(0);
        listener.listen(16).unwrap();
        let port = listener.local_addr().unwrap().as_socket().unwrap().port();
        let to_tracker = shared(port);
        to_tracker.connect(&tracker.into()).unwrap();
        let raw = Raw::tls_over(to_tracker.into(), tracker);
        let mut luke = Raw::login_over(raw, "luke", port);
        assert!(!reachability(&mut luke), "behind its router");
        let me = luke.identity.clone();
        let mut start = || match luke.request(Request::StartPrivate {
            user: UserName::new("hans").unwrap(),
        }) {
            Reply::PrivateGranted {
                addr,
                ticket,
                key,
                via,
                ..
            } => (addr, ticket, key, via),
            other => panic!("{other:?}"),
        };
        let (addr, ticket, key, via) = start();
        let Via::Punched { .. } = via else {
            panic!("{via:?}")
        };
        // Both dial at once: retried on a refusal, within the window hans gives it.
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        let tcp = loop {
            let s = shared(port);
            match s.connect_timeout(&addr.into(), Duration::from_millis(500)) {
                Ok(()) => break std::net::TcpStream::from(s),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("the punch to {addr} failed: {e}"),
            }
        };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (_chat, answer) =
            Raw::dial_peer_over(Box::new(tcp), &me, &key, &hello(ticket)).unwrap();
        assert_eq!(answer, PeerMsg::Accepted);
        // The next introduction, the first ticket again.
        let (_, _, key2, via) = start();
        let Via::Punched { circuit } = via else {
            panic!("{via:?}")
        };
        let stream = Raw::relay_join(tracker, circuit).unwrap();
        let (_, answer) = Raw::dial_peer_over(stream, &me, &key2, &hello(ticket)).unwrap();
        assert_eq!(answer, PeerMsg::Refused(PeerRefusal::BadTicket));
    });
    let opened = hans.expect("luke started private messaging with you");
    assert!(!opened.contains("relay"), "{opened}");
}

/// Two users behind the same router (an office, a home) reach each other inside their own
/// network, even where the router would leave them only the relay (symmetric): the private
/// chat does not go through the relay, and a download's summary names no other path.
#[test]
fn users_behind_the_same_router_connect_inside_their_network() {
    let mut n = nat_net(&[SYMMETRIC], &[]);
    let beside = n.lab.add_beside(n.hosts[0], Link::FREE).unwrap();
    n.hosts.push(beside);
    let mut luke = n.peer(0, "luke");
    let mut leia = n.peer(1, "leia");
    luke.send("startprivate leia");
    let started = luke.expect("Start private messaging with leia");
    let incoming = leia.expect("luke started private messaging with you");
    assert!(
        !started.contains("relay") && !incoming.contains("relay"),
        "{started} / {incoming}"
    );
    luke.send("private leia next door");
    leia.expect("luke(private): next door");
    let data = random_bytes(256 << 10, 43);
    std::fs::write(leia.dir.join("f.bin"), &data).unwrap();
    leia.send("register f.bin 4");
    leia.expect("f.bin registered");
    luke.send("download f.bin");
    luke.expect("Downloaded f.bin (256.0 KiB) from leia");
    let after = luke.sync();
    assert!(!after.iter().any(|l| l.contains("(paths: ")), "{after:?}");
    assert!(std::fs::read(luke.dir.join("f.bin")).unwrap() == data);
}

/// Two users behind symmetric routers, each logged in through another tracker of a
/// cluster: their private chat goes through the requester's tracker's relay, which the
/// other is told where to find. (Both trackers on lab host 0, with the NATS server; the
/// PostgreSQL server outside the lab, reached through its Unix socket.)
#[test]
fn users_of_two_trackers_meet_at_a_relay_when_nothing_else_connects_them() {
    let pg = harness::servers::Postgres::start();
    let url = pg.socket_database("swarmchat");
    let mut lab = Lab::new(&[Link::FREE]).unwrap_or_else(|e| panic!("the network lab: {e}"));
    let nats = harness::servers::Nats::start_on(&lab.place(0));
    let bus = nats.url();
    let args = ["--store", url.as_str(), "--bus", bus.as_str()];
    let a = Tracker::start_on_args(lab.place(0), lab.ip(0), &args);
    let b = Tracker::start_on_args(lab.place(0), lab.ip(0), &args);
    harness::service::settle(&[&a, &b]);
    let hosts: Vec<usize> = (0..2)
        .map(|_| lab.add_behind_nat(Link::FREE, Nat::Symmetric).unwrap())
        .collect();
    let peer = |t: &Tracker, host: usize, user: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut p = Peer::start_on(&lab.place(host), t.addr, dir, Some(tmp), &[]);
        p.login(user);
        p.reachability();
        p
    };
    let mut vader = peer(&a, hosts[0], "vader");
    let mut r2d2 = peer(&b, hosts[1], "r2d2");
    // Each tracker knows the other's user, and its reachability.
    harness::service::settle(&[&a, &b]);
    vader.send("startprivate r2d2");
    let started = vader.expect("Start private messaging with r2d2");
    let incoming = r2d2.expect("vader started private messaging with you");
    assert!(
        started.contains("relay") && incoming.contains("relay"),
        "{started} / {incoming}"
    );
    vader.send("private r2d2 through the relay");
    r2d2.expect("vader(private): through the relay");
    r2d2.send("private vader beep");
    vader.expect("r2d2(private): beep");
}
