//! The gateway's own side of the embedded broker, in process.
//!
//! The gateway is not a network client of its own broker: its messages go in batches
//! straight into rmqtt's router and retained store (no MQTT encoding, no loopback
//! socket, one wakeup of the broker thread per poll cycle instead of one per message),
//! and the commands clients publish on `<topic>/set` reach it from the rights check,
//! once, after the check allowed them. The link outlives broker rebuilds: the
//! supervisor announces every new broker on [`Link::serving`], and the gateway then
//! publishes its retained state again.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::Bytes;
use rmqtt::codec::v5::PublishProperties;
use rmqtt::{
    context::ServerContext,
    types::{ClientId, CodecPublish, From, Id, Publish, QoS, Retain, TopicName, UserName},
};
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::{health::BrokerStats, publish::Outgoing};

/// Batches waiting for the broker thread; the gateway waits (back-pressure) beyond this.
const INBOX_BATCHES: usize = 256;
/// Client commands waiting for the gateway; beyond this they are dropped and counted.
const COMMAND_QUEUE: usize = 1024;
/// Time given to the broker's sessions to write the last messages before the gateway
/// stops (the process exits right after).
const FLUSH_GRACE: Duration = Duration::from_millis(50);

/// A message for the broker.
pub struct Routed {
    /// The message.
    pub message: Outgoing,
    /// A retained message whose payload differs from the one the broker holds: store it.
    /// An unchanged one is only routed to subscribers (the retained store keeps the copy
    /// it has; every_poll points republish the same value every cycle).
    pub store: bool,
}

/// What the gateway hands to the broker.
pub(crate) enum Inject {
    /// Messages to route (and retain), in order.
    Batch(Vec<Routed>),
    /// The answer to a commissioning request (never retained), with the request's MQTT 5
    /// Correlation Data.
    Reply(Reply),
    /// Answered once everything before it was routed and the sessions had time to write.
    Flush(oneshot::Sender<()>),
}

/// Whether a broker is serving, and which one (counted from 1; 0: none yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    /// Brokers built so far; a new number is a new broker with an empty retained store.
    pub generation: u64,
    /// The broker of `generation` is running.
    pub up: bool,
}

/// A command a client published, after the rights check allowed it.
#[derive(Debug)]
pub struct ClientCommand {
    /// The topic (`<point topic>/set` or `<point topic>/get`).
    pub topic: String,
    /// The payload as published.
    pub payload: Bytes,
    /// On `<base>/bus/<id>/request` (commissioning): who sent it and where the answer
    /// goes; refused ones come too, so that the client hears why.
    pub request: Option<Box<Requester>>,
}

/// Who sent a commissioning request, as the rights check saw it.
#[derive(Debug)]
pub struct Requester {
    /// The client id.
    pub client_id: String,
    /// The user name its login proved (none without a `users_file`).
    pub user: Option<String>,
    /// Where the answer goes: checked (a topic the client may publish on itself, none
    /// of the gateway's); `None`: nowhere.
    pub reply: Option<ReplyTo>,
    /// Why the request is refused (no right to send it), if it is.
    pub refused: Option<&'static str>,
}

/// Where an answer goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The MQTT 5 Response Topic, or the body's `response_topic`.
    pub topic: String,
    /// The MQTT 5 Correlation Data, returned as it came.
    pub correlation: Option<Bytes>,
}

/// The answer to a commissioning request.
#[derive(Debug)]
pub struct Reply {
    /// Where it goes, with the correlation data.
    pub to: ReplyTo,
    /// The JSON body.
    pub payload: Vec<u8>,
}

/// The gateway's end of the link.
pub struct Link {
    /// Where the gateway's messages go.
    pub inbox: Inbox,
    /// Changes whenever a broker starts or stops.
    pub serving: watch::Receiver<Serving>,
    /// Commands from clients.
    pub commands: mpsc::Receiver<ClientCommand>,
    /// The broker's store, written once more at shutdown.
    pub store: super::Saver,
}

/// The broker's end, kept by the supervisor across rebuilds.
pub(crate) struct BrokerEnd {
    inbox: Arc<Mutex<mpsc::Receiver<Inject>>>,
    serving: watch::Sender<Serving>,
    commands: mpsc::Sender<ClientCommand>,
}

/// A new link: the gateway's end and the broker's.
pub(crate) fn pair() -> (Link, BrokerEnd) {
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_BATCHES);
    let (serving_tx, serving_rx) = watch::channel(Serving::default());
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    (
        Link {
            inbox: Inbox(inbox_tx),
            serving: serving_rx,
            commands: command_rx,
            store: super::Saver::default(),
        },
        BrokerEnd {
            inbox: Arc::new(Mutex::new(inbox_rx)),
            serving: serving_tx,
            commands: command_tx,
        },
    )
}

impl BrokerEnd {
    /// The sender the rights check uses for client commands.
    pub(crate) fn commands(&self) -> mpsc::Sender<ClientCommand> {
        self.commands.clone()
    }

    /// Announce that a new broker serves (or that the current one stopped).
    pub(crate) fn announce(&self, up: bool) {
        self.serving.send_modify(|s| {
            if up {
                s.generation += 1;
            }
            s.up = up;
        });
    }

    /// Route the gateway's messages into `scx` until the broker's runtime ends. Runs in
    /// that runtime; the next broker's task takes the queue over where this one stopped.
    pub(crate) fn serve(
        &self,
        scx: ServerContext,
        stats: Arc<BrokerStats>,
        client_id: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inbox = self.inbox.clone();
        let from = From::from_custom(Id::new(
            scx.node.id(),
            0,
            None,
            None,
            ClientId::from(client_id.to_string()),
            Some(UserName::from(client_id.to_string())),
        ));
        async move {
            let mut rx = inbox.lock().await;
            while let Some(job) = rx.recv().await {
                match job {
                    Inject::Batch(batch) => {
                        stats
                            .messages_received
                            .fetch_add(batch.len() as u64, Relaxed);
                        for m in batch {
                            route(&scx, &from, m).await;
                        }
                    }
                    Inject::Reply(r) => {
                        stats.messages_received.fetch_add(1, Relaxed);
                        reply(&scx, &from, r).await;
                    }
                    Inject::Flush(done) => {
                        tokio::time::sleep(FLUSH_GRACE).await;
                        let _ = done.send(());
                    }
                }
            }
        }
    }
}

/// Route one message as if its publisher's PUBLISH had passed every check: store it in
/// the retained store when asked, then deliver it to the matching subscriptions.
async fn route(scx: &ServerContext, from: &From, r: Routed) {
    let m = r.message;
    let qos = match m.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let p = CodecPublish {
        dup: false,
        retain: m.retain,
        qos,
        topic: TopicName::from(m.topic),
        packet_id: None,
        payload: Bytes::from(m.payload),
        properties: None,
    };
    let p: Publish = p.into();
    if r.store {
        let retain = Retain {
            msg_id: None,
            from: from.clone(),
            publish: p.clone(),
        };
        if let Err(e) = scx.extends.retain().await.set(&p.topic, retain, None).await {
            tracing::debug!(error = %e, "Gateway message not retained.");
        }
    }
    if let Err((_, dropped)) = scx
        .extends
        .shared()
        .await
        .forwards(None, from.clone(), p)
        .await
    {
        for (to, from, p, reason) in dropped {
            scx.extends
                .hook_mgr()
                .message_dropped(Some(to), from, p, reason)
                .await;
        }
    }
}

/// Deliver an answer to a commissioning request: QoS 1, not retained, with the
/// request's Correlation Data (MQTT 5 subscribers receive it; 3.1.1 ones only the body).
async fn reply(scx: &ServerContext, from: &From, r: Reply) {
    let properties = r.to.correlation.map(|c| PublishProperties {
        correlation_data: Some(c),
        ..PublishProperties::default()
    });
    let p = CodecPublish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: TopicName::from(r.to.topic),
        packet_id: None,
        payload: Bytes::from(r.payload),
        properties,
    };
    if let Err((_, dropped)) = scx
        .extends
        .shared()
        .await
        .forwards(None, from.clone(), p.into())
        .await
    {
        for (to, from, p, reason) in dropped {
            scx.extends
                .hook_mgr()
                .message_dropped(Some(to), from, p, reason)
                .await;
        }
    }
}

/// The gateway's messages into the broker (clones share the queue).
#[derive(Clone)]
pub struct Inbox(mpsc::Sender<Inject>);

impl Inbox {
    /// Hand a batch to the broker, waiting up to `wait` for room. `false`: not taken
    /// (the broker is stuck or gone).
    pub(crate) async fn send(&self, batch: Vec<Routed>, wait: Duration) -> bool {
        match self.0.try_reserve() {
            Ok(permit) => {
                permit.send(Inject::Batch(batch));
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                matches!(
                    tokio::time::timeout(wait, self.0.send(Inject::Batch(batch))).await,
                    Ok(Ok(()))
                )
            }
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }

    /// Hand the answer to a commissioning request to the broker (`false`: the broker is
    /// gone or that far behind; the answer is lost).
    pub(crate) fn reply(&self, r: Reply) -> bool {
        self.0.try_send(Inject::Reply(r)).is_ok()
    }

    /// Wait, up to `wait`, until everything sent so far was routed, and the broker's
    /// sessions then had [`FLUSH_GRACE`] to write it (a grace, not a confirmation: rmqtt
    /// does not tell when a session's socket write is done).
    pub(crate) async fn flush(&self, wait: Duration) {
        let (tx, rx) = oneshot::channel();
        let _ = tokio::time::timeout(wait, async {
            if self.0.send(Inject::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
        .await;
    }
}
