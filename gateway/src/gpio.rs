//! The GPIO bus task: one task owns the board's GPIO controller (the actor).
//!
//! Inputs are interrupt-driven: the backend delivers every edge, and the task publishes a
//! new state once the line has held it for the point's `debounce` (so a bouncing contact
//! publishes one change, and a glitch that returns to the old level publishes nothing).
//! A point's `heartbeat` re-reads the line and republishes its state.
//!
//! Outputs are set to their `initial` state at start, follow `<topic>/set` commands
//! (read back and published, then answered on `<topic>/set/result`), switch off again
//! after `pulse` for momentary outputs, and are left as `on_shutdown` says when the
//! gateway stops. Logical states honour `active_low` throughout.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Instant, SystemTime},
};

use fieldlink_drivers::{
    gpio::{Edge, GpioBackend},
    modbus::Value,
};
use tokio::{sync::mpsc, time::Instant as TokioInstant};
use tracing::{debug, error, info, warn};

use crate::commands::CommandError;
use crate::{
    bus::{availability, BusIo},
    commands::{self, Command},
    health::{Availability, Stats},
    model::{Bus, GpioMode, Model, OnShutdown, Point},
    publish::{payload, reading, Batch, Outgoing, PointState},
};

/// One line in use.
struct Line {
    device: usize,
    point: usize,
    pin: u8,
    active_low: bool,
    state: PointState,
    /// Input: publish the level once it has been stable until then.
    settle_at: Option<TokioInstant>,
    /// Output with `pulse`: switch off then.
    pulse_end: Option<TokioInstant>,
    /// Republish (re-read) then.
    heartbeat_at: Option<TokioInstant>,
}

/// Run a gpio bus until shutdown, with `backend` driving the lines.
pub async fn run_gpio(
    model: Arc<Model>,
    bus: Arc<Bus>,
    first_stats_index: usize,
    mut backend: Box<dyn GpioBackend>,
    io: BusIo,
) {
    let BusIo {
        out: tx,
        mut commands,
        stats,
        mut shutdown,
    } = io;
    let (edge_tx, mut edges) = mpsc::unbounded_channel::<Edge>();
    let mut lines: Vec<Line> = Vec::new();
    let mut out = Out {
        messages: Vec::new(),
        stats: &stats,
        first: first_stats_index,
    };
    for (d, dev) in bus.devices.iter().enumerate() {
        let mut ok = true;
        for (p, point) in dev.points.iter().enumerate() {
            let Some(g) = &point.gpio else { continue };
            let setup = match &g.mode {
                GpioMode::Input { pull, .. } => backend.input(g.pin, *pull, edge_tx.clone()),
                GpioMode::Output { initial, .. } => backend.output(g.pin, *initial != g.active_low),
            };
            match setup {
                Ok(()) => lines.push(Line {
                    device: d,
                    point: p,
                    pin: g.pin,
                    active_low: g.active_low,
                    state: PointState::default(),
                    settle_at: None,
                    pulse_end: None,
                    heartbeat_at: None,
                }),
                Err(e) => {
                    error!(device = %dev.id, topic = %point.topic, error = %e, "Cannot set up GPIO line.");
                    ok = false;
                }
            }
        }
        let st = &stats.devices[first_stats_index + d];
        let topic = model.availability_topic(&dev.id);
        if ok {
            st.set_availability(Availability::Online);
            out.messages.push(availability(&topic, true));
        } else {
            warn!(device = %dev.id, bus = %bus.id, "Device offline.");
            st.set_availability(Availability::Offline);
            out.messages.push(availability(&topic, false));
        }
    }
    drop(edge_tx);
    info!(bus = %bus.id, backend = backend.name(), lines = lines.len(), "GPIO bus started.");
    let index: HashMap<u8, usize> = lines.iter().enumerate().map(|(i, l)| (l.pin, i)).collect();
    let now = TokioInstant::now();
    for line in &mut lines {
        publish_level(&bus, &mut *backend, line, now, true, &mut out);
    }
    out.send(&tx).await;

    loop {
        let next = lines
            .iter()
            .flat_map(|l| [l.settle_at, l.pulse_end, l.heartbeat_at])
            .flatten()
            .min();
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            // A closed channel disables the branch (no busy loop).
            Some(first) = commands.recv() => {
                let batch = commands::drain(first, &mut commands);
                let batch = commands::collapse(batch, |c| bus.devices.get(c.device).and_then(|d| d.points.get(c.point)), &mut out.messages);
                for c in batch {
                    if let Some(i) = lines.iter().position(|l| l.device == c.device && l.point == c.point) {
                        command(&bus, &mut *backend, &mut lines[i], &c, &mut out);
                    }
                }
            }
            Some(edge) = edges.recv() => {
                let now = TokioInstant::now();
                on_edge(&bus, &index, &mut lines, edge, now, &mut out);
                // Take every edge already waiting before publishing.
                while let Ok(edge) = edges.try_recv() {
                    on_edge(&bus, &index, &mut lines, edge, now, &mut out);
                }
            }
            () = sleep_until_opt(next) => {
                let now = TokioInstant::now();
                for line in &mut lines {
                    if line.settle_at.is_some_and(|t| t <= now) {
                        line.settle_at = None;
                        publish_level(&bus, &mut *backend, line, now, false, &mut out);
                    }
                    if line.pulse_end.is_some_and(|t| t <= now) {
                        line.pulse_end = None;
                        let point = point_of(&bus, line);
                        debug!(topic = %point.topic, "Pulse over.");
                        if let Err(e) = backend.write(line.pin, line.active_low) {
                            error!(topic = %point.topic, error = %e, "Cannot end the pulse.");
                        }
                        publish_level(&bus, &mut *backend, line, now, true, &mut out);
                    }
                    if line.heartbeat_at.is_some_and(|t| t <= now) {
                        publish_level(&bus, &mut *backend, line, now, true, &mut out);
                    }
                }
            }
        }
        out.send(&tx).await;
    }

    // Shutdown: answer the commands still queued, leave every output as configured and
    // publish its final state.
    commands::refuse_queued(
        &mut commands,
        |c| {
            bus.devices
                .get(c.device)
                .and_then(|d| d.points.get(c.point))
        },
        &mut out.messages,
    );
    let now = TokioInstant::now();
    for line in &mut lines {
        let point = point_of(&bus, line);
        let level = match &point.gpio.as_ref().map(|g| &g.mode) {
            Some(GpioMode::Output { on_shutdown, .. }) => match on_shutdown {
                // A pulse in progress never outlives the gateway.
                OnShutdown::Keep if line.pulse_end.is_some() => Some(line.active_low),
                OnShutdown::Keep => None,
                OnShutdown::Off => Some(line.active_low),
                OnShutdown::On => Some(!line.active_low),
                OnShutdown::Low => Some(false),
                OnShutdown::High => Some(true),
            },
            _ => None,
        };
        let output = matches!(
            point.gpio.as_ref().map(|g| &g.mode),
            Some(GpioMode::Output { .. })
        );
        if let Err(e) = backend.release(line.pin, level) {
            error!(topic = %point.topic, error = %e, "Cannot release GPIO line.");
        }
        if output && level.is_some() {
            line.pulse_end = None;
            publish_level(&bus, &mut *backend, line, now, true, &mut out);
        }
    }
    out.send(&tx).await;
    debug!(bus = %bus.id, "GPIO bus stopped.");
}

async fn sleep_until_opt(t: Option<TokioInstant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn point_of<'a>(bus: &'a Bus, line: &Line) -> &'a Point {
    &bus.devices[line.device].points[line.point]
}

fn debounce_of(point: &Point) -> std::time::Duration {
    match point.gpio.as_ref().map(|g| &g.mode) {
        Some(GpioMode::Input { debounce, .. }) => *debounce,
        _ => std::time::Duration::ZERO,
    }
}

fn on_edge(
    bus: &Bus,
    index: &HashMap<u8, usize>,
    lines: &mut [Line],
    edge: Edge,
    now: TokioInstant,
    out: &mut Out<'_>,
) {
    let Some(&i) = index.get(&edge.pin) else {
        return;
    };
    let line = &mut lines[i];
    let point = point_of(bus, line);
    let debounce = debounce_of(point);
    if debounce.is_zero() {
        // Every edge counts: publish the level the edge reported.
        let on = edge.level != line.active_low;
        publish(point, line, on, now, false, out);
    } else {
        // (Re)start the quiet period: the level is read when it is over.
        line.settle_at = Some(now + debounce);
    }
}

/// Read the line and publish its logical state (`force`: even when unchanged).
fn publish_level(
    bus: &Bus,
    backend: &mut dyn GpioBackend,
    line: &mut Line,
    now: TokioInstant,
    force: bool,
    out: &mut Out<'_>,
) {
    let point = point_of(bus, line);
    match backend.read(line.pin) {
        Ok(level) => publish(point, line, level != line.active_low, now, force, out),
        Err(e) => warn!(topic = %point.topic, error = %e, "Cannot read GPIO line."),
    }
}

fn publish(
    point: &Point,
    line: &mut Line,
    on: bool,
    now: TokioInstant,
    force: bool,
    out: &mut Out<'_>,
) {
    let r = reading(point, &Value::Bool(on));
    let publish = if force {
        line.state.force(&r, Instant::now());
        true
    } else {
        line.state.should_publish(point, &r, Instant::now())
    };
    if publish {
        line.heartbeat_at = point.heartbeat.map(|h| now + h);
        out.count(line.device);
        out.messages
            .push(Outgoing::value(point, payload(point, r, SystemTime::now())));
    }
}

fn command(
    bus: &Bus,
    backend: &mut dyn GpioBackend,
    line: &mut Line,
    c: &Command,
    out: &mut Out<'_>,
) {
    let point = point_of(bus, line);
    let on = matches!(c.value, Value::Bool(true));
    let pulse = match point.gpio.as_ref().map(|g| &g.mode) {
        Some(GpioMode::Output { pulse, .. }) => *pulse,
        _ => None,
    };
    let now = TokioInstant::now();
    let outcome = backend
        .write(line.pin, on != line.active_low)
        .and_then(|()| backend.read(line.pin));
    match outcome {
        Ok(level) => {
            line.pulse_end = match pulse {
                Some(p) if on => Some(now + p),
                _ => None,
            };
            let state = level != line.active_low;
            publish(point, line, state, now, true, out);
            let r = reading(point, &Value::Bool(state));
            out.messages
                .push(commands::result(point, Ok(r.json()), c.id.as_ref()));
            info!(topic = %point.topic, value = %r.text(), pulse = ?pulse.filter(|_| on), "Command written.");
        }
        Err(e) => {
            warn!(topic = %point.topic, error = %e, "Command failed.");
            out.messages.push(commands::result(
                point,
                Err(CommandError::Gpio(e.to_string())),
                c.id.as_ref(),
            ));
        }
    }
}

/// Messages of one turn of a bus loop, and the counters they are counted in.
pub(crate) struct Out<'a> {
    /// The messages.
    pub(crate) messages: Vec<Outgoing>,
    /// The counters.
    pub(crate) stats: &'a Stats,
    /// Stats index of the bus's first device.
    pub(crate) first: usize,
}

impl Out<'_> {
    /// Send the messages as one batch (nothing when there are none).
    pub(crate) async fn send(&mut self, tx: &mpsc::Sender<Batch>) {
        if !self.messages.is_empty() {
            let _ = tx.send(std::mem::take(&mut self.messages)).await;
        }
    }

    /// Count a value published for `device` (index within the bus).
    pub(crate) fn count(&self, device: usize) {
        if let Some(st) = self.stats.devices.get(self.first + device) {
            st.published.fetch_add(1, Relaxed);
        }
    }
}
