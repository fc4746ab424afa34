//! The gateway's side of its embedded broker.
//!
//! One task owns the link to the embedded broker ([`broker::Link`], in process: no MQTT
//! client, no socket). Whenever a broker starts serving (at start, and after the
//! supervisor rebuilt a failed one), it publishes `<base>/status = online` and then the
//! retained state again (kept once for both sides, `retained.rs`), so a broker restart
//! loses nothing that matters. While no broker serves, value messages only update that
//! state. Reloads and Home Assistant's birth are followed as upstream (`follow.rs`).
//! Commands and read requests clients publish on `<topic>/set` and `<topic>/get` arrive on
//! the link after the broker's rights check. At the end the task publishes `offline`
//! (retained), waits until the broker routed it, and gives the broker's sessions a moment
//! (50 ms) to write it.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    follow::{Follow, Side},
    retained::{Intake, Retained, Stamped},
};
use crate::{
    broker::{self, Routed, Serving},
    commands::Router,
    health::Stats,
    model::Model,
    publish::Outgoing,
};

struct Conn {
    inbox: broker::Inbox,
    status_topic: String,
    /// A broker is serving and has the state.
    connected: bool,
    /// A batch was not taken: republish the whole state before the next one.
    resync: bool,
    /// The model in force and Home Assistant's birth, as the upstream side follows them.
    follow: Follow,
    /// The retained state, shared with the upstream side: republished into every new
    /// broker.
    retained: Arc<Retained>,
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

    /// A recorded batch: into the broker, storing only the retained messages that
    /// changed the state.
    async fn send(&mut self, stamped: Stamped) {
        let routed: Vec<Routed> = stamped
            .into_iter()
            .map(|(message, fresh)| Routed {
                store: message.retain && fresh,
                message,
            })
            .collect();
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

    /// Publish the discovery configs of the model in force, made afresh, in batches of
    /// 256 (`store`: into a new broker; else only routed, the broker holds them).
    async fn publish_configs(&mut self, store: bool) -> usize {
        let model = self.follow.shown();
        let mut configs = self.follow.configs(&model);
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
        let states = self
            .retained
            .state(&self.follow.model())
            .into_iter()
            .map(|message| Routed {
                message,
                store: false,
            })
            .collect();
        self.publish(states).await;
        info!(configs = n, "Discovery republished for Home Assistant.");
    }

    /// `online` first, then the discovery configs, then every retained message, sorted
    /// by topic, all stored.
    async fn republish(&mut self) {
        let online = Outgoing {
            topic: self.status_topic.clone(),
            payload: b"online".to_vec(),
            retain: true,
            qos: 1,
            slot: None,
        };
        let state = self.retained.state(&self.follow.model());
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
    fn new(
        current: watch::Receiver<Arc<Model>>,
        retained: Arc<Retained>,
        inbox: broker::Inbox,
        stats: Arc<Stats>,
    ) -> Conn {
        let model = current.borrow().clone();
        Conn {
            inbox,
            status_topic: model.topics().status(),
            connected: false,
            resync: false,
            follow: Follow::new(Side::Embedded, model, Some(current)),
            retained,
            stats,
        }
    }

    /// A reload: publish the discovery configs that changed, and clears for the gone
    /// ones.
    async fn follow_model(&mut self) {
        let changes = self.follow.reload();
        if self.connected && !changes.is_empty() {
            let batch = changes
                .into_iter()
                .map(|message| Routed {
                    message,
                    store: true,
                })
                .collect();
            self.publish(batch).await;
        }
    }

    /// Clean shutdown: publish offline and give the broker time to write it before the
    /// process ends.
    async fn shut_down(mut self) {
        if !self.connected {
            return;
        }
        let message = Outgoing {
            topic: self.status_topic.clone(),
            payload: b"offline".to_vec(),
            retain: true,
            qos: 1,
            slot: None,
        };
        self.publish(vec![Routed {
            message,
            store: true,
        }])
        .await;
        self.inbox.flush(Duration::from_secs(3)).await;
        info!("Gateway status offline.");
    }
}

/// Run the gateway's side of the embedded broker until `intake` is closed (every producer
/// stopped); then publish `offline` on the status topic and wait until it is written.
/// `current` is the model in force, which a reload replaces; `retained` the state shared
/// with the upstream side.
pub(crate) async fn run_client(
    current: watch::Receiver<Arc<Model>>,
    retained: Arc<Retained>,
    mut intake: Intake,
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
    let mut conn = Conn::new(current, retained, inbox, stats);
    let mut seen = Serving::default();
    let (mut linked, mut listening) = (true, true);
    loop {
        let birth = conn.follow.birth_at();
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
            () = conn.follow.changed() => conn.follow_model().await,
            () = super::sleep_until(birth), if birth.is_some() => {
                conn.follow.birth_taken();
                conn.republish_for_ha().await;
            }
            command = commands.recv(), if listening => match command {
                Some(c) if conn.follow.heard(&c.topic, &c.payload) => {}
                Some(c) => {
                    if let Some(rejected) = router.handle(&c.topic, &c.payload) {
                        debug!(topic = ?c.topic, "Command rejected.");
                        conn.send(Stamped { batch: vec![rejected], fresh: Vec::new() }).await;
                    }
                }
                None => listening = false,
            },
            batch = intake.recv() => match batch {
                Some(batch) => conn.send(batch).await,
                None => break,
            },
        }
    }
    conn.shut_down().await;
    // What clients stored in the broker, written once more before the process ends.
    store.save(Duration::from_secs(10)).await;
}
