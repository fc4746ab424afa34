//! Live reload: what a reload does to a running gateway ([`Running::reload`]); it plans
//! and applies, the bus tasks themselves are `buses`' registry ([`Buses`]).
//!
//! A reload reads and validates the configuration again; one with errors is logged (the
//! lines `check` prints) and changes nothing. A valid one is compared with the running
//! one, device by device: a device defined the same keeps running in its bus task with
//! all its state (schedule, failures, publish state, the driver's connection and plan);
//! a changed one restarts inside its bus task; a bus whose kind or transport changed is
//! replaced by a new task; removed devices are published `offline` and every removed
//! point's retained topic is cleared. What only a restart can change (the embedded
//! broker, the upstream broker, the gateway id and base topic, the diagnostics interval,
//! the Modbus server with the unit ids it serves) is logged and kept as it runs; the Modbus
//! server's snapshot of a changed device starts empty, a removed device's is dropped. The MQTT
//! sides, their connections and the upstream queue are never touched; every command gets
//! its result.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    buses::{self, Buses},
    commands, config,
    health::ReloadOutcome,
    model::{same, Bus, Device, Model},
    publish::{Batch, Outgoing},
    service,
    topics::LiveContract,
};

/// Reads and validates the configuration.
pub type Loader = Arc<dyn Fn() -> Result<config::Checked, Vec<config::Diagnostic>> + Send + Sync>;

/// What runs, as a reload sees it.
pub(crate) struct Running {
    /// The model in force.
    pub(crate) model: Arc<Model>,
    pub(crate) buses: Buses,
    pub(crate) router: commands::Router,
    pub(crate) contract: LiveContract,
    /// The model in force, for the embedded side (whose points it republishes).
    pub(crate) current: watch::Sender<Arc<Model>>,
    /// The next unused point slot: a reload's new points get new slots.
    pub(crate) next_slot: u32,
}

/// What a reload changes, from the running model and a new valid one.
struct Plan {
    /// The new model, with the settings only a restart changes kept as they run and
    /// every point that was there before keeping its slot.
    model: Model,
    /// Those settings, named, where they differ.
    restart_needed: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    kept: usize,
}

impl Running {
    /// Reload with `load`: `RELOADING=1`, read and validate, apply or refuse, `READY=1`.
    pub(crate) async fn reload(&mut self, load: Loader) {
        info!("Reloading configuration.");
        service::reloading();
        let loaded = tokio::task::spawn_blocking(move || load())
            .await
            .unwrap_or_else(|e| {
                Err(vec![config::Diagnostic {
                    severity: config::Severity::Error,
                    file: "-".into(),
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: format!("reading the configuration failed: {e}"),
                    hint: None,
                }])
            });
        let stats = self.buses.stats().clone();
        match loaded {
            Err(diags) => {
                // The lines `fieldlink check` prints, to the same place.
                for d in &diags {
                    eprintln!("{d}");
                }
                let errors = diags
                    .iter()
                    .filter(|d| d.severity == config::Severity::Error)
                    .count()
                    .max(1);
                warn!(
                    errors,
                    "Reload refused; the running configuration is unchanged."
                );
                stats.record_reload(ReloadOutcome {
                    at: SystemTime::now(),
                    errors,
                    added: 0,
                    removed: 0,
                    changed: 0,
                    kept: 0,
                    restart_needed: Vec::new(),
                });
            }
            Ok(checked) => {
                for w in &checked.warnings {
                    eprintln!("{w}");
                }
                let plan = self.plan(checked.model);
                let outcome = ReloadOutcome {
                    at: SystemTime::now(),
                    errors: 0,
                    added: plan.added.len(),
                    removed: plan.removed.len(),
                    changed: plan.changed.len(),
                    kept: plan.kept,
                    restart_needed: plan.restart_needed.clone(),
                };
                for what in &plan.restart_needed {
                    warn!(setting = %what, "Changed; needs a restart to take effect.");
                }
                self.apply(plan).await;
                info!(
                    added = outcome.added,
                    removed = outcome.removed,
                    changed = outcome.changed,
                    kept = outcome.kept,
                    "Configuration reloaded."
                );
                stats.record_reload(outcome);
                crate::trim_heap();
            }
        }
        service::ready();
    }

    /// Compare `new` with the running model.
    fn plan(&mut self, mut new: Model) -> Plan {
        let old = &self.model;
        let mut restart_needed = Vec::new();
        let mut keep = |what: &str, differs: bool| {
            if differs {
                restart_needed.push(what.to_string());
            }
        };
        keep(
            "gateway id and base topic",
            old.gateway_id != new.gateway_id || old.base_topic != new.base_topic,
        );
        keep("mqtt client id", old.mqtt.client_id != new.mqtt.client_id);
        // The embedded broker's secret is made anew by every load: not a setting.
        let embedded_changed = match (&old.mqtt.embedded, &new.mqtt.embedded) {
            (Some(a), Some(b)) => {
                let mut b = b.clone();
                b.secret = a.secret.clone();
                *a != b
            }
            (a, b) => a.is_some() != b.is_some(),
        };
        keep("embedded broker", embedded_changed);
        keep("upstream broker", old.mqtt.upstream != new.mqtt.upstream);
        keep(
            "diagnostics interval",
            old.diagnostics_interval != new.diagnostics_interval,
        );
        keep("homeassistant", old.homeassistant != new.homeassistant);
        // The Modbus server (#26): its listener, clients and served units as they run.
        keep("modbus server", old.modbus_server != new.modbus_server);
        new.gateway_id.clone_from(&old.gateway_id);
        new.base_topic.clone_from(&old.base_topic);
        new.mqtt = old.mqtt.clone();
        new.diagnostics_interval = old.diagnostics_interval;
        new.homeassistant.clone_from(&old.homeassistant);
        new.modbus_server.clone_from(&old.modbus_server);
        // A point that was there (same device, same topic) keeps its slot.
        let slots: HashMap<(&str, &str), u32> = old
            .devices()
            .flat_map(|d| {
                d.points
                    .iter()
                    .map(|p| ((d.id.as_str(), p.topic.as_str()), p.slot))
            })
            .collect();
        let next = &mut self.next_slot;
        new.buses = new
            .buses
            .iter()
            .map(|b| {
                let mut bus = Bus::clone(b);
                bus.devices = b
                    .devices
                    .iter()
                    .map(|d| {
                        let mut dev = Device::clone(d);
                        for p in &mut dev.points {
                            p.slot = match slots.get(&(d.id.as_str(), p.topic.as_str())) {
                                Some(s) => *s,
                                None => {
                                    *next += 1;
                                    *next - 1
                                }
                            };
                        }
                        Arc::new(dev)
                    })
                    .collect();
                Arc::new(bus)
            })
            .collect();
        let before: HashMap<&str, &Device> = old.devices().map(|d| (d.id.as_str(), d)).collect();
        let after: HashSet<&str> = new.devices().map(|d| d.id.as_str()).collect();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), 0);
        for d in new.devices() {
            match before.get(d.id.as_str()) {
                None => added.push(d.id.clone()),
                Some(o) if same(o, d) => kept += 1,
                Some(_) => changed.push(d.id.clone()),
            }
        }
        let removed = old
            .devices()
            .filter(|d| !after.contains(d.id.as_str()))
            .map(|d| d.id.clone())
            .collect();
        Plan {
            model: new,
            restart_needed,
            added,
            removed,
            changed,
            kept,
        }
    }

    /// Apply `plan`: bus tasks stopped, reconfigured and started, then the routes, the
    /// broker's contract and the embedded side's model follow, and what is gone is
    /// published offline and cleared. In two phases: first every bus leaves what is
    /// removed or changed, then the new and changed devices start, so that a topic or a
    /// GPIO pin that moves to another bus is free before it is taken again.
    async fn apply(&mut self, plan: Plan) {
        let new = Arc::new(plan.model);
        let generation = self.router.generation() + 1;
        self.buses.stats().update(&new);
        // Changed devices' snapshots are made afresh before their bus tasks take them.
        if let Some(s) = self.buses.snapshots() {
            s.update(&new);
        }
        let wanted: HashSet<&str> = new
            .buses
            .iter()
            .filter(|b| !b.devices.is_empty())
            .map(|b| b.id.as_str())
            .collect();
        // Replaced (another kind or transport) or gone: stopped first, so a port is free
        // for the task that replaces it.
        let stop: Vec<String> = self
            .buses
            .all()
            .filter(|t| {
                !wanted.contains(t.id.as_str())
                    || new.buses.iter().any(|b| b.id == t.id && b.kind != t.kind)
            })
            .map(|t| t.id.clone())
            .collect();
        self.router.set_restarting(!stop.is_empty());
        for id in &stop {
            self.buses.stop(id).await;
        }
        // Phase 1: every running bus keeps only its unchanged devices.
        let mut first = 0;
        let mut starts = Vec::new();
        for b in &new.buses {
            match self.buses.running(&b.id) {
                Some(t) if bus_same(t, b) => {}
                Some(t) => {
                    let keep = Arc::new(Bus {
                        devices: b
                            .devices
                            .iter()
                            .filter(|d| t.devices.iter().any(|o| same(o, d)))
                            .cloned()
                            .collect(),
                        ..Bus::clone(b)
                    });
                    if !bus_same(t, &keep) {
                        self.buses.reconfigure(&keep, first, generation).await;
                    }
                    starts.push((b.clone(), first));
                }
                None => starts.push((b.clone(), first)),
            }
            first += b.devices.len();
        }
        // Phase 2: new and changed devices, new buses (not when shutdown came meanwhile:
        // nothing new starts only to stop again).
        let mut unavailable = Vec::new();
        for (b, first) in starts {
            if self.buses.stopping() {
                break;
            }
            if self.buses.running(&b.id).is_some() {
                self.buses.reconfigure(&b, first, generation).await;
                continue;
            }
            if let Err(e) = self.buses.start(&new, &b, first) {
                error!(bus = %b.id, error = %e, "Cannot start the bus.");
                unavailable.extend(b.devices.iter().map(|d| d.id.clone()));
            }
        }
        let senders = self.buses.senders(&new);
        let g = self.router.update(new.clone(), senders, self.buses.stats());
        debug_assert_eq!(g, generation);
        self.router.set_restarting(false);
        self.contract.set(&new);
        self.current.send_replace(new.clone());
        let mut gone = clear(&self.model, &new, &plan.removed);
        gone.extend(
            unavailable
                .iter()
                .map(|id| buses::availability(&new.availability_topic(id), false)),
        );
        self.model = new;
        if !gone.is_empty() {
            let _ = self.buses.out().send(gone).await;
        }
    }
}

/// Whether two buses run the same: same kind and transport, the same devices in the
/// same order.
fn bus_same(a: &Bus, b: &Bus) -> bool {
    a.kind == b.kind
        && a.devices.len() == b.devices.len()
        && a.devices.iter().zip(&b.devices).all(|(x, y)| same(x, y))
}

/// What a reload removed: `offline` for every removed device (retained) and an empty
/// retained message on every point topic and device JSON topic that is gone (which
/// clears it in a broker).
fn clear(old: &Model, new: &Model, removed: &[String]) -> Batch {
    let topics: HashSet<&str> = new
        .points()
        .filter(|p| p.retain)
        .map(|p| p.topic.as_str())
        .collect();
    let mut out: Batch = removed
        .iter()
        .map(|id| buses::availability(&old.availability_topic(id), false))
        .collect();
    // A device JSON topic that is gone (its device removed, or another topic).
    let json: HashSet<&str> = new
        .devices()
        .filter_map(|d| d.json_topic.as_deref())
        .collect();
    for t in old.devices().filter_map(|d| d.json_topic.as_deref()) {
        if !json.contains(t) && !topics.contains(t) {
            info!(topic = %t, "Retained topic cleared.");
            out.push(Outgoing {
                topic: t.to_string(),
                payload: Vec::new(),
                retain: true,
                qos: 1,
                slot: None,
            });
        }
    }
    // A retained topic that is gone, or no longer retained.
    for p in old
        .points()
        .filter(|p| p.retain && !topics.contains(p.topic.as_str()))
    {
        info!(topic = %p.topic, "Retained topic cleared.");
        out.push(Outgoing {
            topic: p.topic.clone(),
            payload: Vec::new(),
            retain: true,
            qos: 1,
            slot: Some(p.slot),
        });
    }
    out
}
