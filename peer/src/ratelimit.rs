//! `--up-limit` and `--down-limit`: one token bucket per direction, shared by every
//! transfer, so the limit holds across all of them together.
//!
//! A transfer takes the bytes it is about to send (or has just read) before going on;
//! when the bucket is empty it waits until the rate has paid for them. Waiters are served
//! in the order they came (the bucket sits behind a FIFO async mutex), so no transfer
//! starves another.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A limit in bytes per second, parsed from the command line: a number with an optional
/// K, M or G suffix (binary units: `5M` is 5 MiB/s, as aria2c and curl read it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let (num, mult) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        let bad = || format!("{s:?} is not a rate: use bytes per second, like 500K or 5M");
        let n: f64 = num.parse().map_err(|_| bad())?;
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes < 1024.0 {
            return Err(format!(
                "{s:?} is too low: at least 1K (1024 bytes per second)"
            ));
        }
        Ok(Rate(bytes as u64))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", crate::render::human_size(self.0))
    }
}

pub struct RateLimiter {
    rate: f64,
    /// Most tokens saved up while idle: a short burst, so the limit holds over any second.
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> RateLimiter {
        let rate = rate.0 as f64;
        RateLimiter {
            rate,
            burst: (rate / 10.0).max(16.0 * 1024.0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    pub fn rate(&self) -> Rate {
        Rate(self.rate as u64)
    }

    /// Waits until `n` bytes fit in the limit.
    pub async fn take(&self, n: usize) {
        let mut b = self.bucket.lock().await;
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        b.tokens -= n as f64;
        if b.tokens < 0.0 {
            // Holding the lock while waiting keeps the order of those behind us.
            tokio::time::sleep(Duration::from_secs_f64(-b.tokens / self.rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_people_write_them() {
        assert_eq!("500K".parse(), Ok(Rate(500 * 1024)));
        assert_eq!("5M".parse(), Ok(Rate(5 << 20)));
        assert_eq!("1.5m".parse(), Ok(Rate(3 << 19)));
        assert_eq!("2048".parse(), Ok(Rate(2048)));
        assert!("fast".parse::<Rate>().is_err());
        assert!("10".parse::<Rate>().unwrap_err().contains("too low"));
        assert!("-5M".parse::<Rate>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn takes_hold_the_rate() {
        let l = RateLimiter::new(Rate(1 << 20));
        let start = Instant::now();
        for _ in 0..40 {
            l.take(256 * 1024).await;
        }
        // 10 MiB at 1 MiB/s, less the burst it may start with (none: it starts empty).
        let secs = start.elapsed().as_secs_f64();
        assert!((9.9..10.1).contains(&secs), "{secs}");
    }
}
