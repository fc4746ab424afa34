//! Bounds on subscriptions: at most `max_subscriptions` per client and
//! `max_subscriptions_total` for all clients together (online and offline sessions), so
//! that no client can fill the memory with subscriptions (each costs the broker a few
//! hundred bytes: README, "Embedded broker on the house network").
//!
//! A SUBSCRIBE entry beyond a bound gets the failure return code (MQTT 3.1.1: 0x80; MQTT
//! 5: 0x97 "Quota exceeded"); the other entries of the packet are answered as usual and
//! the client stays connected. The counts are rmqtt's own: the session's subscription
//! list (re-subscribing a filter the session has replaces it and is always allowed) and
//! the router's subscription relations (an unsubscribe, a discarded session or an expired
//! one gives its room back the moment rmqtt forgets it). Clients subscribing at the same
//! moment may each pass the total's check once before either is counted, so the total can
//! be passed by at most one entry per connected client.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rmqtt::{
    codec::v5::SubscribeAckReason,
    context::ServerContext,
    hook::{Handler, HookResult, Parameter, ReturnType},
    session::Session,
    types::SubscribeAclResult,
};
use tracing::warn;

use crate::health::BrokerStats;

/// Which bound a subscription would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    Client,
    Total,
}

/// The `ClientSubscribeCheckAcl` handler that applies the bounds; registered ahead of the
/// rights check, it lets the entry on to it when there is room.
pub(crate) struct SubscriptionLimits {
    per_client: usize,
    total: usize,
    scx: ServerContext,
    stats: Arc<BrokerStats>,
    /// When a refusal was last logged: one line a minute at most.
    logged: Mutex<Option<Instant>>,
}

/// How long after a logged refusal further ones are only counted.
const LOG_QUIET: Duration = Duration::from_secs(60);

impl SubscriptionLimits {
    pub(crate) fn new(
        per_client: usize,
        total: usize,
        scx: ServerContext,
        stats: Arc<BrokerStats>,
    ) -> SubscriptionLimits {
        SubscriptionLimits {
            per_client,
            total,
            scx,
            stats,
            logged: Mutex::new(None),
        }
    }

    /// Which bound subscribing `s` to `filter` would pass, if any.
    async fn over(&self, s: &Session, filter: &str) -> Option<Over> {
        // Without its list the session is on its way out; rmqtt refuses the entry itself.
        let subs = s.subscriptions().await.ok()?;
        let (has, len) = {
            let subs = subs.read().await;
            (subs.contains_key(filter), subs.len())
        };
        if has {
            return None;
        }
        if len >= self.per_client {
            return Some(Over::Client);
        }
        let total = self.scx.extends.router().await.routes().count().max(0);
        (total as usize >= self.total).then_some(Over::Total)
    }

    fn log(&self, s: &Session, over: Over) {
        let now = Instant::now();
        let Ok(mut last) = self.logged.lock() else {
            return;
        };
        if last.is_some_and(|t| now.duration_since(t) < LOG_QUIET) {
            return;
        }
        *last = Some(now);
        let (setting, limit) = match over {
            Over::Client => ("max_subscriptions", self.per_client),
            Over::Total => ("max_subscriptions_total", self.total),
        };
        warn!(
            client = ?&*s.id.client_id,
            user = ?s.id.username.as_deref(),
            setting,
            limit,
            "Subscription refused: limit reached."
        );
    }
}

#[async_trait]
impl Handler for SubscriptionLimits {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::ClientSubscribeCheckAcl(s, sub) = param {
            if let Some(over) = self.over(s, &sub.topic_filter).await {
                self.stats.subscriptions_over_limit.fetch_add(1, Relaxed);
                self.log(s, over);
                let refused = SubscribeAclResult::new_failure(SubscribeAckReason::QuotaExceeded);
                return (false, Some(HookResult::SubscribeAclResult(refused)));
            }
        }
        (true, acc)
    }
}
