//! The gateway's MQTT client (rumqttc), used for the embedded broker and (later) upstream.
//!
//! One task owns the connection. It keeps the last retained message of every topic and,
//! after every (re)connect, publishes `<base>/status = online` and then that state again,
//! so a broker restart loses nothing that matters. The Last Will publishes `offline`
//! (retained) when the connection dies without a DISCONNECT. While disconnected, value
//! messages only update that state; reconnection uses exponential backoff with jitter.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, LastWill, MqttOptions, Packet,
    QoS,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{health::Stats, model::Model, publish::Outgoing};

/// Capacity of rumqttc's request channel.
const CLIENT_CAPACITY: usize = 4096;

fn qos(q: u8) -> QoS {
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
    /// Last retained message per topic, republished after every connect.
    retained: HashMap<String, Outgoing>,
    /// Messages waiting for room in the client's channel, in order.
    pending: VecDeque<Outgoing>,
    stats: Arc<Stats>,
}

impl Conn {
    fn try_send(&mut self, m: &Outgoing) -> bool {
        match self
            .client
            .try_publish(m.topic.clone(), qos(m.qos), m.retain, m.payload.clone())
        {
            Ok(()) => {
                self.stats.mqtt_sent.fetch_add(1, Relaxed);
                true
            }
            Err(ClientError::TryRequest(_)) | Err(ClientError::Request(_)) => false,
        }
    }

    fn flush(&mut self) {
        while let Some(m) = self.pending.front() {
            let m = m.clone();
            if !self.try_send(&m) {
                break;
            }
            self.pending.pop_front();
        }
        self.stats.mqtt_queue.store(self.pending.len() as u64, Relaxed);
    }

    fn send(&mut self, m: Outgoing) {
        if m.retain {
            self.retained.insert(m.topic.clone(), m.clone());
        }
        if !self.connected {
            if !m.retain {
                self.stats.mqtt_dropped.fetch_add(1, Relaxed);
            }
            return;
        }
        if self.pending.is_empty() && self.try_send(&m) {
            return;
        }
        self.pending.push_back(m);
        if self.pending.len() > 200_000 {
            self.pending.pop_front();
            self.stats.mqtt_dropped.fetch_add(1, Relaxed);
        }
        self.stats.mqtt_queue.store(self.pending.len() as u64, Relaxed);
    }

    fn on_connack(&mut self, status_topic: &str) {
        self.connected = true;
        self.pending.clear();
        self.stats.mqtt_connected.store(true, Relaxed);
        self.stats.mqtt_connects.fetch_add(1, Relaxed);
        let online = Outgoing {
            topic: status_topic.to_string(),
            payload: b"online".to_vec(),
            retain: true,
            qos: 1,
        };
        self.retained.insert(online.topic.clone(), online.clone());
        self.pending.push_back(online);
        let mut state: Vec<Outgoing> = self
            .retained
            .values()
            .filter(|m| m.topic != status_topic)
            .cloned()
            .collect();
        state.sort_by(|a, b| a.topic.cmp(&b.topic));
        self.pending.extend(state);
        self.flush();
    }
}

/// Small deterministic jitter source (no extra dependency needed).
fn jitter(seed: &mut u64, max_ms: u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(*seed % max_ms.max(1))
}

/// Run the MQTT client until `rx` is closed (every producer stopped); then publish
/// `offline` on the status topic and disconnect cleanly.
pub async fn run_client(model: Arc<Model>, mut rx: mpsc::Receiver<Outgoing>, stats: Arc<Stats>) {
    let (client, mut eventloop) = AsyncClient::new(options(&model), CLIENT_CAPACITY);
    let status_topic = model.status_topic();
    let mut conn = Conn {
        client,
        connected: false,
        retained: HashMap::new(),
        pending: VecDeque::new(),
        stats,
    };
    let mut backoff = Duration::from_millis(100);
    let mut seed = u64::from(std::process::id()) | 1;
    let mut ever_connected = false;
    let flush_tick = Duration::from_millis(2);
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if ever_connected {
                        info!(broker = %format!("{}:{}", model.mqtt.host, model.mqtt.port), "MQTT reconnected.");
                    } else {
                        info!(broker = %format!("{}:{}", model.mqtt.host, model.mqtt.port), "MQTT connected.");
                    }
                    ever_connected = true;
                    backoff = Duration::from_millis(100);
                    conn.on_connack(&status_topic);
                }
                Ok(_) => {}
                Err(e) => {
                    if conn.connected {
                        warn!(error = %e, "MQTT connection lost.");
                    } else {
                        debug!(error = %e, "MQTT connect failed.");
                    }
                    conn.connected = false;
                    conn.stats.mqtt_connected.store(false, Relaxed);
                    let wait = backoff + jitter(&mut seed, backoff.as_millis() as u64 / 2 + 1);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if matches!(e, ConnectionError::ConnectionRefused(_)) {
                        warn!(error = %e, "MQTT broker refused the connection.");
                    }
                    // Keep consuming messages while waiting so producers never block.
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            m = rx.recv() => match m {
                                Some(m) => conn.send(m),
                                None => return,
                            },
                        }
                    }
                }
            },
            m = rx.recv() => match m {
                Some(m) => conn.send(m),
                None => break,
            },
            () = tokio::time::sleep(flush_tick), if !conn.pending.is_empty() => conn.flush(),
        }
    }
    // Clean shutdown: flush, publish offline, disconnect.
    if conn.connected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let offline = Outgoing {
            topic: status_topic.clone(),
            payload: b"offline".to_vec(),
            retain: true,
            qos: 1,
        };
        conn.send(offline);
        let mut disconnect_sent = false;
        while tokio::time::Instant::now() < deadline {
            conn.flush();
            if conn.pending.is_empty() && !disconnect_sent {
                disconnect_sent = conn.client.try_disconnect().is_ok();
            }
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        info!("MQTT disconnected.");
    }
}
