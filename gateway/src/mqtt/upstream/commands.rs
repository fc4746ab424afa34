//! Command intake from upstream (`accept_commands`): `<prefix><topic>/set` is subscribed
//! after every connect, and what arrives goes through the same [`Router`] as commands from
//! the embedded broker; a rejection is published back upstream through the queue.

use rumqttc::{QoS, SubscribeFilter};
use tracing::{debug, warn};

use super::publisher::Up;
use crate::commands::Router;

/// The command subscriptions under `prefix`, at QoS 0: a broker does not keep commands for
/// an offline gateway (a stale "open the valve" must not run hours later).
pub(super) fn subscriptions(router: Option<&Router>, prefix: &str) -> Vec<SubscribeFilter> {
    match router {
        Some(r) => r
            .subscriptions()
            .into_iter()
            .map(|t| SubscribeFilter::new(format!("{prefix}{t}"), QoS::AtMostOnce))
            .collect(),
        None => Vec::new(),
    }
}

impl Up {
    /// Renew the command subscriptions (after every connect: the session may be new).
    pub(super) fn subscribe(&mut self) {
        if !self.subs.is_empty() {
            if let Err(e) = self.client.try_subscribe_many(self.subs.clone()) {
                warn!(error = %e, "Cannot subscribe upstream.");
            }
        }
    }

    /// A message from upstream: a command when it is under the prefix and commands are
    /// accepted.
    pub(super) fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let (Some(router), Some(t)) = (self.router.as_ref(), topic.strip_prefix(&self.prefix))
        else {
            return;
        };
        if let Some(rejected) = router.handle(t, payload) {
            debug!(topic = %topic, "Upstream command rejected.");
            self.push(rejected);
        }
    }
}
