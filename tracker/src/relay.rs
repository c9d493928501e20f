//! The relay: carries a connection between two peers that could not connect any other way
//! (both behind routers, at least one of which gives every connection a random port).
//!
//! Each side opens a connection to the tracker and says `RelayJoin` with the circuit the
//! introduction gave both (`private::introduce`); the first waits for the second, then both
//! are told `Relaying` and bytes are copied between them until either side ends. What is
//! copied is the peers' own handshake and session: Noise, end to end, so the relay sees
//! the ticket and the texts and chunks no more than anyone on the path does (with
//! `--insecure-plaintext` it sees everything, as everyone on the path does).
//!
//! Limits, per user: [`RelayLimits::circuits`] relayed connections at once, and
//! [`RelayLimits::rate`] bytes a second to and from that user over all of them (a byte
//! counts against both its sender's and its receiver's budget).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use link::Stream;
use wire::{Circuit, UserName};

/// How long the first side waits for the second.
pub const RELAY_WAIT: Duration = Duration::from_secs(10);
/// A write that makes no progress this long: that side stopped reading; end the circuit.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Bytes copied per read.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Bytes per second to and from one user, over all its relayed connections.
    pub rate: u64,
    /// Relayed connections one user may have at once.
    pub circuits: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            rate: 512 * 1024,
            circuits: 8,
        }
    }
}

/// One side of a circuit, as it arrived: the connection and whatever it sent after its
/// `RelayJoin` (read along with it).
pub struct Half {
    pub stream: Stream,
    pub early: BytesMut,
}

/// Why a join failed, for the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The other side did not come within [`RELAY_WAIT`].
    Alone,
    /// One of the two users is at its connection limit.
    TooMany,
}

pub struct Relay {
    limits: RelayLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<Circuit, oneshot::Sender<(Half, Slots)>>,
    users: HashMap<UserName, Usage>,
}

struct Usage {
    circuits: usize,
    bucket: Arc<Bucket>,
}

/// The two users' connection slots for one circuit, given back when dropped.
pub struct Slots {
    relay: Arc<Relay>,
    users: [UserName; 2],
    buckets: [Arc<Bucket>; 2],
}

impl Drop for Slots {
    fn drop(&mut self) {
        let mut inner = self.relay.inner.lock().unwrap_or_else(|e| e.into_inner());
        for u in &self.users {
            if let Some(usage) = inner.users.get_mut(u) {
                usage.circuits -= 1;
                if usage.circuits == 0 {
                    inner.users.remove(u);
                }
            }
        }
    }
}

/// What a join leads to.
pub enum Joined {
    /// The other side was waiting: it carries the circuit; this task is done.
    Handed,
    /// Both sides are here: tell both `Relaying`, then [`splice`] them.
    Both {
        mine: Half,
        theirs: Half,
        slots: Slots,
    },
}

impl Relay {
    pub fn new(limits: RelayLimits) -> Arc<Relay> {
        Arc::new(Relay {
            limits,
            inner: Mutex::default(),
        })
    }

    pub fn limits(&self) -> RelayLimits {
        self.limits
    }

    /// Takes a slot for each of `users`, or none if either is at its limit.
    fn take_slots(self: &Arc<Self>, users: &[UserName; 2]) -> Option<Slots> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if users.iter().any(|u| {
            inner
                .users
                .get(u)
                .is_some_and(|s| s.circuits >= self.limits.circuits)
        }) {
            return None;
        }
        let rate = self.limits.rate;
        let buckets = users.clone().map(|u| {
            let usage = inner.users.entry(u).or_insert_with(|| Usage {
                circuits: 0,
                bucket: Arc::new(Bucket::new(rate)),
            });
            usage.circuits += 1;
            usage.bucket.clone()
        });
        Some(Slots {
            relay: self.clone(),
            users: users.clone(),
            buckets,
        })
    }

    /// One side of `circuit` (joining `users`) has arrived with `half`.
    pub async fn join(
        self: &Arc<Self>,
        circuit: Circuit,
        users: [UserName; 2],
        half: Half,
    ) -> Result<Joined, (Half, JoinError)> {
        let waiting = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match inner.waiting.remove(&circuit) {
                Some(other) => Ok(other),
                None => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiting.insert(circuit, tx);
                    Err(rx)
                }
            }
        };
        match waiting {
            // The second side: hand ourselves to the first, which carries the circuit.
            Ok(first) => {
                let Some(slots) = self.take_slots(&users) else {
                    // Dropping `first` tells the waiting side; this one is refused here.
                    return Err((half, JoinError::TooMany));
                };
                match first.send((half, slots)) {
                    Ok(()) => Ok(Joined::Handed),
                    // The first gave up a moment ago.
                    Err((half, _)) => Err((half, JoinError::Alone)),
                }
            }
            Err(rx) => match tokio::time::timeout(RELAY_WAIT, rx).await {
                Ok(Ok((theirs, slots))) => Ok(Joined::Both {
                    mine: half,
                    theirs,
                    slots,
                }),
                Ok(Err(_)) => Err((half, JoinError::TooMany)),
                Err(_) => {
                    let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                    inner.waiting.remove(&circuit);
                    Err((half, JoinError::Alone))
                }
            },
        }
    }
}

/// Copies bytes both ways between `a` and `b` until both directions have ended (a side
/// closing its sending half ends one direction; an error or a stalled write ends both),
/// at the rate both users' budgets allow.
pub async fn splice(a: Half, b: Half, slots: Slots) -> (u64, u64) {
    let (ar, aw) = tokio::io::split(a.stream);
    let (br, bw) = tokio::io::split(b.stream);
    let buckets = slots.buckets.clone();
    let ab = copy(ar, a.early, bw, &buckets);
    let ba = copy(br, b.early, aw, &buckets);
    let r = tokio::join!(ab, ba);
    drop(slots);
    r
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    early: BytesMut,
    mut w: W,
    buckets: &[Arc<Bucket>; 2],
) -> u64 {
    let mut total = 0;
    let mut buf = vec![0u8; CHUNK];
    let mut pending = early.to_vec();
    loop {
        if !pending.is_empty() {
            for b in buckets {
                b.take(pending.len() as u64).await;
            }
            match tokio::time::timeout(WRITE_STALL, w.write_all(&pending)).await {
                Ok(Ok(())) => total += pending.len() as u64,
                _ => return total,
            }
            pending.clear();
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tokio::time::timeout(WRITE_STALL, w.shutdown()).await;
                return total;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// A byte budget refilling at `rate` a second, up to a quarter second's worth; a taker
/// may run it into debt and then waits the debt off, so large takes are not starved.
pub struct Bucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate.max(1),
            state: Mutex::new((rate as f64 / 4.0, Instant::now())),
        }
    }

    pub async fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let burst = self.rate as f64 / 4.0;
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate as f64;
            s.0 = (s.0 + refill).min(burst) - n as f64;
            s.1 = now;
            if s.0 >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-s.0 / self.rate as f64)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_holds_a_taker_to_its_rate() {
        let b = Bucket::new(1000);
        let started = Instant::now();
        // 250 of burst, then 10 × 100 at 1000 a second: 0.75 s of debt to wait off.
        for _ in 0..10 {
            b.take(100).await;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(740) && took <= Duration::from_millis(760),
            "{took:?}"
        );
    }

    #[test]
    fn a_user_gets_as_many_circuits_as_allowed_and_gets_them_back() {
        let relay = Relay::new(RelayLimits {
            rate: 1000,
            circuits: 2,
        });
        let pair = [u("hans"), u("yoda")];
        let other = [u("hans"), u("luke")];
        let a = relay.take_slots(&pair).unwrap();
        let _b = relay.take_slots(&other).unwrap();
        // hans is at 2: no third, whoever with.
        assert!(relay.take_slots(&[u("leia"), u("hans")]).is_none());
        // luke and yoda are not.
        assert!(relay.take_slots(&[u("luke"), u("yoda")]).is_some());
        drop(a);
        assert!(relay.take_slots(&[u("leia"), u("hans")]).is_some());
    }
}
