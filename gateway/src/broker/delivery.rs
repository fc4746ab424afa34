//! Rights on delivery: a message reaches a client only if the client's current user may
//! read its topic, whatever subscription brought it there (Mosquitto checks read rights
//! on every delivery too).
//!
//! A subscription is checked when it is made, but a session can outlive the user who made
//! it: a client that logs in as another user with the same client id resumes the session
//! and its subscriptions, retained messages arrive on subscribe, queued messages arrive at
//! reconnect, and unacknowledged QoS 1/2 messages are sent again. rmqtt sends every one of
//! these through one place, `Session::deliver`, which asks the `MessageExpiryCheck` hook
//! first; this handler answers "expired" for a topic the user may not read, and the
//! message is dropped (and counted in `broker.denied_deliveries`).
//!
//! The hook is registered only with an `acl_file`: without one every client may read
//! everything, and nothing runs per message. With one, the check is a walk over the
//! user's rules and the patterns, level by level, without allocating.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};

use super::policy::Policy;
use crate::health::BrokerStats;

/// The `MessageExpiryCheck` handler that drops what the receiver may not read.
pub(crate) struct DeliveryRights {
    policy: Arc<Policy>,
    stats: Arc<BrokerStats>,
}

impl DeliveryRights {
    pub(crate) fn new(policy: Arc<Policy>, stats: Arc<BrokerStats>) -> DeliveryRights {
        DeliveryRights { policy, stats }
    }
}

#[async_trait]
impl Handler for DeliveryRights {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageExpiryCheck(s, _, p) = param {
            let user = s.id.username.as_deref();
            if !self.policy.may_read(user, &s.id.client_id, &p.topic) {
                self.stats.denied_deliveries.fetch_add(1, Relaxed);
                tracing::trace!(client = ?&*s.id.client_id, topic = ?&*p.topic, "Delivery denied.");
                return (false, Some(HookResult::MessageExpiry));
            }
        }
        (true, acc)
    }
}
