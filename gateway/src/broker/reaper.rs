//! Sessions whose client vanished during the handshake.
//!
//! rmqtt 0.24 registers a session before it sends the CONNACK; when that send fails
//! (the client reset the connection right after its CONNECT, as an ESP on flaky Wi-Fi
//! does) the connection task ends but the session stays registered. Each one counts
//! against `max_connections` until the broker refuses every client (seen here: 1000
//! connections reset after CONNECT left 61 such sessions and locked everyone out for
//! good). Such a session is recognisable: its message channel has no receiver any more,
//! which a live session (connected, or offline with a persistent session) always has.
//! This task removes them every second.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use rmqtt::{context::ServerContext, types::Id};

use super::policy::Online;
use crate::health::BrokerStats;

/// How often orphaned sessions are looked for.
pub(crate) const REAP_EVERY: Duration = Duration::from_secs(1);

/// Remove every orphaned session now; returns how many.
pub(crate) async fn reap(scx: &ServerContext, stats: &BrokerStats, online: &Online) -> usize {
    let orphans: Vec<Id> = {
        let shared = scx.extends.shared().await;
        shared
            .iter()
            .filter(|e| e.tx().is_some_and(|t| t.is_closed()))
            .map(|e| e.id())
            .collect()
    };
    let mut removed = 0;
    for id in orphans {
        let entry = scx.extends.shared().await.entry(id.clone());
        let Ok(mut locked) = entry.try_lock().await else {
            continue;
        };
        // Still orphaned under the lock (a new connection may have taken the id).
        if locked.tx().is_some_and(|t| t.is_closed())
            && matches!(locked.remove_with(&id).await, Ok(Some(_)))
        {
            removed += 1;
            online.remove(&id, stats);
            tracing::debug!(client = ?&*id.client_id, "Orphaned session removed.");
        }
    }
    removed
}

/// Keep at most `max` offline persistent sessions: the oldest beyond it are removed, so
/// that clients connecting with fresh ids and `clean session` off cannot grow the memory
/// without bound (each may hold queued messages).
pub(crate) async fn evict_offline(scx: &ServerContext, max: usize) -> usize {
    let entries: Vec<Box<dyn rmqtt::shared::Entry>> = {
        let shared = scx.extends.shared().await;
        shared
            .iter()
            .filter(|e| e.tx().is_some_and(|t| !t.is_closed()))
            .collect()
    };
    let mut offline = Vec::new();
    for e in entries {
        if !e.is_connected().await {
            offline.push(e.id());
        }
    }
    if offline.len() <= max {
        return 0;
    }
    offline.sort_by_key(|id| id.create_time);
    let extra = offline.len() - max;
    let mut removed = 0;
    for id in offline.into_iter().take(extra) {
        let entry = scx.extends.shared().await.entry(id.clone());
        if let Ok(mut locked) = entry.try_lock().await {
            if !locked.is_connected().await && matches!(locked.remove_with(&id).await, Ok(Some(_)))
            {
                removed += 1;
                tracing::debug!(client = ?&*id.client_id, "Oldest offline session removed.");
            }
        }
    }
    removed
}

/// Connections served since the last heap trim that make another one worthwhile.
const TRIM_AFTER_CONNECTS: u64 = 20;

/// Reap until the broker's runtime ends. After a burst of connections (a storm of
/// reconnecting clients, or an attack) the freed connection buffers are given back to
/// the kernel, so the resident set returns to where it was.
pub(crate) async fn run(
    scx: ServerContext,
    stats: Arc<BrokerStats>,
    online: Arc<Online>,
    max_offline: usize,
) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    let mut trimmed_at = 0u64;
    loop {
        tick.tick().await;
        let reaped = reap(&scx, &stats, &online).await + evict_offline(&scx, max_offline).await;
        let connects = stats.connects.load(Relaxed) + stats.refused_logins.load(Relaxed);
        if reaped > 0 || connects >= trimmed_at + TRIM_AFTER_CONNECTS {
            trimmed_at = connects;
            crate::trim_heap();
        }
    }
}
