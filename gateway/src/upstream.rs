//! The upstream (cloud) broker: every message goes through the disk-backed
//! [`Spool`](crate::spool::Spool) and leaves it only when the broker acknowledged it.
//!
//! rumqttc's event loop runs in a task of its own (its `poll` must never be cancelled). This
//! task owns the queue and tells which queued message each packet id carries: rumqttc
//! reports every publish it writes (`Outgoing::Publish(pkid)`) in the order it was asked
//! for. When the connection drops, rumqttc's own retransmission list is emptied and the
//! queue sends whatever was not acknowledged again, in order: rumqttc alone would drop
//! those messages when the broker has no session.
//!
//! After every connect: `online` on the status topic, the commands subscription, the
//! backlog at `replay_rate`, then the retained state of every topic once caught up.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS, Request, SubscribeFilter, TlsConfiguration, Transport,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    commands::Router,
    health::Stats,
    model::{Model, Tls, Upstream},
    mqtt::{self, qos, remember},
    publish::{Batch, Outgoing},
    spool::{FlushDone, Spool},
};

/// Messages handed to the connection and not yet acknowledged, at most.
const WINDOW: usize = 256;

/// Packet ids rumqttc cycles through: far more than [`WINDOW`], so an id is never reused
/// while its message waits for its acknowledgement.
const PKID_RANGE: u16 = 4096;

/// Longest wait between connection attempts (before jitter halves it at random).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    Queue(#[from] crate::spool::SpoolError),
}

/// The rustls client configuration (ring as the crypto provider).
pub fn tls_config(t: &Tls) -> Result<rustls::ClientConfig, UpstreamError> {
    let err = |e: &dyn std::fmt::Display| UpstreamError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(UpstreamError::Tls(
                    "no trusted root certificates on this system: set `ca_file`".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots);
    match &t.client {
        Some((cert, key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert).collect();
            let key = PrivateKeyDer::from_pem_slice(key.0.as_bytes()).map_err(|e| err(&e))?;
            builder
                .with_client_auth_cert(chain.map_err(|e| err(&e))?, key)
                .map_err(|e| err(&e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Connection options for the upstream broker.
pub fn options(model: &Model, u: &Upstream) -> Result<MqttOptions, UpstreamError> {
    let mut o = MqttOptions::new(u.client_id.clone(), u.host.clone(), u.port);
    o.set_keep_alive(u.keepalive);
    // A persistent session: the broker keeps the subscription (and the packet ids it
    // still expects) across reconnects.
    o.set_clean_session(false);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(PKID_RANGE);
    if let Some(user) = &u.username {
        let pw = u.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        o.set_credentials(user.clone(), pw);
    }
    if let Some(t) = &u.tls {
        let cfg = tls_config(t)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(cfg))));
    }
    o.set_last_will(LastWill::new(
        format!("{}{}", u.prefix, model.status_topic()),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

enum Link {
    Connected,
    /// A publish was written with this packet id (0 for QoS 0).
    Written(u16),
    /// The broker acknowledged this packet id (PUBACK).
    Acked(u16),
    Message(String, Vec<u8>),
    /// The connection dropped; `unwritten` publishes were still in rumqttc's request
    /// channel and were discarded with its retransmission list.
    Lost {
        error: String,
        refused: bool,
        unwritten: usize,
    },
    Closed,
}

/// Describe a connection error for a person.
fn explain(e: &ConnectionError) -> (String, bool) {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => (
            "broker refused the connection: bad user name or password".into(),
            true,
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => (
            "broker refused the connection: not authorized (wrong user name or password, or this user or client id is not allowed)".into(),
            true,
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            ("broker refused the connection: client id rejected".into(), true)
        }
        ConnectionError::ConnectionRefused(c) => {
            (format!("broker refused the connection: {c:?}"), true)
        }
        ConnectionError::Tls(t) => (format!("TLS: {t}"), false),
        other => (other.to_string(), false),
    }
}

/// The bookkeeping events among rumqttc's events.
fn translate(ev: Event) -> Option<Link> {
    match ev {
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Some(Link::Written(pkid)),
        Event::Incoming(Packet::PubAck(a)) => Some(Link::Acked(a.pkid)),
        _ => None,
    }
}

/// Drive rumqttc's event loop; reconnects with exponential backoff and full jitter.
fn spawn_eventloop(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Link>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9) | 1;
        let mut up_since: Option<Instant> = None;
        loop {
            if tx.is_closed() {
                return;
            }
            let ev = eventloop.poll().await;
            if ev.is_err() {
                // rumqttc may still hold events of the dead connection (a publish it wrote
                // just before the write failed): report them before the loss, in order.
                let stale: Vec<Event> = eventloop.state.events.drain(..).collect();
                for ev in stale {
                    if let Some(l) = translate(ev) {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                }
            }
            let link = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    up_since = Some(Instant::now());
                    Link::Connected
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::AwaitAck(pkid))) => {
                    // Cannot happen with PKID_RANGE ≫ WINDOW; the message then waits in
                    // rumqttc and the bookkeeping below would be off by one.
                    warn!(pkid, "Upstream packet id collision.");
                    continue;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    Link::Message(p.topic, p.payload.to_vec())
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    let _ = tx.send(Link::Closed);
                    return;
                }
                Ok(other) => match translate(other) {
                    Some(l) => l,
                    None => continue,
                },
                Err(e) => {
                    // Our queue sends again whatever was not acknowledged: empty rumqttc's
                    // retransmission list (keeping QoS 2 releases and subscriptions).
                    let mut unwritten = 0;
                    eventloop.pending.retain(|r| match r {
                        Request::Publish(p) => {
                            if p.pkid == 0 {
                                unwritten += 1;
                            }
                            false
                        }
                        _ => true,
                    });
                    let (error, refused) = explain(&e);
                    if tx
                        .send(Link::Lost {
                            error,
                            refused,
                            unwritten,
                        })
                        .is_err()
                    {
                        return;
                    }
                    if up_since
                        .take()
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(30))
                    {
                        backoff = Duration::from_millis(250);
                    }
                    let ms = backoff.as_millis() as u64;
                    let wait =
                        Duration::from_millis(ms / 2) + crate::mqtt::jitter(&mut seed, ms / 2 + 1);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if tx.send(link).is_err() {
                return;
            }
        }
    });
}

/// Token bucket of the replay rate.
struct Rate {
    per_s: u32,
    tokens: f64,
    at: Instant,
}

impl Rate {
    /// Take one token, or say how long until there is one.
    fn take(&mut self) -> Result<(), Duration> {
        if self.per_s == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let rate = f64::from(self.per_s);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate)
            .min((rate / 10.0).max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

struct Up {
    client: AsyncClient,
    spool: Spool,
    stats: Arc<Stats>,
    qos: u8,
    prefix: String,
    status_topic: String,
    /// Publishes asked of rumqttc and not yet reported written: the queue's sequence
    /// number, or `None` for messages not from the queue (status, retained state).
    requested: VecDeque<Option<u64>>,
    /// Written, waiting for the broker's acknowledgement.
    by_pkid: HashMap<u16, Option<u64>>,
    connected: bool,
    online_due: bool,
    state_due: bool,
    state: Vec<(String, Vec<u8>, u8)>,
    /// Last retained payload and QoS per topic (prefix included).
    retained: HashMap<String, (Vec<u8>, u8)>,
    /// Messages queued before this connect are a backlog, sent at the replay rate.
    replay_mark: u64,
    rate: Rate,
    acked_last: u64,
}

impl Up {
    fn outstanding(&self) -> usize {
        self.requested.len() + self.by_pkid.len()
    }

    fn push(&mut self, m: Outgoing) {
        let topic = format!("{}{}", self.prefix, m.topic);
        if m.retain {
            remember(&mut self.retained, &topic, &m.payload, self.qos);
        }
        self.spool.push(topic, m.payload, self.qos, m.retain);
    }

    fn request(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        q: u8,
        retain: bool,
        tag: Option<u64>,
    ) -> bool {
        match self.client.try_publish(topic, qos(q), retain, payload) {
            Ok(()) => {
                self.requested.push_back(tag);
                self.stats.upstream.sent.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                debug!(error = %e, "Upstream request channel full.");
                false
            }
        }
    }

    /// Hand messages to the connection while the window has room. Returns how long to
    /// wait for the replay rate, if that is what stops it.
    fn pump(&mut self) -> Option<Duration> {
        if !self.connected {
            return None;
        }
        while self.outstanding() < WINDOW {
            if self.online_due {
                self.online_due = false;
                let topic = self.status_topic.clone();
                self.request(topic, b"online".to_vec(), 1, true, None);
                continue;
            }
            match self.spool.peek() {
                Some(seq) => {
                    if seq < self.replay_mark {
                        if let Err(wait) = self.rate.take() {
                            return Some(wait);
                        }
                    }
                    let Some(e) = self.spool.take_next() else {
                        break;
                    };
                    let resend = !self.request(
                        e.topic.clone(),
                        e.payload.clone(),
                        e.qos,
                        e.retain,
                        Some(e.seq),
                    );
                    if resend {
                        self.spool.rewind(&|s| s != e.seq);
                        break;
                    }
                }
                None => {
                    if self.state_due {
                        // Caught up: the retained state of every topic, for a broker that
                        // lost it (restarted without persistence). Newest values only, so
                        // nothing older can follow them.
                        self.state_due = false;
                        self.state = self
                            .retained
                            .iter()
                            .map(|(t, (p, q))| (t.clone(), p.clone(), *q))
                            .collect();
                        self.state.sort_by(|a, b| b.0.cmp(&a.0));
                    }
                    let Some((t, p, q)) = self.state.pop() else {
                        break;
                    };
                    // A newer value was queued since: this one would arrive after it.
                    if self.retained.get(&t).is_some_and(|(cur, _)| *cur != p) {
                        continue;
                    }
                    if !self.request(t.clone(), p.clone(), q, true, None) {
                        self.state.push((t, p, q));
                        break;
                    }
                }
            }
        }
        None
    }

    fn acked(&mut self, tag: Option<u64>) {
        if let Some(seq) = tag {
            self.spool.ack(seq);
            self.stats.upstream.acked.fetch_add(1, Relaxed);
        }
    }

    fn on_link(
        &mut self,
        link: Link,
        router: Option<&Router>,
        subs: &[SubscribeFilter],
        url: &str,
        ever: &mut bool,
        failing: &mut Option<String>,
    ) -> bool {
        match link {
            Link::Connected => {
                if *ever {
                    info!(broker = %url, queued = self.spool.depth(), "Upstream reconnected.");
                } else {
                    info!(broker = %url, queued = self.spool.depth(), "Upstream connected.");
                }
                *ever = true;
                *failing = None;
                self.connected = true;
                self.online_due = true;
                self.state_due = true;
                self.state.clear();
                self.replay_mark = self.spool.tail();
                self.stats.upstream.connected.store(true, Relaxed);
                self.stats.upstream.connects.fetch_add(1, Relaxed);
                if !subs.is_empty() {
                    if let Err(e) = self.client.try_subscribe_many(subs.to_vec()) {
                        warn!(error = %e, "Cannot subscribe upstream.");
                    }
                }
            }
            Link::Written(pkid) => {
                let tag = self.requested.pop_front().flatten();
                if pkid == 0 {
                    // QoS 0: written is all there is.
                    self.acked(tag);
                } else {
                    self.by_pkid.insert(pkid, tag);
                }
            }
            Link::Acked(pkid) => {
                if let Some(tag) = self.by_pkid.remove(&pkid) {
                    self.acked(tag);
                }
            }
            Link::Message(topic, payload) => {
                if let (Some(router), Some(t)) = (router, topic.strip_prefix(&self.prefix)) {
                    if let Some(rejected) = router.handle(t, &payload) {
                        debug!(topic = %topic, "Upstream command rejected.");
                        self.push(rejected);
                    }
                }
            }
            Link::Lost {
                error,
                refused,
                unwritten,
            } => {
                if self.connected {
                    warn!(broker = %url, error = %error, "Upstream connection lost.");
                } else if failing.as_deref() != Some(error.as_str()) {
                    // Once per kind of failure, not at every retry.
                    if refused {
                        warn!(broker = %url, error = %error, "Upstream broker refused the connection; retrying with backoff.");
                    } else {
                        warn!(broker = %url, error = %error, "Cannot connect upstream; retrying with backoff.");
                    }
                } else {
                    debug!(broker = %url, error = %error, "Upstream connect failed.");
                }
                if !self.connected {
                    self.stats.upstream.connect_failures.fetch_add(1, Relaxed);
                }
                *failing = Some(error);
                self.connected = false;
                self.stats.upstream.connected.store(false, Relaxed);
                // Publishes rumqttc discarded unwritten, then everything unacknowledged:
                // the queue sends them again, in order. Requests still in the channel go
                // out after the reconnect as they are.
                debug!(
                    unwritten,
                    requested = self.requested.len(),
                    written = self.by_pkid.len(),
                    in_flight = self.spool.in_flight(),
                    "Upstream bookkeeping at loss."
                );
                for _ in 0..unwritten.min(self.requested.len()) {
                    self.requested.pop_front();
                }
                self.by_pkid.clear();
                let pending: std::collections::HashSet<u64> =
                    self.requested.iter().flatten().copied().collect();
                let before = self.spool.in_flight();
                self.spool.rewind(&|s| pending.contains(&s));
                let back = before - self.spool.in_flight();
                self.stats.upstream.resent.fetch_add(back as u64, Relaxed);
                self.state.clear();
            }
            Link::Closed => return false,
        }
        true
    }

    fn publish_stats(&mut self) {
        let u = &self.stats.upstream;
        let c = &self.spool.counters;
        u.queue_depth.store(self.spool.depth(), Relaxed);
        u.queue_bytes.store(self.spool.bytes(), Relaxed);
        u.dropped.store(c.dropped, Relaxed);
        u.disk_bytes_written.store(c.disk_bytes_written, Relaxed);
        u.disk_messages_written.store(c.messages_written, Relaxed);
        u.disk_errors.store(c.disk_errors, Relaxed);
        u.recovered.store(c.recovered, Relaxed);
        let acked = u.acked.load(Relaxed);
        u.replay_rate.store(acked - self.acked_last, Relaxed);
        self.acked_last = acked;
        let age = self.spool.oldest_age_ms();
        u.oldest_age_ms.store(age, Relaxed);
    }
}

/// Open the queue of `u` (before anything starts, so a bad directory stops the gateway).
pub fn open_queue(u: &Upstream) -> Result<Spool, UpstreamError> {
    Ok(Spool::open(&u.queue.dir, u.queue.max_size)?)
}

/// Run the upstream link until `rx` is closed; then write the queue to disk, publish
/// `offline` and disconnect.
pub async fn run_upstream(
    model: Arc<Model>,
    spool: Spool,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
    router: Option<Router>,
) -> Result<(), UpstreamError> {
    let Some(u) = model.mqtt.upstream.clone() else {
        return Ok(());
    };
    let (client, eventloop) = AsyncClient::new(options(&model, &u)?, WINDOW * 2 + 64);
    let subs: Vec<SubscribeFilter> = match &router {
        // QoS 0: a broker does not keep commands for an offline gateway (a stale "open the
        // valve" must not run hours later).
        Some(r) => r
            .subscriptions()
            .into_iter()
            .map(|t| SubscribeFilter::new(format!("{}{t}", u.prefix), QoS::AtMostOnce))
            .collect(),
        None => Vec::new(),
    };
    stats.upstream.enabled.store(true, Relaxed);
    let recovered = spool.depth();
    if recovered > 0 {
        info!(messages = recovered, dir = %u.queue.dir.display(), "Upstream queue recovered from disk.");
    }
    let (link_tx, mut link) = mpsc::unbounded_channel();
    spawn_eventloop(eventloop, link_tx);
    let mut up = Up {
        client,
        spool,
        stats: stats.clone(),
        qos: u.qos,
        prefix: u.prefix.clone(),
        status_topic: format!("{}{}", u.prefix, model.status_topic()),
        requested: VecDeque::new(),
        by_pkid: HashMap::new(),
        connected: false,
        online_due: false,
        state_due: false,
        state: Vec::new(),
        retained: HashMap::new(),
        replay_mark: 0,
        rate: Rate {
            per_s: u.queue.replay_rate,
            tokens: 0.0,
            at: Instant::now(),
        },
        acked_last: 0,
    };
    let mut flush = tokio::time::interval(u.queue.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut job: Option<JoinHandle<FlushDone>> = None;
    let mut ever = false;
    let mut failing: Option<String> = None;
    let mut rate_wait: Option<Duration> = None;
    loop {
        let wait = rate_wait.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            ev = link.recv() => match ev {
                Some(l) => {
                    if !up.on_link(l, router.as_ref(), &subs, &u.url, &mut ever, &mut failing) {
                        break;
                    }
                    // Several events usually wait: take them before sending more.
                    while let Ok(l) = link.try_recv() {
                        if !up.on_link(l, router.as_ref(), &subs, &u.url, &mut ever, &mut failing) {
                            break;
                        }
                    }
                }
                None => break,
            },
            batch = rx.recv() => match batch {
                Some(batch) => {
                    for m in batch {
                        up.push(m);
                    }
                    if job.is_none() && up.spool.mem_bytes() > FLUSH_BYTES {
                        job = up.spool.flush_job().map(|j| tokio::task::spawn_blocking(move || j.run()));
                    }
                }
                None => break,
            },
            _ = flush.tick(), if job.is_none() => {
                job = up.spool.flush_job().map(|j| tokio::task::spawn_blocking(move || j.run()));
            },
            done = async { job.as_mut().expect("guarded").await }, if job.is_some() => {
                job = None;
                match done {
                    Ok(d) => up.spool.flush_done(d),
                    Err(e) => warn!(error = %e, "Upstream queue write task failed."),
                }
            },
            _ = tick.tick() => up.publish_stats(),
            () = tokio::time::sleep(wait), if rate_wait.is_some() => {},
        }
        rate_wait = up.pump();
    }
    // Shutdown: nothing unacknowledged may be lost, so the queue is written first.
    if let Some(j) = job.take() {
        if let Ok(d) = j.await {
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
        mqtt::disconnect(&up.client, &mut link, deadline, |l| {
            matches!(l, Link::Closed)
        })
        .await;
        info!("Upstream disconnected.");
    }
    Ok(())
}
