//! Relayed chat: direct messages (online or stored for offline delivery), broadcast, and
//! block lists.
//!
//! Blocking rule: if A has blocked B, B's messages to A are refused at send time (also
//! while A is offline, so nothing from B is ever stored for A) and B's broadcasts skip A.

use wire::{Event, Refusal, Reply, ServerMsg, Text, UserName};

use crate::clock::Millis;
use crate::state::Tracker;

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

    /// Offline messages waiting for `to`: counted in the database once, then kept here
    /// (the tracker is the database's only writer). Counting on every message cost a
    /// scan of up to 1,000 index entries under the lock: a sender flooding a full
    /// mailbox took most of the tracker's CPU (`perf` on `bench/abuse`).
    fn mailbox_len(&mut self, to: &UserName) -> Result<u64, crate::store::StoreError> {
        if let Some(&n) = self.mailbox.get(to) {
            return Ok(n);
        }
        let n = self.store.offline_count(to)?;
        self.mailbox.insert(to.clone(), n);
        Ok(n)
    }

    pub(crate) fn message(
        &mut self,
        me: &UserName,
        to: &UserName,
        text: &Text,
        now: Millis,
    ) -> Reply {
        if let Err(r) = self.other_user(me, to) {
            return Reply::Refused(r);
        }
        if self.has_blocked(to, me) {
            return Reply::Refused(Refusal::BlockedByRecipient { user: to.clone() });
        }
        if self.is_busy(to) {
            return Reply::Refused(Refusal::RecipientBusy { user: to.clone() });
        }
        let event = ServerMsg::Event(Event::Message {
            from: me.clone(),
            text: text.clone(),
        });
        if self.push(to, &event) {
            return Reply::Sent {
                to: to.clone(),
                stored: false,
            };
        }
        // Offline, or too far behind to take more: keep it for the next login, up to a
        // quota (one sender could otherwise fill the disk, and the recipient's login would
        // load it all under the state lock). Only a durable write earns an acknowledgement.
        match self.mailbox_len(to) {
            Ok(waiting) if waiting >= MAX_OFFLINE_PER_RECIPIENT => {
                return Reply::Refused(Refusal::MailboxFull {
                    user: to.clone(),
                    waiting: waiting as u32,
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not count offline messages");
                return Reply::Refused(Refusal::Unavailable);
            }
        }
        match self.store.store_offline(to, me, text, now) {
            Ok(_) => {
                *self.mailbox.entry(to.clone()).or_default() += 1;
                Reply::Sent {
                    to: to.clone(),
                    stored: true,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store offline message");
                Reply::Refused(Refusal::Unavailable)
            }
        }
    }

    pub(crate) fn broadcast(&mut self, me: &UserName, text: &Text) -> Reply {
        let event = ServerMsg::Event(Event::Message {
            from: me.clone(),
            text: text.clone(),
        });
        let Some(frame) = crate::state::encode(&event) else {
            return Reply::Refused(Refusal::Unavailable);
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
        Reply::Broadcast { reached, skipped }
    }

    pub(crate) fn block(&mut self, me: &UserName, user: &UserName) -> Reply {
        if let Err(r) = self.other_user(me, user) {
            return Reply::Refused(r);
        }
        if self.has_blocked(me, user) {
            return Reply::Refused(Refusal::AlreadyBlocked { user: user.clone() });
        }
        if let Err(e) = self.store.set_block(me, user, true) {
            tracing::error!(error = %e, "could not store block");
            return Reply::Refused(Refusal::Unavailable);
        }
        self.blocks
            .entry(me.clone())
            .or_default()
            .insert(user.clone());
        Reply::Blocked { user: user.clone() }
    }

    pub(crate) fn unblock(&mut self, me: &UserName, user: &UserName) -> Reply {
        if let Err(r) = self.other_user(me, user) {
            return Reply::Refused(r);
        }
        if !self.has_blocked(me, user) {
            return Reply::Refused(Refusal::NotBlocked { user: user.clone() });
        }
        if let Err(e) = self.store.set_block(me, user, false) {
            tracing::error!(error = %e, "could not store unblock");
            return Reply::Refused(Refusal::Unavailable);
        }
        if let Some(set) = self.blocks.get_mut(me) {
            set.remove(user);
        }
        Reply::Unblocked { user: user.clone() }
    }
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
        assert_eq!(t.store().offline_count(&u("luke")).unwrap(), 3);
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
        assert_eq!(t.store().offline_count(&u("luke")).unwrap(), 0);
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
        assert_eq!(t.store().offline_count(&u("luke")).unwrap(), 0);
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
