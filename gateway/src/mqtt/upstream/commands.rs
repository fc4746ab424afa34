//! Command intake from upstream (`accept_commands`): `<prefix><topic>/set` and
//! `<prefix><topic>/get` are subscribed after every connect, and what arrives goes through
//! the same [`Router`] as commands and reads from the embedded broker; a rejection is
//! published back upstream through the queue.

use rumqttc::{QoS, SubscribeFilter};
use tracing::{debug, warn};

use super::publisher::Up;
use crate::{commands::Router, topics::Topics};

/// The command subscriptions under the upstream prefix, at QoS 0: a broker does not keep
/// commands for an offline gateway (a stale "open the valve" must not run hours later).
/// With Home Assistant discovery upstream, its `<discovery prefix>/status` too (not under
/// the prefix: Home Assistant publishes it there).
pub(super) fn subscriptions(
    router: Option<&Router>,
    topics: &Topics,
    ha_status: Option<&str>,
) -> Vec<SubscribeFilter> {
    let mut subs: Vec<SubscribeFilter> = match router {
        Some(r) => r
            .subscriptions()
            .into_iter()
            .map(|t| SubscribeFilter::new(topics.upstream(&t), QoS::AtMostOnce))
            .collect(),
        None => Vec::new(),
    };
    if let Some(t) = ha_status {
        subs.push(SubscribeFilter::new(t.to_string(), QoS::AtMostOnce));
    }
    subs
}

/// Most bytes of topic filters in one SUBSCRIBE: every point has a `/get`, and at 20 000
/// points one packet with all of them would pass the connection's 1 MiB packet limit.
const SUBSCRIBE_BYTES: usize = 64 * 1024;

/// `subs` cut into SUBSCRIBE packets of at most [`SUBSCRIBE_BYTES`] of filters each.
fn packets(subs: Vec<SubscribeFilter>) -> Vec<Vec<SubscribeFilter>> {
    let mut out = Vec::new();
    let mut packet = Vec::new();
    let mut bytes = 0;
    for f in subs {
        // The filter's length prefix and its options byte.
        let n = f.path.len() + 3;
        if !packet.is_empty() && bytes + n > SUBSCRIBE_BYTES {
            out.push(std::mem::take(&mut packet));
            bytes = 0;
        }
        bytes += n;
        packet.push(f);
    }
    if !packet.is_empty() {
        out.push(packet);
    }
    out
}

impl Up {
    /// Renew the command subscriptions (after every connect: the session may be new).
    pub(super) fn subscribe(&mut self) {
        for p in packets(self.subs.clone()) {
            if let Err(e) = self.client.try_subscribe_many(p) {
                warn!(error = %e, "Cannot subscribe upstream.");
                return;
            }
        }
    }

    /// After a reload: subscribe the command topics that are new, unsubscribe the ones
    /// gone (on the next connect all of them are subscribed anyway).
    pub(super) fn follow_routes(&mut self) {
        let Some(router) = &self.router else {
            return;
        };
        let generation = router.generation();
        if generation == self.subs_generation {
            return;
        }
        self.subs_generation = generation;
        let new = subscriptions(Some(router), &self.topics, self.follow.ha_status());
        let added: Vec<SubscribeFilter> = new
            .iter()
            .filter(|f| !self.subs.iter().any(|o| o.path == f.path))
            .cloned()
            .collect();
        let removed: Vec<String> = self
            .subs
            .iter()
            .filter(|o| !new.iter().any(|f| f.path == o.path))
            .map(|o| o.path.clone())
            .collect();
        let before = std::mem::replace(&mut self.subs, new);
        if !self.connected {
            return;
        }
        let mut failed = false;
        for p in packets(added) {
            if let Err(e) = self.client.try_subscribe_many(p) {
                warn!(error = %e, "Cannot subscribe upstream; trying again.");
                failed = true;
                break;
            }
        }
        for t in removed {
            if let Err(e) = self.client.try_unsubscribe(t) {
                warn!(error = %e, "Cannot unsubscribe upstream; trying again.");
                failed = true;
            }
        }
        if failed {
            // Tried again at the next batch or tick (subscribing twice is harmless).
            self.subs = before;
            self.subs_generation = 0;
        }
    }

    /// A message from upstream: a command when it is under the prefix and commands are
    /// accepted.
    pub(super) fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if self.follow.heard(topic, payload) {
            return;
        }
        let (Some(router), Some(t)) = (self.router.as_ref(), self.topics.strip_upstream(topic))
        else {
            return;
        };
        if let Some(rejected) = router.handle(t, payload) {
            debug!(topic = ?topic, "Upstream command rejected.");
            self.push(rejected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_go_in_packets_far_below_the_packet_limit() {
        let subs: Vec<SubscribeFilter> = (0..20_000)
            .map(|i| {
                let t = format!("sites/casa/andar/sala/medidor/ponto{i:05}/get");
                SubscribeFilter::new(t, QoS::AtMostOnce)
            })
            .collect();
        let all: usize = subs.iter().map(|f| f.path.len() + 3).sum();
        let p = packets(subs.clone());
        assert!(p.len() >= all / SUBSCRIBE_BYTES, "{} packets", p.len());
        for packet in &p {
            let bytes: usize = packet.iter().map(|f| f.path.len() + 3).sum();
            assert!(bytes <= SUBSCRIBE_BYTES, "{bytes}");
        }
        let again: Vec<String> = p.into_iter().flatten().map(|f| f.path).collect();
        let want: Vec<String> = subs.into_iter().map(|f| f.path).collect();
        assert_eq!(again, want, "every filter once, in order");
        assert!(packets(Vec::new()).is_empty());
    }
}
