//! Health: counters shared by the tasks and the JSON published on `<base>/diagnostics`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use serde_json::json;

use fieldlink_drivers::modbus::{Faults, ReplyFault};

use crate::{
    modbus_server::ServerStats,
    model::{BusKind, Model},
};

/// Availability of a device as last published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Availability {
    /// Not polled yet.
    Unknown = 0,
    /// Answering.
    Online = 1,
    /// Failed `offline_after` polls in a row.
    Offline = 2,
}

/// Counters of one device.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Device id.
    pub id: String,
    availability: AtomicU8,
    /// Poll cycles run.
    pub polls: AtomicU64,
    /// Poll cycles with no good reply.
    pub failed_polls: AtomicU64,
    /// Modbus requests sent.
    pub requests: AtomicU64,
    /// Requests that failed (timeout, exception, i/o).
    pub request_errors: AtomicU64,
    /// Duration of the last successful poll cycle, µs.
    pub last_poll_us: AtomicU64,
    /// Values published.
    pub published: AtomicU64,
    /// Topics of the points the device answers with exception 02 (illegal data address)
    /// when read alone; they are probed again with backoff.
    unreadable: std::sync::Mutex<Vec<String>>,
    /// Replies and bytes not used, by kind ([`ReplyFault::ALL`]'s order).
    rejected: [AtomicU64; 8],
    // Writes (#23): kept-alive setpoints (`rewrite_every`).
    /// Rewrites of a kept value that the device acknowledged.
    pub rewrites: AtomicU64,
    /// Rewrites that failed (tried again after the period).
    pub rewrite_errors: AtomicU64,
}

impl DeviceStats {
    /// Zeroed counters of device `id`.
    pub fn new(id: &str) -> Self {
        DeviceStats {
            id: id.to_string(),
            ..Default::default()
        }
    }

    /// Add the faults a transport saw while talking to this device.
    pub fn add_faults(&self, f: &Faults) {
        for (counter, n) in self.rejected.iter().zip(f.0) {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// Replies and bytes rejected so far, by kind.
    pub fn rejected(&self, kind: ReplyFault) -> u64 {
        ReplyFault::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.rejected[i].load(Relaxed))
    }

    /// Current availability.
    pub fn availability(&self) -> Availability {
        match self.availability.load(Relaxed) {
            1 => Availability::Online,
            2 => Availability::Offline,
            _ => Availability::Unknown,
        }
    }
    /// Record availability.
    pub fn set_availability(&self, a: Availability) {
        self.availability.store(a as u8, Relaxed);
    }
    /// Record the points currently unreadable (exception 02).
    pub fn set_unreadable(&self, topics: Vec<String>) {
        if let Ok(mut u) = self.unreadable.lock() {
            if *u != topics {
                *u = topics;
            }
        }
    }
    /// The points currently unreadable.
    pub fn unreadable(&self) -> Vec<String> {
        self.unreadable
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }
}

/// What one reload did.
#[derive(Clone, Debug)]
pub struct ReloadOutcome {
    /// When it ran.
    pub at: std::time::SystemTime,
    /// Errors in the new configuration (it was refused when there were any).
    pub errors: usize,
    /// Devices added, removed, changed (restarted) and kept running.
    pub added: usize,
    /// See `added`.
    pub removed: usize,
    /// See `added`.
    pub changed: usize,
    /// See `added`.
    pub kept: usize,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
}

/// The reloads since start.
#[derive(Clone, Debug, Default)]
pub struct ReloadStats {
    /// Reloads tried.
    pub count: u64,
    /// Reloads refused (the configuration had errors).
    pub failed: u64,
    /// The last one.
    pub last: Option<ReloadOutcome>,
}

impl ReloadStats {
    fn to_json(&self) -> serde_json::Value {
        let last = self.last.as_ref();
        json!({
            "count": self.count,
            "failed": self.failed,
            "last_at": last.map(|l| humantime::format_rfc3339_seconds(l.at).to_string()),
            "last_ok": last.map(|l| l.errors == 0),
            "last_errors": last.map_or(0, |l| l.errors),
            "added": last.map_or(0, |l| l.added),
            "removed": last.map_or(0, |l| l.removed),
            "changed": last.map_or(0, |l| l.changed),
            "kept": last.map_or(0, |l| l.kept),
            "restart_needed": last.map(|l| l.restart_needed.clone()).unwrap_or_default(),
        })
    }
}

/// Counters of one uart bus: what came in on the line.
#[derive(Debug, Default)]
pub struct SerialStats {
    /// Bus id.
    pub bus: String,
    /// Times the port was opened (the first open included).
    pub opened: AtomicU64,
    /// Lines received (blank lines not counted).
    pub lines: AtomicU64,
    /// Lines no device took (no parser accepted them, not UTF-8).
    pub garbage: AtomicU64,
    /// Lines longer than `max_line`, dropped.
    pub overlong: AtomicU64,
    /// Unfinished lines discarded after the line went quiet (or the port was lost).
    pub partial: AtomicU64,
    /// Fields whose text did not convert to the point's type.
    pub bad_values: AtomicU64,
}

/// Counters of the upstream broker link and its queue.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// An upstream broker is configured.
    pub enabled: AtomicBool,
    /// Connected now.
    pub connected: AtomicBool,
    /// Connections made.
    pub connects: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Messages handed to the connection (resends included).
    pub sent: AtomicU64,
    /// Messages the broker acknowledged.
    pub acked: AtomicU64,
    /// Messages sent again after a lost connection.
    pub resent: AtomicU64,
    /// Messages in the queue not yet acknowledged.
    pub queue_depth: AtomicU64,
    /// Bytes of the queue (disk and memory).
    pub queue_bytes: AtomicU64,
    /// Age of the oldest unacknowledged message, ms.
    pub oldest_age_ms: AtomicU64,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Acknowledged messages per second over the last second.
    pub replay_rate: AtomicU64,
    /// Bytes written to the queue's disk files.
    pub disk_bytes_written: AtomicU64,
    /// Messages written to disk.
    pub disk_messages_written: AtomicU64,
    /// Failed disk writes.
    pub disk_errors: AtomicU64,
    /// Messages recovered from disk at start.
    pub recovered: AtomicU64,
}

/// Counters of the whole gateway.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Per device, in model order (replaced by a reload; a kept device keeps its
    /// counters).
    devices: RwLock<Vec<Arc<DeviceStats>>>,
    /// Per uart bus (the same).
    serial: RwLock<Vec<Arc<SerialStats>>>,
    /// The outcome of the reloads so far.
    reload: Mutex<Option<ReloadStats>>,
    /// MQTT messages handed to the client.
    pub mqtt_sent: AtomicU64,
    /// MQTT messages dropped (never for retained state, which is republished).
    pub mqtt_dropped: AtomicU64,
    /// Messages queued between the bus tasks and the MQTT client.
    pub mqtt_queue: AtomicU64,
    /// Connected to the broker.
    pub mqtt_connected: AtomicBool,
    /// Connections made.
    pub mqtt_connects: AtomicU64,
    /// The upstream broker.
    pub upstream: UpstreamStats,
    /// The embedded broker.
    pub broker: Arc<BrokerStats>,
    /// The Modbus server's counters while it runs ([`Stats::set_modbus_server`]).
    modbus_server: RwLock<Option<Arc<ServerStats>>>,
}

/// Counters of the embedded broker (also its `$SYS` topics).
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Clients connected now (the gateway is not one: it is linked in process).
    pub clients: AtomicI64,
    /// Connections accepted since start.
    pub connects: AtomicU64,
    /// Logins refused (wrong password, anonymous not allowed, reserved client id).
    pub refused_logins: AtomicU64,
    /// Publishes dropped for want of write rights.
    pub denied_publishes: AtomicU64,
    /// Subscriptions refused for want of read rights.
    pub denied_subscriptions: AtomicU64,
    /// Messages received: PUBLISH packets from clients and the gateway's own messages.
    pub messages_received: AtomicU64,
    /// Messages delivered to subscribers.
    pub messages_sent: AtomicU64,
    /// Client commands dropped because the gateway had 1024 waiting already.
    pub dropped_commands: AtomicU64,
    /// Times the broker failed and was rebuilt.
    pub restarts: AtomicU64,
    // Rights on delivery and subscription bounds:
    /// Messages not delivered because the receiving client's user may not read their
    /// topic (a session taken over by another user, say).
    pub denied_deliveries: AtomicU64,
    /// SUBSCRIBE entries refused at `max_subscriptions` or `max_subscriptions_total`.
    pub subscriptions_over_limit: AtomicU64,
    /// Subscriptions held by all clients, online and offline (refreshed every
    /// `sys_interval`).
    pub subscriptions: AtomicI64,
    // The connection front (issue #21).
    /// Connections closed because their CONNECT was not complete within
    /// `connect_timeout` of the accept (TLS handshake included).
    pub connect_timeouts: AtomicU64,
    /// Connections closed at once: their address (or all) had as many still before
    /// CONNECT as `max_connecting_per_address` (`max_connecting`) allow.
    pub connecting_refused: AtomicU64,
    /// Connections closed for a forbidden client id, user name, Will topic, topic name
    /// or Topic Alias, or a malformed packet.
    pub bad_packets: AtomicU64,
    /// Connections closed for a packet above `max_packet_size`.
    pub oversized_packets: AtomicU64,
    /// Sessions started clean because another user connected with their client id.
    pub session_takeovers: AtomicU64,
    /// Notified, the broker stops as if it had failed, and the supervisor rebuilds it
    /// (tests use it to check the recovery path).
    pub fault: tokio::sync::Notify,
    /// What is held for offline clients, and the store on disk (issue #21).
    pub offline: OfflineStats,
}

/// Messages the embedded broker holds for offline persistent sessions, and its store.
#[derive(Debug, Default)]
pub struct OfflineStats {
    /// Offline persistent sessions holding messages now.
    pub sessions: AtomicU64,
    /// Messages held for them now (in flight included).
    pub messages: AtomicU64,
    /// Bytes held for them now (topic, payload, properties).
    pub bytes: AtomicU64,
    /// QoS 0 messages not kept: a session's count or bytes bound was reached.
    pub dropped_qos0: AtomicU64,
    /// QoS 1/2 messages dropped, oldest first, to keep a session within its bounds.
    pub dropped_oldest: AtomicU64,
    /// Messages dropped to keep all sessions within `max_queued_bytes_total`.
    pub dropped_total: AtomicU64,
    /// Messages larger than `max_queued_bytes` on their own.
    pub dropped_oversized: AtomicU64,
    /// Offline sessions made anew after taking in many messages (rmqtt keeps a wakeup
    /// per message queued for an offline session: `broker/queues/renew.rs`).
    pub renewed: AtomicU64,
    /// The store is on (`persistence`).
    pub persistence: AtomicBool,
    /// Store files written.
    pub saves: AtomicU64,
    /// Store writes that failed.
    pub save_failures: AtomicU64,
    /// When the store was last written, ms since the Unix epoch (0: never).
    pub last_save_ms: AtomicU64,
    /// Size of the store file last written.
    pub store_bytes: AtomicU64,
    /// Retained messages restored from the store at start.
    pub restored_retained: AtomicU64,
    /// Sessions restored from the store at start.
    pub restored_sessions: AtomicU64,
    /// Queued messages restored with them.
    pub restored_messages: AtomicU64,
}

impl OfflineStats {
    /// The `broker.offline` object of the diagnostics.
    pub fn to_json(&self) -> serde_json::Value {
        let last = self.last_save_ms.load(Relaxed);
        json!({
            "sessions": self.sessions.load(Relaxed),
            "messages": self.messages.load(Relaxed),
            "bytes": self.bytes.load(Relaxed),
            "renewed": self.renewed.load(Relaxed),
            "dropped": {
                "qos0": self.dropped_qos0.load(Relaxed),
                "oldest": self.dropped_oldest.load(Relaxed),
                "total": self.dropped_total.load(Relaxed),
                "oversized": self.dropped_oversized.load(Relaxed),
            },
            "persistence": {
                "enabled": self.persistence.load(Relaxed),
                "saves": self.saves.load(Relaxed),
                "failures": self.save_failures.load(Relaxed),
                "last_save_unix": (last > 0).then_some(last / 1000),
                "bytes": self.store_bytes.load(Relaxed),
                "restored": {
                    "retained": self.restored_retained.load(Relaxed),
                    "sessions": self.restored_sessions.load(Relaxed),
                    "messages": self.restored_messages.load(Relaxed),
                },
            },
        })
    }
}

impl Stats {
    /// Zeroed counters for the model's devices.
    pub fn new(model: &Model) -> Self {
        let stats = Stats {
            started: Instant::now(),
            devices: RwLock::default(),
            serial: RwLock::default(),
            reload: Mutex::new(None),
            mqtt_sent: AtomicU64::new(0),
            mqtt_dropped: AtomicU64::new(0),
            mqtt_queue: AtomicU64::new(0),
            mqtt_connected: AtomicBool::new(false),
            mqtt_connects: AtomicU64::new(0),
            upstream: UpstreamStats::default(),
            broker: Arc::default(),
            modbus_server: RwLock::default(),
        };
        stats.update(model);
        stats
    }

    /// Follow a new model (a reload): the counters of every device and uart bus in it,
    /// in its order; devices and buses already known keep theirs (by id), new ones start
    /// at zero, removed ones are dropped.
    pub fn update(&self, model: &Model) {
        let old = self.devices();
        let devices = model
            .devices()
            .map(|d| {
                old.iter()
                    .find(|s| s.id == d.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(DeviceStats::new(&d.id)))
            })
            .collect();
        let old = self.serial_all();
        let serial = model
            .buses
            .iter()
            .filter(|b| matches!(b.kind, BusKind::Uart { .. }))
            .map(|b| {
                old.iter()
                    .find(|s| s.bus == b.id)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(SerialStats {
                            bus: b.id.clone(),
                            ..Default::default()
                        })
                    })
            })
            .collect();
        if let Ok(mut d) = self.devices.write() {
            *d = devices;
        }
        if let Ok(mut s) = self.serial.write() {
            *s = serial;
        }
    }

    /// Counters of every device, in model order.
    pub fn devices(&self) -> Vec<Arc<DeviceStats>> {
        self.devices.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// Counters of the `i`-th device of the model.
    pub fn device(&self, i: usize) -> Option<Arc<DeviceStats>> {
        self.devices.read().ok()?.get(i).cloned()
    }

    /// Counters of device `id`.
    pub fn device_by_id(&self, id: &str) -> Option<Arc<DeviceStats>> {
        self.devices
            .read()
            .ok()?
            .iter()
            .find(|d| d.id == id)
            .cloned()
    }

    /// Line counters of every uart bus, in model order.
    pub fn serial_all(&self) -> Vec<Arc<SerialStats>> {
        self.serial.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Line counters of the `i`-th uart bus.
    pub fn serial(&self, i: usize) -> Option<Arc<SerialStats>> {
        self.serial.read().ok()?.get(i).cloned()
    }

    /// Line counters of uart bus `bus`.
    pub fn serial_of(&self, bus: &str) -> Option<Arc<SerialStats>> {
        self.serial
            .read()
            .ok()?
            .iter()
            .find(|s| s.bus == bus)
            .cloned()
    }

    /// Record a reload's outcome.
    /// (A refused one keeps the counts of what the last applied one changed.)
    pub fn record_reload(&self, mut outcome: ReloadOutcome) {
        if let Ok(mut r) = self.reload.lock() {
            let r = r.get_or_insert_with(ReloadStats::default);
            r.count += 1;
            if outcome.errors > 0 {
                r.failed += 1;
                if let Some(prev) = &r.last {
                    outcome.added = prev.added;
                    outcome.removed = prev.removed;
                    outcome.changed = prev.changed;
                    outcome.kept = prev.kept;
                    outcome.restart_needed.clone_from(&prev.restart_needed);
                }
            }
            r.last = Some(outcome);
        }
    }

    /// The reloads so far.
    pub fn reloads(&self) -> Option<ReloadStats> {
        self.reload.lock().ok()?.clone()
    }

    /// Include the Modbus server's counters in the diagnostics (`None`: no server).
    pub fn set_modbus_server(&self, server: Option<Arc<ServerStats>>) {
        if let Ok(mut s) = self.modbus_server.write() {
            *s = server;
        }
    }

    /// The Modbus server's counters, when it runs.
    pub fn modbus_server(&self) -> Option<Arc<ServerStats>> {
        self.modbus_server.read().ok()?.clone()
    }

    /// Uptime.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The diagnostics JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let devices: serde_json::Map<String, serde_json::Value> = self
            .devices()
            .iter()
            .map(|d| {
                (
                    d.id.clone(),
                    json!({
                        "availability": match d.availability() {
                            Availability::Online => "online",
                            Availability::Offline => "offline",
                            Availability::Unknown => "unknown",
                        },
                        "polls": d.polls.load(Relaxed),
                        "failed_polls": d.failed_polls.load(Relaxed),
                        "requests": d.requests.load(Relaxed),
                        "request_errors": d.request_errors.load(Relaxed),
                        "last_poll_ms": d.last_poll_us.load(Relaxed) as f64 / 1000.0,
                        "published": d.published.load(Relaxed),
                        "unreadable": d.unreadable(),
                        "rejected_replies": ReplyFault::ALL
                            .iter()
                            .map(|k| (k.name().to_string(), json!(d.rejected(*k))))
                            .collect::<serde_json::Map<_, _>>(),
                        "rewrites": d.rewrites.load(Relaxed),
                        "rewrite_errors": d.rewrite_errors.load(Relaxed),
                    }),
                )
            })
            .collect();
        let serial: serde_json::Map<String, serde_json::Value> = self
            .serial_all()
            .iter()
            .map(|s| {
                (
                    s.bus.clone(),
                    json!({
                        "opened": s.opened.load(Relaxed),
                        "lines": s.lines.load(Relaxed),
                        "garbage": s.garbage.load(Relaxed),
                        "overlong": s.overlong.load(Relaxed),
                        "partial": s.partial.load(Relaxed),
                        "bad_values": s.bad_values.load(Relaxed),
                    }),
                )
            })
            .collect();
        let u = &self.upstream;
        let b = &self.broker;
        let upstream = u.enabled.load(Relaxed).then(|| {
            json!({
                "connected": u.connected.load(Relaxed),
                "connects": u.connects.load(Relaxed),
                "connect_failures": u.connect_failures.load(Relaxed),
                "sent": u.sent.load(Relaxed),
                "acked": u.acked.load(Relaxed),
                "resent": u.resent.load(Relaxed),
                "queue_depth": u.queue_depth.load(Relaxed),
                "queue_bytes": u.queue_bytes.load(Relaxed),
                "oldest_age_s": u.oldest_age_ms.load(Relaxed) as f64 / 1000.0,
                "dropped": u.dropped.load(Relaxed),
                "replay_rate": u.replay_rate.load(Relaxed),
                "disk_bytes_written": u.disk_bytes_written.load(Relaxed),
                "disk_messages_written": u.disk_messages_written.load(Relaxed),
                "disk_errors": u.disk_errors.load(Relaxed),
                "recovered": u.recovered.load(Relaxed),
            })
        });
        let failed_polls: u64 = self
            .devices()
            .iter()
            .map(|d| d.failed_polls.load(Relaxed))
            .sum();
        let mut doc = json!({
            "uptime_s": self.uptime().as_secs(),
            "failed_polls": failed_polls,
            "version": env!("CARGO_PKG_VERSION"),
            "mqtt": {
                "connected": self.mqtt_connected.load(Relaxed),
                "connects": self.mqtt_connects.load(Relaxed),
                "sent": self.mqtt_sent.load(Relaxed),
                "dropped": self.mqtt_dropped.load(Relaxed),
                "queue_depth": self.mqtt_queue.load(Relaxed),
            },
            "upstream": upstream,
            "broker": {
                "clients": b.clients.load(Relaxed),
                "connects": b.connects.load(Relaxed),
                "refused_logins": b.refused_logins.load(Relaxed),
                "denied_publishes": b.denied_publishes.load(Relaxed),
                "denied_subscriptions": b.denied_subscriptions.load(Relaxed),
                "messages_received": b.messages_received.load(Relaxed),
                "messages_sent": b.messages_sent.load(Relaxed),
                "dropped_commands": b.dropped_commands.load(Relaxed),
                "restarts": b.restarts.load(Relaxed),
                "denied_deliveries": b.denied_deliveries.load(Relaxed),
                "subscriptions": b.subscriptions.load(Relaxed),
                "subscriptions_over_limit": b.subscriptions_over_limit.load(Relaxed),
                "connect_timeouts": b.connect_timeouts.load(Relaxed),
                "connecting_refused": b.connecting_refused.load(Relaxed),
                "bad_packets": b.bad_packets.load(Relaxed),
                "oversized_packets": b.oversized_packets.load(Relaxed),
                "session_takeovers": b.session_takeovers.load(Relaxed),
                "offline": b.offline.to_json(),
            },
            "devices": devices,
            "serial": serial,
            "reload": self.reloads().map(|r| r.to_json()),
        });
        if let Some(server) = self.modbus_server() {
            doc["modbus_server"] = server.json();
        }
        doc
    }
}
