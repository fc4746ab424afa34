//! The gateway's side of its embedded broker.
//!
//! One task owns the link to the embedded broker ([`broker::Link`], in process: no MQTT
//! client, no socket). It keeps the last retained message of every topic and, whenever a
//! broker starts serving (at start, and after the supervisor rebuilt a failed one),
//! publishes `<base>/status = online` and then that state again, so a broker restart loses
//! nothing that matters. While no broker serves, value messages only update that state.
//! Commands and read requests clients publish on `<topic>/set` and `<topic>/get` arrive on
//! the link after the broker's rights check. At the end the task publishes `offline`
//! (retained), waits until the broker routed it, and gives the broker's sessions a moment
//! (50 ms) to write it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{overwrite, remember};
use crate::{
    broker::{self, Routed, Serving},
    commands::Router,
    health::Stats,
    model::Model,
    publish::{Batch, Outgoing},
};

struct Conn {
    inbox: broker::Inbox,
    status_topic: String,
    /// A broker is serving and has the state.
    connected: bool,
    /// A batch was not taken: republish the whole state before the next one.
    resync: bool,
    /// The model in force (a reload replaces it): whose points are republished.
    model: watch::Receiver<Arc<Model>>,
    /// Last retained payload and QoS of every point, by slot, republished into every new
    /// broker. A vector, not a map keyed by topic: no hashing per message, and 1 MB less
    /// at 10 000 points. A reload's new points have new slots: it grows.
    values: Vec<Option<(Vec<u8>, u8)>>,
    /// Values are kept by slot (else by topic, in `others`).
    by_slot: bool,
    /// The same for the gateway's own retained topics (status, availability, diagnostics,
    /// Home Assistant discovery configs).
    others: HashMap<String, (Vec<u8>, u8)>,
    /// When to republish the discovery configs and the states for Home Assistant, which
    /// announced itself.
    ha_due: Option<tokio::time::Instant>,
    /// `<discovery prefix>/`, with discovery on. The configs are not kept here: they are
    /// made again from the model when needed (10 000 of them are ~9 MB).
    ha_prefix: Option<String>,
    stats: Arc<Stats>,
}

/// Longest wait for room in the broker's queue before a batch counts as dropped (retained
/// state is still republished into the next broker).
const PUBLISH_WAIT: Duration = Duration::from_secs(2);

impl Conn {
    /// Hand messages to the broker in one operation, waiting for room: this is the
    /// back-pressure that keeps a saturated bus from queueing without bound.
    async fn publish(&mut self, mut batch: Vec<Routed>) {
        // Validation already refuses wildcards in topics; a broker would route one as a
        // filter, so it is checked once more here.
        let before = batch.len();
        batch.retain(|r| rumqttc::valid_topic(&r.message.topic));
        if batch.len() < before {
            debug!("Invalid topic not published.");
            self.stats
                .mqtt_dropped
                .fetch_add((before - batch.len()) as u64, Relaxed);
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        if self.inbox.send(batch, PUBLISH_WAIT).await {
            self.stats.mqtt_sent.fetch_add(n, Relaxed);
        } else {
            self.stats.mqtt_dropped.fetch_add(n, Relaxed);
            // The broker may now lack retained values it was told are unchanged.
            self.resync = true;
        }
    }

    async fn send(&mut self, batch: Batch) {
        let mut routed = Vec::with_capacity(batch.len());
        for m in batch {
            let mut store = m.retain;
            if m.retain {
                if let Some(s) = m.slot.filter(|_| self.by_slot).map(|s| s as usize) {
                    if s >= self.values.len() {
                        self.values.resize(s + 1, None);
                    }
                }
                let config = m.slot.is_none() && self.is_config(&m.topic);
                match m.slot.and_then(|s| self.values.get_mut(s as usize)) {
                    Some(Some(last)) => {
                        store = last.0 != m.payload || last.1 != m.qos;
                        if store {
                            overwrite(last, &m.payload, m.qos);
                        }
                    }
                    Some(empty) => *empty = Some((m.payload.clone(), m.qos)),
                    None if config => {}
                    None => remember(&mut self.others, &m.topic, &m.payload, m.qos),
                }
            }
            routed.push(Routed { message: m, store });
        }
        if self.connected && self.resync {
            self.resync = false;
            self.republish().await;
        }
        if self.connected {
            self.publish(routed).await;
        } else {
            let lost = routed.iter().filter(|r| !r.message.retain).count() as u64;
            self.stats.mqtt_dropped.fetch_add(lost, Relaxed);
        }
    }

    /// A broker serves: republish the state into it.
    async fn on_serving(&mut self) {
        self.connected = true;
        self.resync = false;
        self.stats.mqtt_connected.store(true, Relaxed);
        self.stats.mqtt_connects.fetch_add(1, Relaxed);
        self.republish().await;
        // Making the state (discovery configs above all) took memory the process no
        // longer needs.
        crate::trim_heap();
    }

    /// Whether `topic` is a discovery config.
    fn is_config(&self, topic: &str) -> bool {
        self.ha_prefix
            .as_deref()
            .is_some_and(|p| topic.starts_with(p) && topic.ends_with("/config"))
    }

    /// Publish the discovery configs of the model in force, made afresh, in batches of
    /// 256 (`store`: into a new broker; else only routed, the broker holds them).
    async fn publish_configs(&mut self, store: bool) -> usize {
        let model = self.model.borrow().clone();
        let mut configs = crate::homeassistant::iter(&model);
        let mut n = 0;
        loop {
            let batch: Vec<Routed> = configs
                .by_ref()
                .take(256)
                .map(|c| Routed {
                    message: c.message(),
                    store,
                })
                .collect();
            if batch.is_empty() {
                break;
            }
            n += batch.len();
            self.publish(batch).await;
        }
        n
    }

    /// Home Assistant (re)started: the discovery configs, then every state (Home
    /// Assistant drops a state that arrives before its entity exists). Only routed: the
    /// broker holds them already.
    async fn republish_for_ha(&mut self) {
        if !self.connected {
            return;
        }
        let n = self.publish_configs(false).await;
        let message = |topic: &str, (payload, qos): &(Vec<u8>, u8)| Routed {
            message: Outgoing {
                topic: topic.to_string(),
                payload: payload.clone(),
                retain: true,
                qos: *qos,
                slot: None,
            },
            store: false,
        };
        let mut states: Vec<Routed> = self.others.iter().map(|(t, v)| message(t, v)).collect();
        let model = self.model.borrow().clone();
        for point in model.points() {
            if let Some(Some(v)) = self.values.get(point.slot as usize) {
                states.push(message(&point.topic, v));
            }
        }
        self.publish(states).await;
        info!(configs = n, "Discovery republished for Home Assistant.");
    }

    /// `online` first, then every retained message, sorted by topic, all stored.
    async fn republish(&mut self) {
        let status_topic = self.status_topic.as_str();
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
        let model = self.model.borrow().clone();
        let values = model.points().filter_map(|point| {
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
        let routed = |message| Routed {
            message,
            store: true,
        };
        self.publish(vec![routed(online)]).await;
        // The discovery configs before the states they are for.
        self.publish_configs(true).await;
        self.publish(state.into_iter().map(routed).collect()).await;
    }
}

impl Conn {
    /// The state before the first broker serves, for the model in force.
    fn new(current: watch::Receiver<Arc<Model>>, inbox: broker::Inbox, stats: Arc<Stats>) -> Conn {
        let model = current.borrow().clone();
        let ha_prefix = model
            .homeassistant
            .as_ref()
            .filter(|h| h.embedded)
            .map(|h| format!("{}/", h.discovery_prefix));
        // Slots as numbered by validation; a model numbered otherwise keeps every value
        // in the map by topic instead.
        let by_slot = model
            .points()
            .enumerate()
            .all(|(i, p)| p.slot as usize == i);
        Conn {
            inbox,
            status_topic: model.status_topic(),
            connected: false,
            resync: false,
            by_slot,
            // Exactly as many as there are points (growing one by one would leave up to
            // twice that); a reload's new points grow it.
            values: if by_slot {
                vec![None; model.points().count()]
            } else {
                Vec::new()
            },
            model: current,
            others: HashMap::new(),
            ha_due: None,
            ha_prefix,
            stats,
        }
    }

    /// A reload: publish the discovery configs that changed since `shown`, and clears for
    /// the gone ones; returns the model now shown.
    async fn follow_model(&mut self, shown: &Model) -> Arc<Model> {
        let new = self.model.borrow_and_update().clone();
        let changes = crate::homeassistant::changes(shown, &new);
        if self.connected && !changes.is_empty() {
            debug!(configs = changes.len(), "Discovery configs changed.");
            let batch = changes
                .into_iter()
                .map(|message| Routed {
                    message,
                    store: true,
                })
                .collect();
            self.publish(batch).await;
        }
        new
    }

    /// Home Assistant said `payload` on its status topic: `online` schedules the configs
    /// and states again, after a short varied delay.
    fn heard_ha(&mut self, payload: &[u8]) {
        if payload == b"online" && self.ha_due.is_none() {
            let wait = super::ha_delay();
            debug!(wait = ?wait, "Home Assistant online; discovery republished soon.");
            self.ha_due = Some(tokio::time::Instant::now() + wait);
        }
    }

    /// Clean shutdown: publish offline and give the broker time to write it before the
    /// process ends.
    async fn shut_down(mut self) {
        if !self.connected {
            return;
        }
        let topic = self.status_topic.clone();
        self.send(vec![Outgoing {
            topic,
            payload: b"offline".to_vec(),
            retain: true,
            qos: 1,
            slot: None,
        }])
        .await;
        self.inbox.flush(Duration::from_secs(3)).await;
        info!("Gateway status offline.");
    }
}

/// Run the gateway's side of the embedded broker until `rx` is closed (every producer
/// stopped); then publish `offline` on the status topic and wait until it is written.
/// `current` is the model in force, which a reload replaces.
pub async fn run_client(
    current: watch::Receiver<Arc<Model>>,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
    router: Router,
    link: broker::Link,
) {
    let broker::Link {
        inbox,
        mut serving,
        mut commands,
        store,
    } = link;
    // The model whose discovery configs the broker has.
    let mut shown = current.borrow().clone();
    let mut conn = Conn::new(current, inbox, stats);
    let ha_status = conn.ha_prefix.as_ref().map(|p| format!("{p}status"));
    let mut seen = Serving::default();
    let (mut following, mut linked, mut listening) = (true, true, true);
    loop {
        tokio::select! {
            changed = serving.changed(), if linked => {
                if changed.is_err() {
                    linked = false;
                    continue;
                }
                let now = *serving.borrow_and_update();
                if now.up && now.generation != seen.generation {
                    if seen.generation > 0 {
                        info!(generation = now.generation, "State republished to the rebuilt broker.");
                    } else {
                        debug!("Linked to the embedded broker.");
                    }
                    seen = now;
                    conn.on_serving().await;
                } else if !now.up && conn.connected {
                    warn!("Embedded broker down; the state is republished when it is back.");
                    conn.connected = false;
                    conn.stats.mqtt_connected.store(false, Relaxed);
                }
            }
            // A reload: the discovery configs that changed, and clears for the gone ones.
            changed = conn.model.changed(), if following => match changed {
                Ok(()) => shown = conn.follow_model(&shown).await,
                Err(_) => following = false,
            },
            () = super::sleep_until(conn.ha_due), if conn.ha_due.is_some() => {
                conn.ha_due = None;
                conn.republish_for_ha().await;
            }
            command = commands.recv(), if listening => match command {
                Some(c) if Some(&c.topic) == ha_status.as_ref() => conn.heard_ha(&c.payload),
                Some(c) => {
                    if let Some(rejected) = router.handle(&c.topic, &c.payload) {
                        debug!(topic = ?c.topic, "Command rejected.");
                        conn.send(vec![rejected]).await;
                    }
                }
                None => listening = false,
            },
            batch = rx.recv() => match batch {
                Some(batch) => conn.send(batch).await,
                None => break,
            },
        }
    }
    conn.shut_down().await;
    // What clients stored in the broker, written once more before the process ends.
    store.save(Duration::from_secs(10)).await;
}
