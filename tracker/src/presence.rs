//! Presence: login/logout notices, `whoelse`, `whoelsesince`, logout and the inactivity
//! timeout.
//!
//! Privacy rule: if A has blocked B, B learns nothing of A's presence: no `logged in` /
//! `logged out` notices, and A is left out of B's `whoelse` and `whoelsesince`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use wire::{Event, PresenceChange, Reply, ServerMsg, UserName, MAX_LISTED, MAX_PRESENCE_CHANGES};

use crate::clock::Millis;
use crate::state::{listed, ConnId, Outcome, Then, Tracker};
use crate::store::Cmd;

/// How long each session stays in the login history.
pub const HISTORY_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Sessions forgotten per step: a few milliseconds under the lock at most.
const PRUNE_STEP: usize = 1_000;

/// How often gathered presence changes go out to everyone (a recipient that sends a
/// request gets its own at once, ahead of the reply), with up to [`FLUSH_EVERY_UP_TO`]
/// users online; see [`flush_interval`].
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_EVERY_UP_TO: usize = 1_000;
/// The longest a presence change waits, however many are online.
const FLUSH_AT_MOST_EVERY: Duration = Duration::from_millis(500);

/// How long to wait before the next presence flush with `online` users online. A flush
/// costs a frame per online user told anything (a write on each of their connections):
/// beyond [`FLUSH_EVERY_UP_TO`] users the interval grows with them, so a burst of logins
/// costs at most about 20,000 frames a second (10,000 users: every 500 ms), not one frame
/// per user every 50 ms (`perf` on `bench/relay --cluster`'s 10,000 logins: the kernel's
/// work for those writes was most of the trackers' time; at 40,000 frames a second the
/// burst took 11-15 s on 2 cores, at 20,000 under 8 s).
pub fn flush_interval(online: usize) -> Duration {
    let scaled = FLUSH_EVERY.mul_f64(online.max(1) as f64 / FLUSH_EVERY_UP_TO as f64);
    scaled.clamp(FLUSH_EVERY, FLUSH_AT_MOST_EVERY)
}

/// Presence changes not yet told to everyone, in order. Each session remembers how far it
/// has been told (`Session::presence_seen`); a change costs one entry here, not one frame
/// per online user, and each recipient gets the changes since it was last told in one
/// frame.
#[derive(Default)]
pub struct PresenceLog {
    changes: std::collections::VecDeque<(UserName, bool)>,
    /// Sequence number of the first entry of `changes`.
    first: u64,
}

impl PresenceLog {
    /// Sequence number the next change gets: where a new session starts.
    pub fn end(&self) -> u64 {
        self.first + self.changes.len() as u64
    }
}

fn change((who, online): &(UserName, bool)) -> PresenceChange {
    match online {
        true => PresenceChange::LoggedIn(who.clone()),
        false => PresenceChange::LoggedOut(who.clone()),
    }
}

impl Tracker {
    /// Notes that `who` logged in (`online`) or out, for every other online user except
    /// those `who` has blocked (checked when told).
    pub(crate) fn notify_presence(&mut self, who: &UserName, online: bool) {
        self.presence.changes.push_back((who.clone(), online));
    }

    /// Whether some presence change is waiting for the periodic flush.
    pub fn presence_pending(&self) -> bool {
        !self.presence.changes.is_empty()
    }

    /// Tells `user` the presence changes since it was last told, in as few frames as fit.
    pub(crate) fn tell_presence(&mut self, user: &UserName) {
        let end = self.presence.end();
        let Some(seen) = self.sessions.get(user).map(|s| s.presence_seen) else {
            return;
        };
        if seen >= end {
            return;
        }
        let from = seen.saturating_sub(self.presence.first) as usize;
        let changes: Vec<PresenceChange> = self
            .presence
            .changes
            .range(from..)
            .filter(|(who, _)| who != user && !self.has_blocked(who, user))
            .map(change)
            .collect();
        if let Some(s) = self.sessions.get_mut(user) {
            s.presence_seen = end;
        }
        for part in changes.chunks(MAX_PRESENCE_CHANGES) {
            let event = ServerMsg::Event(Event::Presence {
                changes: part.to_vec(),
            });
            if !self.push(user, &event) {
                return; // logged out for a full outbox
            }
        }
    }

    /// Tells everyone the changes gathered since the last flush, then forgets them.
    ///
    /// Recipients told up to the same point get the same frames, encoded once, unless a
    /// change is their own or from someone who blocked them (those get their own): in a
    /// burst of logins, the flush costs one encoding per 50 ms and one queued frame per
    /// online user, not one per (login, online user).
    pub fn flush_presence(&mut self) {
        // The other trackers of a cluster get this tracker's changes in one bus message.
        self.publish_changes();
        if self.presence.changes.is_empty() {
            return;
        }
        let told = self.presence.end();
        let mut by_seen: HashMap<u64, Vec<UserName>> = HashMap::new();
        for (u, s) in &self.sessions {
            if s.presence_seen < told {
                by_seen.entry(s.presence_seen).or_default().push(u.clone());
            }
        }
        for (seen, users) in by_seen {
            let from = seen.saturating_sub(self.presence.first) as usize;
            let upto = (told - self.presence.first) as usize;
            let span: Vec<&(UserName, bool)> = self.presence.changes.range(from..upto).collect();
            let involved: HashSet<&UserName> = span.iter().map(|(who, _)| who).collect();
            // Users in the span who block anyone at all: only their blocked ones differ.
            let blockers: Vec<&UserName> = involved
                .iter()
                .copied()
                .filter(|who| self.blocks.get(*who).is_some_and(|b| !b.is_empty()))
                .collect();
            let changes: Vec<PresenceChange> = span.iter().map(|c| change(c)).collect();
            let frames: Vec<_> = changes
                .chunks(MAX_PRESENCE_CHANGES)
                .filter_map(|part| {
                    crate::state::encode(&ServerMsg::Event(Event::Presence {
                        changes: part.to_vec(),
                    }))
                })
                .collect();
            let (own, shared): (Vec<UserName>, Vec<UserName>) = users.into_iter().partition(|u| {
                involved.contains(u) || blockers.iter().any(|b| self.has_blocked(b, u))
            });
            for u in shared {
                if let Some(s) = self.sessions.get_mut(&u) {
                    s.presence_seen = told;
                }
                for f in &frames {
                    if !self.push_frame(&u, f) {
                        break;
                    }
                }
            }
            for u in own {
                self.tell_presence(&u);
            }
        }
        // Everyone has now seen up to `told` (a user logged out above for a full outbox
        // added its own logout after it, for the next flush).
        let n = (told - self.presence.first) as usize;
        self.presence.changes.drain(..n);
        self.presence.first = told;
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
        self.persist(Cmd::SessionEnded {
            id: s.history_id,
            user: user.clone(),
            at: now,
        });
        s.outbox.close();
        self.note_change(user, None);
        tracing::debug!(%user, "logged out");
        self.forget_holdings(user, now);
        self.notify_presence(user, false);
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
        self.persist(Cmd::PruneHistory {
            before: now.saturating_sub(HISTORY_KEPT),
            limit: PRUNE_STEP as u32,
        });
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
            .chain(self.remote_users())
            .filter(|u| *u != me && !self.has_blocked(u, me));
        let (users, more) = listed(others, MAX_LISTED);
        Reply::WhoElse { users, more }
    }

    /// Users online at any moment of the last `secs` seconds: read from the durable
    /// history, answered in [`Tracker::who_else_since_reply`].
    pub(crate) fn who_else_since(&mut self, secs: u64, now: Millis) -> Outcome {
        let since = now.saturating_sub(Duration::from_secs(secs));
        self.wait_for(Cmd::OnlineSince { since }, Then::WhoElseSince { secs })
    }

    /// `users` as `me` may see them.
    pub(crate) fn who_else_since_reply(
        &self,
        me: &UserName,
        secs: u64,
        mut users: Vec<UserName>,
    ) -> Reply {
        users.retain(|u| u != me && !self.has_blocked(u, me));
        users.sort();
        users.dedup();
        let (users, more) = listed(users.iter(), MAX_LISTED);
        Reply::WhoElseSince { secs, users, more }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn presence_flushes_less_often_only_with_many_online() {
        assert_eq!(flush_interval(0), FLUSH_EVERY);
        assert_eq!(flush_interval(1_000), FLUSH_EVERY);
        assert_eq!(flush_interval(4_000), Duration::from_millis(200));
        assert_eq!(flush_interval(10_000), Duration::from_millis(500));
        assert_eq!(flush_interval(1_000_000), Duration::from_millis(500));
    }

    use super::*;
    use crate::state::testkit::*;
    use wire::Request;

    fn presence(changes: &[(&str, bool)]) -> Event {
        Event::Presence {
            changes: changes
                .iter()
                .map(|(who, online)| match online {
                    true => PresenceChange::LoggedIn(u(who)),
                    false => PresenceChange::LoggedOut(u(who)),
                })
                .collect(),
        }
    }

    #[test]
    fn a_burst_of_logins_reaches_each_user_as_one_frame_and_a_request_gets_it_first() {
        let mut t = tracker();
        let mut hans = login(&mut t, "hans", T0);
        let mut yoda = login(&mut t, "yoda", T0);
        t.flush_presence();
        hans.events();
        let mut vader = None;
        for user in ["luke", "vader", "r2d2"] {
            let c = login(&mut t, user, T0);
            if user == "vader" {
                vader = Some(c);
            }
        }
        req(&mut t, &vader.unwrap(), Request::Logout, T0);
        // Nothing yet: gathered for the next flush...
        assert!(hans.events().is_empty());
        // ...except for a user who asks something: the changes first, then the reply.
        req(&mut t, &yoda, Request::WhoElse, T0);
        let want = presence(&[
            ("luke", true),
            ("vader", true),
            ("r2d2", true),
            ("vader", false),
        ]);
        assert_eq!(yoda.events(), std::slice::from_ref(&want));
        t.flush_presence();
        assert_eq!(hans.events(), [want]);
        // yoda was told already; the log is empty after a flush.
        assert!(yoda.events().is_empty());
        assert!(!t.presence_pending());
    }

    fn names(users: &[&str]) -> Vec<UserName> {
        users.iter().map(|s| u(s)).collect()
    }

    #[test]
    fn presence_notices_go_to_others_except_blocked() {
        let mut t = tracker();
        let mut hans = login(&mut t, "hans", T0);
        let mut luke = login(&mut t, "luke", T0);
        t.flush_presence();
        assert_eq!(hans.events(), [presence(&[("luke", true)])]);
        assert!(luke.events().is_empty(), "no notice about yourself");

        // luke blocks hans: hans hears nothing more of luke's presence.
        req(&mut t, &luke, Request::Block { user: u("hans") }, T0);
        req(&mut t, &luke, Request::Logout, T0);
        t.flush_presence();
        assert!(hans.events().is_empty());
        let luke = login(&mut t, "luke", T0);
        t.flush_presence();
        assert!(hans.events().is_empty());
        // ...but luke still hears about hans.
        let mut yoda = login(&mut t, "yoda", T0);
        req(&mut t, &hans, Request::Logout, T0);
        t.flush_presence();
        assert_eq!(yoda.events(), [presence(&[("hans", false)])]);
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
        t.flush_presence();
        assert_eq!(yoda.events(), [presence(&[("hans", false)])]);
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
