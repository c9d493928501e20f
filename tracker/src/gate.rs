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
//! An address that keeps coming back after being turned away (a connect flood) is
//! *shunned*: for [`SHUN_FOR`] the kernel drops its connection attempts before they
//! become connections (`crate::shun`), so the flood costs neither an `accept` nor a reset
//! each. Turned away and reset, one address opening 5,000 connections a second took a
//! third of a core (`perf` on `bench/abuse`: `close` 26%, `accept` 12% of the tracker's
//! samples).
//!
//! Pure rules: every call takes `now`; the server keeps one [`Gate`] behind its own lock,
//! apart from the tracker's state.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use std::time::Duration;

use crate::clock::Millis;
use crate::rate::{Bucket, Rate};

/// Connections from one address waiting to log in at once.
pub const PRELOGIN_PER_ADDRESS: u32 = 16;
/// New connections one address may open in a burst, and then one a second.
pub const NEW_CONNECTIONS: Rate = Rate::per_ms(32, 1_000);
/// Failed passwords one address may send in a burst, then one per 6 s.
pub const FAILED_LOGINS: Rate = Rate::per_ms(10, 6_000);
/// Connections one address may have turned away (each beyond the limits above) before it
/// is shunned: a burst of 64, then one a second. A program that reconnects once a second
/// when refused is never shunned; one that reconnects at once is within milliseconds.
pub const TURNED_AWAY: Rate = Rate::per_ms(64, 1_000);
/// How long a shunned address's connection attempts are dropped. Its client sees a
/// server that does not answer; a minute later it is back to the limits above.
pub const SHUN_FOR: Duration = Duration::from_secs(60);
/// Addresses shunned at once, at most. Past it, further floods are turned away as before
/// (the kernel filter grows with every address; a flood from thousands of addresses is
/// for the network to stop).
pub const MAX_SHUNNED: usize = 256;
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
    turned: Bucket,
}

#[derive(Debug, Default)]
pub struct Gate {
    addrs: HashMap<IpAddr, Address>,
    /// Shunned addresses and until when.
    shunned: BTreeMap<IpAddr, Millis>,
    /// `shunned` changed since [`Gate::shun_change`] last said so.
    shun_changed: bool,
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
            turned: Bucket::full(now),
        })
    }

    /// Forgets addresses with nothing waiting and nothing to remember (full buckets).
    fn prune(&mut self, now: Millis) {
        self.addrs.retain(|_, a| {
            a.waiting > 0
                || !a.opened.is_full(now)
                || !a.failed.is_full(now)
                || !a.turned.is_full(now)
        });
    }

    /// A new connection from `ip`: admitted (it now counts as waiting to log in until
    /// [`Gate::left_prelogin`]) or turned away.
    pub fn admit(&mut self, ip: IpAddr, now: Millis) -> Result<(), Turned> {
        if ip.is_loopback() {
            return Ok(());
        }
        let a = self.entry(ip, now);
        let why = if a.waiting >= PRELOGIN_PER_ADDRESS {
            Turned::TooManyWaiting
        } else if a.opened.take(NEW_CONNECTIONS, now).is_err() {
            Turned::TooFast
        } else {
            a.waiting += 1;
            return Ok(());
        };
        if a.turned.take(TURNED_AWAY, now).is_err() {
            self.shun(ip, now);
        }
        Err(why)
    }

    fn shun(&mut self, ip: IpAddr, now: Millis) {
        if self.shunned.len() < MAX_SHUNNED || self.shunned.contains_key(&ip) {
            self.shunned.insert(ip, now.plus(SHUN_FOR));
            self.shun_changed = true;
        }
    }

    /// Ends the shuns that are over by `now`.
    pub fn expire_shuns(&mut self, now: Millis) {
        let before = self.shunned.len();
        self.shunned.retain(|_, until| *until > now);
        self.shun_changed |= self.shunned.len() != before;
    }

    /// When the next shun ends, if any is in force.
    pub fn next_shun_end(&self) -> Option<Millis> {
        self.shunned.values().min().copied()
    }

    /// The shunned addresses, if they changed since the last call (once per change).
    pub fn shun_change(&mut self) -> Option<Vec<IpAddr>> {
        std::mem::take(&mut self.shun_changed).then(|| self.shunned.keys().copied().collect())
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
    fn an_address_that_keeps_coming_back_is_shunned_for_a_while() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for _ in 0..NEW_CONNECTIONS.burst {
            g.admit(ip(1), t).unwrap();
            g.left_prelogin(ip(1));
        }
        assert_eq!(g.shun_change(), None, "within its limits: nothing to shun");
        for _ in 0..TURNED_AWAY.burst {
            assert_eq!(g.admit(ip(1), t), Err(Turned::TooFast));
        }
        assert_eq!(g.shun_change(), None, "turned away, but not yet too often");
        assert_eq!(g.admit(ip(1), t), Err(Turned::TooFast));
        assert_eq!(g.shun_change(), Some(vec![ip(1)]));
        assert_eq!(g.shun_change(), None, "said once");
        assert_eq!(g.next_shun_end(), Some(t.plus(SHUN_FOR)));
        assert_eq!(g.admit(ip(2), t), Ok(()), "another address is not affected");

        g.expire_shuns(Millis(t.0 + 59_999));
        assert_eq!(g.shun_change(), None);
        g.expire_shuns(t.plus(SHUN_FOR));
        assert_eq!(g.shun_change(), Some(vec![]));
        assert_eq!(g.next_shun_end(), None);
        // A minute later its buckets have refilled: admitted again.
        assert_eq!(g.admit(ip(1), t.plus(SHUN_FOR)), Ok(()));
    }

    #[test]
    fn a_program_that_retries_once_a_second_is_never_shunned() {
        let mut g = Gate::default();
        let mut t = Millis(1_000_000);
        for _ in 0..PRELOGIN_PER_ADDRESS {
            g.admit(ip(1), t).unwrap(); // all waiting: every later one is turned away
        }
        for _ in 0..3_600 {
            t = Millis(t.0 + 1_000);
            assert_eq!(g.admit(ip(1), t), Err(Turned::TooManyWaiting));
        }
        assert_eq!(g.shun_change(), None);
    }

    #[test]
    fn only_so_many_addresses_are_shunned_at_once() {
        let mut g = Gate::default();
        let t = Millis(1_000_000);
        for n in 0..MAX_SHUNNED as u32 + 10 {
            while g.admit(ip(n), t).is_ok() {
                g.left_prelogin(ip(n));
            }
            for _ in 0..=TURNED_AWAY.burst {
                let _ = g.admit(ip(n), t);
            }
        }
        assert_eq!(g.shun_change().unwrap().len(), MAX_SHUNNED);
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
