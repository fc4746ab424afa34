//! Publishing from the queue: the upstream task's state ([`Up`]), which hands queued
//! messages to rumqttc within a window, tells which queued message each packet id carries,
//! acknowledges them in the queue on PUBACK, and rewinds the queue when the connection
//! drops.
//!
//! rumqttc reports every publish it writes (`Outgoing::Publish(pkid)`) in the order it was
//! asked for, so a FIFO of requested messages gives each packet id its queue entry.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, SubscribeFilter};
use tracing::debug;

use super::{connection::qos, WINDOW};
use crate::{
    commands::Router,
    health::Stats,
    model::{Model, Upstream},
    mqtt::{
        follow::{Follow, Side},
        queue::Spool,
        retained::{Key, Retained},
    },
    publish::Outgoing,
    topics::Topics,
};

/// Token bucket of the replay rate.
struct Rate {
    per_s: u32,
    tokens: f64,
    at: Instant,
}

impl Rate {
    /// Take one token, or say how long until there is one.
    fn take(&mut self) -> Result<(), Duration> {
        if self.per_s == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let rate = f64::from(self.per_s);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate)
            .min((rate / 10.0).max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The upstream task's state: the queue, the connection's bookkeeping, and its share of
/// the retained state and of the reload and Home Assistant handling (`follow.rs`).
pub(super) struct Up {
    pub(super) client: AsyncClient,
    pub(super) spool: Spool,
    pub(super) stats: Arc<Stats>,
    qos: u8,
    /// The gateway's topic names (their upstream form has the prefix in front).
    pub(super) topics: Topics,
    /// `<prefix><base>/status`.
    pub(super) status_topic: String,
    /// Publishes asked of rumqttc and not yet reported written: the queue's sequence
    /// number, or `None` for messages not from the queue (status, retained state).
    requested: VecDeque<Option<u64>>,
    /// Written, waiting for the broker's acknowledgement.
    by_pkid: HashMap<u16, Option<u64>>,
    pub(super) connected: bool,
    online_due: bool,
    state_due: bool,
    /// The retained topics still to send after a connect, last first (their payloads are
    /// read from `retained` as each is sent: the newest).
    state: Vec<Key>,
    /// The retained state, shared with the embedded side.
    retained: Arc<Retained>,
    /// Messages queued before this connect are a backlog, sent at the replay rate.
    replay_mark: u64,
    rate: Rate,
    acked_last: u64,
    /// Where commands from upstream go (`accept_commands`), and their subscriptions.
    pub(super) router: Option<Router>,
    pub(super) subs: Vec<SubscribeFilter>,
    /// The router's generation `subs` were made for.
    pub(super) subs_generation: u64,
    /// The model in force and Home Assistant's birth, as the embedded side follows them.
    pub(super) follow: Follow,
    /// The configs are to be sent (at the first connect, and after Home Assistant's
    /// `online`): after `online`, then the retained state.
    pub(super) configs_due: bool,
    /// The broker's URL, for the logs.
    pub(super) url: String,
    /// Connected at least once.
    pub(super) ever: bool,
    /// The last connection error, logged once per kind of failure.
    pub(super) failing: Option<String>,
}

impl Up {
    /// The state before the first connect, with the queue as opened.
    pub(super) fn new(
        client: AsyncClient,
        spool: Spool,
        stats: Arc<Stats>,
        (model, current): (Arc<Model>, Option<tokio::sync::watch::Receiver<Arc<Model>>>),
        (u, retained): (&Upstream, Arc<Retained>),
        router: Option<Router>,
    ) -> Up {
        let topics = model.topics();
        let follow = Follow::new(Side::Upstream, model, current);
        let subs = super::commands::subscriptions(router.as_ref(), &topics, follow.ha_status());
        let subs_generation = router.as_ref().map_or(0, Router::generation);
        Up {
            client,
            spool,
            stats,
            qos: u.qos,
            status_topic: topics.upstream(&topics.status()),
            topics,
            requested: VecDeque::new(),
            by_pkid: HashMap::new(),
            connected: false,
            online_due: false,
            state_due: false,
            state: Vec::new(),
            retained,
            replay_mark: 0,
            rate: Rate {
                per_s: u.queue.replay_rate,
                tokens: 0.0,
                at: Instant::now(),
            },
            acked_last: 0,
            router,
            subs,
            subs_generation,
            configs_due: follow.ha_status().is_some(),
            follow,
            url: u.url.clone(),
            ever: false,
            failing: None,
        }
    }

    fn outstanding(&self) -> usize {
        self.requested.len() + self.by_pkid.len()
    }

    /// Queue a message for upstream (prefix added); retained ones are in the shared
    /// state already.
    pub(super) fn push(&mut self, m: Outgoing) {
        let topic = self.topics.upstream(&m.topic);
        self.spool.push(topic, m.payload, self.qos, m.retain);
    }

    fn request(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        q: u8,
        retain: bool,
        tag: Option<u64>,
    ) -> bool {
        match self.client.try_publish(topic, qos(q), retain, payload) {
            Ok(()) => {
                self.requested.push_back(tag);
                self.stats.upstream.sent.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                debug!(error = %e, "Upstream request channel full.");
                false
            }
        }
    }

    /// Queue every upstream discovery config (their topics as they are: Home Assistant
    /// listens on its own prefix), then the retained state once they are out.
    fn queue_configs(&mut self) {
        let model = self.follow.shown();
        let mut n = 0;
        for c in self.follow.configs(&model) {
            let m = c.message();
            self.spool.push(m.topic, m.payload, 1, true);
            n += 1;
        }
        self.state_due = true;
        debug!(configs = n, "Discovery configs queued upstream.");
    }

    /// After a reload: the upstream configs that changed, and clears for the gone ones.
    pub(super) fn follow_model(&mut self) {
        for m in self.follow.reload() {
            self.spool.push(m.topic, m.payload, 1, true);
        }
    }

    /// A new connection: `online` first, then the backlog at the replay rate, then the
    /// retained state once caught up.
    pub(super) fn start_session(&mut self) {
        self.connected = true;
        self.online_due = true;
        self.state_due = true;
        self.state.clear();
        self.replay_mark = self.spool.tail();
    }

    /// Hand messages to the connection while the window has room. Returns how long to
    /// wait for the replay rate, if that is what stops it.
    pub(super) fn pump(&mut self) -> Option<Duration> {
        if !self.connected {
            return None;
        }
        while self.outstanding() < WINDOW {
            if self.online_due {
                self.online_due = false;
                let topic = self.status_topic.clone();
                self.request(topic, b"online".to_vec(), 1, true, None);
                continue;
            }
            if self.configs_due {
                self.configs_due = false;
                self.queue_configs();
                continue;
            }
            match self.spool.peek() {
                Some(seq) => {
                    if seq < self.replay_mark {
                        if let Err(wait) = self.rate.take() {
                            return Some(wait);
                        }
                    }
                    let Some(e) = self.spool.take_next() else {
                        break;
                    };
                    let resend = !self.request(
                        e.topic.clone(),
                        e.payload.clone(),
                        e.qos,
                        e.retain,
                        Some(e.seq),
                    );
                    if resend {
                        self.spool.rewind(&|s| s != e.seq);
                        break;
                    }
                }
                None => {
                    if !self.pump_state() {
                        break;
                    }
                }
            }
        }
        None
    }

    /// Caught up: hand over the next message of the retained state of every topic, for a
    /// broker that lost it (restarted without persistence). `false` when there is none, or
    /// no room in rumqttc's channel.
    fn pump_state(&mut self) -> bool {
        if self.state_due {
            self.state_due = false;
            self.state = self.retained.keys(&self.follow.model());
            self.state.reverse();
        }
        let Some(key) = self.state.pop() else {
            return false;
        };
        // The newest payload: every message recorded before it is in the queue already
        // or still on its way to it, so nothing older can follow it. Gone meanwhile:
        // nothing to send.
        let Some((payload, _)) = self.retained.get(&key) else {
            return true;
        };
        let topic = self.topics.upstream(&key.topic);
        if !self.request(topic, payload, self.qos, true, None) {
            self.state.push(key);
            return false;
        }
        true
    }

    fn acked(&mut self, tag: Option<u64>) {
        if let Some(seq) = tag {
            self.spool.ack(seq);
            self.stats.upstream.acked.fetch_add(1, Relaxed);
        }
    }

    /// rumqttc wrote the next requested publish with `pkid`.
    pub(super) fn on_written(&mut self, pkid: u16) {
        let tag = self.requested.pop_front().flatten();
        if pkid == 0 {
            // QoS 0: written is all there is.
            self.acked(tag);
        } else {
            self.by_pkid.insert(pkid, tag);
        }
    }

    /// The broker acknowledged `pkid`.
    pub(super) fn on_acked(&mut self, pkid: u16) {
        if let Some(tag) = self.by_pkid.remove(&pkid) {
            self.acked(tag);
        }
    }

    /// The connection dropped: publishes rumqttc discarded unwritten, then everything
    /// unacknowledged, are sent again by the queue, in order. Requests still in the
    /// channel go out after the reconnect as they are.
    pub(super) fn rewind_lost(&mut self, unwritten: usize) {
        debug!(
            unwritten,
            requested = self.requested.len(),
            written = self.by_pkid.len(),
            in_flight = self.spool.in_flight(),
            "Upstream bookkeeping at loss."
        );
        for _ in 0..unwritten.min(self.requested.len()) {
            self.requested.pop_front();
        }
        self.by_pkid.clear();
        let pending: HashSet<u64> = self.requested.iter().flatten().copied().collect();
        let before = self.spool.in_flight();
        self.spool.rewind(&|s| pending.contains(&s));
        let back = before - self.spool.in_flight();
        self.stats.upstream.resent.fetch_add(back as u64, Relaxed);
        self.state.clear();
    }

    /// Copy the queue's figures into the diagnostics counters (once a second).
    pub(super) fn publish_stats(&mut self) {
        let u = &self.stats.upstream;
        let c = &self.spool.counters;
        u.queue_depth.store(self.spool.depth(), Relaxed);
        u.queue_bytes.store(self.spool.bytes(), Relaxed);
        u.dropped.store(c.dropped, Relaxed);
        u.disk_bytes_written.store(c.disk_bytes_written, Relaxed);
        u.disk_messages_written.store(c.messages_written, Relaxed);
        u.disk_errors.store(c.disk_errors, Relaxed);
        u.recovered.store(c.recovered, Relaxed);
        let acked = u.acked.load(Relaxed);
        u.replay_rate.store(acked - self.acked_last, Relaxed);
        self.acked_last = acked;
        let age = self.spool.oldest_age_ms();
        u.oldest_age_ms.store(age, Relaxed);
    }
}
