//! Several trackers as one service: the rules for users online on other trackers.
//!
//! Trackers of a cluster share a PostgreSQL store (single sessions, lockouts, offline
//! messages: see `store`) and talk over a NATS bus (`bus`). Each keeps a view of who is
//! online on the others, fed by the presence batches they publish (one bus message per
//! flush, whatever the number of logins in it), and of which trackers are alive (a tracker
//! silent for [`crate::state::LEASE`] is taken for dead, and its users for logged out). A
//! message for a user online elsewhere is handed to that user's tracker, which answers
//! whether it queued it ([`Delivery`]); a block, a broadcast, a stored message's wake-up go
//! to every tracker.
//!
//! Pure like the other rules: what goes on the bus is recorded in `bus_out` and sent by the
//! server in order, as the store's commands are.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use wire::{Event, FileMeta, FileName, Gone, ServerMsg, Text, TrackerEndpoint, UserName};

use crate::clock::Millis;
use crate::state::{Listener, Tracker, LEASE};

/// What one tracker tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BusMsg {
    /// Logins and logouts on tracker `node` since its last batch.
    Presence { node: u64, changes: Vec<Change> },
    /// Tracker `node` just started: the others send it who is online on them. `at`: where
    /// clients reach it, if it says.
    Hello {
        node: u64,
        at: Option<TrackerEndpoint>,
    },
    /// Who is online on tracker `node` and what they share and download (the answer to a
    /// `Hello`, in parts).
    Snapshot { node: u64, changes: Vec<Change> },
    /// Tracker `node` is alive (every second), reached by clients `at`.
    Alive {
        node: u64,
        at: Option<TrackerEndpoint>,
    },
    Block {
        blocker: UserName,
        blocked: UserName,
        on: bool,
    },
    Broadcast {
        node: u64,
        from: UserName,
        text: Text,
    },
    /// Messages were stored for `user`: its tracker wakes its connection to read them.
    Mail { user: UserName },
    /// An event for `to`, online on the tracker this is sent to (a private ticket): at
    /// most once, like the introduction it belongs to (the requester tries again).
    Push { to: UserName, msg: ServerMsg },
    /// Messages for users online on the tracker this is sent to, batch `seq` of tracker
    /// `node`'s: answered with a `Delivered` of the same `seq`, one [`Delivery`] per item,
    /// in order.
    Deliver {
        node: u64,
        seq: u64,
        items: Vec<Handover>,
    },
    /// The answer to batch `seq` of a `Deliver`.
    Delivered { seq: u64, how: Vec<Delivery> },
}

/// One change on a tracker, in the order it happened there. The file registry is kept
/// whole on every tracker (names, who holds which chunks, who downloads what), so searches
/// and downloads see the cluster; each tracker tells its own users of what changed.
/// A message handed to the tracker of its recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    pub from: UserName,
    pub to: UserName,
    pub text: Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A login, or a login's listener now probed (sent again).
    In(UserName, Listener),
    Out(UserName),
    /// `owner` registered `meta`'s name, or replaced what it meant.
    Named {
        meta: FileMeta,
        owner: UserName,
    },
    /// The name no longer means anything (withdrawn by its owner).
    Unnamed {
        name: FileName,
        why: Gone,
    },
    Holds {
        user: UserName,
        name: FileName,
        chunks: Vec<u32>,
    },
    /// `user` downloads `name` (watches it).
    Watches {
        user: UserName,
        name: FileName,
    },
    Unwatches {
        user: UserName,
        name: FileName,
    },
    /// `user` no longer holds any of `name` (still downloading it, if it was).
    Withdraws {
        user: UserName,
        name: FileName,
    },
    /// `user` neither holds nor downloads `name` any more.
    Leaves {
        user: UserName,
        name: FileName,
    },
}

/// How a message handed to another tracker went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Queued for the recipient's connection.
    Delivered,
    /// The recipient is not online there (any more): store it for later.
    NotHere,
    Blocked,
    Busy,
}

/// Encoded bytes a bus message of changes may fill (NATS refuses payloads over 1 MiB by
/// default).
const PART_BYTES: usize = 256 * 1024;

/// About how many bytes `change` takes encoded (an overestimate).
fn weight(change: &Change) -> usize {
    const NAME: usize = 80;
    match change {
        Change::In(..) => 2 * NAME,
        Change::Named { meta, .. } => 2 * NAME + 40 * meta.chunk_count() as usize,
        Change::Holds { chunks, .. } => 2 * NAME + 5 * chunks.len(),
        Change::Unnamed { .. } => 3 * NAME,
        _ => 2 * NAME,
    }
}

/// `changes` in order, cut into parts of at most [`PART_BYTES`] encoded: a batch of
/// thousands of logins is still a handful of bus messages.
pub fn parts(changes: Vec<Change>) -> Vec<Vec<Change>> {
    let mut out: Vec<Vec<Change>> = Vec::new();
    let mut size = 0;
    for c in changes {
        let w = weight(&c);
        match out.last_mut() {
            Some(part) if size + w <= PART_BYTES => part.push(c),
            _ => {
                out.push(vec![c]);
                size = 0;
            }
        }
        size += w;
    }
    out
}

/// Where a bus message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    All,
    Node(u64),
}

/// A user online on another tracker.
#[derive(Debug, Clone)]
pub struct RemoteUser {
    pub node: u64,
    pub listener: Listener,
}

/// The cluster's part of the state; `None` in a tracker without a bus.
#[derive(Default)]
pub struct ClusterView {
    pub(crate) remote: HashMap<UserName, RemoteUser>,
    /// Other trackers, by when they were last heard from.
    nodes: HashMap<u64, Millis>,
    /// Where clients reach the other trackers (those that say), for failover.
    endpoints: HashMap<u64, TrackerEndpoint>,
    /// Where clients reach this one, told to the others.
    me: Option<TrackerEndpoint>,
    /// The trackers to fail over to changed since sessions were last told.
    failover_changed: bool,
    /// Logins and logouts here since the last presence batch.
    changes: Vec<Change>,
    /// What to send, in order.
    out: Vec<(To, BusMsg)>,
}

impl Tracker {
    /// Whether this tracker is part of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Makes this tracker part of a cluster: from now on it records what to tell the
    /// others. (Its `Hello` is sent by the bus once it listens for the answers.)
    pub fn join_cluster(&mut self) {
        self.cluster = Some(ClusterView::default());
    }

    /// Where clients reach this tracker, for the others to tell their clients.
    pub fn advertise(&mut self, at: TrackerEndpoint) {
        if let Some(c) = &mut self.cluster {
            c.me = Some(at);
        }
    }

    /// What a new session is told to fail over to: the other live trackers that said where
    /// clients reach them (`None` outside a cluster).
    pub(crate) fn failover(&self) -> Option<Vec<TrackerEndpoint>> {
        let c = self.cluster.as_ref()?;
        let mut at: Vec<TrackerEndpoint> = c
            .nodes
            .keys()
            .filter_map(|n| c.endpoints.get(n).cloned())
            .collect();
        at.sort_by_key(|e| e.addr);
        at.truncate(wire::MAX_FAILOVER);
        Some(at)
    }

    /// Where clients reach this tracker, if it says (in a cluster).
    pub(crate) fn advertised(&self) -> Option<TrackerEndpoint> {
        self.cluster.as_ref().and_then(|c| c.me.clone())
    }

    /// This tracker's `Hello`, sent once it listens for the answers.
    pub fn hello(&self) -> BusMsg {
        BusMsg::Hello {
            node: self.node,
            at: self.cluster.as_ref().and_then(|c| c.me.clone()),
        }
    }

    /// What to send on the bus since the last call, in order.
    pub fn take_bus(&mut self) -> Vec<(To, BusMsg)> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    pub(crate) fn publish(&mut self, to: To, msg: BusMsg) {
        if let Some(c) = &mut self.cluster {
            c.out.push((to, msg));
        }
    }

    /// A login (`Some(listener)`) or logout here, for the next presence batch.
    pub(crate) fn note_change(&mut self, who: &UserName, listener: Option<Listener>) {
        self.share(match listener {
            Some(l) => Change::In(who.clone(), l),
            None => Change::Out(who.clone()),
        });
    }

    /// A change here the other trackers must hear of, in the next batch.
    pub(crate) fn share(&mut self, change: Change) {
        if let Some(c) = &mut self.cluster {
            c.changes.push(change);
        }
    }

    /// Queues `msg` for `user`, online here or on another tracker. `false` if neither.
    pub(crate) fn push_anywhere(&mut self, user: &UserName, msg: &ServerMsg) -> bool {
        if self.sessions.contains_key(user) {
            return self.push(user, msg);
        }
        match self.remote_node(user) {
            Some(node) => {
                let to = user.clone();
                let msg = msg.clone();
                self.publish(To::Node(node), BusMsg::Push { to, msg });
                true
            }
            None => false,
        }
    }

    /// Where `user` listens, online here or on another tracker, and whether on another.
    pub(crate) fn listener_of(&self, user: &UserName) -> Option<(Listener, bool)> {
        if let Some(s) = self.sessions.get(user) {
            return Some((s.listener, false));
        }
        let c = self.cluster.as_ref()?;
        c.remote.get(user).map(|r| (r.listener, true))
    }

    /// The changes since the last batch, if any: one bus message for all of them, or as
    /// few as keep each well under NATS's 1 MiB payload (see [`parts`]).
    pub(crate) fn publish_changes(&mut self) {
        let node = self.node;
        if let Some(c) = &mut self.cluster {
            for changes in parts(std::mem::take(&mut c.changes)) {
                c.out.push((To::All, BusMsg::Presence { node, changes }));
            }
        }
    }

    /// Says this tracker is alive, after the changes not yet sent: whoever hears it has
    /// heard everything this tracker did before it.
    pub fn heartbeat(&mut self) {
        self.tell_failover();
        self.publish_changes();
        let node = self.node;
        let at = self.cluster.as_ref().and_then(|c| c.me.clone());
        self.publish(To::All, BusMsg::Alive { node, at });
    }

    /// The user's tracker, if they are online on another one.
    pub(crate) fn remote_node(&self, user: &UserName) -> Option<u64> {
        self.cluster
            .as_ref()
            .and_then(|c| c.remote.get(user))
            .map(|r| r.node)
    }

    /// Users online on other trackers.
    pub(crate) fn remote_users(&self) -> impl Iterator<Item = &UserName> {
        self.cluster.iter().flat_map(|c| c.remote.keys())
    }

    /// What came from the bus. `Deliver` is answered by [`Tracker::deliver_here`]
    /// instead; `Hello` by [`Tracker::snapshot`].
    pub fn from_bus(&mut self, msg: BusMsg, now: Millis) {
        let me = self.node;
        match msg {
            BusMsg::Presence { node, changes } if node != me => {
                self.heard_from(node, now);
                for c in changes {
                    self.remote_change(node, c, now);
                }
            }
            BusMsg::Snapshot { node, changes } if node != me => {
                self.heard_from(node, now);
                for c in changes {
                    self.remote_change(node, c, now);
                }
            }
            BusMsg::Alive { node, at } if node != me => {
                tracing::debug!(node, "alive");
                self.heard_from(node, now);
                self.reached_at(node, at);
            }
            BusMsg::Hello { node, at } if node != me => {
                self.heard_from(node, now);
                self.reached_at(node, at);
            }
            BusMsg::Block {
                blocker,
                blocked,
                on,
            } => self.set_blocked(&blocker, &blocked, on),
            BusMsg::Broadcast { node, from, text } if node != me => {
                self.broadcast_here(&from, &text);
            }
            BusMsg::Mail { user } => self.poke(&user),
            BusMsg::Push { to, msg } => {
                self.push(&to, &msg);
            }
            _ => {}
        }
        self.settle(now);
    }

    fn reached_at(&mut self, node: u64, at: Option<TrackerEndpoint>) {
        if let (Some(c), Some(at)) = (&mut self.cluster, at) {
            if c.endpoints.get(&node) != Some(&at) {
                c.endpoints.insert(node, at);
                c.failover_changed = true;
            }
        }
    }

    /// If the trackers to fail over to changed (one started, or died), every session here
    /// is told the new list with its token: a client that logged in before the others were
    /// heard of can still go on through them.
    pub(crate) fn tell_failover(&mut self) {
        let changed = self
            .cluster
            .as_mut()
            .is_some_and(|c| std::mem::take(&mut c.failover_changed));
        if !changed {
            return;
        }
        let Some(trackers) = self.failover() else {
            return;
        };
        let told: Vec<(UserName, ServerMsg)> = self
            .sessions
            .iter()
            .map(|(u, s)| {
                let event = Event::Failover {
                    token: s.resume,
                    trackers: trackers.clone(),
                };
                (u.clone(), ServerMsg::Event(event))
            })
            .collect();
        for (u, msg) in told {
            self.push(&u, &msg);
        }
    }

    fn heard_from(&mut self, node: u64, now: Millis) {
        if let Some(c) = &mut self.cluster {
            c.nodes.insert(node, now);
        }
    }

    fn remote_change(&mut self, node: u64, change: Change, now: Millis) {
        let Some(c) = &mut self.cluster else { return };
        // What a user of `node` does counts only while they are online there as far as
        // this tracker knows (a change overtaken by their logout is dropped).
        let theirs =
            |c: &ClusterView, user: &UserName| c.remote.get(user).is_some_and(|r| r.node == node);
        match change {
            Change::In(user, listener) => {
                // A user also online here would be a bug (one session per user is
                // claimed in the store); the local session wins.
                if self.sessions.contains_key(&user) {
                    return;
                }
                if c.remote
                    .insert(user.clone(), RemoteUser { node, listener })
                    .is_none()
                {
                    tracing::debug!(%user, node, "online elsewhere");
                    self.notify_presence(&user, true);
                }
            }
            Change::Out(user) if theirs(c, &user) => {
                c.remote.remove(&user);
                self.forget_holdings(&user, now);
                self.notify_presence(&user, false);
            }
            Change::Named { meta, owner } => self.named_elsewhere(meta, owner, now),
            Change::Unnamed { name, why } => self.unnamed_elsewhere(&name, &why),
            Change::Holds { user, name, chunks } if theirs(c, &user) => {
                self.holds_elsewhere(&user, &name, chunks)
            }
            Change::Watches { user, name } if theirs(c, &user) => self.watch(&user, &name),
            Change::Unwatches { user, name } if theirs(c, &user) => {
                self.unwatch(&user, &name);
            }
            Change::Withdraws { user, name } if theirs(c, &user) => {
                self.withdraw(&user, &name, now);
            }
            Change::Leaves { user, name } if theirs(c, &user) => {
                self.leave(&user, &name, now);
            }
            _ => {}
        }
    }

    /// Trackers not heard from for [`LEASE`] are taken for dead: their users are logged
    /// out here (their store claims lapse at the same time).
    pub fn expire_nodes(&mut self, now: Millis) {
        let Some(c) = &mut self.cluster else { return };
        let dead: Vec<u64> = c
            .nodes
            .iter()
            .filter(|(_, at)| at.plus(LEASE) <= now)
            .map(|(n, _)| *n)
            .collect();
        if dead.is_empty() {
            return;
        }
        let gone: Vec<UserName> = c
            .remote
            .iter()
            .filter(|(_, r)| dead.contains(&r.node))
            .map(|(u, _)| u.clone())
            .collect();
        for n in &dead {
            c.nodes.remove(n);
            c.failover_changed |= c.endpoints.remove(n).is_some();
            tracing::info!(node = n, "tracker taken for dead");
        }
        for u in gone {
            if let Some(c) = &mut self.cluster {
                c.remote.remove(&u);
            }
            self.forget_holdings(&u, now);
            self.notify_presence(&u, false);
        }
    }

    /// `user` logs in here while this tracker still has them online elsewhere (their
    /// logout there not heard of yet): that session's holdings are forgotten, and whether
    /// it was there is returned (the users here were told of that login already). Its
    /// logout, when it comes, is then ignored (see `remote_change`).
    pub(crate) fn arrived_from_elsewhere(&mut self, user: &UserName, now: Millis) -> bool {
        let Some(c) = &mut self.cluster else {
            return false;
        };
        if c.remote.remove(user).is_none() {
            return false;
        }
        self.forget_holdings(user, now);
        true
    }

    /// Who is online here and what they share and download, for a tracker that just
    /// started: each user's login first, then their part in the file registry.
    pub fn snapshot(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for (u, s) in &self.sessions {
            out.push(Change::In(u.clone(), s.listener));
            for name in self.involved.get(u).into_iter().flatten() {
                let Some(entry) = self.files.get(name) else {
                    continue;
                };
                if let Some(held) = entry.holders.get(u) {
                    out.push(Change::Holds {
                        user: u.clone(),
                        name: name.clone(),
                        chunks: held.iter().copied().collect(),
                    });
                }
                if entry.watchers.contains(u) {
                    out.push(Change::Watches {
                        user: u.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        out
    }

    /// A message from another tracker for `to`, if `to` is online here.
    pub fn deliver_here(
        &mut self,
        from: &UserName,
        to: &UserName,
        text: Text,
        now: Millis,
    ) -> Delivery {
        if !self.sessions.contains_key(to) {
            return Delivery::NotHere;
        }
        // The recipient's tracker has the last word on blocks: a block set here holds at
        // once, whatever the sender's tracker has heard yet.
        if self.has_blocked(to, from) {
            return Delivery::Blocked;
        }
        if self.is_busy(to) {
            return Delivery::Busy;
        }
        let event = ServerMsg::Event(Event::Message {
            from: from.clone(),
            text,
        });
        let delivered = self.push(to, &event);
        self.settle(now);
        if delivered {
            Delivery::Delivered
        } else {
            Delivery::NotHere
        }
    }

    /// A broadcast from a user on another tracker, to everyone here who has not blocked
    /// them and is keeping up.
    fn broadcast_here(&mut self, from: &UserName, text: &Text) {
        let event = ServerMsg::Event(Event::Message {
            from: from.clone(),
            text: text.clone(),
        });
        let Some(frame) = crate::state::encode(&event) else {
            return;
        };
        let targets: Vec<UserName> = self.sessions.keys().cloned().collect();
        for u in targets {
            if !self.has_blocked(&u, from) && !self.is_busy(&u) {
                self.push_frame(&u, &frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use crate::state::Outcome;
    use crate::store::Cmd;
    use std::time::Duration;
    use wire::{PresenceChange, Reply, Request};

    fn listener() -> Listener {
        Listener {
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
            key: key_of("x"),
            reachable: None,
            keeps_port: true,
            lan_ip: None,
        }
    }

    fn presence_in(user: &str) -> BusMsg {
        BusMsg::Presence {
            node: 7,
            changes: vec![Change::In(u(user), listener())],
        }
    }

    #[test]
    fn users_of_other_trackers_are_listed_and_go_when_their_tracker_falls_silent() {
        let mut t = tracker();
        t.join_cluster();
        let mut hans = login(&mut t, "hans", T0);
        t.from_bus(presence_in("luke"), T0);
        t.flush_presence();
        assert_eq!(
            hans.events(),
            [Event::Presence {
                changes: vec![PresenceChange::LoggedIn(u("luke"))]
            }]
        );
        assert_eq!(
            req(&mut t, &hans, Request::WhoElse, T0),
            Reply::WhoElse {
                users: vec![u("luke")],
                more: 0
            }
        );
        // hans's login went into this tracker's presence batch, one bus message.
        t.flush_presence();
        let sent = t.take_bus();
        assert!(
            matches!(&sent[..], [(To::All, BusMsg::Presence { node: 1, changes })]
            if changes == &[Change::In(u("hans"), t.sessions[&u("hans")].listener)]),
            "{sent:?}"
        );
        // Heard from within the lease: still there; silent for it: gone.
        let later = T0.plus(LEASE - Duration::from_millis(1));
        t.expire_nodes(later);
        assert_eq!(t.remote_node(&u("luke")), Some(7));
        t.expire_nodes(T0.plus(LEASE));
        t.flush_presence();
        assert_eq!(t.remote_node(&u("luke")), None);
        assert_eq!(
            hans.events(),
            [Event::Presence {
                changes: vec![PresenceChange::LoggedOut(u("luke"))]
            }]
        );
    }

    #[test]
    fn a_message_for_a_user_elsewhere_is_handed_over_and_stored_if_not_taken() {
        let mut t = tracker();
        t.join_cluster();
        let hans = login(&mut t, "hans", T0);
        t.from_bus(presence_in("luke"), T0);
        let text = Text::new("hi").unwrap();
        let msg = Request::Message {
            to: u("luke"),
            text: text.clone(),
        };
        let Outcome::Forward { node, to, .. } = t.t.request(&hans.user, hans.conn, msg, T0) else {
            panic!("not forwarded")
        };
        assert_eq!((node, to.clone()), (7, u("luke")));
        let refused = t.t.forwarded(&hans.user, &to, &text, Delivery::Blocked, T0);
        assert!(matches!(
            refused,
            Outcome::Reply(Reply::Refused(wire::Refusal::BlockedByRecipient { .. }))
        ));
        // Not taken there: stored, and every tracker told to wake luke's connection.
        let Outcome::Wait(pending) = t.t.forwarded(&hans.user, &to, &text, Delivery::NotHere, T0)
        else {
            panic!("not stored")
        };
        let answers = t.flush();
        let reply = t.t.finish(&hans.user, pending, answers, T0);
        assert_eq!(
            reply,
            Reply::Sent {
                to: u("luke"),
                stored: true
            }
        );
        assert!(t
            .take_bus()
            .contains(&(To::All, BusMsg::Mail { user: u("luke") })));
        assert_eq!(t.stored_for("luke"), 1);
    }

    #[test]
    fn a_private_chat_with_a_user_elsewhere_is_introduced_through_their_tracker() {
        let (mut a, mut b) = (cluster_node(1), cluster_node(2));
        let mut hans = login_p2p(&mut a, "hans", T0, 4001);
        let luke = login_p2p(&mut b, "luke", T0, 4002);
        // hans's listener was probed unreachable after the login: luke's tracker hears it
        // and routes around it (no relay across trackers: luke is to be dialled back).
        pass(&mut a, &mut b, T0);
        pass(&mut b, &mut a, T0);
        let conn = hans.conn;
        a.probed(&u("hans"), conn, "127.0.0.1:4001".parse().unwrap(), false);
        b.probed(
            &u("luke"),
            luke.conn,
            "127.0.0.1:4002".parse().unwrap(),
            true,
        );
        pass(&mut a, &mut b, T0);
        hans.events();
        let Reply::PrivateGranted {
            user, ticket, via, ..
        } = req(&mut b, &luke, Request::StartPrivate { user: u("hans") }, T0)
        else {
            panic!("not granted")
        };
        assert_eq!(user, u("hans"));
        assert!(matches!(via, wire::Via::Reversed { .. }), "{via:?}");
        pass(&mut b, &mut a, T0);
        assert!(hans.events().iter().any(|e| matches!(e,
            Event::PrivateTicket { from, ticket: t, via: v, addr, .. }
                if *from == u("luke") && *t == ticket && *v == via && addr.port() == 4002)));
        // luke cannot be reached either: they punch, and meet at luke's tracker's relay
        // if that fails, which hans's client is told where to find.
        let b_at = wire::TrackerEndpoint {
            addr: "127.0.0.1:4100".parse().unwrap(),
            fingerprint: Some([3; 32]),
        };
        b.advertise(b_at.clone());
        b.probed(
            &u("luke"),
            luke.conn,
            "127.0.0.1:4002".parse().unwrap(),
            false,
        );
        pass(&mut b, &mut a, T0);
        let Reply::PrivateGranted { via, .. } =
            req(&mut b, &luke, Request::StartPrivate { user: u("hans") }, T0)
        else {
            panic!("not granted")
        };
        let wire::Via::Punched { circuit } = via else {
            panic!("{via:?}")
        };
        pass(&mut b, &mut a, T0);
        assert!(hans.events().iter().any(|e| matches!(e,
            Event::PrivateTicket { via: v, relay: Some(at), .. } if *v == via && *at == b_at)));
        assert!(b.join_circuit(&circuit, T0).is_some(), "the circuit is b's");
        // Gone from there: refused here as offline.
        req(&mut a, &hans, Request::Logout, T0);
        pass(&mut a, &mut b, T0);
        assert_eq!(
            req(&mut b, &luke, Request::StartPrivate { user: u("hans") }, T0),
            Reply::Refused(wire::Refusal::Offline { user: u("hans") })
        );
    }

    #[test]
    fn a_message_from_elsewhere_is_refused_here_if_the_recipient_blocked_the_sender() {
        let mut t = tracker();
        t.join_cluster();
        let mut luke = login(&mut t, "luke", T0);
        let text = Text::new("hi").unwrap();
        assert_eq!(
            t.deliver_here(&u("hans"), &u("luke"), text.clone(), T0),
            Delivery::Delivered
        );
        req(&mut t, &luke, Request::Block { user: u("hans") }, T0);
        assert_eq!(
            t.deliver_here(&u("hans"), &u("luke"), text.clone(), T0),
            Delivery::Blocked
        );
        assert_eq!(
            t.deliver_here(&u("hans"), &u("yoda"), text, T0),
            Delivery::NotHere
        );
        let ev = luke.events();
        assert_eq!(ev.len(), 1, "{ev:?}");
    }

    /// luke, on another tracker, blocked hans and was told so; this tracker has not heard
    /// yet. hans's broadcast is still reported as not reaching everyone (the store says),
    /// and once luke unblocked, as reaching all.
    #[test]
    fn a_broadcast_s_sender_is_told_of_a_block_set_elsewhere_this_tracker_has_not_heard_of() {
        let mut t = tracker();
        t.join_cluster();
        let hans = login(&mut t, "hans", T0);
        t.from_bus(presence_in("luke"), T0);
        let broadcast = Request::Broadcast {
            text: Text::new("I rock").unwrap(),
        };
        assert_eq!(
            req(&mut t, &hans, broadcast.clone(), T0),
            Reply::Broadcast {
                reached: 1,
                skipped: false
            }
        );
        let block = |on| Cmd::Block {
            blocker: u("luke"),
            blocked: u("hans"),
            on,
        };
        t.db.apply(&[block(true)]).unwrap();
        assert!(!t.has_blocked(&u("luke"), &u("hans")), "not heard of here");
        assert_eq!(
            req(&mut t, &hans, broadcast.clone(), T0),
            Reply::Broadcast {
                reached: 0,
                skipped: true
            }
        );
        t.from_bus(
            BusMsg::Block {
                blocker: u("luke"),
                blocked: u("hans"),
                on: true,
            },
            T0,
        );
        t.db.apply(&[block(false)]).unwrap();
        assert_eq!(
            req(&mut t, &hans, broadcast, T0),
            Reply::Broadcast {
                reached: 1,
                skipped: false
            }
        );
    }
}
