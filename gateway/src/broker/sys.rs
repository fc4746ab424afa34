//! `$SYS/broker/...` topics as Mosquitto publishes them (retained, every `sys_interval`), so the
//! tutorials and dashboards our users know work unchanged.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use rmqtt::{
    codec::v5::PublishProperties,
    context::ServerContext,
    session::SessionState,
    types::{ClientId, CodecPublish, From, Id, Publish, QoS, TopicName, UserName},
};

use crate::health::BrokerStats;

async fn put(scx: &ServerContext, topic: &str, payload: String) {
    let from = From::from_system(Id::new(
        scx.node.id(),
        0,
        None,
        None,
        ClientId::from_static("$SYS"),
        Some(UserName::from_static("$SYS")),
    ));
    let p = CodecPublish {
        dup: false,
        retain: true,
        qos: QoS::AtMostOnce,
        topic: TopicName::from(topic.to_string()),
        packet_id: None,
        payload: Bytes::from(payload),
        properties: Some(PublishProperties::default()),
    };
    let p: Publish = p.into();
    if let Err(e) = SessionState::forwards(scx, from, p, false, None).await {
        tracing::debug!(error = %e, topic, "$SYS publish failed.");
    }
}

/// Publish the `$SYS` topics until the broker's runtime ends.
pub(crate) async fn publish(scx: ServerContext, stats: Arc<BrokerStats>, every: Duration) {
    let started = Instant::now();
    put(
        &scx,
        "$SYS/broker/version",
        format!("fieldlink {} (rmqtt)", env!("CARGO_PKG_VERSION")),
    )
    .await;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let retained = scx.extends.retain().await.count().await.max(0);
        let subscriptions = scx.extends.router().await.routes().count().max(0);
        stats.subscriptions.store(subscriptions as i64, Relaxed);
        let values = [
            ("uptime", format!("{} seconds", started.elapsed().as_secs())),
            (
                "clients/connected",
                stats.clients.load(Relaxed).max(0).to_string(),
            ),
            ("clients/total", stats.connects.load(Relaxed).to_string()),
            (
                "messages/received",
                stats.messages_received.load(Relaxed).to_string(),
            ),
            (
                "messages/sent",
                stats.messages_sent.load(Relaxed).to_string(),
            ),
            ("retained messages/count", retained.to_string()),
            ("subscriptions/count", subscriptions.to_string()),
            (
                "clients/refused",
                stats.refused_logins.load(Relaxed).to_string(),
            ),
        ];
        for (t, v) in values {
            put(&scx, &format!("$SYS/broker/{t}"), v).await;
        }
    }
}
