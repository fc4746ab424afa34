//! The gateway's MQTT client (rumqttc), used for the embedded broker and (later) upstream.
//!
//! One task owns the connection. It keeps the last retained message of every topic and,
//! after every (re)connect, publishes `<base>/status = online` and then that state again,
//! so a broker restart loses nothing that matters. The Last Will publishes `offline`
//! (retained) when the connection dies without a DISCONNECT. While disconnected, value
//! messages only update that state; reconnection uses exponential backoff with jitter.

use std::{
    collections::HashMap,
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::Poll,
    time::Duration,
};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    SubscribeFilter,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    commands::Router,
    health::Stats,
    model::Model,
    publish::{Batch, Outgoing},
};

/// Capacity of rumqttc's request channel.
const CLIENT_CAPACITY: usize = 4096;

/// The rumqttc QoS of a 0–2 level.
pub(crate) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Connection options for the gateway's client.
pub fn options(model: &Model) -> MqttOptions {
    let m = &model.mqtt;
    let mut o = MqttOptions::new(m.client_id.clone(), m.host.clone(), m.port);
    o.set_keep_alive(m.keepalive.max(Duration::from_secs(1)));
    o.set_clean_session(true);
    if let Some(e) = &m.embedded {
        // The embedded broker admits the gateway's client id only with this secret.
        o.set_credentials(m.client_id.clone(), e.secret.0.clone());
    }
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(200);
    o.set_last_will(LastWill::new(
        model.status_topic(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    o
}

struct Conn {
    client: AsyncClient,
    connected: bool,
    model: Arc<Model>,
    /// Last retained payload and QoS of every point, by slot, republished after every
    /// connect. A vector, not a map keyed by topic: no hashing per message, and 1 MB less
    /// at 10 000 points.
    values: Vec<Option<(Vec<u8>, u8)>>,
    /// The same for the gateway's own retained topics (status, availability, diagnostics).
    others: HashMap<String, (Vec<u8>, u8)>,
    stats: Arc<Stats>,
}

/// Longest wait for room in rumqttc's request queue before a message counts as dropped
/// (retained state is still republished after the next connect).
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

impl Conn {
    /// Hand a message to the client, waiting for room: this is the back-pressure that
    /// keeps a saturated bus from queueing without bound. The topic and payload move into
    /// the request (no copy); a timer is armed only when the queue is full.
    async fn publish(&mut self, m: Outgoing) -> bool {
        // Validation already refuses wildcards in topics; `publish_bytes` does not check,
        // and a broker disconnects a client that publishes one.
        if !rumqttc::valid_topic(&m.topic) {
            debug!(topic = %m.topic, "Invalid topic not published.");
            self.stats.mqtt_dropped.fetch_add(1, Relaxed);
            return false;
        }
        let fut =
            self.client
                .publish_bytes(m.topic, qos(m.qos), m.retain, bytes::Bytes::from(m.payload));
        let mut fut = std::pin::pin!(fut);
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        let sent = match first {
            Poll::Ready(r) => r.is_ok(),
            Poll::Pending => matches!(tokio::time::timeout(PUBLISH_WAIT, fut).await, Ok(Ok(()))),
        };
        let counter = if sent {
            &self.stats.mqtt_sent
        } else {
            &self.stats.mqtt_dropped
        };
        counter.fetch_add(1, Relaxed);
        sent
    }

    async fn send(&mut self, m: Outgoing) {
        if m.retain {
            match m.slot.and_then(|s| self.values.get_mut(s as usize)) {
                Some(Some(last)) => overwrite(last, &m.payload, m.qos),
                Some(empty) => *empty = Some((m.payload.clone(), m.qos)),
                None => remember(&mut self.others, &m.topic, &m.payload, m.qos),
            }
        }
        if self.connected {
            self.publish(m).await;
        } else if !m.retain {
            self.stats.mqtt_dropped.fetch_add(1, Relaxed);
        }
    }

    async fn on_connack(&mut self, status_topic: &str) {
        self.connected = true;
        self.stats.mqtt_connected.store(true, Relaxed);
        self.stats.mqtt_connects.fetch_add(1, Relaxed);
        let online = Outgoing {
            topic: status_topic.to_string(),
            payload: b"online".to_vec(),
            retain: true,
            qos: 1,
            slot: None,
        };
        self.others
            .insert(online.topic.clone(), (online.payload.clone(), online.qos));
        let others = self
            .others
            .iter()
            .filter(|(topic, _)| *topic != status_topic)
            .map(|(topic, (payload, qos))| Outgoing {
                topic: topic.clone(),
                payload: payload.clone(),
                retain: true,
                qos: *qos,
                slot: None,
            });
        let values = self.model.points().filter_map(|point| {
            let (payload, qos) = self.values.get(point.slot as usize)?.as_ref()?;
            Some(Outgoing {
                topic: point.topic.clone(),
                payload: payload.clone(),
                retain: true,
                qos: *qos,
                slot: Some(point.slot),
            })
        });
        let mut state: Vec<Outgoing> = others.chain(values).collect();
        state.sort_by(|a, b| a.topic.cmp(&b.topic));
        self.publish(online).await;
        for m in state {
            if !self.publish(m).await {
                break;
            }
        }
    }
}

/// Record the last retained payload of `topic` (republished after every connect), reusing
/// the buffers of the previous value.
pub(crate) fn remember(
    retained: &mut HashMap<String, (Vec<u8>, u8)>,
    topic: &str,
    payload: &[u8],
    qos: u8,
) {
    match retained.get_mut(topic) {
        Some(last) => overwrite(last, payload, qos),
        None => {
            retained.insert(topic.to_string(), (payload.to_vec(), qos));
        }
    }
}

/// Replace a remembered payload and QoS, reusing its buffer.
fn overwrite(last: &mut (Vec<u8>, u8), payload: &[u8], qos: u8) {
    last.0.clear();
    last.0.extend_from_slice(payload);
    last.1 = qos;
}

/// Small deterministic jitter source (no extra dependency needed).
pub(crate) fn jitter(seed: &mut u64, max_ms: u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(*seed % max_ms.max(1))
}

enum Link {
    Connected,
    Message(String, Vec<u8>),
    Lost(String),
    Closed,
}

/// Drive rumqttc's event loop in its own task: `EventLoop::poll` is not cancel-safe while
/// connecting, so it must never sit in a `select!` next to other branches. Reconnects use
/// exponential backoff with jitter (rumqttc has none).
fn spawn_eventloop(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Link>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut seed = u64::from(std::process::id()) | 1;
        loop {
            if tx.is_closed() {
                return;
            }
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    if tx.send(Link::Connected).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(Link::Message(p.topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    let _ = tx.send(Link::Closed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    if matches!(e, ConnectionError::ConnectionRefused(_)) {
                        warn!(error = %e, "MQTT broker refused the connection.");
                    }
                    if tx.send(Link::Lost(e.to_string())).is_err() {
                        return;
                    }
                    let wait = backoff + jitter(&mut seed, backoff.as_millis() as u64 / 2 + 1);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}

/// Run the MQTT client until `rx` is closed (every producer stopped); then publish
/// `offline` on the status topic and disconnect cleanly.
pub async fn run_client(
    model: Arc<Model>,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
    router: Router,
) {
    let subscriptions: Vec<SubscribeFilter> = router
        .subscriptions()
        .into_iter()
        .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
        .collect();
    let (client, mut eventloop) = AsyncClient::new(options(&model), CLIENT_CAPACITY);
    // With writable points, a command's read-back and result are two small publishes in a
    // row: Nagle would hold the second back by a delayed ACK (~40 ms). Without commands,
    // Nagle stays on: TCP_NODELAY costs ~2 % of a core at 10 000 points/s (BENCHMARKS.md).
    if !subscriptions.is_empty() {
        eventloop.network_options.set_tcp_nodelay(true);
    }
    let (link_tx, mut link) = mpsc::unbounded_channel();
    spawn_eventloop(eventloop, link_tx);
    let status_topic = model.status_topic();
    let broker = format!("{}:{}", model.mqtt.host, model.mqtt.port);
    let mut conn = Conn {
        client,
        connected: false,
        // Slots as numbered by validation; a model numbered otherwise keeps every
        // value in the map by topic instead.
        values: if model
            .points()
            .enumerate()
            .all(|(i, p)| p.slot as usize == i)
        {
            vec![None; model.points().count()]
        } else {
            Vec::new()
        },
        model: model.clone(),
        others: HashMap::new(),
        stats,
    };
    let mut ever_connected = false;
    loop {
        tokio::select! {
            ev = link.recv() => match ev {
                Some(Link::Connected) => {
                    if ever_connected {
                        info!(broker = %broker, "MQTT reconnected.");
                    } else {
                        info!(broker = %broker, "MQTT connected.");
                    }
                    ever_connected = true;
                    // Clean session: subscriptions are gone after every reconnect.
                    if !subscriptions.is_empty() {
                        if let Err(e) = conn.client.subscribe_many(subscriptions.clone()).await {
                            warn!(error = %e, "Cannot subscribe to command topics.");
                        }
                    }
                    conn.on_connack(&status_topic).await;
                }
                Some(Link::Lost(e)) => {
                    if conn.connected {
                        warn!(broker = %broker, error = %e, "MQTT connection lost.");
                    } else {
                        debug!(broker = %broker, error = %e, "MQTT connect failed.");
                    }
                    conn.connected = false;
                    conn.stats.mqtt_connected.store(false, Relaxed);
                }
                Some(Link::Message(topic, payload)) => {
                    if let Some(rejected) = router.handle(&topic, &payload) {
                        debug!(topic = %topic, "Command rejected.");
                        conn.send(rejected).await;
                    }
                }
                Some(Link::Closed) | None => return,
            },
            batch = rx.recv() => match batch {
                Some(batch) => {
                    for m in batch {
                        conn.send(m).await;
                    }
                }
                None => break,
            },
        }
    }
    // Clean shutdown: flush, publish offline, disconnect.
    if conn.connected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        conn.send(Outgoing {
            topic: status_topic.clone(),
            payload: b"offline".to_vec(),
            retain: true,
            qos: 1,
            slot: None,
        })
        .await;
        disconnect(&conn.client, &mut link, deadline, |l| {
            matches!(l, Link::Closed)
        })
        .await;
        info!("MQTT disconnected.");
    }
}

/// Ask rumqttc for a clean DISCONNECT and wait, until `deadline`, for the event-loop task
/// to report it was written (`closed`) or to end.
pub(crate) async fn disconnect<L>(
    client: &AsyncClient,
    link: &mut mpsc::UnboundedReceiver<L>,
    deadline: tokio::time::Instant,
    closed: impl Fn(&L) -> bool,
) {
    let _ = tokio::time::timeout_at(deadline, client.disconnect()).await;
    loop {
        match tokio::time::timeout_at(deadline, link.recv()).await {
            Ok(Some(l)) if !closed(&l) => {}
            _ => break,
        }
    }
}
