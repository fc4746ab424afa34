//! The upstream (cloud) broker: every message goes through the disk-backed
//! [`Spool`] and leaves it only when the broker acknowledged it.
//!
//! The parts:
//!
//! - `connection.rs`: rumqttc's options ([`options`]: persistent session, Last Will,
//!   credentials) and the rustls configuration ([`tls_config`]).
//! - `eventloop.rs`: rumqttc's event loop in a task of its own (its `poll` must never be
//!   cancelled), reporting connects, writes, acknowledgements, messages and losses, and
//!   reconnecting with exponential backoff and full jitter.
//! - `publisher.rs`: this task's state; it owns the queue and tells which queued message
//!   each packet id carries: rumqttc reports every publish it writes
//!   (`Outgoing::Publish(pkid)`) in the order it was asked for. When the connection drops,
//!   rumqttc's own retransmission list is emptied and the queue sends whatever was not
//!   acknowledged again, in order: rumqttc alone would drop those messages when the broker
//!   has no session.
//! - `session.rs`: what each event changes, and the connect and loss logs.
//! - `commands.rs`: commands from upstream (`accept_commands`).
//! - this file: the task itself ([`run_upstream`]): the queue's batched disk writes on
//!   the blocking pool, the diagnostics tick, and the shutdown.
//!
//! After every connect: `online` on the status topic, the commands subscription, the
//! backlog at `replay_rate`, then the retained state of every topic once caught up.

mod commands;
mod connection;
mod eventloop;
mod publisher;
mod session;

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use rumqttc::{AsyncClient, QoS};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

pub use connection::options;

use eventloop::{disconnect, spawn_eventloop, Link};
use publisher::Up;

use super::{
    queue::{FlushDone, Spool, SpoolError},
    retained::{Intake, Retained},
};
use crate::{commands::Router, health::Stats, model::Model, model::Upstream};

/// Messages handed to the connection and not yet acknowledged, at most.
const WINDOW: usize = 256;

/// Bytes waiting in memory that trigger a write before the flush interval.
const FLUSH_BYTES: u64 = 1 << 20;

/// Why the upstream connection could not be set up.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// The TLS settings were refused by rustls.
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] SpoolError),
}

/// Open the queue of `u` (before anything starts, so a bad directory stops the gateway).
pub fn open_queue(u: &Upstream) -> Result<Spool, UpstreamError> {
    Ok(Spool::open(&u.queue.dir, u.queue.max_size)?)
}

/// The queue's disk write under way on tokio's blocking pool (one at a time).
#[derive(Default)]
struct Writes {
    job: Option<JoinHandle<FlushDone>>,
}

impl Writes {
    fn busy(&self) -> bool {
        self.job.is_some()
    }

    /// Start the next write of `spool`, unless one is under way or there is nothing to do.
    fn start(&mut self, spool: &mut Spool) {
        if self.job.is_none() {
            self.job = spool
                .flush_job()
                .map(|j| tokio::task::spawn_blocking(move || j.run()));
        }
    }

    /// The outcome of the write under way (pending for ever when there is none).
    async fn done(&mut self) -> Option<FlushDone> {
        let Some(job) = self.job.as_mut() else {
            return std::future::pending().await;
        };
        let done = job.await;
        self.job = None;
        match done {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "Upstream queue write task failed.");
                None
            }
        }
    }
}

/// Run the upstream link until `intake` is closed; then write the queue to disk, publish
/// `offline` and disconnect. `current` follows the model in force (a reload changes
/// discovery configs); `retained` is the retained state shared with the embedded side.
pub(crate) async fn run_upstream(
    (model, current): (Arc<Model>, Option<tokio::sync::watch::Receiver<Arc<Model>>>),
    spool: Spool,
    (mut intake, retained): (Intake, Arc<Retained>),
    stats: Arc<Stats>,
    router: Option<Router>,
) -> Result<(), UpstreamError> {
    let Some(u) = model.mqtt.upstream.clone() else {
        return Ok(());
    };
    let (client, eventloop) = AsyncClient::new(options(&model, &u)?, WINDOW * 2 + 64);
    stats.upstream.enabled.store(true, Relaxed);
    let recovered = spool.depth();
    if recovered > 0 {
        info!(messages = recovered, dir = %u.queue.dir.display(), "Upstream queue recovered from disk.");
    }
    let (link_tx, mut link) = mpsc::unbounded_channel();
    spawn_eventloop(eventloop, link_tx);
    let mut up = Up::new(
        client,
        spool,
        stats,
        (model, current),
        (&u, retained),
        router,
    );
    let mut flush = tokio::time::interval(u.queue.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut writes = Writes::default();
    let mut rate_wait: Option<Duration> = None;
    loop {
        let wait = rate_wait.unwrap_or(Duration::from_secs(3600));
        let birth = up.follow.birth_at();
        tokio::select! {
            ev = link.recv() => match ev {
                // Several events usually wait: take them before sending more.
                Some(l) => {
                    if !up.on_links(l, &mut link) {
                        break;
                    }
                }
                None => break,
            },
            batch = intake.recv() => match batch {
                Some(stamped) => {
                    up.follow_routes();
                    for m in stamped.batch {
                        up.push(m);
                    }
                    if up.spool.mem_bytes() > FLUSH_BYTES {
                        writes.start(&mut up.spool);
                    }
                }
                None => break,
            },
            _ = flush.tick(), if !writes.busy() => writes.start(&mut up.spool),
            done = writes.done(), if writes.busy() => {
                if let Some(d) = done {
                    up.spool.flush_done(d);
                }
            },
            _ = tick.tick() => {
                up.follow_routes();
                up.publish_stats();
            }
            () = crate::mqtt::sleep_until(birth), if birth.is_some() => {
                up.follow.birth_taken();
                up.configs_due = true;
            }
            () = up.follow.changed() => up.follow_model(),
            () = tokio::time::sleep(wait), if rate_wait.is_some() => {},
        }
        rate_wait = up.pump();
    }
    shutdown(up, writes, &mut link).await;
    Ok(())
}

/// Nothing unacknowledged may be lost, so the queue is written first; then `offline` and
/// a clean DISCONNECT, within 3 s.
async fn shutdown(mut up: Up, mut writes: Writes, link: &mut mpsc::UnboundedReceiver<Link>) {
    if writes.busy() {
        if let Some(d) = writes.done().await {
            up.spool.flush_done(d);
        }
    }
    let mut spool = up.spool;
    let spool_back = tokio::task::spawn_blocking(move || {
        spool.flush_blocking();
        spool
    })
    .await;
    if let Ok(spool) = spool_back {
        let depth = spool.depth();
        if depth > 0 {
            info!(
                messages = depth,
                "Upstream queue kept on disk for the next start."
            );
        }
    }
    if up.connected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let _ = up.client.try_publish(
            up.status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            b"offline".to_vec(),
        );
        disconnect(&up.client, link, deadline).await;
        info!("Upstream disconnected.");
    }
}

/// [`run_upstream`] as a task of its own: an error is logged.
pub(crate) async fn run_logged(
    model: (Arc<Model>, Option<tokio::sync::watch::Receiver<Arc<Model>>>),
    spool: Spool,
    intake: (Intake, Arc<Retained>),
    stats: Arc<Stats>,
    router: Option<Router>,
) {
    if let Err(e) = run_upstream(model, spool, intake, stats, router).await {
        tracing::error!(error = %e, "Upstream link stopped.");
    }
}
