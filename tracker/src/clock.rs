//! Time as the tracker's rules see it: milliseconds since the Unix epoch, passed in.
//!
//! Rules never read the clock themselves; the connection glue reads [`Clock::now`] and
//! hands the value down, so unit tests drive time by hand. Wall-clock milliseconds (not
//! `Instant`) because lockouts and login history are stored and must mean the same thing
//! after a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_sub(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(ms(d)))
    }
    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(ms(d)))
    }
}

/// `d` in milliseconds, saturating: `whoelsesince 18446744073709552` is ~585 million
/// years, not the 0.4 s a truncating cast of its 2^64+ milliseconds would leave.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Millis(d.as_millis() as u64)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self(AtomicU64::new(start.0))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}
