//! The tracker's shared state and the rules that change it.
//!
//! One `Tracker` sits behind a `std::sync::Mutex` (see `server.rs`). Every handler is a
//! plain method that takes `now`, changes the state, pushes events to other users' outbound
//! queues and returns the reply for the caller; the handlers are grouped by family in
//! `auth.rs`, `presence.rs`, `chat.rs` and `files.rs`.
//!
//! No handler touches a database. What must become durable is recorded as a
//! [`crate::store::Cmd`] in `effects`, in the order it happened; the server hands them to
//! the journal before releasing the lock. A reply that depends on a write ("stored for
//! later", "blocked") is an [`Outcome::Wait`]: the server awaits the journal's answer and
//! calls [`Tracker::finish`] for the reply. The lock is never held across an `.await`, and
//! so never across a database call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use wire::{EncodedFrame, PeerKey, ServerMsg, UserName, MAX_FRAME_LEN};

use crate::clock::Millis;
use crate::credentials::Credentials;
use crate::lockout::Lockouts;
use crate::outbox::{Outbox, Refused};
use crate::store::{Answer, Boot, Cmd, StoreError};

/// How long a tracker's claims on its users' sessions hold without it renewing them: a
/// tracker that dies is taken for dead this long after its last renewal (its users may
/// then log in on another tracker sharing the store).
pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Identifies one TCP connection, so a stale connection can never end a newer session.
pub type ConnId = u64;

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub block_duration: Duration,
    pub timeout: Duration,
    /// A registered name nobody has held for this long is released (`--release-after`).
    pub release_after: Duration,
    /// Whether this tracker relays connections between peers nothing else connects.
    pub relay: bool,
}

/// A logged-in user.
/// Where a user's client listens for other peers, and the key its listener proves it holds
/// (see `link::noise`): what the tracker hands to whoever it introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listener {
    pub ip: IpAddr,
    /// 0: none (the client cannot be connected to).
    pub port: u16,
    pub key: PeerKey,
    /// Whether the tracker could connect to it (`None`: not tried yet).
    pub reachable: Option<bool>,
    /// Whether the client's connection to the tracker came from its listening port (see
    /// `route`).
    pub keeps_port: bool,
    /// The address the client says it has on its own network: used only by peers at the
    /// same public address `ip` (behind the same router), never shown to anyone else.
    pub lan_ip: Option<IpAddr>,
}

impl Listener {
    /// What a client announced at login (`port`, `key`, `lan_ip`), seen from `from`, the
    /// address of its connection to the tracker; not yet probed.
    pub fn announced(from: SocketAddr, port: u16, key: PeerKey, lan_ip: Option<IpAddr>) -> Self {
        Listener {
            ip: from.ip(),
            port,
            key,
            reachable: None,
            keeps_port: port == from.port(),
            lan_ip,
        }
    }

    pub fn reach(&self) -> crate::route::Reach {
        crate::route::Reach {
            public: self.ip,
            has_lan: self.lan_ip.is_some(),
            listening: self.port != 0,
            reachable: self.reachable,
            keeps_port: self.keeps_port,
        }
    }
}

pub struct Session {
    pub conn: ConnId,
    /// What this user's connection is to write, queued by whoever has something for them.
    pub outbox: Arc<Outbox>,
    pub last_active: Millis,
    /// This session's row in the login history: chosen here, at random, so the logout can
    /// name it without waiting for the login's write.
    pub history_id: i64,
    pub listener: Listener,
    /// How many of the costly kinds of request this user may still make (see `quota`).
    pub quota: crate::quota::Quota,
    /// Highest stored-message id handed to this session, and highest it acknowledged: an
    /// `OfflineAck` outside (acked, sent] deletes nothing and costs no query.
    pub offline_sent: u64,
    pub offline_acked: u64,
    /// Messages were stored for this user since its connection last read its backlog
    /// (see `auth::offline_query`); its connection task is woken to read them.
    pub mail: bool,
    /// How far into the presence log this session has been told (`presence`).
    pub presence_seen: u64,
    /// The session's resume token, told again with the trackers to fail over to when they
    /// change (`cluster`). Only its hash is stored.
    pub resume: wire::ResumeToken,
}

pub struct Tracker {
    pub(crate) rules: Rules,
    pub(crate) creds: Credentials,
    /// This tracker among those sharing a store: its claims on users' sessions are its
    /// own (see `store::Cmd::Claim`). The same across restarts, so a restarted tracker
    /// takes its own claims back.
    pub(crate) node: u64,
    /// What must become durable, in order, since the server last took it.
    effects: Vec<Cmd>,
    pub(crate) sessions: HashMap<UserName, Session>,
    pub(crate) lockouts: Lockouts,
    /// blocker → users they block. A cache of the `blocks` table, written through.
    pub(crate) blocks: HashMap<UserName, HashSet<UserName>>,
    /// Users whose queue overflowed during the current operation; logged out by `settle`.
    lagging: Vec<(UserName, ConnId)>,
    /// The file registry: descriptions (durable) and which online user holds which chunks
    /// (per session: clients re-announce what they hold when they log in).
    pub(crate) files: HashMap<wire::FileName, crate::files::FileEntry>,
    /// How many names each user has registered (see `files::MAX_FILES_PER_USER`).
    pub(crate) owned: HashMap<UserName, u32>,
    /// Names nobody holds, by since when: the oldest are released first (`files`).
    pub(crate) unheld: BTreeSet<(Millis, wire::FileName)>,
    /// When unheld names are next looked at for release (`files`).
    pub(crate) next_release: Millis,
    /// Online user → the files they hold or watch, so a logout touches only those.
    pub(crate) involved: HashMap<UserName, HashSet<wire::FileName>>,
    /// Offline messages waiting per recipient, as last counted by the store (`chat`).
    pub(crate) mailbox: HashMap<UserName, u64>,
    /// When the login history is next pruned (`presence`).
    pub(crate) next_prune: Millis,
    /// Introductions that may use the relay (`private`).
    pub(crate) circuits: crate::private::Circuits,
    /// Presence changes not yet told to everyone (`presence`).
    pub(crate) presence: crate::presence::PresenceLog,
    /// Users online on other trackers of a cluster, and what to tell them (`cluster`);
    /// `None` without a bus.
    pub(crate) cluster: Option<crate::cluster::ClusterView>,
}

impl Tracker {
    /// The rules of tracker `node` over the durable state `boot` read (see
    /// [`crate::store::Engine::boot`]).
    pub fn new(creds: Credentials, boot: Boot, rules: Rules, node: u64, now: Millis) -> Self {
        if boot.closed > 0 {
            tracing::info!(
                closed = boot.closed,
                "closed sessions left open by an unclean shutdown"
            );
        }
        let mut lockouts = Lockouts::default();
        for (user, until) in boot.lockouts {
            lockouts.restore(user, until);
        }
        let mut files = HashMap::new();
        let mut owned: HashMap<UserName, u32> = HashMap::new();
        let mut unheld = BTreeSet::new();
        for f in boot.files {
            if let Some(o) = &f.owner {
                *owned.entry(o.clone()).or_default() += 1;
            }
            let name = f.meta.name().clone();
            unheld.insert((f.unheld_since, name.clone()));
            let mut entry = crate::files::FileEntry::new(f.meta, f.owner);
            entry.unheld_since = Some(f.unheld_since);
            files.insert(name, entry);
        }
        let mut blocks: HashMap<UserName, HashSet<UserName>> = HashMap::new();
        for (a, b) in boot.blocks {
            blocks.entry(a).or_default().insert(b);
        }
        Self {
            rules,
            creds,
            node,
            // Alive from the start: see `renew_lease`.
            effects: vec![Cmd::Lease {
                node,
                until: now.plus(LEASE),
            }],
            sessions: HashMap::new(),
            lockouts,
            blocks,
            lagging: Vec::new(),
            files,
            owned,
            unheld,
            next_release: now,
            involved: HashMap::new(),
            mailbox: HashMap::new(),
            next_prune: now,
            circuits: Default::default(),
            presence: Default::default(),
            cluster: None,
        }
    }

    /// Tells the store this tracker is alive for another [`LEASE`]; called every
    /// [`RENEW_EVERY`]. Trackers sharing the store refuse a login of a user this tracker
    /// holds a session of until its lease runs out.
    pub fn renew_lease(&mut self, now: Millis) {
        self.persist(Cmd::Lease {
            node: self.node,
            until: now.plus(LEASE),
        });
    }

    /// Records something to make durable (see the module's comment).
    pub(crate) fn persist(&mut self, cmd: Cmd) {
        self.effects.push(cmd);
    }

    /// Records a command whose answer someone awaits: its index among the effects.
    pub(crate) fn persist_at(&mut self, cmd: Cmd) -> usize {
        self.effects.push(cmd);
        self.effects.len() - 1
    }

    /// Records a write the reply waits for, answered in [`Tracker::finish`] by `then`.
    pub(crate) fn wait_for(&mut self, cmd: Cmd, then: Then) -> Outcome {
        let at = self.persist_at(cmd);
        Outcome::Wait(Pending { then, at })
    }

    /// Waits for everything recorded so far (at least one command): one transaction.
    pub(crate) fn wait_for_recorded(&mut self, then: Then) -> Outcome {
        let at = self.effects.len().saturating_sub(1);
        Outcome::Wait(Pending { then, at })
    }

    /// What must become durable since the last call, in order: the server hands it to the
    /// journal before it releases the lock.
    pub fn take_effects(&mut self) -> Vec<Cmd> {
        std::mem::take(&mut self.effects)
    }

    /// Has `blocker` blocked `user`?
    pub fn has_blocked(&self, blocker: &UserName, user: &UserName) -> bool {
        self.blocks.get(blocker).is_some_and(|s| s.contains(user))
    }

    pub fn is_online(&self, user: &UserName) -> bool {
        self.sessions.contains_key(user)
    }

    pub fn online_count(&self) -> usize {
        self.sessions.len()
    }

    /// Wakes `user`'s connection to read messages stored for it (see `auth`).
    pub(crate) fn poke(&mut self, user: &UserName) {
        if let Some(s) = self.sessions.get_mut(user) {
            s.mail = true;
            s.outbox.poke();
        }
    }

    /// Queues `msg` for `user` if online. `false` if the user is offline or has fallen too far
    /// behind (then they are logged out at the end of the current operation).
    pub(crate) fn push(&mut self, user: &UserName, msg: &ServerMsg) -> bool {
        self.push_with(user, |o| o.push_event_msg(msg))
    }

    /// Queues an encoded frame for `user`; a message for many users is encoded once and
    /// its frame shared (see `notify_presence`, `broadcast`).
    pub(crate) fn push_frame(&mut self, user: &UserName, frame: &EncodedFrame) -> bool {
        self.push_with(user, |o| o.push_event(frame.as_bytes()))
    }

    fn push_with(
        &mut self,
        user: &UserName,
        push: impl FnOnce(&Outbox) -> Result<(), Refused>,
    ) -> bool {
        // Presence changes gathered for `user` go first: "luke logged in" always comes
        // before anything from luke. (`tell_presence` marks them told before it pushes, so
        // its own push does not come back here for them.)
        if self
            .sessions
            .get(user)
            .is_some_and(|s| s.presence_seen < self.presence.end())
        {
            self.tell_presence(user);
        }
        let Some(s) = self.sessions.get(user) else {
            return false;
        };
        match push(&s.outbox) {
            Ok(()) => true,
            Err(Refused::Full) => {
                tracing::warn!(%user, "outbound queue full; disconnecting slow client");
                self.lagging.push((user.clone(), s.conn));
                false
            }
            // The connection task is gone and will log the user out itself.
            Err(Refused::Closed) => false,
        }
    }

    /// Logs out every client that overflowed its queue during the last operation. Logging
    /// one out notifies others, which may overflow more queues; each user goes at most once.
    pub(crate) fn settle(&mut self, now: Millis) {
        while let Some((user, conn)) = self.lagging.pop() {
            self.end_session(&user, conn, now);
        }
    }

    /// `user` is online and behind (see [`crate::outbox::Outbox::is_busy`]).
    pub(crate) fn is_busy(&self, user: &UserName) -> bool {
        self.sessions.get(user).is_some_and(|s| s.outbox.is_busy())
    }

    /// The user's current session belongs to `conn`.
    pub(crate) fn session_of(&self, user: &UserName, conn: ConnId) -> Option<&Session> {
        self.sessions.get(user).filter(|s| s.conn == conn)
    }
}

/// The first `max` of `users` by name, and how many more there were: listings fit a frame
/// by construction (see `wire::MAX_LISTED`).
pub(crate) fn listed<'a>(
    users: impl Iterator<Item = &'a UserName>,
    max: usize,
) -> (Vec<UserName>, u32) {
    let mut all: Vec<&UserName> = users.collect();
    let total = all.len();
    if total > max {
        all.select_nth_unstable(max);
        all.truncate(max);
    }
    all.sort_unstable();
    let more = (total - all.len()) as u32;
    (all.into_iter().cloned().collect(), more)
}

#[cfg(test)]
#[test]
fn listings_name_the_first_by_name_and_count_the_rest() {
    let users: Vec<UserName> = (0..25)
        .rev()
        .map(|i| testkit::u(&format!("p{i:02}")))
        .collect();
    let (first, more) = listed(users.iter(), 10);
    let want: Vec<UserName> = (0..10).map(|i| testkit::u(&format!("p{i:02}"))).collect();
    assert_eq!((first, more), (want, 15));
    let (all, more) = listed(users.iter(), 100);
    assert_eq!((all.len(), more), (25, 0));
}

/// Encodes an event for queueing. Events are far below the frame cap by construction
/// (texts are bounded, offline batches are sized to fit), so failure is a bug: logged, and
/// the event is not sent.
pub(crate) fn encode(msg: &ServerMsg) -> Option<EncodedFrame> {
    match EncodedFrame::new(msg, MAX_FRAME_LEN) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            None
        }
    }
}

/// What a request comes to.
#[derive(Debug)]
pub enum Outcome {
    Reply(wire::Reply),
    /// A message for `to`, online on tracker `node`: handed over there, and answered
    /// with [`Tracker::forwarded`].
    Forward {
        node: u64,
        to: UserName,
        text: wire::Text,
    },
    /// The reply waits for the journal's answer to a write (see [`Tracker::finish`]).
    Wait(Pending),
}

/// A request waiting for its write: what to do with the answer, and where its command is
/// in the batch handed to the journal with it.
#[derive(Debug)]
pub struct Pending {
    pub(crate) then: Then,
    pub(crate) at: usize,
}

#[derive(Debug)]
pub(crate) enum Then {
    /// This reply once the write is durable (`Unavailable` if it failed).
    Ack(wire::Reply),
    /// A message stored for `to`, or refused as its mailbox is full.
    Offline { to: UserName },
    /// `me` blocked (`on`) or unblocked `user`; undone if it could not be stored.
    Block { user: UserName, on: bool },
    /// `me` registered a new name; withdrawn again if it could not be stored.
    Registered {
        reply: wire::Reply,
        meta: wire::FileMeta,
    },
    /// The users online since `since` in the history (`secs` ago).
    WhoElseSince { secs: u64 },
    /// A broadcast that went out: `reached` users here, `skipped` some here; whether the
    /// users on other trackers at the time (`remote`) block the sender, the store says.
    Broadcast {
        reached: u32,
        skipped: bool,
        remote: Vec<UserName>,
    },
}

impl Tracker {
    /// Carries out one logged-in user's request: its reply, or the write the reply waits
    /// for. Every request counts as activity for the inactivity timeout.
    pub fn request(
        &mut self,
        me: &UserName,
        conn: ConnId,
        req: wire::Request,
        now: Millis,
    ) -> Outcome {
        use wire::{Reply, Request};
        match self.sessions.get_mut(me) {
            Some(s) if s.conn == conn => {
                s.last_active = now;
                if let Err(retry_ms) = s.quota.take(&req, now) {
                    return Outcome::Reply(Reply::Refused(wire::Refusal::TooFast { retry_ms }));
                }
            }
            // Logged out meanwhile (timeout, slow-client disconnect): nothing to act on.
            _ => return Outcome::Reply(Reply::LoggedOut),
        }
        // Presence changes so far go out ahead of the reply, as every other event does.
        self.tell_presence(me);
        let outcome = match req {
            Request::Message { to, text } => self.message(me, &to, &text, now),
            Request::Broadcast { text } => self.broadcast(me, &text),
            Request::WhoElse => Outcome::Reply(self.who_else(me)),
            Request::WhoElseSince { secs } => self.who_else_since(secs, now),
            Request::Block { user } => self.block(me, &user),
            Request::Unblock { user } => self.unblock(me, &user),
            Request::StartPrivate { user } => Outcome::Reply(self.start_private(me, &user, now)),
            Request::CheckPeer { user } => Outcome::Reply(self.check_peer(me, &user)),
            Request::Register { meta, have } => self.register(me, meta, have, now),
            Request::Announce { meta, have } => Outcome::Reply(self.announce(me, meta, have, now)),
            Request::Unregister { name } => self.unregister(me, &name, now),
            Request::HaveChunk { name, chunk } => Outcome::Reply(self.have_chunk(me, &name, chunk)),
            Request::SearchFile { name } => Outcome::Reply(self.search_file(me, &name)),
            Request::SearchChunk { name, chunks } => {
                Outcome::Reply(self.search_chunk(me, &name, &chunks))
            }
            Request::Locate { name, from } => {
                Outcome::Reply(self.locate(me, &name, from.as_ref(), now))
            }
            Request::Unwatch { name } => Outcome::Reply(self.unwatch(me, &name)),
            Request::Withdraw { name } => Outcome::Reply(self.withdraw(me, &name, now)),
            Request::Activity => Outcome::Reply(Reply::Active),
            Request::Logout => {
                self.end_session(me, conn, now);
                Outcome::Reply(Reply::LoggedOut)
            }
        };
        self.settle(now);
        outcome
    }

    /// The reply to `me`'s request that waited for a write, given the batch's answers.
    pub fn finish(
        &mut self,
        me: &UserName,
        pending: Pending,
        answers: Result<Vec<Answer>, StoreError>,
        now: Millis,
    ) -> wire::Reply {
        use wire::{Refusal, Reply};
        let answer = crate::store::answer_at(answers, pending.at);
        let reply = match (pending.then, answer) {
            (Then::Ack(reply), Ok(_)) => reply,
            (Then::Offline { to }, Ok(Answer::Offline(o))) => self.offline_stored(&to, o),
            (Then::Block { user, on }, Ok(_)) => {
                // The other trackers of a cluster hold it too from now on.
                self.publish(
                    crate::cluster::To::All,
                    crate::cluster::BusMsg::Block {
                        blocker: me.clone(),
                        blocked: user.clone(),
                        on,
                    },
                );
                if on {
                    Reply::Blocked { user }
                } else {
                    Reply::Unblocked { user }
                }
            }
            (Then::Block { user, on }, Err(_)) => {
                self.set_blocked(me, &user, !on);
                Reply::Refused(Refusal::Unavailable)
            }
            (Then::Registered { reply, meta }, Ok(Answer::Count(1))) => {
                self.registered_everywhere(me, &meta);
                reply
            }
            // Taken meanwhile, through another tracker, for other content.
            (Then::Registered { meta, .. }, Ok(_)) => {
                self.register_failed(me, &meta, true);
                Reply::Refused(wire::Refusal::FileConflict {
                    name: meta.name().clone(),
                    same_content: false,
                    chunks: 0,
                })
            }
            (Then::Registered { meta, .. }, Err(_)) => {
                self.register_failed(me, &meta, false);
                Reply::Refused(Refusal::Unavailable)
            }
            (Then::WhoElseSince { secs }, answer) => {
                let users = match answer {
                    Ok(Answer::Users(u)) => u,
                    // The online users are a correct subset when the history cannot be read.
                    _ => self.sessions.keys().cloned().collect(),
                };
                self.who_else_since_reply(me, secs, users)
            }
            (
                Then::Broadcast {
                    reached,
                    skipped,
                    remote,
                },
                answer,
            ) => {
                let blockers: HashSet<UserName> = match answer {
                    Ok(Answer::Users(u)) => u.into_iter().collect(),
                    // As far as this tracker knows, when the store cannot say.
                    _ => remote
                        .iter()
                        .filter(|u| self.has_blocked(u, me))
                        .cloned()
                        .collect(),
                };
                crate::chat::broadcast_reply(reached, skipped, &remote, &blockers)
            }
            // Failed (the journal logged why), or an answer of the wrong kind (a bug).
            (_, _) => Reply::Refused(Refusal::Unavailable),
        };
        self.settle(now);
        reply
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! A tracker on an in-memory store with hand-driven time, and helpers to log users in
    //! and read what their connections were sent.

    use super::*;
    use crate::clock::Millis;
    use crate::store::Sqlite;
    use std::net::Ipv4Addr;
    use wire::{Event, LoginResult, Password, Reply, Request};

    pub const T0: Millis = Millis(1_700_000_000_000);
    /// How long a name may go unheld in unit tests.
    pub const RELEASE_AFTER: Duration = Duration::from_secs(3600);

    pub fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    /// A tracker and the database its journal would write, carried out in step (the
    /// server does the same through the journal, asynchronously).
    pub struct Rig {
        pub t: Tracker,
        pub db: Sqlite,
    }

    impl std::ops::Deref for Rig {
        type Target = Tracker;
        fn deref(&self) -> &Tracker {
            &self.t
        }
    }

    impl std::ops::DerefMut for Rig {
        fn deref_mut(&mut self) -> &mut Tracker {
            &mut self.t
        }
    }

    impl Rig {
        fn new(creds: Credentials) -> Rig {
            Rig::on_node(creds, 1)
        }

        fn on_node(creds: Credentials, node: u64) -> Rig {
            let rules = Rules {
                block_duration: Duration::from_secs(60),
                timeout: Duration::from_secs(120),
                release_after: RELEASE_AFTER,
                relay: true,
            };
            let db = Sqlite::open_in_memory().unwrap();
            let boot = db.boot_now(T0).unwrap();
            let mut t = Rig {
                t: Tracker::new(creds, boot, rules, node, T0),
                db,
            };
            t.flush().unwrap();
            t
        }

        /// Commits what the rules recorded; the answers.
        pub fn flush(&mut self) -> Result<Vec<Answer>, StoreError> {
            let effects = self.t.take_effects();
            self.db.apply(&effects)
        }

        /// Reads the backlog of every session told of stored messages, as their
        /// connections do.
        pub fn deliver_mail(&mut self, now: Millis) {
            let _ = self.flush();
            let waiting: Vec<(UserName, ConnId)> = self
                .t
                .sessions
                .iter()
                .filter(|(_, s)| s.mail)
                .map(|(u, s)| (u.clone(), s.conn))
                .collect();
            for (user, conn) in waiting {
                for _ in 0..crate::auth::OFFLINE_BATCHES_AT_ONCE {
                    let Some(at) = self.t.read_mail(&user, conn) else {
                        break;
                    };
                    let found = crate::store::answer_at(self.flush(), at).map(|a| match a {
                        Answer::Messages(m) => m,
                        other => panic!("{other:?}"),
                    });
                    if !self.t.mail_read(&user, conn, found, now) {
                        break;
                    }
                }
            }
            let _ = self.flush();
        }

        /// The tracker stops (or crashes) and starts again at `now` over the same
        /// database; what it had recorded was committed.
        pub fn restart(mut self, now: Millis) -> Rig {
            self.flush().unwrap();
            let boot = self.db.boot_now(now).unwrap();
            let t = Tracker::new(self.t.creds.clone(), boot, self.t.rules, 1, now);
            Rig { t, db: self.db }
        }

        /// How many offline messages wait for `user` in the database.
        pub fn stored_for(&mut self, user: &str) -> usize {
            self.flush().unwrap();
            let read = Cmd::OfflineFor {
                user: u(user),
                after: 0,
                limit: u32::MAX,
            };
            match &self.db.apply(&[read]).unwrap()[..] {
                [Answer::Messages(m)] => m.len(),
                other => panic!("{other:?}"),
            }
        }
    }

    pub fn tracker() -> Rig {
        Rig::new(
            Credentials::parse(
                "hans falcon\nyoda wise\nluke lightsaber\nvader sithlord\nr2d2 socute\n",
            )
            .unwrap(),
        )
    }

    /// Tracker `node` of a cluster (each on a database of its own: what the store shares
    /// between trackers is tested in `tests/e2e/store.rs`).
    pub fn cluster_node(node: u64) -> Rig {
        let mut t = Rig::on_node(tracker().t.creds.clone(), node);
        t.join_cluster();
        t
    }

    /// What `from` has to say on the bus (its presence batch included), heard by `to`.
    pub fn pass(from: &mut Rig, to: &mut Rig, now: Millis) {
        from.flush_presence();
        let _ = from.flush();
        for (dest, msg) in from.take_bus() {
            if dest == crate::cluster::To::All || dest == crate::cluster::To::Node(to.node) {
                to.from_bus(msg, now);
            }
        }
        let _ = to.flush();
    }

    /// A tracker whose credentials also hold `n` users `p00`, `p01`, ... (password `pw`).
    pub fn crowd(n: usize) -> Rig {
        let mut creds = String::from("hans falcon\nluke lightsaber\n");
        for i in 0..n {
            creds.push_str(&format!("p{i:02} pw\n"));
        }
        Rig::new(Credentials::parse(&creds).unwrap())
    }

    pub struct Client {
        pub user: UserName,
        pub conn: ConnId,
        pub outbox: Arc<Outbox>,
    }

    impl Client {
        /// Everything queued for this client since the last call.
        pub fn events(&mut self) -> Vec<Event> {
            let mut buf = self.outbox.take().bytes;
            let mut out = Vec::new();
            while let Some(m) = wire::decode::<ServerMsg>(&mut buf, MAX_FRAME_LEN).unwrap() {
                match m {
                    // Told once after the welcome in a cluster (`auth`), not a test's concern.
                    ServerMsg::Event(Event::Failover { .. }) => {}
                    ServerMsg::Event(e) => out.push(e),
                    // The session's first frame, queued by `login` ahead of its backlog.
                    ServerMsg::Login(LoginResult::Welcome) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            out
        }
    }

    pub fn password_of(user: &str) -> &'static str {
        match user {
            "hans" => "falcon",
            "yoda" => "wise",
            "luke" => "lightsaber",
            "vader" => "sithlord",
            "r2d2" => "socute",
            _ => "pw",
        }
    }

    /// A made-up public key per user, so tests can tell whose key was handed out.
    pub fn key_of(user: &str) -> PeerKey {
        let mut k = [0u8; 32];
        for (i, b) in user.bytes().enumerate().take(32) {
            k[i] = b;
        }
        PeerKey(k)
    }

    pub fn login(t: &mut Rig, user: &str, now: Millis) -> Client {
        login_p2p(t, user, now, 0)
    }

    /// Logs in a client whose private-chat listener is on `p2p_port` (0: none), and reads
    /// its backlog.
    pub fn login_p2p(t: &mut Rig, user: &str, now: Millis, p2p_port: u16) -> Client {
        let c = login_with(t, user, now, p2p_port);
        t.deliver_mail(now);
        c
    }

    /// Logs in a client whose connection has not read its backlog yet.
    pub fn login_unread(t: &mut Rig, user: &str, now: Millis) -> Client {
        login_with(t, user, now, 0)
    }

    fn login_with(t: &mut Rig, user: &str, now: Millis, p2p_port: u16) -> Client {
        let outbox = Arc::new(Outbox::default());
        let conn = rand::random();
        let step = t.t.login(
            &u(user),
            &Password::new(password_of(user)).unwrap(),
            now,
            conn,
            outbox.clone(),
            Listener {
                ip: Ipv4Addr::LOCALHOST.into(),
                port: p2p_port,
                key: key_of(user),
                reachable: None,
                keeps_port: true,
                lan_ip: None,
            },
        );
        assert_eq!(settle_login(t, user, step, now), LoginResult::Welcome);
        Client {
            user: u(user),
            conn,
            outbox,
        }
    }

    /// A login's answer once the store settled it, as the server does.
    pub fn settle_login(
        t: &mut Rig,
        user: &str,
        step: crate::auth::LoginStep,
        now: Millis,
    ) -> LoginResult {
        match step {
            crate::auth::LoginStep::Done(r) => {
                t.flush().unwrap();
                r
            }
            crate::auth::LoginStep::Wait(wait) => {
                let answers = t.flush();
                t.t.login_settled(&u(user), wait, answers, now)
            }
        }
    }

    /// `c`'s request, carried out as the server does: the reply once what it waits for is
    /// committed, and stored messages read by whoever they were for.
    pub fn req(t: &mut Rig, c: &Client, r: Request, now: Millis) -> Reply {
        let reply = req_unread(t, c, r, now);
        t.deliver_mail(now);
        reply
    }

    /// `c`'s request, with nobody's connection reading stored messages meanwhile.
    pub fn req_unread(t: &mut Rig, c: &Client, r: Request, now: Millis) -> Reply {
        match t.t.request(&c.user, c.conn, r, now) {
            Outcome::Reply(reply) => {
                t.flush().unwrap();
                reply
            }
            Outcome::Forward { .. } => panic!("forwarded: use cluster's tests' helpers"),
            Outcome::Wait(pending) => {
                let answers = t.flush();
                t.t.finish(&c.user, pending, answers, now)
            }
        }
    }
}
