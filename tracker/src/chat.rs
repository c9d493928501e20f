//! Relayed chat: direct messages (online or stored for offline delivery), broadcast, and
//! block lists.
//!
//! Blocking rule: if A has blocked B, B's messages to A are refused at send time (also
//! while A is offline, so nothing from B is ever stored for A) and B's broadcasts skip A.

use std::collections::HashSet;

use wire::{Event, Refusal, Reply, ServerMsg, Text, UserName};

use crate::clock::Millis;
use crate::state::{Outcome, Then, Tracker};
use crate::store::{Cmd, Offline};

/// Messages stored for one offline user at most: 4 MiB of the longest texts.
pub const MAX_OFFLINE_PER_RECIPIENT: u64 = 1_000;

impl Tracker {
    /// Checks that `user` is a real user other than `me`.
    fn other_user(&self, me: &UserName, user: &UserName) -> Result<(), Refusal> {
        if !self.creds.contains(user) {
            return Err(Refusal::InvalidUser { user: user.clone() });
        }
        if user == me {
            return Err(Refusal::SelfTarget);
        }
        Ok(())
    }

    pub(crate) fn message(
        &mut self,
        me: &UserName,
        to: &UserName,
        text: &Text,
        now: Millis,
    ) -> Outcome {
        if let Err(r) = self.other_user(me, to) {
            return Outcome::Reply(Reply::Refused(r));
        }
        if self.has_blocked(to, me) {
            return Outcome::Reply(Reply::Refused(Refusal::BlockedByRecipient {
                user: to.clone(),
            }));
        }
        if self.is_busy(to) {
            return Outcome::Reply(Reply::Refused(Refusal::RecipientBusy { user: to.clone() }));
        }
        let event = ServerMsg::Event(Event::Message {
            from: me.clone(),
            text: text.clone(),
        });
        if self.push(to, &event) {
            return Outcome::Reply(Reply::Sent {
                to: to.clone(),
                stored: false,
            });
        }
        if !self.sessions.contains_key(to) {
            if let Some(node) = self.remote_node(to) {
                return Outcome::Forward {
                    node,
                    to: to.clone(),
                    text: text.clone(),
                };
            }
        }
        self.store_for_later(me, to, text, now)
    }

    /// The answer of the tracker a message was handed to (`Outcome::Forward`): as a
    /// message to a user online here, or stored for later if it did not take it.
    pub fn forwarded(
        &mut self,
        me: &UserName,
        to: &UserName,
        text: &Text,
        how: crate::cluster::Delivery,
        now: Millis,
    ) -> Outcome {
        use crate::cluster::Delivery;
        match how {
            Delivery::Delivered => Outcome::Reply(Reply::Sent {
                to: to.clone(),
                stored: false,
            }),
            Delivery::Blocked => Outcome::Reply(Reply::Refused(Refusal::BlockedByRecipient {
                user: to.clone(),
            })),
            Delivery::Busy => {
                Outcome::Reply(Reply::Refused(Refusal::RecipientBusy { user: to.clone() }))
            }
            Delivery::NotHere => self.store_for_later(me, to, text, now),
        }
    }

    /// Keeps a message for `to`'s next login.
    fn store_for_later(
        &mut self,
        me: &UserName,
        to: &UserName,
        text: &Text,
        now: Millis,
    ) -> Outcome {
        // Offline, or too far behind to take more: keep it for the next login, up to a
        // quota (one sender could otherwise fill the disk). A mailbox last seen full is
        // refused here without asking the store: a sender flooding a full mailbox must
        // cost no query (`perf` on `bench/abuse`). Only a durable write earns an
        // acknowledgement.
        if let Some(&waiting) = self.mailbox.get(to) {
            if waiting >= MAX_OFFLINE_PER_RECIPIENT {
                return Outcome::Reply(Reply::Refused(Refusal::MailboxFull {
                    user: to.clone(),
                    waiting: waiting as u32,
                }));
            }
        }
        let cmd = Cmd::Offline {
            to: to.clone(),
            from: me.clone(),
            text: text.clone(),
            at: now,
            max: MAX_OFFLINE_PER_RECIPIENT,
        };
        self.wait_for(cmd, Then::Offline { to: to.clone() })
    }

    /// A message for `to` was stored (or refused as the mailbox is full). If `to` came
    /// online while it was being stored, its connection is woken to read it: the login
    /// was recorded before its backlog was read, and this store committed before this
    /// look, so the message is in that backlog or is read now (the session reads past what
    /// it was handed, so never twice).
    pub(crate) fn offline_stored(&mut self, to: &UserName, how: Offline) -> Reply {
        match how {
            Offline::Stored { waiting, .. } => {
                self.mailbox.insert(to.clone(), waiting);
                self.poke(to);
                // Online on another tracker after all (news of its login on the way):
                // that tracker reads it now.
                self.publish(
                    crate::cluster::To::All,
                    crate::cluster::BusMsg::Mail { user: to.clone() },
                );
                Reply::Sent {
                    to: to.clone(),
                    stored: true,
                }
            }
            Offline::Blocked => Reply::Refused(Refusal::BlockedByRecipient { user: to.clone() }),
            Offline::Full { waiting } => {
                self.mailbox.insert(to.clone(), waiting);
                Reply::Refused(Refusal::MailboxFull {
                    user: to.clone(),
                    waiting: waiting.min(u32::MAX as u64) as u32,
                })
            }
        }
    }

    pub(crate) fn broadcast(&mut self, me: &UserName, text: &Text) -> Outcome {
        let event = ServerMsg::Event(Event::Message {
            from: me.clone(),
            text: text.clone(),
        });
        let Some(frame) = crate::state::encode(&event) else {
            return Outcome::Reply(Reply::Refused(Refusal::Unavailable));
        };
        let (mut reached, mut skipped) = (0u32, false);
        let targets: Vec<UserName> = self.sessions.keys().filter(|u| *u != me).cloned().collect();
        for u in targets {
            // A busy recipient is skipped like one who blocked the sender: the sender is
            // told some did not get it.
            if self.has_blocked(&u, me) || self.is_busy(&u) {
                skipped = true;
                continue;
            }
            self.push_frame(&u, &frame);
            reached = reached.saturating_add(1);
        }
        if !self.clustered() {
            return Outcome::Reply(Reply::Broadcast { reached, skipped });
        }
        self.publish(
            crate::cluster::To::All,
            crate::cluster::BusMsg::Broadcast {
                node: self.node,
                from: me.clone(),
                text: text.clone(),
            },
        );
        // Their own trackers skip those who block the sender (and the busy ones). Whether
        // any does, the store says: this tracker may not have heard yet of a block just
        // set through another, whose user was already told it holds.
        let remote: Vec<UserName> = self.remote_users().cloned().collect();
        self.wait_for(
            Cmd::BlockersOf { user: me.clone() },
            Then::Broadcast {
                reached,
                skipped,
                remote,
            },
        )
    }

    pub(crate) fn block(&mut self, me: &UserName, user: &UserName) -> Outcome {
        if let Err(r) = self.other_user(me, user) {
            return Outcome::Reply(Reply::Refused(r));
        }
        if self.has_blocked(me, user) {
            return Outcome::Reply(Reply::Refused(Refusal::AlreadyBlocked {
                user: user.clone(),
            }));
        }
        self.set_blocked(me, user, true);
        self.block_written(me, user, true)
    }

    pub(crate) fn unblock(&mut self, me: &UserName, user: &UserName) -> Outcome {
        if let Err(r) = self.other_user(me, user) {
            return Outcome::Reply(Reply::Refused(r));
        }
        if !self.has_blocked(me, user) {
            return Outcome::Reply(Reply::Refused(Refusal::NotBlocked { user: user.clone() }));
        }
        self.set_blocked(me, user, false);
        self.block_written(me, user, false)
    }

    /// The block holds from now on (nothing from `user` reaches `me` while it is being
    /// written); `me` is told once it is durable, and it is undone if it cannot be.
    fn block_written(&mut self, me: &UserName, user: &UserName, on: bool) -> Outcome {
        let cmd = Cmd::Block {
            blocker: me.clone(),
            blocked: user.clone(),
            on,
        };
        let then = Then::Block {
            user: user.clone(),
            on,
        };
        self.wait_for(cmd, then)
    }

    pub(crate) fn set_blocked(&mut self, me: &UserName, user: &UserName, on: bool) {
        if on {
            self.blocks
                .entry(me.clone())
                .or_default()
                .insert(user.clone());
        } else if let Some(set) = self.blocks.get_mut(me) {
            set.remove(user);
            if set.is_empty() {
                self.blocks.remove(me);
            }
        }
    }
}

/// A clustered broadcast's reply: `reached` and `skipped` here, and the users on other
/// trackers (`remote`) counted as reached unless among `blockers`.
pub(crate) fn broadcast_reply(
    mut reached: u32,
    mut skipped: bool,
    remote: &[UserName],
    blockers: &HashSet<UserName>,
) -> Reply {
    for u in remote {
        if blockers.contains(u) {
            skipped = true;
        } else {
            reached = reached.saturating_add(1);
        }
    }
    Reply::Broadcast { reached, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testkit::*;
    use wire::{OfflineMessage, PresenceChange, Request};

    fn text(s: &str) -> Text {
        Text::new(s).unwrap()
    }
    fn msg(to: &str, s: &str) -> Request {
        Request::Message {
            to: u(to),
            text: text(s),
        }
    }
    fn said(from: &str, s: &str) -> Event {
        Event::Message {
            from: u(from),
            text: text(s),
        }
    }

    #[test]
    fn online_message_is_relayed_and_errors_are_refused() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        let mut yoda = login(&mut t, "yoda", T0);
        assert_eq!(
            req(&mut t, &hans, msg("yoda", "Hey Dude"), T0),
            Reply::Sent {
                to: u("yoda"),
                stored: false
            }
        );
        assert_eq!(yoda.events(), [said("hans", "Hey Dude")]);
        assert_eq!(
            req(&mut t, &hans, msg("bob", "party time"), T0),
            Reply::Refused(Refusal::InvalidUser { user: u("bob") })
        );
        assert_eq!(
            req(&mut t, &hans, msg("hans", "me"), T0),
            Reply::Refused(Refusal::SelfTarget)
        );
    }

    #[test]
    fn what_is_sent_after_a_login_comes_after_the_backlog_stored_before_it() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        req(&mut t, &hans, msg("luke", "one"), T0);
        // luke is logged in; its connection has not read the backlog yet when hans,
        // seeing luke online, sends again.
        let mut luke = login_unread(&mut t, "luke", T0);
        assert_eq!(
            req_unread(&mut t, &hans, msg("luke", "two"), T0),
            Reply::Sent {
                to: u("luke"),
                stored: false
            }
        );
        assert!(luke.events().is_empty(), "held behind the backlog");
        t.deliver_mail(T0);
        let ev = luke.events();
        let [Event::Offline { messages }, two] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text.as_str(), "one");
        assert_eq!(*two, said("hans", "two"));
    }

    #[test]
    fn offline_messages_arrive_in_order_at_next_login_until_acked() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        for s in ["Let's rock", "second", "third"] {
            assert_eq!(
                req(&mut t, &hans, msg("luke", s), T0),
                Reply::Sent {
                    to: u("luke"),
                    stored: true
                }
            );
        }
        let mut luke = login(&mut t, "luke", T0);
        let ev = luke.events();
        let [Event::Offline { messages }] = &ev[..] else {
            panic!("{ev:?}")
        };
        let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["Let's rock", "second", "third"]);
        assert!(messages
            .iter()
            .all(|m: &OfflineMessage| m.from == u("hans")));
        // Not acknowledged: delivered again at the next login.
        req(&mut t, &luke, Request::Logout, T0);
        let mut luke = login(&mut t, "luke", T0);
        let ev = luke.events();
        let [Event::Offline { messages }] = &ev[..] else {
            panic!("{ev:?}")
        };
        // An ack past what was handed out deletes nothing.
        let last = messages.last().unwrap().id;
        t.ack_offline(&luke.user, luke.conn, last + 100);
        assert_eq!(t.stored_for("luke"), 3);
        t.ack_offline(&luke.user, luke.conn, last);
        req(&mut t, &luke, Request::Logout, T0);
        let mut luke = login(&mut t, "luke", T0);
        assert!(luke.events().is_empty());
    }

    #[test]
    fn blocking_refuses_messages_even_offline_and_skips_broadcast() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        let mut yoda = login(&mut t, "yoda", T0);
        let mut luke = login(&mut t, "luke", T0);
        t.flush_presence();
        yoda.events();
        assert_eq!(
            req(&mut t, &luke, Request::Block { user: u("hans") }, T0),
            Reply::Blocked { user: u("hans") }
        );
        assert_eq!(
            req(
                &mut t,
                &hans,
                Request::Broadcast {
                    text: text("I rock")
                },
                T0
            ),
            Reply::Broadcast {
                reached: 1,
                skipped: true
            }
        );
        assert_eq!(yoda.events(), [said("hans", "I rock")]);
        assert!(luke.events().is_empty());
        assert_eq!(
            req(&mut t, &hans, msg("luke", "You angry?"), T0),
            Reply::Refused(Refusal::BlockedByRecipient { user: u("luke") })
        );
        assert_eq!(
            req(&mut t, &hans, Request::Block { user: u("hans") }, T0),
            Reply::Refused(Refusal::SelfTarget)
        );
        assert_eq!(
            req(&mut t, &luke, Request::Unblock { user: u("yoda") }, T0),
            Reply::Refused(Refusal::NotBlocked { user: u("yoda") })
        );
        // Refused while luke is offline too: nothing is stored for him.
        req(&mut t, &luke, Request::Logout, T0);
        assert_eq!(
            req(&mut t, &hans, msg("luke", "sneaky"), T0),
            Reply::Refused(Refusal::BlockedByRecipient { user: u("luke") })
        );
        assert_eq!(t.stored_for("luke"), 0);
        let luke = login(&mut t, "luke", T0);
        assert_eq!(
            req(&mut t, &luke, Request::Unblock { user: u("hans") }, T0),
            Reply::Unblocked { user: u("hans") }
        );
        assert_eq!(
            req(
                &mut t,
                &hans,
                Request::Broadcast {
                    text: text("stormtroopers")
                },
                T0
            ),
            Reply::Broadcast {
                reached: 2,
                skipped: false
            }
        );
        // The presence changes gathered for yoda go out ahead of the broadcast.
        assert_eq!(
            yoda.events(),
            [
                Event::Presence {
                    changes: vec![
                        PresenceChange::LoggedOut(u("luke")),
                        PresenceChange::LoggedIn(u("luke"))
                    ]
                },
                said("hans", "stormtroopers"),
            ]
        );
    }

    #[test]
    fn a_flood_of_messages_never_logs_out_its_target() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        let yoda = login(&mut t, "yoda", T0);
        let mut luke = login(&mut t, "luke", T0); // reads nothing for a while
        for i in 0..crate::outbox::BUSY_EVENTS {
            let r = req(&mut t, &hans, msg("luke", &format!("m{i}")), T0);
            assert_eq!(
                r,
                Reply::Sent {
                    to: u("luke"),
                    stored: false
                }
            );
        }
        // luke is busy: more messages are refused
        // to their senders, and a broadcast skips him; he stays online.
        assert_eq!(
            req(&mut t, &hans, msg("luke", "one more"), T0),
            Reply::Refused(Refusal::RecipientBusy { user: u("luke") })
        );
        let b = Request::Broadcast {
            text: Text::new("all").unwrap(),
        };
        assert_eq!(
            req(&mut t, &yoda, b, T0),
            Reply::Broadcast {
                reached: 1,
                skipped: true
            }
        );
        assert!(t.is_online(&u("luke")));
        assert_eq!(t.stored_for("luke"), 0);
        // Once he has taken his queue, messages reach him again.
        assert_eq!(luke.events().len(), crate::outbox::BUSY_EVENTS);
        assert_eq!(
            req(&mut t, &hans, msg("luke", "again"), T0),
            Reply::Sent {
                to: u("luke"),
                stored: false
            }
        );
    }

    #[test]
    fn stored_messages_for_one_user_are_capped() {
        let mut t = tracker();
        let hans = login(&mut t, "hans", T0);
        for i in 0..MAX_OFFLINE_PER_RECIPIENT {
            // A millisecond apart: within the sender's own message rate.
            let at = Millis(T0.0 + i);
            let r = req(&mut t, &hans, msg("luke", &format!("m{i}")), at);
            assert!(matches!(r, Reply::Sent { stored: true, .. }), "{r:?}");
        }
        let at = Millis(T0.0 + MAX_OFFLINE_PER_RECIPIENT);
        assert_eq!(
            req(&mut t, &hans, msg("luke", "too many"), at),
            Reply::Refused(Refusal::MailboxFull {
                user: u("luke"),
                waiting: MAX_OFFLINE_PER_RECIPIENT as u32
            })
        );
        // Once luke has taken (and acknowledged) half of them, there is room again.
        let mut luke = login(&mut t, "luke", at);
        let mut ids: Vec<u64> = Vec::new();
        for e in luke.events() {
            if let Event::Offline { messages } = e {
                ids.extend(messages.iter().map(|m| m.id));
            }
        }
        t.ack_offline(&luke.user, luke.conn, ids[ids.len() / 2 - 1]);
        req(&mut t, &luke, Request::Logout, at);
        let later = Millis(at.0 + 1);
        for i in 0..MAX_OFFLINE_PER_RECIPIENT / 2 {
            let r = req(
                &mut t,
                &hans,
                msg("luke", &format!("n{i}")),
                Millis(later.0 + i),
            );
            assert!(matches!(r, Reply::Sent { stored: true, .. }), "{r:?}");
        }
        let full = Millis(later.0 + MAX_OFFLINE_PER_RECIPIENT);
        assert!(matches!(
            req(&mut t, &hans, msg("luke", "full again"), full),
            Reply::Refused(Refusal::MailboxFull { .. })
        ));
    }
}
