//! The retained state: the last retained message of every topic the gateway publishes,
//! kept once for both MQTT sides ([`Retained`]). The embedded side publishes it into
//! every broker that starts serving; the upstream side publishes it after every connect,
//! once its queue is caught up; both publish it again after Home Assistant's `online`.
//!
//! Every batch is recorded here before either side sees it ([`Intake`]): with both sides
//! the fan-out records it and hands it on, with one side that side records it as it takes
//! it. So neither side ever republishes a value older than one it has already been given.
//!
//! Not kept: the gateway's status (each side says `online` and `offline` for its own
//! connection) and discovery configs (made again from the model when needed: 10 000 of
//! them are ~9 MB).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::mpsc;

use crate::{
    model::Model,
    publish::{Batch, Outgoing},
    topics::Topics,
};

/// A payload and its QoS.
type Kept = (Vec<u8>, u8);

/// The retained state of both MQTT sides (one instance; clones of the `Arc` share it).
pub(crate) struct Retained(Mutex<Inner>);

struct Inner {
    /// Last retained payload and QoS of every point, by slot. A vector, not a map keyed
    /// by topic: no hashing per message, and 1 MB less at 10 000 points. A reload's new
    /// points have new slots: it grows.
    values: Vec<Option<Kept>>,
    /// Values are kept by slot (else by topic, in `others`).
    by_slot: bool,
    /// The same for the gateway's other retained topics (availability, diagnostics, the
    /// devices' JSON objects).
    others: HashMap<String, Kept>,
    /// `<base>/status`, not kept.
    status: String,
    /// Which topics are discovery configs, not kept.
    topics: Topics,
}

/// One retained topic, without its payload (which is read when it is sent, so that it
/// is the newest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// The topic (without the upstream prefix).
    pub(crate) topic: String,
    /// The point's slot, for a point.
    pub(crate) slot: Option<u32>,
}

/// A batch as the sides get it: with, per message, whether it changed the retained
/// state (new, or another payload or QoS). The embedded broker stores only those.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamped {
    /// The messages.
    pub(crate) batch: Batch,
    /// Whether each changed the retained state (always `true` for a topic other than a
    /// point's, and for a message that is not retained).
    pub(crate) fresh: Vec<bool>,
}

impl Stamped {
    /// Each message with its flag.
    pub(crate) fn into_iter(self) -> impl Iterator<Item = (Outgoing, bool)> {
        let Stamped { batch, fresh } = self;
        batch
            .into_iter()
            .zip(fresh.into_iter().chain(std::iter::repeat(true)))
    }
}

impl Retained {
    /// The empty state for `model`.
    pub(crate) fn new(model: &Model) -> Arc<Retained> {
        // Slots as numbered by validation; a model numbered otherwise keeps every value
        // in the map by topic instead.
        let by_slot = model
            .points()
            .enumerate()
            .all(|(i, p)| p.slot as usize == i);
        let topics = Topics::of(model);
        Arc::new(Retained(Mutex::new(Inner {
            // Exactly as many as there are points (growing one by one would leave up to
            // twice that).
            values: if by_slot {
                vec![None; model.points().count()]
            } else {
                Vec::new()
            },
            by_slot,
            others: HashMap::new(),
            status: topics.status(),
            topics,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record the retained messages of `batch` (an empty payload clears its topic), and
    /// stamp it.
    pub(crate) fn record(&self, batch: Batch) -> Stamped {
        let mut fresh = Vec::with_capacity(batch.len());
        let mut inner = self.lock();
        for m in &batch {
            fresh.push(!m.retain || inner.record(m));
        }
        drop(inner);
        Stamped { batch, fresh }
    }

    /// The retained message of every topic, for the points of `model` and the other
    /// topics, sorted by topic.
    pub(crate) fn state(&self, model: &Model) -> Vec<Outgoing> {
        let inner = self.lock();
        let others = inner.others.iter().map(|(topic, (payload, qos))| Outgoing {
            topic: topic.clone(),
            payload: payload.clone(),
            retain: true,
            qos: *qos,
            slot: None,
        });
        let values = model.points().filter_map(|p| {
            let (payload, qos) = inner.point(p.slot)?;
            Some(Outgoing {
                topic: p.topic.clone(),
                payload: payload.clone(),
                retain: true,
                qos: *qos,
                slot: Some(p.slot),
            })
        });
        let mut state: Vec<Outgoing> = others.chain(values).collect();
        drop(inner);
        state.sort_by(|a, b| a.topic.cmp(&b.topic));
        state
    }

    /// The topics [`Retained::state`] has, without their payloads, sorted by topic.
    pub(crate) fn keys(&self, model: &Model) -> Vec<Key> {
        let inner = self.lock();
        let others = inner.others.keys().map(|t| Key {
            topic: t.clone(),
            slot: None,
        });
        let values = model
            .points()
            .filter(|p| inner.point(p.slot).is_some())
            .map(|p| Key {
                topic: p.topic.clone(),
                slot: Some(p.slot),
            });
        let mut keys: Vec<Key> = others.chain(values).collect();
        drop(inner);
        keys.sort_by(|a, b| a.topic.cmp(&b.topic));
        keys
    }

    /// The payload and QoS kept for `key` now.
    pub(crate) fn get(&self, key: &Key) -> Option<Kept> {
        let inner = self.lock();
        match key.slot {
            Some(s) => inner.point(s).cloned(),
            None => inner.others.get(&key.topic).cloned(),
        }
    }

    /// How many topics are kept, and their payload bytes (for tests).
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        let kept = inner.values.iter().flatten().chain(inner.others.values());
        kept.fold((0, 0), |(n, b), (p, _)| (n + 1, b + p.len()))
    }
}

impl Inner {
    /// A point's kept value, by slot (kept by topic, it is one of `others`).
    fn point(&self, slot: u32) -> Option<&Kept> {
        self.values.get(slot as usize)?.as_ref()
    }

    /// Record one retained message; whether it changed the state.
    fn record(&mut self, m: &Outgoing) -> bool {
        let by_slot = self.by_slot;
        match m.slot.filter(|_| by_slot).map(|s| s as usize) {
            Some(s) => {
                if s >= self.values.len() {
                    self.values.resize(s + 1, None);
                }
                let last = &mut self.values[s];
                match last {
                    // An empty retained message clears the topic: nothing to republish.
                    _ if m.payload.is_empty() => {
                        *last = None;
                        true
                    }
                    Some(kept) if kept.0 == m.payload && kept.1 == m.qos => false,
                    Some(kept) => {
                        overwrite(kept, &m.payload, m.qos);
                        true
                    }
                    None => {
                        *last = Some((m.payload.clone(), m.qos));
                        true
                    }
                }
            }
            None => {
                if m.topic == self.status || self.topics.is_config(&m.topic) {
                    return true;
                }
                remember(&mut self.others, &m.topic, &m.payload, m.qos);
                true
            }
        }
    }
}

/// Record the last retained payload of `topic`, reusing the buffers of the previous
/// value; an empty one clears it.
fn remember(retained: &mut HashMap<String, Kept>, topic: &str, payload: &[u8], qos: u8) {
    if payload.is_empty() {
        retained.remove(topic);
        return;
    }
    match retained.get_mut(topic) {
        Some(last) => overwrite(last, payload, qos),
        None => {
            retained.insert(topic.to_string(), (payload.to_vec(), qos));
        }
    }
}

/// Replace a kept payload and QoS, reusing its buffer.
fn overwrite(last: &mut Kept, payload: &[u8], qos: u8) {
    last.0.clear();
    last.0.extend_from_slice(payload);
    last.1 = qos;
}

/// Where an MQTT side takes its batches from: the bus tasks' channel, recording each
/// batch itself (the only side), or the fan-out, which recorded it (both sides).
pub(crate) enum Intake {
    /// The only side: it records.
    Direct(mpsc::Receiver<Batch>, Arc<Retained>),
    /// One of two sides: the fan-out recorded.
    Fanned(mpsc::Receiver<Stamped>),
}

impl Intake {
    /// The next batch, recorded; `None` once every producer stopped.
    pub(crate) async fn recv(&mut self) -> Option<Stamped> {
        match self {
            Intake::Direct(rx, retained) => Some(retained.record(rx.recv().await?)),
            Intake::Fanned(rx) => rx.recv().await,
        }
    }
}

/// Record every batch, then hand it to both MQTT sides (embedded and upstream), until
/// `rx` is closed.
pub(crate) async fn fanout(
    mut rx: mpsc::Receiver<Batch>,
    retained: Arc<Retained>,
    embedded: mpsc::Sender<Stamped>,
    upstream: mpsc::Sender<Stamped>,
) {
    while let Some(batch) = rx.recv().await {
        let stamped = retained.record(batch);
        let _ = embedded.send(stamped.clone()).await;
        let _ = upstream.send(stamped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let gateway = "id: t\nmappings: m.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:1883\"\nhomeassistant: {}\n";
        let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\ndevices:\n  - id: d\n    bus: b\n    points:\n      - { topic: casa/a, table: holding, address: 0 }\n      - { topic: casa/b, table: holding, address: 1 }\n";
        crate::config::check_sources(std::path::Path::new("/g.yaml"), gateway, |_, _| {
            vec![("m.yaml".into(), mapping.to_string())]
        })
        .expect("valid")
        .model
    }

    fn msg(topic: &str, payload: &str, slot: Option<u32>) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            payload: payload.into(),
            retain: true,
            qos: 1,
            slot,
        }
    }

    #[test]
    fn one_copy_per_topic_newest_wins_and_empty_clears() {
        let m = model();
        let r = Retained::new(&m);
        let s = r.record(vec![
            msg("casa/a", "1", Some(0)),
            msg("casa/a", "1", Some(0)),
            msg("casa/b", "2", Some(1)),
            msg("fieldlink/t/d/availability", "online", None),
            // Not kept: the status, a discovery config.
            msg("fieldlink/t/status", "online", None),
            msg("homeassistant/sensor/x/config", "{}", None),
        ]);
        assert_eq!(s.fresh, [true, false, true, true, true, true]);
        assert_eq!(r.size(), (3, 1 + 1 + 6));
        let s = r.record(vec![
            msg("casa/a", "3", Some(0)),
            msg("casa/b", "", Some(1)),
        ]);
        assert_eq!(s.fresh, [true, true]);
        let state: Vec<(String, String)> = r
            .state(&m)
            .into_iter()
            .map(|o| (o.topic, String::from_utf8(o.payload).expect("utf-8")))
            .collect();
        assert_eq!(
            state,
            [
                ("casa/a".to_string(), "3".to_string()),
                ("fieldlink/t/d/availability".into(), "online".into())
            ]
        );
        let keys = r.keys(&m);
        assert_eq!(keys.len(), 2);
        assert_eq!(r.get(&keys[0]).map(|k| k.0), Some(b"3".to_vec()));
    }

    #[test]
    fn a_model_numbered_otherwise_keeps_points_by_topic_once() {
        let mut m = model();
        // Slots not as validation numbers them (a test's hand-made model).
        let mut bus = crate::model::Bus::clone(&m.buses[0]);
        let mut dev = crate::model::Device::clone(&bus.devices[0]);
        dev.points[0].slot = 7;
        bus.devices[0] = Arc::new(dev);
        m.buses[0] = Arc::new(bus);
        let r = Retained::new(&m);
        r.record(vec![
            msg("casa/a", "1", Some(7)),
            msg("casa/b", "2", Some(1)),
        ]);
        let topics: Vec<String> = r.state(&m).into_iter().map(|o| o.topic).collect();
        assert_eq!(topics, ["casa/a", "casa/b"]);
        assert_eq!(r.keys(&m).len(), 2);
    }
}
