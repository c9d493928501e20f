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
use crate::rate::{Bucket, Rate};

/// Connections from one address waiting to log in at once.
pub const PRELOGIN_PER_ADDRESS: u32 = 16;
/// New connections one address may open in a burst, and then one a second.
pub const NEW_CONNECTIONS: Rate = Rate::per_ms(32, 1_000);
/// Failed passwords one address may send in a burst, then one per 6 s.
pub const FAILED_LOGINS: Rate = Rate::per_ms(10, 6_000);
/// Addresses remembered before the idle ones are forgotten.
const PRUNE_AT: usize = 4_096;

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// [`PRELOGIN_PER_ADDRESS`] of its connections are already waiting to log in.
    TooManyWaiting,
    /// It opened connections faster than [`NEW_CONNECTIONS`] allows.
    TooFast,
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
            opened: Bucket::full(now),
            failed: Bucket::full(now),
        })
    }

    /// Forgets addresses with nothing waiting and nothing to remember (full buckets).
    fn prune(&mut self, now: Millis) {
        self.addrs
            .retain(|_, a| a.waiting > 0 || !a.opened.is_full(now) || !a.failed.is_full(now));
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
        if a.opened.take(NEW_CONNECTIONS, now).is_err() {
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
        a.failed
            .check(FAILED_LOGINS, now)
            .map_err(|ms| ms.div_ceil(1000).min(u32::MAX as u64) as u32)
    }

    /// A password from `ip` was wrong.
    pub fn failed(&mut self, ip: IpAddr, now: Millis) {
        let a = self.entry(ip, now);
        // Counted even when the bucket is empty (the check before the password let it in).
        let _ = a.failed.take(FAILED_LOGINS, now);
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
        for _ in 0..NEW_CONNECTIONS.burst {
            assert_eq!(g.admit(ip(1), t), Ok(()));
            g.left_prelogin(ip(1));
        }
        assert_eq!(g.admit(ip(1), t), Err(Turned::TooFast));
        let later = Millis(t.0 + NEW_CONNECTIONS.every_us / 1000);
        assert_eq!(g.admit(ip(1), later), Ok(()));
        assert_eq!(g.admit(ip(1), later), Err(Turned::TooFast));
    }

    #[test]
    fn loopback_is_not_limited() {
        let mut g = Gate::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 * NEW_CONNECTIONS.burst {
            assert_eq!(g.admit(lo, Millis(5)), Ok(()));
        }
    }

    #[test]
    fn failed_passwords_are_throttled_per_address() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for _ in 0..FAILED_LOGINS.burst {
            assert_eq!(g.may_try(ip(1), t), Ok(()));
            g.failed(ip(1), t);
        }
        let wait = g.may_try(ip(1), t).unwrap_err();
        assert_eq!(wait as u64, FAILED_LOGINS.every_us / 1_000_000);
        assert_eq!(g.may_try(ip(2), t), Ok(()));
        assert_eq!(
            g.may_try(ip(1), Millis(t.0 + FAILED_LOGINS.every_us / 1000)),
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
        let later = Millis(t.0 + NEW_CONNECTIONS.every_us / 1000 * NEW_CONNECTIONS.burst as u64);
        g.admit(ip(PRUNE_AT as u32), later).unwrap();
        assert_eq!(g.remembered(), 1);
    }
}
