//! A connection's outbound bytes: what the tracker has queued for one client, already
//! framed, waiting for that client's task to write it.
//!
//! Why not a channel of frames: the relay's cost per message was dominated by one
//! allocation per queued frame and one task wake-up per frame (`perf` on `bench/relay`;
//! see ARCHITECTURE.md). Here whoever queues appends the frame's bytes to the client's
//! buffer, and only the push that finds the buffer empty wakes the writer, which then
//! takes everything queued so far in one `write`. The writer drops the buffer once it is
//! written, so an idle client's outbox holds no buffer at all: keeping grown buffers for
//! reuse cost 5.7 KiB per idle client (valgrind massif on `bench/relay --idle 1000`), and a
//! busy connection's one allocation per written batch costs little next to its `write`.
//!
//! Order is the order of the pushes. A reply is pushed after its request was handled, so
//! every event queued for the client before that is written ahead of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::Notify;
use wire::{FrameError, ServerMsg, MAX_FRAME_LEN};

/// Events a client may have waiting before it is disconnected as too slow. A client that
/// falls this far behind is logged out; direct messages meant for it are stored for its
/// next login.
pub const MAX_QUEUED_EVENTS: usize = 1024;
/// Queued events from which a recipient counts as busy: direct messages and broadcasts
/// for them are refused to their senders (who are told) instead of queued, so no flood of
/// messages can push a recipient over [`MAX_QUEUED_EVENTS`] and log them out.
pub const BUSY_EVENTS: usize = 768;
/// The same two bounds in bytes of queued events: 1,024 events of the longest text are
/// 4 MiB, and a tracker with thousands of clients that stopped reading must not hold
/// that for each. 256 KiB is two seconds of a 1 Mbit/s link.
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;
pub const BUSY_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Holds one permit when there is something to write (or the outbox was closed).
    ready: Notify,
    /// Wakes a writer stuck behind a client that stopped reading when the session ends.
    ended: Notify,
    /// Messages were stored for the client since its connection last read them (see
    /// `auth::read_mail`). A flag beside `ready` rather than a wake-up of its own: the
    /// connection's loop then waits on one thing, not two (a second `Notify` polled on
    /// every turn cost the relay measurably, `bench/relay`).
    mail: AtomicBool,
}

#[derive(Default)]
struct Inner {
    buf: BytesMut,
    /// Events in `buf`, and their bytes (replies are not counted: a client has at most one
    /// batch of them).
    events: usize,
    event_bytes: usize,
    /// No more events will be accepted: the session ended, or the connection is gone.
    closed: bool,
    /// Where the session's backlog goes once read: bytes from here on are held back until
    /// then (see [`Outbox::hold`]).
    held_at: Option<usize>,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client has `MAX_QUEUED_EVENTS` (or `MAX_QUEUED_BYTES`) waiting: too slow, to be
    /// logged out.
    Full,
    /// The session ended or its connection is gone.
    Closed,
}

/// What [`Outbox::take`] hands the writer.
pub struct Batch {
    pub bytes: BytesMut,
    /// Nothing will follow: write `bytes`, then end the connection.
    pub last: bool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section below leaves `Inner` consistent, even if it panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event frame already encoded (prefix included), e.g. one shared by many
    /// recipients.
    pub fn push_event(&self, frame: &[u8]) -> Result<(), Refused> {
        let mut g = self.lock();
        g.admit()?;
        let was_empty = g.buf.is_empty();
        g.buf.extend_from_slice(frame);
        g.events += 1;
        g.event_bytes += frame.len();
        self.wake_if(was_empty);
        Ok(())
    }

    /// Encodes `msg` straight into the queue, as an event.
    pub fn push_event_msg(&self, msg: &ServerMsg) -> Result<(), Refused> {
        let mut g = self.lock();
        g.admit()?;
        let was_empty = g.buf.is_empty();
        let before = g.buf.len();
        if let Err(e) = wire::encode(msg, &mut g.buf, MAX_FRAME_LEN) {
            // Events are far below the cap by construction; failing here is a bug.
            tracing::error!(error = %e, "cannot encode an event");
            return Ok(());
        }
        g.events += 1;
        g.event_bytes += g.buf.len() - before;
        self.wake_if(was_empty);
        Ok(())
    }

    /// Queues the reply to this connection's own request. Never refused: even a session
    /// that just ended owes its client the reply saying so, and replies are bounded by the
    /// connection's own batch of requests. Wakes nobody: the connection's task pushes its
    /// replies itself and writes them out next.
    pub fn push_reply(&self, msg: &ServerMsg) -> Result<(), FrameError> {
        wire::encode(msg, &mut self.lock().buf, MAX_FRAME_LEN)
    }

    /// Holds back what is queued from now on until [`Outbox::release_with`] (or
    /// [`Outbox::release`]): a new session's backlog, read from the store after the login,
    /// still goes out ahead of what was sent to the user after it.
    pub fn hold(&self) {
        let mut g = self.lock();
        g.held_at = Some(g.buf.len());
    }

    pub fn is_held(&self) -> bool {
        self.lock().held_at.is_some()
    }

    /// Queues `msg` as an event where the hold began, and lets everything through.
    pub fn release_with(&self, msg: &ServerMsg) -> Result<(), Refused> {
        let mut g = self.lock();
        g.admit()?;
        let Some(at) = g.held_at.take() else {
            drop(g);
            return self.push_event_msg(msg);
        };
        let mut frame = BytesMut::new();
        if let Err(e) = wire::encode(msg, &mut frame, MAX_FRAME_LEN) {
            tracing::error!(error = %e, "cannot encode an event");
        } else {
            let tail = g.buf.split_off(at);
            g.buf.extend_from_slice(&frame);
            g.buf.unsplit(tail);
            g.events += 1;
            g.event_bytes += frame.len();
        }
        // The writer found nothing to take while everything was held: wake it.
        if !g.buf.is_empty() {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Lets everything held through (the backlog was empty).
    pub fn release(&self) {
        let mut g = self.lock();
        if g.held_at.take().is_some() && !g.buf.is_empty() {
            self.ready.notify_one();
        }
    }

    /// Tells the connection messages were stored for its client: it is woken as for
    /// something to write, and finds the flag ([`Outbox::take_mail`]).
    pub fn poke(&self) {
        self.mail.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Whether messages were stored for the client since the last call.
    pub fn take_mail(&self) -> bool {
        self.mail.swap(false, Ordering::AcqRel)
    }

    /// Accepts no more events; the writer ends after writing what is queued.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.held_at = None;
        drop(g);
        self.ready.notify_one();
        self.ended.notify_waiters();
    }

    /// Waits until the outbox is closed (at once if it is).
    pub async fn closed(&self) {
        let ended = self.ended.notified();
        tokio::pin!(ended);
        // Registered before the flag is read, so a close in between is not missed.
        ended.as_mut().enable();
        if self.lock().closed {
            return;
        }
        ended.await
    }

    /// Waits until there may be something to take. May return with nothing queued.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Events queued and not yet taken by the writer.
    pub fn queued_events(&self) -> usize {
        self.lock().events
    }

    /// Whether the client is [`BUSY_EVENTS`] or [`BUSY_BYTES`] behind: messages for it are
    /// refused rather than queued.
    pub fn is_busy(&self) -> bool {
        let g = self.lock();
        g.events >= BUSY_EVENTS || g.event_bytes >= BUSY_BYTES
    }

    /// Takes everything queued (but what is held, see [`Outbox::hold`]).
    pub fn take(&self) -> Batch {
        let mut g = self.lock();
        if let Some(at) = g.held_at {
            // Only replies and the welcome come before a hold: no events to uncount.
            g.held_at = Some(0);
            return Batch {
                bytes: g.buf.split_to(at),
                last: false,
            };
        }
        g.events = 0;
        g.event_bytes = 0;
        Batch {
            bytes: std::mem::take(&mut g.buf),
            last: g.closed,
        }
    }

    fn wake_if(&self, was_empty: bool) {
        // Only the event that made the buffer non-empty wakes the writer; it takes
        // everything, so later pushes ride along. A buffer that held only replies is
        // written by the task that pushed them, without being woken.
        if was_empty {
            self.ready.notify_one();
        }
    }
}

impl Inner {
    fn admit(&self) -> Result<(), Refused> {
        if self.closed {
            Err(Refused::Closed)
        } else if self.events >= MAX_QUEUED_EVENTS || self.event_bytes >= MAX_QUEUED_BYTES {
            Err(Refused::Full)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Event, UserName};

    fn ev(n: u32) -> ServerMsg {
        ServerMsg::Event(Event::Presence {
            changes: vec![wire::PresenceChange::LoggedIn(
                UserName::new(format!("u{n}")).unwrap(),
            )],
        })
    }

    fn decode_all(mut b: BytesMut) -> Vec<ServerMsg> {
        let mut out = Vec::new();
        while let Some(m) = wire::decode(&mut b, MAX_FRAME_LEN).unwrap() {
            out.push(m);
        }
        assert!(b.is_empty());
        out
    }

    #[test]
    fn frames_come_out_in_push_order_in_one_batch() {
        let o = Outbox::default();
        o.push_event_msg(&ev(1)).unwrap();
        let shared = wire::EncodedFrame::new(&ev(2), MAX_FRAME_LEN).unwrap();
        o.push_event(shared.as_bytes()).unwrap();
        o.push_reply(&ServerMsg::Reply(wire::Reply::Active))
            .unwrap();
        let b = o.take();
        assert!(!b.last);
        assert_eq!(
            decode_all(b.bytes),
            [ev(1), ev(2), ServerMsg::Reply(wire::Reply::Active)]
        );
        assert!(o.take().bytes.is_empty());
    }

    #[test]
    fn a_slow_client_is_refused_after_the_limit_until_it_takes() {
        let o = Outbox::default();
        for i in 0..MAX_QUEUED_EVENTS {
            o.push_event_msg(&ev(i as u32)).unwrap();
        }
        assert_eq!(o.push_event_msg(&ev(0)), Err(Refused::Full));
        // Replies still go through: the client is owed them.
        o.push_reply(&ServerMsg::Reply(wire::Reply::Active))
            .unwrap();
        assert_eq!(decode_all(o.take().bytes).len(), MAX_QUEUED_EVENTS + 1);
        o.push_event_msg(&ev(0)).unwrap();
    }

    #[test]
    fn closing_refuses_events_and_marks_the_last_batch() {
        let o = Outbox::default();
        o.push_event_msg(&ev(1)).unwrap();
        o.close();
        assert_eq!(o.push_event_msg(&ev(2)), Err(Refused::Closed));
        o.push_reply(&ServerMsg::Reply(wire::Reply::LoggedOut))
            .unwrap();
        let b = o.take();
        assert!(b.last);
        assert_eq!(
            decode_all(b.bytes),
            [ev(1), ServerMsg::Reply(wire::Reply::LoggedOut)]
        );
    }

    #[tokio::test]
    async fn only_the_first_push_wakes_the_writer() {
        let o = Outbox::default();
        o.push_event_msg(&ev(1)).unwrap();
        o.push_event_msg(&ev(2)).unwrap();
        // One permit, stored by the first push: `ready` returns at once...
        tokio::time::timeout(std::time::Duration::from_secs(5), o.ready())
            .await
            .expect("woken");
        assert_eq!(decode_all(o.take().bytes).len(), 2);
        // ...and no second one was stored by the second push.
        let again = futures_util::FutureExt::now_or_never(o.ready());
        assert!(again.is_none());
    }

    #[test]
    fn a_reply_wakes_nobody() {
        let o = Outbox::default();
        o.push_reply(&ServerMsg::Reply(wire::Reply::Active))
            .unwrap();
        assert!(futures_util::FutureExt::now_or_never(o.ready()).is_none());
        assert_eq!(decode_all(o.take().bytes).len(), 1);
    }

    #[test]
    fn an_outbox_that_was_written_holds_no_buffer() {
        // Idle connections are most connections (see `bench/relay --idle`): a buffer that
        // grew during a burst of presence notices must not stay with each of them.
        let o = Outbox::default();
        for i in 0..100 {
            o.push_event_msg(&ev(i)).unwrap();
        }
        assert!(o.take().bytes.capacity() > 0);
        assert_eq!(o.take().bytes.capacity(), 0);
    }

    #[test]
    fn long_events_count_by_their_bytes() {
        let o = Outbox::default();
        let long = ServerMsg::Event(Event::Message {
            from: UserName::new("hans").unwrap(),
            text: wire::Text::new("x".repeat(wire::ids::MAX_TEXT_LEN)).unwrap(),
        });
        let frame = wire::EncodedFrame::new(&long, MAX_FRAME_LEN).unwrap();
        let per = frame.as_bytes().len();
        let mut pushed = 0;
        while !o.is_busy() {
            o.push_event(frame.as_bytes()).unwrap();
            pushed += 1;
        }
        assert_eq!(
            pushed,
            BUSY_BYTES.div_ceil(per),
            "busy by bytes, long before 768 events"
        );
        while o.push_event(frame.as_bytes()).is_ok() {
            pushed += 1;
        }
        assert_eq!(pushed, MAX_QUEUED_BYTES.div_ceil(per));
        assert_eq!(o.push_event(frame.as_bytes()), Err(Refused::Full));
        o.take();
        assert!(!o.is_busy(), "taken: room again");
        o.push_event(frame.as_bytes()).unwrap();
    }
}
