//! Rate limits as token buckets, each kept as one number: the moment it would be full
//! again (the "generic cell rate algorithm"). Exact in integer microseconds, so a slow
//! rate (one failed password per 6 s) refills between calls made every millisecond,
//! which a bucket that rounds what it gained at each call loses; and a fast one (a token
//! every 100 µs) needs no fractions.
//!
//! Pure: every call takes `now`.

use crate::clock::Millis;

/// `burst` tokens, one more every `every_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub every_us: u64,
}

impl Rate {
    pub const fn per_ms(burst: u32, every_ms: u64) -> Rate {
        Rate {
            burst,
            every_us: every_ms * 1000,
        }
    }

    /// The whole burst's worth of refill time.
    const fn span_us(self) -> u64 {
        self.burst as u64 * self.every_us
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// When the bucket will be full again, in µs; at or before now: full.
    full_at: u64,
}

fn us(now: Millis) -> u64 {
    now.0.saturating_mul(1000)
}

impl Bucket {
    pub fn full(now: Millis) -> Bucket {
        Bucket { full_at: us(now) }
    }

    /// Where `full_at` would be with `n` more tokens taken, and how long to wait (µs) if
    /// that is more than the bucket holds.
    fn after(&self, rate: Rate, n: u32, now: Millis) -> (u64, u64) {
        let now = us(now);
        let cost = rate.every_us.saturating_mul(n as u64);
        let next = self.full_at.max(now).saturating_add(cost);
        let limit = now.saturating_add(rate.span_us());
        (next, next.saturating_sub(limit))
    }

    /// Takes a token, or says in how many ms one will be there (at least 1).
    pub fn take(&mut self, rate: Rate, now: Millis) -> Result<(), u64> {
        self.take_n(rate, 1, now)
    }

    /// Takes `n` tokens at once (all or none), or says in how many ms they will be there.
    pub fn take_n(&mut self, rate: Rate, n: u32, now: Millis) -> Result<(), u64> {
        let (next, wait) = self.after(rate, n, now);
        if wait == 0 {
            self.full_at = next;
            Ok(())
        } else {
            Err(wait.div_ceil(1000))
        }
    }

    /// Whether a token is there, without taking it; if not, the ms until one is.
    pub fn check(&self, rate: Rate, now: Millis) -> Result<(), u64> {
        match self.after(rate, 1, now).1 {
            0 => Ok(()),
            wait => Err(wait.div_ceil(1000)),
        }
    }

    pub fn is_full(&self, now: Millis) -> bool {
        self.full_at <= us(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let rate = Rate::per_ms(3, 500);
        let t = Millis(1_000_000);
        let mut b = Bucket::full(t);
        for _ in 0..3 {
            assert_eq!(b.take(rate, t), Ok(()));
        }
        assert_eq!(b.take(rate, t), Err(500));
        assert_eq!(b.check(rate, Millis(t.0 + 499)), Err(1));
        assert_eq!(b.take(rate, Millis(t.0 + 500)), Ok(()));
        assert_eq!(b.take(rate, Millis(t.0 + 500)), Err(500));
        assert!(!b.is_full(Millis(t.0 + 1999)));
        assert!(b.is_full(Millis(t.0 + 2000)));
    }

    #[test]
    fn a_slow_rate_refills_even_when_asked_every_millisecond() {
        let rate = Rate::per_ms(1, 6_000);
        let t = Millis(1_000_000);
        let mut b = Bucket::full(t);
        b.take(rate, t).unwrap();
        let mut granted = None;
        for ms in 1..=7_000 {
            if b.take(rate, Millis(t.0 + ms)).is_ok() {
                granted = Some(ms);
                break;
            }
        }
        assert_eq!(granted, Some(6_000));
    }

    #[test]
    fn several_tokens_at_once_all_or_none() {
        let rate = Rate::per_ms(10, 100);
        let t = Millis(1_000);
        let mut b = Bucket::full(t);
        assert_eq!(b.take_n(rate, 7, t), Ok(()));
        assert_eq!(b.take_n(rate, 4, t), Err(100), "one short: nothing taken");
        assert_eq!(b.take_n(rate, 3, t), Ok(()));
        assert_eq!(b.take(rate, t), Err(100));
    }

    #[test]
    fn sub_millisecond_rates() {
        let rate = Rate {
            burst: 10,
            every_us: 100,
        };
        let t = Millis(5);
        let mut b = Bucket::full(t);
        let taken = (0..100).filter(|_| b.take(rate, t).is_ok()).count();
        assert_eq!(taken, 10);
        let later = Millis(6); // 1 ms: ten more
        let taken = (0..100).filter(|_| b.take(rate, later).is_ok()).count();
        assert_eq!(taken, 10);
    }
}
