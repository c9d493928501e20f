//! The NATS side of a cluster (`--bus nats://…`): what `cluster` records goes out here, and
//! what other trackers send comes in here.
//!
//! Subjects: `swarmchat.all` (presence batches, hellos, heartbeats, blocks, broadcasts,
//! wake-ups for stored messages: every tracker hears them), `swarmchat.node.<id>` (a
//! snapshot for a tracker that just started, tickets, and batches of messages for its
//! users) and `swarmchat.reply.<id>` (the answers to this tracker's batches: a
//! [`Delivery`] per message). Bodies are MessagePack, as on the wire.
//!
//! Messages for another tracker's users go in batches from one task (`forward`): up to
//! [`BATCHES_IN_FLIGHT`] on their way to a tracker at once, and whatever is handed over
//! meanwhile waits for the next. At low load each message goes alone at once; under load
//! a batch carries hundreds, handled there under one lock and answered in one message.
//!
//! Core NATS delivers at most once. Nothing acknowledged rests on it alone: a message
//! handed to another tracker is acknowledged to its sender only once that tracker says it
//! queued it for the recipient's connection (as on one tracker); without an answer in
//! [`DELIVER_WAIT`] it is stored in the database instead. Presence, blocks and wake-ups are
//! repaired by what follows (heartbeats, the next login, the database's own checks).

use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wire::{Text, UserName};

use crate::cluster::{BusMsg, Delivery, Handover, To};
use crate::server::Shared;

/// How long a tracker waits for another to answer a message it handed over.
pub const DELIVER_WAIT: Duration = Duration::from_secs(2);
/// Batches of messages on their way to one tracker at once: under load the messages queued
/// meanwhile go in the next batch; at low load each goes alone, at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Messages per batch at most, and their bytes (NATS refuses payloads over 1 MiB).
const BATCH_ITEMS: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

const ALL: &str = "swarmchat.all";

fn node_subject(node: u64) -> String {
    format!("swarmchat.node.{node}")
}

/// Where the answers to this tracker's batches come.
fn reply_subject(node: u64) -> String {
    format!("swarmchat.reply.{node}")
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the bus: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot subscribe on the bus: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// A message on its way to another tracker, and who waits for how it went.
struct Handing {
    node: u64,
    item: Handover,
    done: oneshot::Sender<Delivery>,
}

/// This tracker's connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    out: mpsc::UnboundedSender<Vec<(To, BusMsg)>>,
    hand: mpsc::UnboundedSender<Handing>,
}

fn encode(msg: &BusMsg) -> Bytes {
    Bytes::from(rmp_serde::to_vec(msg).expect("bus messages encode"))
}

impl Bus {
    /// Connects to the NATS server at `url` as tracker `node`; sends what it is given, in
    /// order, from a task of its own, and hands messages over from another.
    pub async fn connect(url: &str, node: u64) -> Result<Bus, BusError> {
        let client = async_nats::ConnectOptions::new().connect(url).await?;
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<(To, BusMsg)>>();
        let c = client.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                for (to, msg) in batch {
                    let subject = match to {
                        To::All => ALL.to_string(),
                        To::Node(n) => node_subject(n),
                    };
                    if let Err(e) = c.publish(subject, encode(&msg)).await {
                        tracing::warn!(error = %e, "bus publish failed");
                    }
                }
            }
        });
        let answers = client.subscribe(reply_subject(node)).await?;
        let (hand, handing) = mpsc::unbounded_channel();
        tokio::spawn(forward(client.clone(), node, handing, answers));
        Ok(Bus { client, out, hand })
    }

    /// Queues what the rules recorded, after everything queued before. Called under the
    /// state lock: never waits.
    pub fn send(&self, batch: Vec<(To, BusMsg)>) {
        let _ = self.out.send(batch);
    }

    /// Hands a message for `to` to tracker `node`, after every message handed before
    /// (this call queues it at once; await the answer). No answer in [`DELIVER_WAIT`] (the
    /// tracker died, the bus lost it) counts as `NotHere`.
    pub fn deliver(
        &self,
        node: u64,
        from: &UserName,
        to: &UserName,
        text: &Text,
    ) -> impl std::future::Future<Output = Delivery> {
        let (done, answer) = oneshot::channel();
        let item = Handover {
            from: from.clone(),
            to: to.clone(),
            text: text.clone(),
        };
        let _ = self.hand.send(Handing { node, item, done });
        async move { answer.await.unwrap_or(Delivery::NotHere) }
    }

    /// Listens for what other trackers send, and says this one is alive every
    /// [`crate::state::RENEW_EVERY`] (and takes silent ones for dead), until the process
    /// ends.
    pub async fn serve(self, shared: Arc<Shared>, node: u64) -> Result<(), BusError> {
        let mut all = self.client.subscribe(ALL).await?;
        let mut mine = self.client.subscribe(node_subject(node)).await?;
        // After subscribing, on the same connection: the snapshots it asks for find us
        // listening.
        let hello = shared.with(|t, _| t.hello());
        self.send(vec![(To::All, hello)]);
        let heartbeat = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::state::RENEW_EVERY);
                loop {
                    tick.tick().await;
                    shared.with(|t, now| {
                        t.heartbeat();
                        t.expire_nodes(now)
                    });
                }
            })
        };
        loop {
            tokio::select! {
                Some(m) = all.next() => {
                    let Ok(msg) = rmp_serde::from_slice::<BusMsg>(&m.payload) else {
                        tracing::warn!("undecodable bus message");
                        continue;
                    };
                    if let BusMsg::Hello { node: new, .. } = &msg {
                        if *new != node {
                            let changes = shared.with(|t, _| t.snapshot());
                            let parts: Vec<(To, BusMsg)> = crate::cluster::parts(changes)
                                .into_iter()
                                .map(|p| (To::Node(*new), BusMsg::Snapshot { node, changes: p }))
                                .collect();
                            self.send(parts);
                        }
                    }
                    shared.with(|t, now| t.from_bus(msg, now));
                }
                Some(m) = mine.next() => {
                    let Ok(msg) = rmp_serde::from_slice::<BusMsg>(&m.payload) else {
                        tracing::warn!("undecodable bus message");
                        continue;
                    };
                    match msg {
                        BusMsg::Deliver { node: from_node, seq, items } => {
                            // The whole batch under one lock.
                            let how: Vec<Delivery> = shared.with(|t, now| {
                                items
                                    .into_iter()
                                    .map(|h| t.deliver_here(&h.from, &h.to, h.text, now))
                                    .collect()
                            });
                            let answer = encode(&BusMsg::Delivered { seq, how });
                            if let Err(e) = self.client.publish(reply_subject(from_node), answer).await {
                                tracing::warn!(error = %e, "cannot answer a delivery");
                            }
                        }
                        other => shared.with(|t, now| t.from_bus(other, now)),
                    }
                }
                else => break,
            }
        }
        heartbeat.abort();
        Ok(())
    }
}

/// A batch on its way, and who waits for each of its messages.
struct Sent {
    node: u64,
    done: Vec<oneshot::Sender<Delivery>>,
}

/// Hands messages over to the trackers of their recipients, in batches (see
/// [`BATCHES_IN_FLIGHT`]), each answered on this tracker's reply subject, matched by
/// sequence number. Published from this one task, so batches leave in the order their
/// messages were handed in, and the receiving tracker handles them in that order.
async fn forward(
    client: async_nats::Client,
    me: u64,
    mut handing: mpsc::UnboundedReceiver<Handing>,
    mut answers: async_nats::Subscriber,
) {
    let mut queued: HashMap<u64, VecDeque<Handing>> = HashMap::new();
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    let mut sent: HashMap<u64, Sent> = HashMap::new();
    // Sent in this order, so due in this order.
    let mut due: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        let next_due = due.front().map(|(at, _)| *at);
        tokio::select! {
            h = handing.recv() => {
                let Some(h) = h else { break };
                queued.entry(h.node).or_default().push_back(h);
                while let Ok(h) = handing.try_recv() {
                    queued.entry(h.node).or_default().push_back(h);
                }
            }
            Some(m) = answers.next() => {
                let Ok(BusMsg::Delivered { seq, how }) = rmp_serde::from_slice(&m.payload) else {
                    tracing::warn!("undecodable delivery answer");
                    continue;
                };
                if let Some(batch) = sent.remove(&seq) {
                    *in_flight.entry(batch.node).or_default() -= 1;
                    let mut how = how.into_iter();
                    for done in batch.done {
                        let _ = done.send(how.next().unwrap_or(Delivery::NotHere));
                    }
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                while due.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, s) = due.pop_front().expect("just seen");
                    // Unanswered (answered ones are gone from `sent`): their senders store
                    // the messages instead.
                    if let Some(batch) = sent.remove(&s) {
                        tracing::debug!(node = batch.node, n = batch.done.len(), "no answer to a batch");
                        *in_flight.entry(batch.node).or_default() -= 1;
                        for done in batch.done {
                            let _ = done.send(Delivery::NotHere);
                        }
                    }
                }
            }
        }
        for (node, q) in queued.iter_mut() {
            let flying = in_flight.entry(*node).or_default();
            while !q.is_empty() && *flying < BATCHES_IN_FLIGHT {
                let (mut items, mut done, mut bytes) = (Vec::new(), Vec::new(), 0);
                while let Some(h) = q.front() {
                    let size = h.item.text.as_str().len() + 64;
                    if !items.is_empty()
                        && (items.len() >= BATCH_ITEMS || bytes + size > BATCH_BYTES)
                    {
                        break;
                    }
                    let h = q.pop_front().expect("just seen");
                    bytes += size;
                    items.push(h.item);
                    done.push(h.done);
                }
                seq += 1;
                let body = encode(&BusMsg::Deliver {
                    node: me,
                    seq,
                    items,
                });
                if let Err(e) = client.publish(node_subject(*node), body).await {
                    tracing::warn!(error = %e, "cannot hand messages over");
                }
                sent.insert(seq, Sent { node: *node, done });
                due.push_back((Instant::now() + DELIVER_WAIT, seq));
                *flying += 1;
            }
        }
        queued.retain(|_, q| !q.is_empty());
    }
}
