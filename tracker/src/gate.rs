//! Admission per address, before anyone has logged in: how many connections one address
//! may have waiting to log in, how fast it may open new ones, and how fast it may get
//! passwords wrong. Without these one program could hold every connection slot with
//! connections that never log in, or guess passwords across every account at full speed.
//!
//! The numbers follow ergo's defaults (16 connections per address, new ones throttled,
//! loopback exempt) scaled to a chat tracker: a household or office behind one router
//! logs in a few people at once, not dozens a second. Connections from loopback are not
//! limited (as in ergo): they come from the tracker's own machine, where anyone can do
//! worse. Failed passwords are counted for every address, loopback included.
//!
//! Pure rules: every call takes `now`; the server keeps one [`Gate`] behind its own lock,
//! apart from the tracker's state.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::clock::Millis;

/// Connections from one address waiting to log in at once.
pub const PRELOGIN_PER_ADDRESS: u32 = 16;
/// New connections one address may open in a burst, and then one per this many ms.
pub const NEW_CONNECTIONS_BURST: u32 = 32;
pub const NEW_CONNECTION_EVERY_MS: u64 = 1_000;
/// Failed passwords one address may send in a burst, then one per this many ms.
pub const FAILED_LOGINS_BURST: u32 = 10;
pub const FAILED_LOGIN_EVERY_MS: u64 = 6_000;
/// Addresses remembered before the idle ones are forgotten.
const PRUNE_AT: usize = 4_096;

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// [`PRELOGIN_PER_ADDRESS`] of its connections are already waiting to log in.
    TooManyWaiting,
    /// It opened connections faster than [`NEW_CONNECTION_EVERY_MS`] allows.
    TooFast,
}

/// A token bucket: `burst` tokens, one more every `every_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    /// Tokens in thousandths, so refills are exact in integer arithmetic.
    milli: u64,
    at: Millis,
}

impl Bucket {
    pub(crate) fn full(burst: u32, now: Millis) -> Bucket {
        Bucket {
            milli: burst as u64 * 1000,
            at: now,
        }
    }

    pub(crate) fn refill(&mut self, burst: u32, every_ms: u64, now: Millis) {
        let elapsed = now.0.saturating_sub(self.at.0);
        self.milli =
            (self.milli + elapsed.saturating_mul(1000) / every_ms).min(burst as u64 * 1000);
        self.at = now;
    }

    pub(crate) fn take(&mut self, burst: u32, every_ms: u64, now: Millis) -> bool {
        let has = self.has(burst, every_ms, now);
        if has {
            self.milli -= 1000;
        }
        has
    }

    pub(crate) fn has(&mut self, burst: u32, every_ms: u64, now: Millis) -> bool {
        self.refill(burst, every_ms, now);
        self.milli >= 1000
    }

    /// Milliseconds until a token is back.
    pub(crate) fn wait_ms(&self, every_ms: u64) -> u64 {
        (1000u64.saturating_sub(self.milli))
            .saturating_mul(every_ms)
            .div_ceil(1000)
    }

    pub(crate) fn is_full(&self, burst: u32, every_ms: u64, now: Millis) -> bool {
        let mut b = *self;
        b.refill(burst, every_ms, now);
        b.milli >= burst as u64 * 1000
    }
}

#[derive(Debug)]
struct Address {
    waiting: u32,
    opened: Bucket,
    failed: Bucket,
}

#[derive(Debug, Default)]
pub struct Gate {
    addrs: HashMap<IpAddr, Address>,
}

impl Gate {
    fn entry(&mut self, ip: IpAddr, now: Millis) -> &mut Address {
        if self.addrs.len() >= PRUNE_AT && !self.addrs.contains_key(&ip) {
            self.prune(now);
        }
        self.addrs.entry(ip).or_insert_with(|| Address {
            waiting: 0,
            opened: Bucket::full(NEW_CONNECTIONS_BURST, now),
            failed: Bucket::full(FAILED_LOGINS_BURST, now),
        })
    }

    /// Forgets addresses with nothing waiting and nothing to remember (full buckets).
    fn prune(&mut self, now: Millis) {
        self.addrs.retain(|_, a| {
            a.waiting > 0
                || !a
                    .opened
                    .is_full(NEW_CONNECTIONS_BURST, NEW_CONNECTION_EVERY_MS, now)
                || !a
                    .failed
                    .is_full(FAILED_LOGINS_BURST, FAILED_LOGIN_EVERY_MS, now)
        });
    }

    /// A new connection from `ip`: admitted (it now counts as waiting to log in until
    /// [`Gate::left_prelogin`]) or turned away.
    pub fn admit(&mut self, ip: IpAddr, now: Millis) -> Result<(), Turned> {
        if ip.is_loopback() {
            return Ok(());
        }
        let a = self.entry(ip, now);
        if a.waiting >= PRELOGIN_PER_ADDRESS {
            return Err(Turned::TooManyWaiting);
        }
        if !a
            .opened
            .take(NEW_CONNECTIONS_BURST, NEW_CONNECTION_EVERY_MS, now)
        {
            return Err(Turned::TooFast);
        }
        a.waiting += 1;
        Ok(())
    }

    /// An admitted connection logged in or closed.
    pub fn left_prelogin(&mut self, ip: IpAddr) {
        if let Some(a) = self.addrs.get_mut(&ip) {
            a.waiting = a.waiting.saturating_sub(1);
        }
    }

    /// Whether `ip` may have a password checked now; if not, the seconds until it may.
    pub fn may_try(&mut self, ip: IpAddr, now: Millis) -> Result<(), u32> {
        let a = self.entry(ip, now);
        if a.failed
            .has(FAILED_LOGINS_BURST, FAILED_LOGIN_EVERY_MS, now)
        {
            Ok(())
        } else {
            Err(a.failed.wait_ms(FAILED_LOGIN_EVERY_MS).div_ceil(1000) as u32)
        }
    }

    /// A password from `ip` was wrong.
    pub fn failed(&mut self, ip: IpAddr, now: Millis) {
        let a = self.entry(ip, now);
        a.failed
            .take(FAILED_LOGINS_BURST, FAILED_LOGIN_EVERY_MS, now);
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_address_may_have_only_so_many_connections_waiting_to_log_in() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for _ in 0..PRELOGIN_PER_ADDRESS {
            assert_eq!(g.admit(ip(1), t), Ok(()));
        }
        assert_eq!(g.admit(ip(1), t), Err(Turned::TooManyWaiting));
        assert_eq!(g.admit(ip(2), t), Ok(()), "another address is not affected");
        g.left_prelogin(ip(1));
        assert_eq!(
            g.admit(ip(1), t),
            Ok(()),
            "a slot freed by a login or a close"
        );
    }

    #[test]
    fn new_connections_are_throttled_after_a_burst_and_refill_with_time() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for _ in 0..NEW_CONNECTIONS_BURST {
            assert_eq!(g.admit(ip(1), t), Ok(()));
            g.left_prelogin(ip(1));
        }
        assert_eq!(g.admit(ip(1), t), Err(Turned::TooFast));
        let later = Millis(t.0 + NEW_CONNECTION_EVERY_MS);
        assert_eq!(g.admit(ip(1), later), Ok(()));
        assert_eq!(g.admit(ip(1), later), Err(Turned::TooFast));
    }

    #[test]
    fn loopback_is_not_limited() {
        let mut g = Gate::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 * NEW_CONNECTIONS_BURST {
            assert_eq!(g.admit(lo, Millis(5)), Ok(()));
        }
    }

    #[test]
    fn failed_passwords_are_throttled_per_address() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for _ in 0..FAILED_LOGINS_BURST {
            assert_eq!(g.may_try(ip(1), t), Ok(()));
            g.failed(ip(1), t);
        }
        let wait = g.may_try(ip(1), t).unwrap_err();
        assert_eq!(wait as u64, FAILED_LOGIN_EVERY_MS / 1000);
        assert_eq!(g.may_try(ip(2), t), Ok(()));
        assert_eq!(
            g.may_try(ip(1), Millis(t.0 + FAILED_LOGIN_EVERY_MS)),
            Ok(())
        );
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for n in 0..PRUNE_AT as u32 {
            g.admit(ip(n), t).unwrap();
            g.left_prelogin(ip(n));
        }
        assert_eq!(g.remembered(), PRUNE_AT);
        // Once their buckets have refilled, a new address makes room.
        let later = Millis(t.0 + NEW_CONNECTION_EVERY_MS * NEW_CONNECTIONS_BURST as u64);
        g.admit(ip(PRUNE_AT as u32), later).unwrap();
        assert_eq!(g.remembered(), 1);
    }
}
