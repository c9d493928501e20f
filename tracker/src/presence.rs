//! Presence: login/logout notices, `whoelse`, `whoelsesince`, logout and the inactivity
//! timeout.
//!
//! Privacy rule: if A has blocked B, B learns nothing of A's presence: no `logged in` /
//! `logged out` notices, and A is left out of B's `whoelse` and `whoelsesince`.

use std::time::Duration;

use wire::{Event, Reply, ServerMsg, UserName, MAX_LISTED};

use crate::clock::Millis;
use crate::state::{listed, ConnId, Tracker};

/// How long each session stays in the login history.
pub const HISTORY_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Sessions forgotten per step: a few milliseconds under the lock at most.
const PRUNE_STEP: usize = 1_000;

impl Tracker {
    /// Tells every other online user about `who`, except those `who` has blocked.
    pub(crate) fn notify_presence(&mut self, who: &UserName, event: Event) {
        let Some(frame) = crate::state::encode(&ServerMsg::Event(event)) else {
            return;
        };
        let targets: Vec<UserName> = self
            .sessions
            .keys()
            .filter(|u| *u != who && !self.has_blocked(who, u))
            .cloned()
            .collect();
        for u in targets {
            self.push_frame(&u, &frame);
        }
    }

    /// Ends `user`'s session if it still belongs to `conn`: records the logout in the
    /// history and tells the others. Closing the session's outbox is how the connection
    /// task learns it must end, once it has written what was queued.
    pub fn end_session(&mut self, user: &UserName, conn: ConnId, now: Millis) {
        if self.session_of(user, conn).is_none() {
            return;
        }
        let Some(s) = self.sessions.remove(user) else {
            return;
        };
        if s.history_id >= 0 {
            if let Err(e) = self.store.session_ended(s.history_id, user, now) {
                tracing::error!(%user, error = %e, "could not record logout");
            }
        }
        s.outbox.close();
        tracing::debug!(%user, "logged out");
        self.forget_holdings(user, now);
        self.notify_presence(user, Event::LoggedOut { user: user.clone() });
    }

    /// Connection `conn` closed without a logout: the same as a logout.
    pub fn disconnected(&mut self, user: &UserName, conn: ConnId, now: Millis) {
        self.end_session(user, conn, now);
        self.settle(now);
    }

    /// Logs out everyone idle for the timeout or longer, telling each why first.
    /// Returns who was logged out.
    pub fn expire(&mut self, now: Millis) -> Vec<UserName> {
        let timeout = self.rules.timeout.as_millis() as u64;
        let idle: Vec<(UserName, ConnId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.0.saturating_sub(s.last_active.0) >= timeout)
            .map(|(u, s)| (u.clone(), s.conn))
            .collect();
        for (user, conn) in &idle {
            self.push(user, &ServerMsg::Event(Event::TimedOut));
            self.end_session(user, *conn, now);
        }
        self.settle(now);
        self.prune_history(now);
        self.release_unheld(now);
        idle.into_iter().map(|(u, _)| u).collect()
    }

    /// Forgets login history older than [`HISTORY_KEPT`], a bounded step at a time (the
    /// sweeper calls this at least once a second). `whoelsesince` does not need it: it
    /// reads each user's last logout, kept for good.
    fn prune_history(&mut self, now: Millis) {
        if now < self.next_prune {
            return;
        }
        self.next_prune = now.plus(Duration::from_secs(1));
        if let Err(e) = self
            .store
            .prune_history(now.saturating_sub(HISTORY_KEPT), PRUNE_STEP)
        {
            tracing::error!(error = %e, "could not prune login history");
        }
    }

    /// When the next session could time out, if anyone is online; the sweeper sleeps until then.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.sessions
            .values()
            .map(|s| s.last_active.plus(self.rules.timeout))
            .min()
    }

    /// Online users other than `me`, minus those who blocked `me`, sorted.
    pub(crate) fn who_else(&self, me: &UserName) -> Reply {
        let others = self
            .sessions
            .keys()
            .filter(|u| *u != me && !self.has_blocked(u, me));
        let (users, more) = listed(others, MAX_LISTED);
        Reply::WhoElse { users, more }
    }

    /// Users online at any moment of the last `secs` seconds, from the durable history.
    pub(crate) fn who_else_since(&self, me: &UserName, secs: u64, now: Millis) -> Reply {
        let since = now.saturating_sub(Duration::from_secs(secs));
        let mut users = match self.store.online_since(since) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "history query failed");
                // The online users are a correct subset when the history cannot be read.
                self.sessions.keys().cloned().collect()
            }
        };
        users.retain(|u| u != me && !self.has_blocked(u, me));
        users.sort();
        users.dedup();
        let (users, more) = listed(users.iter(), MAX_LISTED);
        Reply::WhoElseSince { secs, users, more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use wire::Request;

    fn names(users: &[&str]) -> Vec<UserName> {
        users.iter().map(|s| u(s)).collect()
    }

    #[test]
    fn presence_notices_go_to_others_except_blocked() {
        let mut t = tracker();
        let mut hans = login(&mut t, "hans", T0);
        let mut luke = login(&mut t, "luke", T0);
        assert_eq!(hans.events(), [Event::LoggedIn { user: u("luke") }]);
        assert!(luke.events().is_empty(), "no notice about yourself");

        // luke blocks hans: hans hears nothing more of luke's presence.
        req(&mut t, &luke, Request::Block { user: u("hans") }, T0);
        req(&mut t, &luke, Request::Logout, T0);
        assert!(hans.events().is_empty());
        let luke = login(&mut t, "luke", T0);
        assert!(hans.events().is_empty());
        // ...but luke still hears about hans.
        let mut yoda = login(&mut t, "yoda", T0);
        req(&mut t, &hans, Request::Logout, T0);
        assert_eq!(yoda.events(), [Event::LoggedOut { user: u("hans") }]);
        drop(luke);
    }

    #[test]
    fn whoelse_lists_others_and_hides_blockers() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        let _yoda = login(&mut t, "yoda", T0);
        let luke = login(&mut t, "luke", T0);
        assert_eq!(
            req(&mut t, &hans, Request::WhoElse, T0),
            Reply::WhoElse {
                users: names(&["luke", "yoda"]),
                more: 0,
            }
        );
        req(&mut t, &luke, Request::Block { user: u("hans") }, T0);
        assert_eq!(
            req(&mut t, &hans, Request::WhoElse, T0),
            Reply::WhoElse {
                users: names(&["yoda"]),
                more: 0,
            }
        );
    }

    #[test]
    fn whoelsesince_matches_the_spec_example() {
        // Spec example 5: vader logged in 5 min ago, out 2 min ago; r2d2 in 10 min ago, out 5
        // min ago. luke asks for 200 s, yoda for 500 s.
        let mut t = tracker();
        let start = T0;
        let at = |mins: u64| start.plus(Duration::from_secs(mins * 60));
        let r2 = login(&mut t, "r2d2", at(0));
        let hans = login(&mut t, "hans", at(0));
        let yoda = login(&mut t, "yoda", at(0));
        let luke = login(&mut t, "luke", at(0));
        let vader = login(&mut t, "vader", at(5));
        req(&mut t, &r2, Request::Logout, at(5));
        // Keep everyone else active so the 120 s timeout does not interfere.
        for c in [&hans, &yoda, &luke] {
            req(&mut t, c, Request::Activity, at(8));
        }
        req(&mut t, &vader, Request::Logout, at(8));
        let now = at(10);
        for c in [&hans, &yoda, &luke] {
            req(&mut t, c, Request::Activity, now);
        }
        assert_eq!(
            req(&mut t, &luke, Request::WhoElseSince { secs: 200 }, now),
            Reply::WhoElseSince {
                secs: 200,
                users: names(&["hans", "vader", "yoda"]),
                more: 0,
            }
        );
        assert_eq!(
            req(&mut t, &yoda, Request::WhoElseSince { secs: 500 }, now),
            Reply::WhoElseSince {
                secs: 500,
                users: names(&["hans", "luke", "r2d2", "vader"]),
                more: 0,
            }
        );
    }

    #[test]
    fn timeout_counts_only_requests_and_notifies_others() {
        let mut t = tracker();
        let mut hans = login(&mut t, "hans", T0);
        let mut yoda = login(&mut t, "yoda", T0);
        hans.events();
        // yoda stays active; hans only receives messages, which does not count.
        let step = Duration::from_secs(60);
        req(
            &mut t,
            &yoda,
            Request::Message {
                to: u("hans"),
                text: wire::Text::new("hi").unwrap(),
            },
            T0.plus(step),
        );
        assert!(t.expire(T0.plus(step)).is_empty());
        let deadline = T0.plus(Duration::from_secs(120));
        assert_eq!(t.next_expiry(), Some(deadline));
        assert!(t.expire(Millis(deadline.0 - 1)).is_empty());
        assert_eq!(t.expire(deadline), [u("hans")]);
        let ev = hans.events();
        assert_eq!(ev.last(), Some(&Event::TimedOut));
        assert_eq!(yoda.events(), [Event::LoggedOut { user: u("hans") }]);
        assert!(!t.is_online(&u("hans")));
        assert!(hans.outbox.take().last, "outbox closed after the notice");
        // A request on the dead session does nothing.
        assert_eq!(
            req(&mut t, &hans, Request::WhoElse, deadline),
            Reply::LoggedOut
        );
    }

    #[test]
    fn a_huge_whoelsesince_covers_all_history() {
        let mut t = tracker();
        let r2 = login(&mut t, "r2d2", T0);
        req(&mut t, &r2, Request::Logout, T0);
        let luke = login(&mut t, "luke", T0.plus(Duration::from_secs(10)));
        // 18446744073709552 s is 2^64 ms and more: it once wrapped to a 0.4 s window.
        let secs = 18_446_744_073_709_552;
        assert_eq!(
            req(
                &mut t,
                &luke,
                Request::WhoElseSince { secs },
                T0.plus(Duration::from_secs(10))
            ),
            Reply::WhoElseSince {
                secs,
                users: names(&["r2d2"]),
                more: 0,
            }
        );
    }
}
