//! Between rmqtt's state and the store's records: what is taken for a snapshot, and how it
//! goes back in (before the listener opens).
//!
//! Sessions are re-created through rmqtt's public API as the offline sessions they were:
//! `Session::new`, then `SessionState::offline_restart` (rmqtt's own offline event loop,
//! which queues what is published meanwhile), registered with `Entry::set` and subscribed
//! with `Entry::subscribe`. When the client comes back with `clean session` off, rmqtt
//! hands the session over as it does for any offline session (session present = 1).

use std::time::Duration;

use rmqtt::{
    codec::v5::{PublishProperties, RetainHandling},
    context::ServerContext,
    inflight::MomentStatus,
    session::Session,
    types::{
        CodecPublish, ConnectInfo, From, FromType, Id, ListenerConfig, Publish, QoS, Retain,
        SubOptionsV3, SubOptionsV5, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    },
};
use tracing::{debug, warn};

use super::format::{Message, Origin, Props, SessionRec, Snapshot, Sub, SubV5};
use crate::{
    broker::queues::{offline_session, Offline, Queues},
    topics::LiveContract,
};

/// What of the broker's state belongs to clients: the gateway republishes its own topics
/// itself, and must never publish a stale value.
pub(crate) struct Keep {
    pub(crate) gateway_client_id: String,
    pub(crate) contract: LiveContract,
}

impl Keep {
    /// Whether a retained message on `topic` from `from` is a client's, to be kept.
    fn retained(&self, topic: &str, from: &From) -> bool {
        matches!(from.typ(), FromType::Custom | FromType::LastWill)
            && *from.id.client_id != *self.gateway_client_id
            && self.topic(topic)
    }

    /// Whether `topic` may hold a client's retained message: a valid topic name that is
    /// not the gateway's (`$` topics are the broker's).
    fn topic(&self, topic: &str) -> bool {
        !topic.is_empty()
            && !topic.starts_with('$')
            && !topic.contains(['+', '#', '\0'])
            && !self.contract.get().protects(topic)
    }
}

fn now_ms() -> i64 {
    rmqtt::utils::timestamp_millis()
}

fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn message(from: &From, p: &Publish) -> Message {
    Message {
        topic: p.topic.as_bytes().clone(),
        payload: p.payload.clone(),
        qos: qos_u8(p.qos),
        retain: p.retain,
        origin: Origin {
            kind: match from.typ() {
                FromType::Custom => 0,
                FromType::LastWill => 1,
                _ => 2,
            },
            client_id: from.id.client_id.as_bytes().clone(),
            user: from.id.username.as_ref().map(|u| u.as_bytes().clone()),
        },
        created_ms: p.create_time.unwrap_or_else(now_ms),
        props: p.properties.as_ref().map(|pp| {
            Box::new(Props {
                expiry_s: pp.message_expiry_interval.map(std::num::NonZeroU32::get),
                content_type: pp.content_type.as_ref().map(ToString::to_string),
                response_topic: pp.response_topic.as_ref().map(ToString::to_string),
                correlation: pp.correlation_data.clone(),
                utf8: pp.is_utf8_payload,
                user: pp
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        }),
    }
}

/// Checked UTF-8 (by the reader) as rmqtt's string type; anything else would be lossy.
fn text(b: bytes::Bytes) -> TopicName {
    TopicName::try_from(b.clone())
        .unwrap_or_else(|_| TopicName::from(String::from_utf8_lossy(&b).into_owned()))
}

fn publish(scx: &ServerContext, m: Message) -> (From, Publish) {
    let id = Id::new(
        scx.node.id(),
        0,
        None,
        None,
        text(m.origin.client_id),
        m.origin.user.map(text),
    );
    let from = if m.origin.kind == 1 {
        From::from_lastwill(id)
    } else {
        From::from_custom(id)
    };
    let properties = m.props.map(|p| PublishProperties {
        topic_alias: None,
        correlation_data: p.correlation,
        message_expiry_interval: p.expiry_s.and_then(std::num::NonZeroU32::new),
        content_type: p.content_type.map(Into::into),
        user_properties: p
            .user
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        is_utf8_payload: p.utf8,
        response_topic: p.response_topic.map(Into::into),
        subscription_ids: Vec::new(),
    });
    let p: Publish = CodecPublish {
        dup: false,
        retain: m.retain,
        qos: qos_of(m.qos),
        topic: text(m.topic),
        packet_id: None,
        payload: m.payload,
        properties,
    }
    .into();
    (from, p.create_time(m.created_ms))
}

/// Whether `s` outlives its connection, and for how long after it ends.
pub(crate) async fn persistent_expiry(s: &Session) -> Option<Duration> {
    let disconnect = s.disconnect().await.ok().flatten();
    let expiry = s.fitter.session_expiry_interval(disconnect.as_ref());
    match s.connect_info().await.ok()?.as_ref() {
        ConnectInfo::V3(_, c) if c.clean_session => None,
        _ if expiry.is_zero() => None,
        _ => Some(expiry),
    }
}

/// Take what clients stored: their retained messages (on `client_topics`, the topics
/// the clients' retained bound counts; the gateway's own thousands are never read) and
/// persistent sessions (the gateway's own topics and the broker's `$SYS` are left out).
/// Marked QoS 0 messages are taken out of the queues first.
pub(crate) async fn snapshot(
    scx: &ServerContext,
    keep: &Keep,
    queues: &Queues,
    client_topics: Vec<String>,
) -> Snapshot {
    queues.purge_all();
    let mut snap = Snapshot {
        saved_ms: now_ms(),
        ..Snapshot::default()
    };
    let retain = scx.extends.retain().await;
    for topic in client_topics {
        // A client's topic name holds no wildcard (the front refuses them): as a filter
        // it matches itself alone.
        match retain.get(&TopicFilter::from(topic.as_str())).await {
            Ok(found) => snap.retained.extend(
                found
                    .iter()
                    .filter(|(t, r)| keep.retained(t, &r.from))
                    .map(|(_, r)| message(&r.from, &r.publish)),
            ),
            Err(e) => {
                warn!(error = %e, "Retained messages not read for the store.");
                break;
            }
        }
    }
    let sessions: Vec<Session> = {
        let shared = scx.extends.shared().await;
        shared.iter().filter_map(|e| e.session()).collect()
    };
    for s in sessions {
        if *s.id.client_id == *keep.gateway_client_id {
            continue;
        }
        if let Some(rec) = session(&s).await {
            snap.sessions.push(rec);
        }
    }
    snap
}

/// One persistent session as a record: identity and owner, subscriptions, expiry, and
/// its messages (those in flight that the client has not received for sure, then the
/// queue), oldest first.
async fn session(s: &Session) -> Option<SessionRec> {
    let expiry = persistent_expiry(s).await?;
    let connected = s.connected().await.unwrap_or(false);
    let since = if connected {
        now_ms()
    } else {
        s.disconnected_at().await.unwrap_or_else(|_| now_ms())
    };
    let mut rec = SessionRec {
        client_id: s.id.client_id.to_string(),
        user: s.id.username.as_ref().map(ToString::to_string),
        created_ms: s.created_at().await.unwrap_or_else(|_| now_ms()),
        expires_ms: since.saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX)),
        ..SessionRec::default()
    };
    if let Ok(subs) = s.subscriptions().await {
        for (tf, opts) in subs.read().await.iter() {
            rec.subs.push(sub(tf, opts));
        }
    }
    for m in s.out_inflight().write().await.clone_inflight_messages() {
        // UnComplete: the client has the message (PUBREC came); only PUBREL was owed.
        if m.status != MomentStatus::UnComplete {
            rec.messages.push(message(&m.from, &m.publish));
        }
    }
    // Popped and pushed back at once, with no `.await` between: nothing else runs on the
    // broker's thread meanwhile.
    let q = s.deliver_queue();
    for _ in 0..q.len() {
        let Some((from, p)) = q.pop() else {
            break;
        };
        rec.messages.push(message(&from, &p));
        if let Err(back) = q.push((from, p)) {
            drop(back);
        }
    }
    Some(rec)
}

fn sub(tf: &TopicFilter, opts: &SubscriptionOptions) -> Sub {
    Sub {
        filter: tf.to_string(),
        qos: qos_u8(opts.qos()),
        v5: match opts {
            SubscriptionOptions::V3(_) => None,
            SubscriptionOptions::V5(o) => Some(SubV5 {
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                retain_handling: u8::from(o.retain_handling),
                id: o.id.map(std::num::NonZeroU32::get),
            }),
        },
    }
}

fn sub_options(s: &Sub) -> SubscriptionOptions {
    let qos = qos_of(s.qos);
    match &s.v5 {
        None => SubscriptionOptions::V3(SubOptionsV3 { qos }),
        Some(v) => SubscriptionOptions::V5(SubOptionsV5 {
            qos,
            no_local: v.no_local,
            retain_as_published: v.retain_as_published,
            retain_handling: match v.retain_handling {
                0 => RetainHandling::AtSubscribe,
                1 => RetainHandling::AtSubscribeNew,
                _ => RetainHandling::NoAtSubscribe,
            },
            id: v.id.and_then(std::num::NonZeroU32::new),
        }),
    }
}

/// What was restored; the owners of the sessions for whoever needs them (a session
/// belongs to the user who made it).
#[derive(Debug, Default)]
pub struct Restored {
    /// Retained messages put back.
    pub retained: usize,
    /// Sessions re-created, with their owners: `(client id, user name)`.
    pub owners: Vec<(String, Option<String>)>,
    /// Queued messages put back into them.
    pub messages: usize,
}

/// How restoring checks what it puts back.
pub(crate) struct RestoreRules<'a> {
    pub(crate) keep: &'a Keep,
    /// The settings of the listener sessions are re-created under.
    pub(crate) listen_cfg: ListenerConfig,
    /// Its id.
    pub(crate) listener_id: u16,
    /// Most sessions re-created (the newest by expiry first).
    pub(crate) max_sessions: usize,
    /// The clients' retained bound: `(topic, bytes)` → whether it is admitted.
    pub(crate) admit_retained: &'a dyn Fn(&str, usize) -> bool,
    /// Whether the owner (user, client id) may still subscribe to the filter.
    pub(crate) may_subscribe: &'a dyn Fn(Option<&str>, &str, &str) -> bool,
}

/// Put `snap` back into `scx`: retained messages into the retained store, sessions as
/// offline sessions, held within the queue bounds by `queues`.
pub(crate) async fn restore(
    scx: &ServerContext,
    mut snap: Snapshot,
    rules: &RestoreRules<'_>,
    queues: &Queues,
) -> Restored {
    let mut done = Restored::default();
    let retain = scx.extends.retain().await;
    for m in std::mem::take(&mut snap.retained) {
        let topic = text(m.topic.clone());
        if m.payload.is_empty()
            || !rules.keep.topic(&topic)
            || !(rules.admit_retained)(&topic, m.payload.len())
        {
            continue;
        }
        let (from, mut publish) = publish(scx, m);
        publish.retain = true;
        let r = Retain {
            msg_id: None,
            from,
            publish,
        };
        match retain.set(&topic, r, None).await {
            Ok(()) => done.retained += 1,
            Err(e) => debug!(error = %e, topic = ?topic, "Stored retained message not restored."),
        }
    }
    drop(retain);
    let now = now_ms();
    snap.sessions
        .retain(|s| s.expires_ms > now && s.client_id != rules.keep.gateway_client_id);
    snap.sessions
        .sort_by_key(|s| std::cmp::Reverse(s.expires_ms));
    snap.sessions.truncate(rules.max_sessions);
    for rec in snap.sessions {
        let (client_id, user) = (rec.client_id.clone(), rec.user.clone());
        match session_back(scx, rec, rules, queues, now).await {
            Ok(n) => {
                done.messages += n;
                done.owners.push((client_id, user));
            }
            Err(e) => warn!(client = ?client_id, error = %e, "Stored session not restored."),
        }
    }
    done
}

/// Re-create one offline session; the messages it holds.
async fn session_back(
    scx: &ServerContext,
    rec: SessionRec,
    rules: &RestoreRules<'_>,
    queues: &Queues,
    now: i64,
) -> rmqtt::Result<usize> {
    let spec = Offline {
        client_id: &rec.client_id,
        user: rec.user.as_deref(),
        created_ms: rec.created_ms,
        expiry: Duration::from_millis(u64::try_from(rec.expires_ms - now).unwrap_or(0)),
        listen_cfg: rules.listen_cfg.clone(),
        listener_id: rules.listener_id,
    };
    let (session, tx) = offline_session(scx, &spec).await?;
    let mut queued = 0;
    for m in rec.messages {
        let (from, mut p) = publish(scx, m);
        p.dup = false;
        if session.deliver_queue().push((from, p)).is_err() {
            break;
        }
        queued += 1;
    }
    queues.track(&session);
    let mut entry = scx.extends.shared().await.entry(session.id.clone());
    entry.set(session.clone(), tx).await?;
    let user = rec.user.as_deref();
    for s in &rec.subs {
        if !(rules.may_subscribe)(user, &rec.client_id, &s.filter) {
            debug!(client = ?rec.client_id, filter = ?s.filter, "Stored subscription no longer allowed; not restored.");
            continue;
        }
        let sub = Subscribe {
            topic_filter: TopicFilter::from(s.filter.clone()),
            opts: sub_options(s),
        };
        entry.subscribe(&sub).await?;
    }
    Ok(queued.min(session.deliver_queue().len()))
}
