//! Per-user limits on requests: each kind has a token bucket in the user's session, so one
//! user spamming `broadcast`, `startprivate`, `download` lookups, searches, listings or
//! anything else gets a clear refusal with the time to wait, and everyone else is served
//! as before. A refused sender is also not read again until that time has passed
//! (`server`), so asking at full speed costs the tracker what asking at the limit does.
//!
//! The bursts cover what a person (or the client on their behalf) does at once: a client
//! announces every file it holds at login, and a download asks to be introduced to each
//! holder it hears of; the rates are far above typing speed. Direct messages are the
//! tracker's main work: a sender may send 10,000 at once (a script sending a backlog; the
//! 10,000-message senders of `bench/relay` fit in it) and then 1,000 a second. The
//! sustained rate is what bounds a flood: at 10,000 a second, two flooding users raised
//! everyone else's p99 latency 4x (`bench/abuse`); at 1,000, 1.7x. A recipient who is not
//! keeping up also refuses them (`BUSY_EVENTS` in `outbox`), so a flood at one user costs
//! only the flooder.

use wire::Request;

use crate::clock::Millis;
use crate::rate::{Bucket, Rate};

pub const MESSAGE: Rate = Rate::per_ms(10_000, 1);
/// The bytes of those messages and broadcasts, in units of [`TEXT_UNIT`] bytes (a short
/// text is one): 4 MiB at once, then 250 KiB a second (62 messages of the longest text).
/// A flood of long texts costs the tracker (and every recipient's link) by the byte, not
/// by the message.
pub const TEXT: Rate = Rate::per_ms(16_384, 1);
pub const TEXT_UNIT: usize = 256;
pub const BROADCAST: Rate = Rate::per_ms(10, 500);
pub const START_PRIVATE: Rate = Rate::per_ms(10, 1_000);
pub const LOCATE: Rate = Rate::per_ms(200, 50);
pub const SEARCH: Rate = Rate::per_ms(50, 100);
pub const LISTING: Rate = Rate::per_ms(20, 200);
pub const REGISTER: Rate = Rate::per_ms(300, 50);
/// `block` and `unblock`: each is a write to the database.
pub const BLOCKING: Rate = Rate::per_ms(20, 100);
/// Announcements (`HaveChunk`, `Unwatch`, `Withdraw`, and `Announce` at login): a file's
/// 256 chunks at once, and a client's whole folder within a second or two (it paces
/// itself by the `TooFast` answers).
pub const ANNOUNCE: Rate = Rate::per_ms(512, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Broadcast,
    StartPrivate,
    Locate,
    Search,
    Listing,
    Register,
    Blocking,
    Announce,
}

/// How many kinds there are: one bucket each.
const KINDS: usize = Kind::Announce as usize + 1;

impl Kind {
    /// `None`: free (`Activity`, `Logout`).
    fn of(req: &Request) -> Option<Kind> {
        Some(match req {
            Request::Message { .. } => Kind::Message,
            Request::Broadcast { .. } => Kind::Broadcast,
            // Costs what a start costs to check: the same rate, so it cannot be used to
            // probe presence faster than starting would.
            Request::StartPrivate { .. } | Request::CheckPeer { .. } => Kind::StartPrivate,
            Request::Locate { .. } => Kind::Locate,
            Request::SearchFile { .. } | Request::SearchChunk { .. } => Kind::Search,
            Request::WhoElse | Request::WhoElseSince { .. } => Kind::Listing,
            Request::Register { .. } | Request::Unregister { .. } => Kind::Register,
            Request::Block { .. } | Request::Unblock { .. } => Kind::Blocking,
            // `Announce` joins holdings as `HaveChunk` does, a file at a time.
            Request::HaveChunk { .. }
            | Request::Unwatch { .. }
            | Request::Withdraw { .. }
            | Request::Announce { .. } => Kind::Announce,
            Request::Activity | Request::Logout => return None,
        })
    }

    fn rate(self) -> Rate {
        match self {
            Kind::Message => MESSAGE,
            Kind::Broadcast => BROADCAST,
            Kind::StartPrivate => START_PRIVATE,
            Kind::Locate => LOCATE,
            Kind::Search => SEARCH,
            Kind::Listing => LISTING,
            Kind::Register => REGISTER,
            Kind::Blocking => BLOCKING,
            Kind::Announce => ANNOUNCE,
        }
    }
}

/// One session's buckets, full at login.
#[derive(Debug)]
pub struct Quota {
    buckets: [Bucket; KINDS],
    texts: Bucket,
}

impl Quota {
    pub fn new(now: Millis) -> Quota {
        Quota {
            buckets: [Bucket::full(now); KINDS],
            texts: Bucket::full(now),
        }
    }

    /// Takes a token for `req` if it is a limited kind (and, for a text, its units of
    /// [`TEXT_UNIT`] bytes): `Err(ms to wait)` when there are not enough.
    pub fn take(&mut self, req: &Request, now: Millis) -> Result<(), u32> {
        let Some(kind) = Kind::of(req) else {
            return Ok(());
        };
        let ms = |w: u64| w.min(u32::MAX as u64) as u32;
        // Taken on a copy, kept only if the request's own bucket has a token too: a refused
        // request costs nothing from either.
        let mut texts = self.texts;
        if let Request::Message { text, .. } | Request::Broadcast { text } = req {
            let units = text.as_str().len().div_ceil(TEXT_UNIT).max(1) as u32;
            texts.take_n(TEXT, units, now).map_err(ms)?;
        }
        self.buckets[kind as usize]
            .take(kind.rate(), now)
            .map_err(ms)?;
        self.texts = texts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Text;

    #[test]
    fn a_burst_then_the_rate_then_a_refusal_saying_how_long() {
        let t = Millis(1_000_000);
        let mut q = Quota::new(t);
        let b = Request::Broadcast {
            text: Text::new("hi").unwrap(),
        };
        for _ in 0..BROADCAST.burst {
            assert_eq!(q.take(&b, t), Ok(()));
        }
        assert_eq!(q.take(&b, t), Err(500));
        // Other kinds have their own buckets; activity and logout are free.
        assert_eq!(q.take(&Request::WhoElse, t), Ok(()));
        for _ in 0..10 * MESSAGE.burst {
            assert_eq!(q.take(&Request::Activity, t), Ok(()));
        }
        assert_eq!(q.take(&b, Millis(t.0 + 500)), Ok(()));
    }

    #[test]
    fn a_sender_may_send_a_burst_of_messages_then_a_thousand_a_second() {
        let t = Millis(1_000_000);
        let mut q = Quota::new(t);
        let m = Request::Message {
            to: wire::UserName::new("hans").unwrap(),
            text: Text::new("hi").unwrap(),
        };
        // The burst, then one per millisecond over one second.
        let mut sent = (0..2 * MESSAGE.burst)
            .filter(|_| q.take(&m, t).is_ok())
            .count();
        assert_eq!(sent, MESSAGE.burst as usize);
        for ms in 1..=1000 {
            sent += (0..10)
                .filter(|_| q.take(&m, Millis(t.0 + ms)).is_ok())
                .count();
        }
        assert_eq!(sent, MESSAGE.burst as usize + 1_000);
    }

    #[test]
    fn long_texts_are_limited_by_their_bytes() {
        let t = Millis(1_000_000);
        let mut q = Quota::new(t);
        let long = Request::Message {
            to: wire::UserName::new("hans").unwrap(),
            text: Text::new("x".repeat(wire::ids::MAX_TEXT_LEN)).unwrap(),
        };
        let sent = (0..5_000).filter(|_| q.take(&long, t).is_ok()).count();
        assert_eq!(sent, 1_024, "4 MiB of 4 KiB texts");
        // Nothing left even for a short one: one unit comes back each millisecond.
        let short = Request::Message {
            to: wire::UserName::new("hans").unwrap(),
            text: Text::new("hi").unwrap(),
        };
        assert_eq!(q.take(&short, t), Err(1));
        assert_eq!(q.take(&short, Millis(t.0 + 1)), Ok(()));
        // 1,024 ms later: 256 KiB more, 64 long texts.
        let later = Millis(t.0 + 1 + 1_024);
        let sent = (0..500).filter(|_| q.take(&long, later).is_ok()).count();
        assert_eq!(sent, 64);
    }
}
