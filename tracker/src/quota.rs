//! Per-user limits on the requests that cost the tracker (or others) the most: each kind
//! has a token bucket in the user's session, so one user spamming `broadcast`,
//! `startprivate`, `download` lookups, searches or listings gets a clear refusal with the
//! time to wait, and everyone else is served as before. Direct messages have no rate of
//! their own: a recipient who is not keeping up refuses them instead (`BUSY_EVENTS` in
//! `outbox`), so a message flood costs only the flooder.
//!
//! The bursts cover what a person (or the client on their behalf) does at once: a client
//! registers every file it holds at login, and a download asks to be introduced to each
//! holder it hears of; the rates are far above typing speed.

use wire::Request;

use crate::clock::Millis;
use crate::gate::Bucket;

/// (burst, one more every this many ms) for each limited kind of request.
const BROADCAST: (u32, u64) = (10, 500);
const START_PRIVATE: (u32, u64) = (10, 1_000);
const LOCATE: (u32, u64) = (200, 50);
const SEARCH: (u32, u64) = (50, 100);
const LISTING: (u32, u64) = (20, 200);
const REGISTER: (u32, u64) = (300, 50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Broadcast,
    StartPrivate,
    Locate,
    Search,
    Listing,
    Register,
}

impl Kind {
    fn of(req: &Request) -> Option<Kind> {
        Some(match req {
            Request::Broadcast { .. } => Kind::Broadcast,
            Request::StartPrivate { .. } => Kind::StartPrivate,
            Request::Locate { .. } => Kind::Locate,
            Request::SearchFile { .. } | Request::SearchChunk { .. } => Kind::Search,
            Request::WhoElse | Request::WhoElseSince { .. } => Kind::Listing,
            Request::Register { .. } => Kind::Register,
            _ => return None,
        })
    }

    fn rate(self) -> (u32, u64) {
        match self {
            Kind::Broadcast => BROADCAST,
            Kind::StartPrivate => START_PRIVATE,
            Kind::Locate => LOCATE,
            Kind::Search => SEARCH,
            Kind::Listing => LISTING,
            Kind::Register => REGISTER,
        }
    }
}

/// One session's buckets, full at login.
#[derive(Debug)]
pub struct Quota {
    buckets: [Bucket; 6],
}

impl Quota {
    pub fn new(now: Millis) -> Quota {
        let all = [
            Kind::Broadcast,
            Kind::StartPrivate,
            Kind::Locate,
            Kind::Search,
            Kind::Listing,
            Kind::Register,
        ];
        Quota {
            buckets: all.map(|k| Bucket::full(k.rate().0, now)),
        }
    }

    /// Takes a token for `req` if it is a limited kind: `Err(ms to wait)` when none is left.
    pub fn take(&mut self, req: &Request, now: Millis) -> Result<(), u32> {
        let Some(kind) = Kind::of(req) else {
            return Ok(());
        };
        let (burst, every) = kind.rate();
        let b = &mut self.buckets[kind as usize];
        if b.take(burst, every, now) {
            Ok(())
        } else {
            Err(b.wait_ms(every).min(u32::MAX as u64) as u32)
        }
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
        for _ in 0..BROADCAST.0 {
            assert_eq!(q.take(&b, t), Ok(()));
        }
        assert_eq!(q.take(&b, t), Err(BROADCAST.1 as u32));
        // Other kinds have their own buckets; messages have none.
        assert_eq!(q.take(&Request::WhoElse, t), Ok(()));
        assert_eq!(q.take(&Request::Activity, t), Ok(()));
        assert_eq!(q.take(&b, Millis(t.0 + BROADCAST.1)), Ok(()));
    }
}
