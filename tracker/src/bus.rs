//! The NATS side of a cluster (`--bus nats://…`): what `cluster` records goes out here, and
//! what other trackers send comes in here.
//!
//! Subjects: `swarmchat.all` (presence batches, hellos, heartbeats, blocks, broadcasts,
//! wake-ups for stored messages: every tracker hears them) and `swarmchat.node.<id>` (a
//! snapshot for a tracker that just started, and messages for its users, as requests the
//! tracker answers with a [`Delivery`]). Bodies are MessagePack, as on the wire.
//!
//! Core NATS delivers at most once. Nothing acknowledged rests on it alone: a message
//! handed to another tracker is acknowledged to its sender only once that tracker says it
//! queued it for the recipient's connection (as on one tracker); without an answer in
//! [`DELIVER_WAIT`] it is stored in the database instead. Presence, blocks and wake-ups are
//! repaired by what follows (heartbeats, the next login, the database's own checks).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wire::{Text, UserName};

use crate::cluster::{BusMsg, Delivery, To};
use crate::server::Shared;

/// How long a tracker waits for another to answer a message it handed over.
pub const DELIVER_WAIT: Duration = Duration::from_secs(2);

const ALL: &str = "swarmchat.all";

fn node_subject(node: u64) -> String {
    format!("swarmchat.node.{node}")
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the bus: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot subscribe on the bus: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// This tracker's connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    out: mpsc::UnboundedSender<Vec<(To, BusMsg)>>,
}

fn encode(msg: &BusMsg) -> Bytes {
    Bytes::from(rmp_serde::to_vec(msg).expect("bus messages encode"))
}

impl Bus {
    /// Connects to the NATS server at `url`; sends what it is given, in order, from a task
    /// of its own.
    pub async fn connect(url: &str) -> Result<Bus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(DELIVER_WAIT))
            .connect(url)
            .await?;
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
        Ok(Bus { client, out })
    }

    /// Queues what the rules recorded, after everything queued before. Called under the
    /// state lock: never waits.
    pub fn send(&self, batch: Vec<(To, BusMsg)>) {
        let _ = self.out.send(batch);
    }

    /// Hands a message for `to` to tracker `node` and waits for its answer; no answer in
    /// [`DELIVER_WAIT`] (the tracker died, the bus lost it) counts as `NotHere`.
    pub async fn deliver(
        &self,
        node: u64,
        from: &UserName,
        to: &UserName,
        text: &Text,
    ) -> Delivery {
        let msg = BusMsg::Deliver {
            from: from.clone(),
            to: to.clone(),
            text: text.clone(),
        };
        match self.client.request(node_subject(node), encode(&msg)).await {
            Ok(reply) => rmp_serde::from_slice(&reply.payload).unwrap_or(Delivery::NotHere),
            Err(e) => {
                tracing::debug!(error = %e, node, "no answer to a delivery");
                Delivery::NotHere
            }
        }
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
                        BusMsg::Deliver { from, to, text } => {
                            let got = shared.with(|t, now| t.deliver_here(&from, &to, text, now));
                            if let Some(reply) = m.reply {
                                let body = Bytes::from(rmp_serde::to_vec(&got).expect("encodes"));
                                if let Err(e) = self.client.publish(reply, body).await {
                                    tracing::warn!(error = %e, "cannot answer a delivery");
                                }
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
