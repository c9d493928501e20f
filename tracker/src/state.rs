//! The tracker's shared state and the rules that change it.
//!
//! One `Tracker` sits behind a `std::sync::Mutex` (see `server.rs`). Every handler is a
//! plain method that takes `now`, changes the state, pushes events to other users' outbound
//! queues and returns the reply for the caller; the handlers are grouped by family in
//! `auth.rs`, `presence.rs` and `chat.rs`.
//!
//! Why one lock, held across short SQLite calls: a message for an offline user is stored,
//! and a login loads stored messages, under the same lock, so no message can fall between
//! "recipient is offline" and "recipient just loaded its backlog". The lock is never held
//! across an `.await`; online relay touches no disk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use wire::{EncodedFrame, PeerKey, ServerMsg, UserName, MAX_FRAME_LEN};

use crate::clock::Millis;
use crate::credentials::Credentials;
use crate::lockout::Lockouts;
use crate::outbox::{Outbox, Refused};
use crate::store::{Store, StoreError};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub history_id: i64,
    pub listener: Listener,
    /// How many of the costly kinds of request this user may still make (see `quota`).
    pub quota: crate::quota::Quota,
    /// Highest stored-message id handed to this session, and highest it acknowledged: an
    /// `OfflineAck` outside (acked, sent] deletes nothing and costs no query.
    pub offline_sent: u64,
    pub offline_acked: u64,
    /// How far into the presence log this session has been told (`presence`).
    pub presence_seen: u64,
}

pub struct Tracker {
    pub(crate) rules: Rules,
    pub(crate) creds: Credentials,
    pub(crate) store: Store,
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
    /// Offline messages waiting per recipient, as far as counted (`chat`).
    pub(crate) mailbox: HashMap<UserName, u64>,
    /// When the login history is next pruned (`presence`).
    pub(crate) next_prune: Millis,
    /// Introductions that may use the relay (`private`).
    pub(crate) circuits: crate::private::Circuits,
    /// Presence changes not yet told to everyone (`presence`).
    pub(crate) presence: crate::presence::PresenceLog,
}

impl Tracker {
    pub fn new(
        creds: Credentials,
        store: Store,
        rules: Rules,
        now: Millis,
    ) -> Result<Self, StoreError> {
        let closed = store.close_open_sessions(now)?;
        if closed > 0 {
            tracing::info!(closed, "closed sessions left open by an unclean shutdown");
        }
        let mut lockouts = Lockouts::new(rules.block_duration);
        for (user, until) in store.lockouts(now)? {
            lockouts.restore(user, until);
        }
        let mut files = HashMap::new();
        let mut owned: HashMap<UserName, u32> = HashMap::new();
        let mut unheld = BTreeSet::new();
        for f in store.files(now)? {
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
        for (a, b) in store.blocks()? {
            blocks.entry(a).or_default().insert(b);
        }
        Ok(Self {
            rules,
            creds,
            store,
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
        })
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

    pub fn store(&self) -> &Store {
        &self.store
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

impl Tracker {
    /// Carries out one logged-in user's request and returns the reply for them. Every
    /// request counts as activity for the inactivity timeout.
    pub fn request(
        &mut self,
        me: &UserName,
        conn: ConnId,
        req: wire::Request,
        now: Millis,
    ) -> wire::Reply {
        use wire::{Reply, Request};
        match self.sessions.get_mut(me) {
            Some(s) if s.conn == conn => {
                s.last_active = now;
                if let Err(retry_ms) = s.quota.take(&req, now) {
                    return Reply::Refused(wire::Refusal::TooFast { retry_ms });
                }
            }
            // Logged out meanwhile (timeout, slow-client disconnect): nothing to act on.
            _ => return Reply::LoggedOut,
        }
        // Presence changes so far go out ahead of the reply, as every other event does.
        self.tell_presence(me);
        let reply = match req {
            Request::Message { to, text } => self.message(me, &to, &text, now),
            Request::Broadcast { text } => self.broadcast(me, &text),
            Request::WhoElse => self.who_else(me),
            Request::WhoElseSince { secs } => self.who_else_since(me, secs, now),
            Request::Block { user } => self.block(me, &user),
            Request::Unblock { user } => self.unblock(me, &user),
            Request::StartPrivate { user } => self.start_private(me, &user, now),
            Request::CheckPeer { user } => self.check_peer(me, &user),
            Request::Register { meta, have } => self.register(me, meta, have, now),
            Request::Announce { meta, have } => self.announce(me, meta, have, now),
            Request::Unregister { name } => self.unregister(me, &name, now),
            Request::HaveChunk { name, chunk } => self.have_chunk(me, &name, chunk),
            Request::SearchFile { name } => self.search_file(me, &name),
            Request::SearchChunk { name, chunks } => self.search_chunk(me, &name, &chunks),
            Request::Locate { name, from } => self.locate(me, &name, from.as_ref(), now),
            Request::Unwatch { name } => self.unwatch(me, &name),
            Request::Withdraw { name } => self.withdraw(me, &name, now),
            Request::Activity => Reply::Active,
            Request::Logout => {
                self.end_session(me, conn, now);
                Reply::LoggedOut
            }
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
    use std::net::Ipv4Addr;
    use wire::{Event, LoginResult, Password, Reply, Request};

    pub const T0: Millis = Millis(1_700_000_000_000);
    /// How long a name may go unheld in unit tests.
    pub const RELEASE_AFTER: Duration = Duration::from_secs(3600);

    pub fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    pub fn tracker() -> Tracker {
        let creds = Credentials::parse(
            "hans falcon\nyoda wise\nluke lightsaber\nvader sithlord\nr2d2 socute\n",
        )
        .unwrap();
        let rules = Rules {
            block_duration: Duration::from_secs(60),
            timeout: Duration::from_secs(120),
            release_after: RELEASE_AFTER,
            relay: true,
        };
        Tracker::new(creds, Store::open_in_memory().unwrap(), rules, T0).unwrap()
    }

    /// A tracker whose credentials also hold `n` users `p00`, `p01`, ... (password `pw`).
    pub fn crowd(n: usize) -> Tracker {
        let mut creds = String::from("hans falcon\nluke lightsaber\n");
        for i in 0..n {
            creds.push_str(&format!("p{i:02} pw\n"));
        }
        let rules = Rules {
            block_duration: Duration::from_secs(60),
            timeout: Duration::from_secs(120),
            release_after: RELEASE_AFTER,
            relay: true,
        };
        let creds = Credentials::parse(&creds).unwrap();
        Tracker::new(creds, Store::open_in_memory().unwrap(), rules, T0).unwrap()
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

    pub fn login(t: &mut Tracker, user: &str, now: Millis) -> Client {
        login_p2p(t, user, now, 0)
    }

    /// Logs in a client whose private-chat listener is on `p2p_port` (0: none).
    pub fn login_p2p(t: &mut Tracker, user: &str, now: Millis, p2p_port: u16) -> Client {
        let outbox = Arc::new(Outbox::default());
        let conn = rand::random();
        let r = t.login(
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
        assert_eq!(r, LoginResult::Welcome);
        Client {
            user: u(user),
            conn,
            outbox,
        }
    }

    pub fn req(t: &mut Tracker, c: &Client, r: Request, now: Millis) -> Reply {
        t.request(&c.user, c.conn, r, now)
    }
}
