//! What both MQTT sides do the same way ([`Follow`]): follow the model in force through
//! reloads (the discovery configs that changed, and clears for the gone ones), and answer
//! Home Assistant's birth (`online` on `<discovery prefix>/status`) with the configs and
//! then the states, after a short varied delay. The sides differ only in how they send:
//! the embedded one into its broker, the upstream one through its queue, with the prefix.

use std::sync::Arc;

use tokio::{sync::watch, time::Instant};
use tracing::debug;

use crate::{
    homeassistant::{self, Config},
    model::Model,
    publish::Outgoing,
    topics::Topics,
};

/// Which MQTT side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The embedded broker.
    Embedded,
    /// The upstream broker (topics under its prefix).
    Upstream,
}

/// The model a side shows and Home Assistant's birth on that side.
pub(crate) struct Follow {
    side: Side,
    /// The model in force (a reload replaces it), when the configuration can change.
    current: Option<watch::Receiver<Arc<Model>>>,
    /// The model whose discovery configs the side's broker has.
    shown: Arc<Model>,
    /// `<discovery prefix>/status` as the side hears it, with discovery on there.
    ha_status: Option<String>,
    /// When to answer Home Assistant's `online`.
    due: Option<Instant>,
}

impl Follow {
    /// Following `current` (or, without it, `model` for ever) on `side`.
    pub(crate) fn new(
        side: Side,
        model: Arc<Model>,
        current: Option<watch::Receiver<Arc<Model>>>,
    ) -> Follow {
        let topics = Topics::of(&model);
        let ha_status = match side {
            Side::Embedded => topics.ha_status_embedded(),
            Side::Upstream => topics.ha_status_upstream(),
        };
        Follow {
            side,
            current,
            shown: model,
            ha_status,
            due: None,
        }
    }

    /// The model in force now.
    pub(crate) fn model(&self) -> Arc<Model> {
        match &self.current {
            Some(c) => c.borrow().clone(),
            None => self.shown.clone(),
        }
    }

    /// Home Assistant's status topic on this side, with discovery on here.
    pub(crate) fn ha_status(&self) -> Option<&str> {
        self.ha_status.as_deref()
    }

    /// Whether `topic` is Home Assistant's status; its `online` schedules the answer
    /// (configs, then states) after a short varied delay.
    pub(crate) fn heard(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.ha_status.as_deref() != Some(topic) {
            return false;
        }
        if payload == b"online" && self.due.is_none() {
            let wait = ha_delay();
            debug!(side = ?self.side, wait = ?wait, "Home Assistant online; discovery republished soon.");
            self.due = Some(Instant::now() + wait);
        }
        true
    }

    /// When the answer to Home Assistant is due, if one is scheduled.
    pub(crate) fn birth_at(&self) -> Option<Instant> {
        self.due
    }

    /// The answer to Home Assistant is being given: a new `online` schedules another.
    pub(crate) fn birth_taken(&mut self) {
        self.due = None;
    }

    /// Wait for a reload (pending for ever once the model can no longer change).
    pub(crate) async fn changed(&mut self) {
        let ended = match self.current.as_mut() {
            Some(c) => c.changed().await.is_err(),
            None => std::future::pending().await,
        };
        if ended {
            self.current = None;
        }
    }

    /// A reload (or none: then nothing): the model in force is shown from now on;
    /// returns the discovery configs of this side that changed, and an empty retained
    /// message for every one that is gone (Home Assistant removes its entity).
    pub(crate) fn reload(&mut self) -> Vec<Outgoing> {
        let new = self.model();
        if Arc::ptr_eq(&new, &self.shown) {
            return Vec::new();
        }
        let changes = match self.side {
            Side::Embedded => homeassistant::changes(&self.shown, &new),
            Side::Upstream => homeassistant::changes_upstream(&self.shown, &new),
        };
        if !changes.is_empty() {
            debug!(side = ?self.side, configs = changes.len(), "Discovery configs changed.");
        }
        self.shown = new;
        changes
    }

    /// The model whose discovery configs the side's broker has.
    pub(crate) fn shown(&self) -> Arc<Model> {
        self.shown.clone()
    }

    /// Every discovery config of `model` for this side, one at a time (10 000 configs at
    /// once would be ~30 MB of JSON trees).
    pub(crate) fn configs<'a>(
        &self,
        model: &'a Model,
    ) -> Box<dyn Iterator<Item = Config> + Send + 'a> {
        match self.side {
            Side::Embedded => Box::new(homeassistant::iter(model)),
            Side::Upstream => Box::new(homeassistant::iter_upstream(model)),
        }
    }
}

/// How long after Home Assistant's `online` the configs go out again: 1 to 3 s, varied
/// so that several gateways on one broker do not answer at the same moment.
fn ha_delay() -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_millis(1000 + u64::from(nanos % 2000))
}
