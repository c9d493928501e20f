//! The tracking service a scenario runs against: one tracker, or a cluster of two sharing a
//! PostgreSQL and a NATS server, with users spread across them by name. The chat, private
//! and swarm scenarios run on both with the same assertions (`tests/e2e/*`, `on_both!`).
//!
//! On a cluster, what one tracker learns reaches the other a moment later (a batch every
//! 50 ms). A scenario never sleeps for it: a login returns once every tracker knows the
//! user is online (each logs `online elsewhere`), and [`Service::settle`] returns once
//! every tracker has heard, from every other, a heartbeat sent after everything it did
//! before the call (a tracker sends its pending changes ahead of each heartbeat).

use std::time::{Duration, Instant};

use crate::servers::{Nats, Postgres};
use crate::{Peer, Tracker, CREDENTIALS, WAIT};

pub struct Service {
    pub trackers: Vec<Tracker>,
    /// The servers a cluster shares; dropped after the trackers (fields drop in order).
    _shared: Option<(Nats, Postgres)>,
}

impl Service {
    /// One tracker with its embedded store.
    pub fn single(block_duration: u64, timeout: u64) -> Service {
        Service {
            trackers: vec![Tracker::start(block_duration, timeout)],
            _shared: None,
        }
    }

    /// Two trackers on one fresh PostgreSQL database and one NATS server.
    pub fn cluster(block_duration: u64, timeout: u64) -> Service {
        let pg = Postgres::start();
        let nats = Nats::start();
        let url = pg.database("swarmchat");
        let bus = nats.url();
        let args = ["--store", url.as_str(), "--bus", bus.as_str()];
        let trackers: Vec<Tracker> = (0..2)
            .map(|_| Tracker::start_args(block_duration, timeout, &args))
            .collect();
        let s = Service {
            trackers,
            _shared: Some((nats, pg)),
        };
        // Each has heard the other (so a login on one is taken for real on the other).
        s.settle();
        s
    }

    /// The tracker `user` uses. On two, the fixture's users go in pairs after the first:
    /// hans on one; yoda and luke on the other; vader and r2d2 on the first; ... So in the
    /// scenarios hans is on another tracker than both yoda and luke.
    pub fn tracker_of(&self, user: &str) -> &Tracker {
        let i = CREDENTIALS
            .lines()
            .position(|l| l.split(' ').next() == Some(user))
            .unwrap_or_else(|| user.bytes().map(usize::from).sum());
        &self.trackers[i.div_ceil(2) % self.trackers.len()]
    }

    /// A peer for `user`'s tracker, not logged in yet.
    pub fn peer(&self, user: &str) -> Peer {
        self.tracker_of(user).peer()
    }

    /// A peer logged in as `user`, once every tracker knows.
    pub fn login(&self, user: &str) -> Peer {
        let mut p = self.peer(user);
        self.log_in(&mut p, user);
        p
    }

    /// `login`, with extra command-line `args` for the peer.
    pub fn login_args(&self, user: &str, args: &[&str]) -> Peer {
        let before = self.heard(user);
        let p = self.tracker_of(user).login_args(user, args);
        self.known(user, before);
        p
    }

    /// Logs `p` in as `user` and waits until every tracker knows.
    pub fn log_in(&self, p: &mut Peer, user: &str) {
        let before = self.heard(user);
        p.login(user);
        self.known(user, before);
    }

    /// How many times each tracker but `user`'s has heard of `user` logging in elsewhere.
    fn heard(&self, user: &str) -> Vec<usize> {
        let line = format!("online elsewhere user={user} ");
        self.trackers
            .iter()
            .map(|t| t.log().matches(&line).count())
            .collect()
    }

    /// Waits until every tracker but `user`'s has heard of one more login of `user`.
    fn known(&self, user: &str, before: Vec<usize>) {
        if self.trackers.len() == 1 {
            return;
        }
        let home = self.tracker_of(user).port();
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.heard(user);
            let all = self
                .trackers
                .iter()
                .zip(now.iter().zip(&before))
                .all(|(t, (n, b))| t.port() == home || n > b);
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{user}'s login never reached every tracker"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Returns once every tracker has heard from every other everything it did before
    /// this call. At once on one tracker.
    pub fn settle(&self) {
        let all: Vec<&Tracker> = self.trackers.iter().collect();
        settle(&all);
    }
}

/// Returns once each of `trackers` (a cluster) has heard from every other everything it
/// did before this call: two heartbeats each (the second was sent after the call, and a
/// tracker sends its pending changes ahead of each heartbeat).
pub fn settle(trackers: &[&Tracker]) {
    if trackers.len() < 2 {
        return;
    }
    let beats = |t: &Tracker| t.log().matches(" alive node=").count();
    let before: Vec<usize> = trackers.iter().map(|t| beats(t)).collect();
    let others = trackers.len() - 1;
    let deadline = Instant::now() + WAIT;
    while !trackers
        .iter()
        .zip(&before)
        .all(|(t, b)| beats(t) >= b + 2 * others)
    {
        assert!(
            Instant::now() < deadline,
            "the trackers never heard each other"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs scenario `$name` (a `fn(&Service)`) as two tests, `$name::one_tracker` and
/// `$name::two_trackers` (users spread across them).
#[macro_export]
macro_rules! on_both {
    ($name:ident, $block:expr, $timeout:expr) => {
        mod $name {
            #[test]
            fn one_tracker() {
                super::$name(&$crate::service::Service::single($block, $timeout));
            }

            #[test]
            fn two_trackers() {
                super::$name(&$crate::service::Service::cluster($block, $timeout));
            }
        }
    };
}
