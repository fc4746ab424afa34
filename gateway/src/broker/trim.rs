//! Memory given back: glibc keeps freed heap pages in the process, so after a client
//! with thousands of subscriptions left, offline sessions were discarded or retained
//! messages cleared, the resident set would stay where it was. This task trims the heap
//! once that much was released.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use rmqtt::context::ServerContext;

use super::policy::ClientRetained;
use crate::health::BrokerStats;

/// Subscriptions released since the last trim that make another one worthwhile.
const TRIM_AFTER_ROUTES: isize = 1_000;
/// Bytes no longer held (clients' retained messages, offline queues) since the last trim
/// that make another one worthwhile.
const TRIM_AFTER_BYTES: u64 = 1024 * 1024;

/// Until the broker's runtime ends: every second, compare what the broker holds with its
/// high-water mark since the last trim, and trim when enough was released.
pub(crate) async fn give_back(
    scx: ServerContext,
    retained: Arc<ClientRetained>,
    stats: Arc<BrokerStats>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut high_routes, mut high_bytes) = (0isize, 0u64);
    loop {
        tick.tick().await;
        let routes = scx.extends.router().await.routes().count();
        let bytes = retained.bytes() as u64 + stats.offline.bytes.load(Relaxed);
        high_routes = high_routes.max(routes);
        high_bytes = high_bytes.max(bytes);
        if high_routes - routes >= TRIM_AFTER_ROUTES || high_bytes - bytes >= TRIM_AFTER_BYTES {
            crate::trim_heap();
            (high_routes, high_bytes) = (routes, bytes);
        }
    }
}
