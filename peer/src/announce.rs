//! What we hold, told to the tracker after login at the pace it accepts (no I/O here).
//!
//! A client with hundreds of files sends one `Announce` per file. The tracker limits
//! announcements per user (`tracker::quota`); sent all at once, those over its burst came
//! back `TooFast` and were lost, each printing an error. Here at most [`WINDOW`] are in
//! flight, and a `TooFast` puts its announcement back at the front of the queue and waits
//! the time the tracker asked for. `now` is passed in, so tests drive time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wire::{FileMeta, Refusal, Reply, Request};

/// Announcements sent and not yet answered, at most.
pub const WINDOW: usize = 64;

#[derive(Debug, Default)]
pub struct Announcer {
    queue: VecDeque<(FileMeta, Vec<u32>)>,
    in_flight: VecDeque<(FileMeta, Vec<u32>)>,
    paused_until: Option<Instant>,
    /// How many at the front of `queue` came back `TooFast` since the last send: the next
    /// one refused goes after them, so the order holds.
    requeued: usize,
}

/// What became of an answered announcement.
#[derive(Debug, PartialEq)]
pub enum Answered {
    /// Taken, or refused for a reason the caller deals with.
    Done(Reply),
    /// Refused as too fast: queued again, sent after [`Announcer::paused_until`].
    Later,
}

impl Announcer {
    pub fn add(&mut self, meta: FileMeta, have: Vec<u32>) {
        self.queue.push_back((meta, have));
    }

    /// The announcements to send now, each to be answered in order via
    /// [`Announcer::answered`].
    pub fn ready(&mut self, now: Instant) -> Vec<Request> {
        if self.paused_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        self.paused_until = None;
        self.requeued = 0;
        let mut out = Vec::new();
        while self.in_flight.len() < WINDOW {
            let Some((meta, have)) = self.queue.pop_front() else {
                break;
            };
            out.push(Request::Announce {
                meta: meta.clone(),
                have: have.clone(),
            });
            self.in_flight.push_back((meta, have));
        }
        out
    }

    /// The tracker's answer to the oldest announcement in flight.
    pub fn answered(&mut self, reply: Reply, now: Instant) -> Answered {
        let Some(item) = self.in_flight.pop_front() else {
            return Answered::Done(reply);
        };
        match reply {
            Reply::Refused(Refusal::TooFast { retry_ms }) => {
                // Behind the ones already re-queued (they were sent earlier).
                self.queue.insert(self.requeued, item);
                self.requeued += 1;
                let until = now + Duration::from_millis(retry_ms.max(1).into());
                self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
                Answered::Later
            }
            other => Answered::Done(other),
        }
    }

    /// When the next announcements may go, if waiting for the tracker's rate.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until.filter(|_| !self.queue.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Digest, FileName};

    fn meta(i: usize) -> FileMeta {
        let name = FileName::new(format!("f{i}")).unwrap();
        FileMeta::new(
            name,
            1,
            1,
            vec![Digest([1; 32])],
            vec![Digest([2; 32])],
            Digest([1; 32]),
        )
        .unwrap()
    }

    fn names(reqs: &[Request]) -> Vec<String> {
        reqs.iter()
            .map(|r| match r {
                Request::Announce { meta, .. } => meta.name().to_string(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn announcements_go_a_window_at_a_time_and_wait_when_told_too_fast() {
        let t0 = Instant::now();
        let mut a = Announcer::default();
        for i in 0..100 {
            a.add(meta(i), vec![0]);
        }
        let first = a.ready(t0);
        assert_eq!(first.len(), WINDOW);
        assert!(a.ready(t0).is_empty(), "the window is full");
        // The first two are taken; the next two come back too fast.
        for _ in 0..2 {
            assert_eq!(a.answered(Reply::Noted, t0), Answered::Done(Reply::Noted));
        }
        let too_fast = || Reply::Refused(Refusal::TooFast { retry_ms: 50 });
        assert_eq!(a.answered(too_fast(), t0), Answered::Later);
        assert_eq!(a.answered(too_fast(), t0), Answered::Later);
        assert_eq!(a.paused_until(), Some(t0 + Duration::from_millis(50)));
        assert!(a.ready(t0 + Duration::from_millis(49)).is_empty());
        // Other refusals are the caller's to handle.
        let unknown = Reply::Refused(Refusal::UnknownFile {
            name: FileName::new("f4").unwrap(),
        });
        assert_eq!(a.answered(unknown.clone(), t0), Answered::Done(unknown));
        // After the pause: the two refused first, in order, then the rest.
        let next = a.ready(t0 + Duration::from_millis(50));
        assert_eq!(names(&next)[..3], ["f2", "f3", "f64"]);
        assert_eq!(
            next.len(),
            5,
            "the window refilled: 64 - 59 still in flight"
        );
        // Everything is sent once, or again after a refusal.
        let mut sent = first.len() + next.len();
        let mut now = t0 + Duration::from_millis(50);
        for _ in 0..1000 {
            while !a.in_flight.is_empty() {
                a.answered(Reply::Noted, now);
            }
            now += Duration::from_millis(1);
            let more = a.ready(now);
            sent += more.len();
            if more.is_empty() && a.in_flight.is_empty() {
                break;
            }
        }
        assert_eq!(sent, 100 + 2);
        assert_eq!(a.paused_until(), None);
    }
}
