//! The queues' rmqtt hooks, the copy that frees a client message from its connection's
//! read buffer, and the bound on connected clients' queues.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use async_trait::async_trait;
use rmqtt::{
    context::ServerContext,
    hook::{Handler, HookResult, Parameter, ReturnType, Type},
    session::Session,
    types::{Publish, TopicName},
};

use tracing::debug;

use super::Queues;
use crate::broker::store::{self, persistent_expiry};

/// The hooks of this module, and the store's count of changes.
const HOOKS: [Type; 8] = [
    Type::ClientConnect,
    Type::ClientConnected,
    Type::ClientDisconnected,
    Type::SessionTerminated,
    Type::SessionSubscribed,
    Type::SessionUnsubscribed,
    Type::OfflineMessage,
    Type::MessagePublish,
];

/// rmqtt's hook handler for the queues (and the store's count of changes).
struct Hook(Arc<Queues>);

/// Whether `s` is still the session registered for its client id (a session taken over
/// ends after its successor started).
async fn registered(s: &Session) -> bool {
    s.scx.extends.shared().await.entry(s.id.clone()).id_same() == Some(true)
}

#[async_trait]
impl Handler for Hook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let q = &self.0;
        match param {
            Parameter::ClientConnect(c) => q.connecting(c),
            Parameter::ClientConnected(s) => {
                q.forget(&s.id.client_id, None);
                if persistent_expiry(s).await.is_some() {
                    store::touch(&q.changes);
                }
            }
            Parameter::ClientDisconnected(s, _)
                if persistent_expiry(s).await.is_some() && registered(s).await =>
            {
                q.track(s);
            }
            Parameter::SessionTerminated(s, _) => {
                q.forget(&s.id.client_id, Some(s.id.create_time));
                store::touch(&q.changes);
            }
            Parameter::SessionSubscribed(..) | Parameter::SessionUnsubscribed(..) => {
                store::touch(&q.changes);
            }
            // Not for a session already replaced (its loop queues what it still had).
            Parameter::OfflineMessage(s, _, p) if registered(s).await => q.offline_message(s, p),
            Parameter::MessagePublish(_, _, p) => {
                // A client's retained message (the gateway's own do not come this way).
                if p.retain {
                    store::touch(&q.changes);
                }
                let p = match &acc {
                    Some(HookResult::Publish(earlier)) => earlier,
                    _ => *p,
                };
                return (true, Some(HookResult::Publish(unpinned(p))));
            }
            _ => {}
        }
        (true, acc)
    }
}

/// `p` with its topic, payload and properties in allocations of their own. As decoded,
/// they are slices of the connection's read buffer, and a message kept (queued or
/// retained) keeps that whole buffer: measured, 6 KiB of memory for a 16-byte message
/// published on a connection of its own (as `mosquitto_pub` and most sensors do), and
/// twice the payload for 1–10 KiB messages sent in a row. One copy per client message.
fn unpinned(p: &Publish) -> Publish {
    let mut q = p.clone();
    q.topic = TopicName::from(&*p.topic);
    q.payload = bytes::Bytes::copy_from_slice(&p.payload);
    if let Some(pp) = q.properties.as_mut() {
        let own = |s: &mut TopicName| *s = TopicName::from(&**s);
        pp.content_type.as_mut().map(own);
        pp.response_topic.as_mut().map(own);
        if let Some(c) = pp.correlation_data.as_mut() {
            *c = bytes::Bytes::copy_from_slice(c);
        }
        for (k, v) in &mut pp.user_properties {
            own(k);
            own(v);
        }
    }
    q
}

/// The queues of a new broker: their hooks registered and their task started.
pub(crate) async fn start(
    scx: &ServerContext,
    limits: crate::model::QueueLimits,
    stats: &Arc<crate::health::BrokerStats>,
) -> Arc<Queues> {
    let queues = Arc::new(Queues::new(limits, stats.clone()));
    let register = scx.extends.hook_mgr().register();
    for t in HOOKS {
        register.add(t, Box::new(Hook(queues.clone()))).await;
    }
    register.start().await;
    tokio::spawn(run(scx.clone(), queues.clone()));
    queues
}

/// Every second until the broker's runtime ends: take marked QoS 0 messages out, and
/// hold connected clients' queues to `max_queued_bytes`.
async fn run(scx: ServerContext, queues: Arc<Queues>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        queues.purge_all();
        for s in queues.due_for_renewal() {
            if super::renew::renew(&scx, &queues, &s).await {
                queues.stats.offline.renewed.fetch_add(1, Relaxed);
                debug!(client = ?s.id.client_id, "Offline session made anew.");
            }
        }
        let sessions: Vec<Session> = {
            let shared = scx.extends.shared().await;
            shared
                .iter()
                .filter_map(|e| e.session())
                .filter(|s| !s.deliver_queue().is_empty())
                .collect()
        };
        for s in sessions {
            if !queues.holds(&s) && s.connected().await.unwrap_or(false) {
                queues.bound_online(&s);
            }
        }
    }
}
