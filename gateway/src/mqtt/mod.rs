//! MQTT: the gateway's two client sides and the upstream queue between them and the disk.
//!
//! ```text
//!   bus tasks ──batches──▶ fanout ─┬─▶ embedded ──broker::Link──▶ embedded broker (rmqtt)
//!                                  └─▶ upstream ──▶ queue (disk) ──rumqttc──▶ cloud broker
//! ```
//!
//! - `embedded`: the in-process side of the embedded broker (`crate::broker`, which
//!   stays where it is): keeps the last retained state and republishes it into every
//!   broker that starts serving; commands come in through the broker's rights check.
//! - `upstream`: the rumqttc client of the upstream (cloud) broker: connection options
//!   and TLS, the event-loop driver with its jittered reconnect backoff, command intake
//!   from upstream, and publishing from the queue with packet-id bookkeeping.
//! - `queue`: the disk-backed store-and-forward queue ([`Spool`]): a message leaves it
//!   only when the upstream broker acknowledged it.
//!
//! With both brokers configured, `fanout` hands every batch to both sides; either side
//! alone reads the bus tasks' channel directly.

mod embedded;
mod queue;
pub(crate) mod upstream;

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::publish::Batch;

pub use embedded::run_client;
pub use queue::{Spool, SpoolError};
pub use upstream::{run_upstream, UpstreamError};

/// Every batch to both MQTT sides (embedded and upstream), until `rx` is closed.
pub(crate) async fn fanout(
    mut rx: mpsc::Receiver<Batch>,
    embedded: mpsc::Sender<Batch>,
    upstream: mpsc::Sender<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        let _ = embedded.send(batch.clone()).await;
        let _ = upstream.send(batch).await;
    }
}

/// Record the last retained payload of `topic` (republished into every new embedded
/// broker and after every upstream connect), reusing the buffers of the previous value.
pub(crate) fn remember(
    retained: &mut HashMap<String, (Vec<u8>, u8)>,
    topic: &str,
    payload: &[u8],
    qos: u8,
) {
    // An empty retained message clears the topic: nothing to republish.
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

/// Replace a remembered payload and QoS, reusing its buffer.
pub(crate) fn overwrite(last: &mut (Vec<u8>, u8), payload: &[u8], qos: u8) {
    last.0.clear();
    last.0.extend_from_slice(payload);
    last.1 = qos;
}

/// How long after Home Assistant's `online` the configs go out again: 1 to 3 s, varied
/// so that several gateways on one broker do not answer at the same moment.
pub(crate) fn ha_delay() -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_millis(1000 + u64::from(nanos % 2000))
}

pub(crate) async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
