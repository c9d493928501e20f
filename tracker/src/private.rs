//! Private (peer-to-peer) chat: the tracker's only part is the introduction. It checks the
//! request, hands the requester the target's listener address and a fresh one-time
//! ticket, and gives the target the same ticket so its listener can tell who is
//! connecting. The messages themselves never pass through the tracker.

use std::net::SocketAddr;

use wire::{Event, PeerKey, Refusal, Reply, ServerMsg, Ticket, UserName};

use crate::state::Tracker;

impl Tracker {
    pub(crate) fn start_private(&mut self, me: &UserName, user: &UserName) -> Reply {
        match self.introduce(me, user) {
            Ok((addr, ticket, key)) => Reply::PrivateGranted {
                user: user.clone(),
                addr,
                ticket,
                key,
            },
            Err(refusal) => Reply::Refused(refusal),
        }
    }

    pub(crate) fn check_peer(&self, me: &UserName, user: &UserName) -> Reply {
        match self.reachable(me, user) {
            Ok(_) => Reply::Reachable { user: user.clone() },
            Err(refusal) => Reply::Refused(refusal),
        }
    }

    /// Checks that `me` may connect to `user`'s listener and, if so, issues a ticket for it:
    /// given to `user` now (as an event, with the key `me` must prove it holds) and
    /// returned for `me` with the address and the key `user`'s listener must prove.
    pub(crate) fn introduce(
        &mut self,
        me: &UserName,
        user: &UserName,
    ) -> Result<(SocketAddr, Ticket, PeerKey), Refusal> {
        let (addr, key) = self.reachable(me, user)?;
        let Some(mine) = self.sessions.get(me).map(|s| s.listener.key) else {
            return Err(Refusal::Offline { user: me.clone() });
        };
        // ThreadRng is a CSPRNG seeded from the OS: tickets cannot be predicted.
        let ticket = Ticket(rand::random());
        let event = ServerMsg::Event(Event::PrivateTicket {
            from: me.clone(),
            ticket,
            key: mine,
        });
        if !self.push(user, &event) {
            return Err(Refusal::Offline { user: user.clone() });
        }
        Ok((addr, ticket, key))
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
        let Some(target) = self.sessions.get(user) else {
            return Err(Refusal::Offline { user: user.clone() });
        };
        let l = target.listener;
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
        } = req(&mut t, &hans, start("luke"), T0)
        else {
            panic!()
        };
        assert_eq!(user, u("luke"));
        assert_eq!(addr.port(), 4002);
        assert_eq!(key, key_of("luke"), "the key luke's listener must prove");
        assert_eq!(
            luke.events(),
            [Event::PrivateTicket {
                from: u("hans"),
                ticket,
                key: key_of("hans"),
            }]
        );
        let Reply::PrivateGranted { ticket: again, .. } = req(&mut t, &hans, start("luke"), T0)
        else {
            panic!()
        };
        assert_ne!(ticket, again, "every grant has its own ticket");
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
