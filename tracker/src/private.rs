//! Private (peer-to-peer) chat: the tracker's only part is the introduction. It checks the
//! request, hands the requester the target's listener address and a fresh one-time
//! ticket, and gives the target the same ticket so its listener can tell who is
//! connecting. The messages themselves never pass through the tracker.

use std::net::SocketAddr;

use std::collections::HashMap;
use std::time::Duration;

use wire::{Circuit, Event, PeerKey, Refusal, Reply, ServerMsg, Ticket, UserName, Via};

use crate::clock::Millis;
use crate::route::{self, Path};
use crate::state::{ConnId, Tracker};

/// How long both sides of a punched or relayed introduction have to reach the relay.
pub const CIRCUIT_LIFETIME: Duration = Duration::from_secs(30);

/// What `introduce` hands the requester.
#[derive(Debug, Clone, Copy)]
pub struct Introduction {
    pub addr: SocketAddr,
    pub ticket: Ticket,
    pub key: PeerKey,
    pub via: Via,
}

/// Circuits handed out and not yet joined by both sides (the relay's guest list).
#[derive(Default)]
pub struct Circuits {
    open: HashMap<Circuit, PendingCircuit>,
    next_prune: Millis,
}

struct PendingCircuit {
    users: [UserName; 2],
    expires: Millis,
    joined: u8,
}

impl Tracker {
    pub(crate) fn start_private(&mut self, me: &UserName, user: &UserName, now: Millis) -> Reply {
        match self.introduce(me, user, now) {
            Ok(intro) => Reply::PrivateGranted {
                user: user.clone(),
                addr: intro.addr,
                ticket: intro.ticket,
                key: intro.key,
                via: intro.via,
            },
            Err(refusal) => Reply::Refused(refusal),
        }
    }

    /// The result of trying to connect to `user`'s listener after login (see
    /// `server::probe`): kept for deciding how peers connect, and told to the user with the
    /// address the tracker sees it at. Ignored if that session has ended meanwhile.
    pub fn probed(&mut self, user: &UserName, conn: ConnId, observed: SocketAddr, reachable: bool) {
        let listener = match self.sessions.get_mut(user) {
            Some(s) if s.conn == conn => {
                s.listener.reachable = Some(reachable);
                s.listener
            }
            _ => return,
        };
        // Other trackers route introductions to this user by it too.
        self.note_change(user, Some(listener));
        let event = ServerMsg::Event(Event::Reachability {
            observed,
            reachable,
        });
        self.push(user, &event);
    }

    pub(crate) fn check_peer(&self, me: &UserName, user: &UserName) -> Reply {
        match self.reachable(me, user) {
            Ok(_) => Reply::Reachable { user: user.clone() },
            Err(refusal) => Reply::Refused(refusal),
        }
    }

    /// Checks that `me` may connect to `user`'s listener and, if so, issues a ticket for it
    /// and decides how the two get a connection (`route`): given to `user` now (as an
    /// event, with the key `me` must prove it holds and where `me` is) and returned for `me`
    /// with the address and the key `user`'s listener must prove.
    pub(crate) fn introduce(
        &mut self,
        me: &UserName,
        user: &UserName,
        now: Millis,
    ) -> Result<Introduction, Refusal> {
        let (addr, key) = self.reachable(me, user)?;
        let Some(mine) = self.sessions.get(me).map(|s| s.listener) else {
            return Err(Refusal::Offline { user: me.clone() });
        };
        let Some((theirs, elsewhere)) = self.listener_of(user) else {
            return Err(Refusal::Offline { user: user.clone() });
        };
        // ThreadRng is a CSPRNG seeded from the OS: tickets cannot be predicted.
        let ticket = Ticket(rand::random());
        let circuit = Circuit(rand::random());
        // A relay joins two connections to one tracker: a user online on another tracker
        // is sent to this one's, if it says where clients reach it.
        let here = self.advertised();
        let relay = self.rules.relay && (!elsewhere || here.is_some());
        let path = route::route(mine.reach(), theirs.reach(), relay);
        let addr = match (path, theirs.lan_ip) {
            (Path::Inside, Some(lan)) => SocketAddr::new(lan, theirs.port),
            _ => addr,
        };
        let via = match path {
            Path::Inside | Path::Direct => Via::Direct,
            Path::Reversed => Via::Reversed { circuit },
            Path::Punched => Via::Punched { circuit },
            Path::Relayed => Via::Relayed { circuit },
        };
        let event = ServerMsg::Event(Event::PrivateTicket {
            from: me.clone(),
            ticket,
            key: mine.key,
            via,
            addr: SocketAddr::new(mine.ip, mine.port),
            relay: match (elsewhere, via) {
                (true, Via::Punched { .. } | Via::Relayed { .. }) => here,
                _ => None,
            },
        });
        if !self.push_anywhere(user, &event) {
            return Err(Refusal::Offline { user: user.clone() });
        }
        if matches!(via, Via::Punched { .. } | Via::Relayed { .. }) && relay {
            self.open_circuit(circuit, me, user, now);
        }
        Ok(Introduction {
            addr,
            ticket,
            key,
            via,
        })
    }

    /// Remembers `circuit` for the relay, for [`CIRCUIT_LIFETIME`]: the two users it joins.
    fn open_circuit(&mut self, circuit: Circuit, a: &UserName, b: &UserName, now: Millis) {
        if now >= self.circuits.next_prune {
            self.circuits.open.retain(|_, c| c.expires > now);
            self.circuits.next_prune = now.plus(Duration::from_secs(1));
        }
        let expires = now.plus(CIRCUIT_LIFETIME);
        self.circuits.open.insert(
            circuit,
            PendingCircuit {
                users: [a.clone(), b.clone()],
                expires,
                joined: 0,
            },
        );
    }

    /// A connection to the relay presents `circuit`: the two users it joins, if it is
    /// known, unexpired and not joined twice already.
    pub fn join_circuit(&mut self, circuit: &Circuit, now: Millis) -> Option<[UserName; 2]> {
        let c = self.circuits.open.get_mut(circuit)?;
        if c.expires <= now || c.joined >= 2 {
            return None;
        }
        c.joined += 1;
        let users = c.users.clone();
        if c.joined == 2 {
            self.circuits.open.remove(circuit);
        }
        Some(users)
    }

    /// `user`'s listener and key, if `me` may connect to it.
    fn reachable(&self, me: &UserName, user: &UserName) -> Result<(SocketAddr, PeerKey), Refusal> {
        if !self.creds.contains(user) {
            return Err(Refusal::InvalidUser { user: user.clone() });
        }
        if user == me {
            return Err(Refusal::SelfTarget);
        }
        // Checked before presence, so a user who blocked `me` stays invisible to them.
        if self.has_blocked(user, me) {
            return Err(Refusal::BlockedByRecipient { user: user.clone() });
        }
        let Some((l, _)) = self.listener_of(user) else {
            return Err(Refusal::Offline { user: user.clone() });
        };
        if l.port == 0 {
            return Err(Refusal::NotReachable { user: user.clone() });
        }
        Ok((SocketAddr::new(l.ip, l.port), l.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use wire::Request;

    fn start(user: &str) -> Request {
        Request::StartPrivate { user: u(user) }
    }

    #[test]
    fn a_check_refuses_as_a_start_would_and_issues_no_ticket() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut luke = login_p2p(&mut t, "luke", T0, 4002);
        luke.events();
        let check = |user: &str| Request::CheckPeer { user: u(user) };
        assert_eq!(
            req(&mut t, &hans, check("luke"), T0),
            Reply::Reachable { user: u("luke") }
        );
        assert!(luke.events().is_empty(), "luke is told nothing");
        assert_eq!(
            req(&mut t, &hans, check("hans"), T0),
            Reply::Refused(Refusal::SelfTarget)
        );
        assert_eq!(
            req(&mut t, &hans, check("bob"), T0),
            Reply::Refused(Refusal::InvalidUser { user: u("bob") })
        );
        assert_eq!(
            req(&mut t, &hans, check("yoda"), T0),
            Reply::Refused(Refusal::Offline { user: u("yoda") })
        );
    }

    #[test]
    fn grants_a_fresh_ticket_to_both_sides() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut luke = login_p2p(&mut t, "luke", T0, 4002);
        luke.events();
        let Reply::PrivateGranted {
            user,
            addr,
            ticket,
            key,
            via,
        } = req(&mut t, &hans, start("luke"), T0)
        else {
            panic!()
        };
        assert_eq!(user, u("luke"));
        assert_eq!(addr.port(), 4002);
        assert_eq!(key, key_of("luke"), "the key luke's listener must prove");
        assert_eq!(via, Via::Direct, "not probed yet: dialled directly");
        assert_eq!(
            luke.events(),
            [Event::PrivateTicket {
                from: u("hans"),
                ticket,
                key: key_of("hans"),
                via,
                addr: "127.0.0.1:4001".parse().unwrap(),
                relay: None,
            }]
        );
        let Reply::PrivateGranted { ticket: again, .. } = req(&mut t, &hans, start("luke"), T0)
        else {
            panic!()
        };
        assert_ne!(ticket, again, "every grant has its own ticket");
    }

    /// Sets what the probe after login found for `user`, and its router's kind.
    fn reach(t: &mut Rig, user: &str, reachable: bool, keeps_port: bool) {
        let s = t.sessions.get_mut(&u(user)).unwrap();
        s.listener.reachable = Some(reachable);
        s.listener.keeps_port = keeps_port;
    }

    fn via(t: &mut Rig, from: &Client, to: &str) -> Via {
        match req(t, from, start(to), T0) {
            Reply::PrivateGranted { via, .. } => via,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_sides_are_told_the_same_path_and_a_circuit_joins_two_once() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let mut luke = login_p2p(&mut t, "luke", T0, 4002);
        let yoda = login_p2p(&mut t, "yoda", T0, 4003);
        reach(&mut t, "hans", false, true);
        reach(&mut t, "luke", false, true);
        reach(&mut t, "yoda", true, true);
        t.flush_presence();
        luke.events();
        // Both behind routers that keep ports: punched, and luke learns the same circuit.
        let punched = via(&mut t, &hans, "luke");
        let Via::Punched { circuit } = punched else {
            panic!("{punched:?}")
        };
        match &luke.events()[..] {
            [Event::PrivateTicket { via, addr, .. }] => {
                assert_eq!(*via, punched);
                assert_eq!(addr.port(), 4001, "where luke punches to");
            }
            other => panic!("{other:?}"),
        }
        // The relay admits the circuit's two sides, then nobody.
        let pair = [u("hans"), u("luke")];
        assert_eq!(t.join_circuit(&circuit, T0), Some(pair.clone()));
        assert_eq!(t.join_circuit(&circuit, T0), Some(pair));
        assert_eq!(t.join_circuit(&circuit, T0), None);
        // A reachable requester is dialled back.
        assert!(matches!(via(&mut t, &yoda, "luke"), Via::Reversed { .. }));
        // A circuit not joined in time is gone.
        reach(&mut t, "luke", false, false);
        let Via::Relayed { circuit } = via(&mut t, &hans, "luke") else {
            panic!("a random-port router is relayed")
        };
        let late = T0.plus(CIRCUIT_LIFETIME);
        assert_eq!(t.join_circuit(&circuit, late), None);
        assert_eq!(t.join_circuit(&Circuit([9; 16]), T0), None);
    }

    #[test]
    fn a_home_address_goes_only_to_neighbours_behind_the_same_router() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let luke = login_p2p(&mut t, "luke", T0, 4002);
        login_p2p(&mut t, "yoda", T0, 4003);
        let home: std::net::IpAddr = "192.168.1.3".parse().unwrap();
        for (user, public, lan) in [
            ("hans", "203.0.113.1", None),
            ("luke", "203.0.113.7", Some("192.168.1.2")),
            ("yoda", "203.0.113.7", Some("192.168.1.3")),
        ] {
            let l = &mut t.sessions.get_mut(&u(user)).unwrap().listener;
            l.ip = public.parse().unwrap();
            l.lan_ip = lan.map(|a| a.parse().unwrap());
            l.reachable = Some(false);
            l.keeps_port = false;
        }
        let granted = |t: &mut Rig, from: &Client| match req(t, from, start("yoda"), T0) {
            Reply::PrivateGranted { addr, via, .. } => (addr, via),
            other => panic!("{other:?}"),
        };
        // luke shares yoda's public address: yoda's home address, directly.
        assert_eq!(
            granted(&mut t, &luke),
            (SocketAddr::new(home, 4003), Via::Direct)
        );
        // hans does not: yoda's public address, and the relay (both unreachable, random
        // ports); yoda's home address is never shown to him.
        let (addr, via) = granted(&mut t, &hans);
        assert_eq!(addr, "203.0.113.7:4003".parse().unwrap());
        assert!(matches!(via, Via::Relayed { .. }), "{via:?}");
    }

    #[test]
    fn refuses_invalid_self_offline_blocked_and_unreachable() {
        let mut t = tracker();
        let hans = login_p2p(&mut t, "hans", T0, 4001);
        let luke = login_p2p(&mut t, "luke", T0, 4002);
        let _yoda = login(&mut t, "yoda", T0); // no listener
        let refused = |r| Reply::Refused(r);
        assert_eq!(
            req(&mut t, &hans, start("bob"), T0),
            refused(Refusal::InvalidUser { user: u("bob") })
        );
        assert_eq!(
            req(&mut t, &hans, start("hans"), T0),
            refused(Refusal::SelfTarget)
        );
        assert_eq!(
            req(&mut t, &hans, start("vader"), T0),
            refused(Refusal::Offline { user: u("vader") })
        );
        assert_eq!(
            req(&mut t, &hans, start("yoda"), T0),
            refused(Refusal::NotReachable { user: u("yoda") })
        );
        req(&mut t, &luke, Request::Block { user: u("hans") }, T0);
        assert_eq!(
            req(&mut t, &hans, start("luke"), T0),
            refused(Refusal::BlockedByRecipient { user: u("luke") })
        );
        // The block is one-way: luke may still start a session with hans.
        assert!(matches!(
            req(&mut t, &luke, start("hans"), T0),
            Reply::PrivateGranted { .. }
        ));
    }
}
