//! GPIO buses: what the board's lines supply to the device actor.
//!
//! Inputs are interrupt-driven: the backend delivers every edge, and a new state is
//! published once the line has held it for the point's `debounce` (so a bouncing contact
//! publishes one change, and a glitch that returns to the old level publishes nothing).
//! A point's `heartbeat` re-reads the line and republishes its state.
//!
//! Outputs are set to their `initial` state at start, follow `<topic>/set` commands
//! (read back and published, then answered on `<topic>/set/result`), switch off again
//! after `pulse` for momentary outputs, and are left as `on_shutdown` says when the
//! gateway stops. Logical states honour `active_low` throughout. Nothing is polled; a
//! `<topic>/get` reads the line at once.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use fieldlink_drivers::{
    gpio::{Edge, GpioBackend},
    value::Value,
};
use tokio::{sync::mpsc, time::Instant as TokioInstant};
use tracing::{debug, error, info, warn};

use super::{actor, BusIo, Cx, Driver, Polled};
use crate::{
    commands::{Command, CommandError, GetError},
    model::{Bus, GpioMode, GpioPoint, Model, OnShutdown, Point},
    publish::{reading, Reading},
};

/// Run a gpio bus until shutdown, with `backend` driving the lines.
pub async fn run_gpio(
    model: Arc<Model>,
    bus: Arc<Bus>,
    first_stats_index: usize,
    backend: Box<dyn GpioBackend>,
    io: BusIo,
) {
    let (edge_tx, edges) = mpsc::unbounded_channel::<Edge>();
    let driver = Gpio {
        backend,
        edge_tx: Some(edge_tx),
        edges,
        lines: Vec::new(),
        index: HashMap::new(),
    };
    actor::run(model, bus, first_stats_index, driver, io).await;
}

/// The board's controller and the lines in use.
struct Gpio {
    backend: Box<dyn GpioBackend>,
    /// Handed to every input (at start, and to new ones after a reload).
    edge_tx: Option<mpsc::UnboundedSender<Edge>>,
    edges: mpsc::UnboundedReceiver<Edge>,
    lines: Vec<Line>,
    /// Line index by pin.
    index: HashMap<u8, usize>,
}

/// One line in use.
struct Line {
    device: usize,
    point: usize,
    gpio: GpioPoint,
    /// Input: publish the level once it has been stable until then.
    settle_at: Option<TokioInstant>,
    /// Output with `pulse`: switch off then.
    pulse_end: Option<TokioInstant>,
    /// Republish (re-read) then.
    heartbeat_at: Option<TokioInstant>,
    /// The point's heartbeat.
    heartbeat: Option<Duration>,
}

impl Driver for Gpio {
    type Event = Edge;

    fn endpoint(&self) -> String {
        format!("gpio ({})", self.backend.name())
    }

    fn start(&mut self, cx: &mut Cx) {
        let devices: Vec<usize> = (0..cx.bus.devices.len()).collect();
        self.set_up(&devices, &HashSet::new(), cx);
    }

    fn reconfigure(&mut self, kept: &[Option<usize>], cx: &mut Cx) {
        let now = TokioInstant::now();
        // Edges that came for the lines as they were: applied below to the lines that
        // stay, dropped for the others (a pin set up again starts from its level).
        let pending: Vec<Edge> = std::iter::from_fn(|| self.edges.try_recv().ok()).collect();
        let bus = cx.bus.clone();
        // A line stays when its device is kept, or when a new or changed device has the
        // same line (pin and settings): an edit elsewhere in a device must not toggle
        // its outputs.
        let mut taken: HashSet<(usize, usize)> = HashSet::new();
        let mut left = Vec::new();
        for (i, line) in self.lines.iter_mut().enumerate() {
            if let Some(j) = kept.iter().position(|k| *k == Some(line.device)) {
                line.device = j;
                taken.insert((j, line.point));
                continue;
            }
            let same_line = bus
                .devices
                .iter()
                .enumerate()
                .filter(|(j, _)| kept[*j].is_none())
                .flat_map(|(j, d)| d.points.iter().enumerate().map(move |(p, pt)| (j, p, pt)))
                .find(|(j, p, pt)| pt.gpio() == Some(&line.gpio) && !taken.contains(&(*j, *p)));
            match same_line {
                Some((j, p, pt)) => {
                    (line.device, line.point, line.heartbeat) = (j, p, pt.heartbeat);
                    taken.insert((j, p));
                }
                None => left.push(i),
            }
        }
        let staying: HashSet<u8> = self
            .lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !left.contains(i))
            .map(|(_, l)| l.gpio.pin)
            .collect();
        for &i in left.iter().rev() {
            self.release(i, now, None);
            self.lines.remove(i);
        }
        let new: Vec<usize> = (0..kept.len()).filter(|&j| kept[j].is_none()).collect();
        self.set_up(&new, &taken, cx);
        for e in pending.into_iter().filter(|e| staying.contains(&e.pin)) {
            self.on_edge(e, now, cx);
        }
    }

    fn polls(&self, _d: usize) -> bool {
        false
    }

    async fn poll(&mut self, _d: usize, _cx: &mut Cx) -> Polled {
        Polled::Skipped
    }

    async fn write(&mut self, c: &Command, cx: &mut Cx) -> Result<Reading, CommandError> {
        let Some(i) = self
            .lines
            .iter()
            .position(|l| l.device == c.device && l.point == c.point)
        else {
            return Err(CommandError::Gpio("the line could not be set up".into()));
        };
        let on = matches!(c.value, Value::Bool(true));
        let line = &mut self.lines[i];
        let pin = line.gpio.pin;
        let low = line.gpio.active_low;
        let level = self
            .backend
            .write(pin, on != low)
            .and_then(|()| self.backend.read(pin))
            .map_err(|e| CommandError::Gpio(e.to_string()))?;
        let now = TokioInstant::now();
        let pulse = match &line.gpio.mode {
            GpioMode::Output { pulse, .. } => *pulse,
            GpioMode::Input { .. } => None,
        };
        line.pulse_end = pulse.filter(|_| on).map(|p| now + p);
        // The actor publishes the state: the heartbeat counts from now.
        line.heartbeat_at = line.heartbeat.map(|h| now + h);
        if let Some(p) = pulse.filter(|_| on) {
            debug!(pin, pulse = ?p, "Pulse started.");
        }
        match cx.point(c.device, c.point) {
            Some(point) => Ok(reading(point, &Value::Bool(level != low))),
            None => Ok(Reading::Bool(level != low)),
        }
    }

    async fn read(
        &mut self,
        d: usize,
        points: &[usize],
        cx: &mut Cx,
    ) -> Vec<Result<Reading, GetError>> {
        let now = TokioInstant::now();
        points
            .iter()
            .map(|&p| self.read_line(d, p, now, cx))
            .collect()
    }

    async fn event(&mut self) -> Edge {
        match self.edges.recv().await {
            Some(e) => e,
            // Every input's sender is gone (no inputs): no more edges.
            None => std::future::pending().await,
        }
    }

    fn on_event(&mut self, edge: Edge, cx: &mut Cx) {
        let now = TokioInstant::now();
        self.on_edge(edge, now, cx);
        // Take every edge already waiting before publishing.
        while let Ok(edge) = self.edges.try_recv() {
            self.on_edge(edge, now, cx);
        }
    }

    fn next_timer(&self) -> Option<TokioInstant> {
        self.lines
            .iter()
            .flat_map(|l| [l.settle_at, l.pulse_end, l.heartbeat_at])
            .flatten()
            .min()
    }

    fn on_timer(&mut self, now: TokioInstant, cx: &mut Cx) {
        for i in 0..self.lines.len() {
            let line = &mut self.lines[i];
            if line.settle_at.is_some_and(|t| t <= now) {
                line.settle_at = None;
                self.publish_level(i, now, false, cx);
            }
            let line = &mut self.lines[i];
            if line.pulse_end.is_some_and(|t| t <= now) {
                line.pulse_end = None;
                let (pin, low) = (line.gpio.pin, line.gpio.active_low);
                debug!(pin, "Pulse over.");
                if let Err(e) = self.backend.write(pin, low) {
                    error!(pin, error = %e, "Cannot end the pulse.");
                }
                self.publish_level(i, now, true, cx);
            }
            let line = &mut self.lines[i];
            if line.heartbeat_at.is_some_and(|t| t <= now) {
                // Re-armed first: a line that cannot be read is tried again next period,
                // not in a loop.
                line.heartbeat_at = line.heartbeat.map(|h| now + h);
                self.publish_level(i, now, true, cx);
            }
        }
    }

    fn stop(&mut self, cx: &mut Cx) {
        // Leave every output as configured and publish its final state.
        let now = TokioInstant::now();
        for i in 0..self.lines.len() {
            self.release(i, now, Some(&mut *cx));
        }
        info!(lines = self.lines.len(), "GPIO lines released.");
    }
}

impl Gpio {
    /// Set up the lines of devices `devices` of the bus (but the (device, point) lines
    /// in `running`, which are set up already) and publish their levels.
    fn set_up(&mut self, devices: &[usize], running: &HashSet<(usize, usize)>, cx: &mut Cx) {
        let Some(edge_tx) = self.edge_tx.clone() else {
            return;
        };
        let bus = cx.bus.clone();
        let first_new = self.lines.len();
        for &d in devices {
            let dev = &bus.devices[d];
            let mut ok = true;
            for (p, point) in dev.points.iter().enumerate() {
                let Some(g) = point.gpio() else { continue };
                if running.contains(&(d, p)) {
                    continue;
                }
                let setup = match &g.mode {
                    GpioMode::Input { pull, .. } => {
                        self.backend.input(g.pin, *pull, edge_tx.clone())
                    }
                    GpioMode::Output { initial, .. } => {
                        self.backend.output(g.pin, *initial != g.active_low)
                    }
                };
                match setup {
                    Ok(()) => self.lines.push(Line {
                        device: d,
                        point: p,
                        gpio: g.clone(),
                        settle_at: None,
                        pulse_end: None,
                        heartbeat_at: None,
                        heartbeat: point.heartbeat,
                    }),
                    Err(e) => {
                        error!(device = %dev.id, topic = %point.topic, error = %e, "Cannot set up GPIO line.");
                        ok = false;
                    }
                }
            }
            cx.set_online(d, ok, (!ok).then_some("a line could not be set up"));
        }
        self.index = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.gpio.pin, i))
            .collect();
        let now = TokioInstant::now();
        for i in first_new..self.lines.len() {
            self.publish_level(i, now, true, cx);
        }
    }

    /// Release line `i` as its `on_shutdown` says; with `cx`, publish an output's final
    /// state (a line a reload removes is not published: its topic is cleared).
    fn release(&mut self, i: usize, now: TokioInstant, cx: Option<&mut Cx>) {
        let line = &self.lines[i];
        let low = line.gpio.active_low;
        let (output, level) = match &line.gpio.mode {
            GpioMode::Output { on_shutdown, .. } => (
                true,
                match on_shutdown {
                    // A pulse in progress never outlives the gateway.
                    OnShutdown::Keep if line.pulse_end.is_some() => Some(low),
                    OnShutdown::Keep => None,
                    OnShutdown::Off => Some(low),
                    OnShutdown::On => Some(!low),
                    OnShutdown::Low => Some(false),
                    OnShutdown::High => Some(true),
                },
            ),
            GpioMode::Input { .. } => (false, None),
        };
        if let Err(e) = self.backend.release(line.gpio.pin, level) {
            error!(pin = line.gpio.pin, error = %e, "Cannot release GPIO line.");
        }
        if let Some(cx) = cx.filter(|_| output && level.is_some()) {
            self.lines[i].pulse_end = None;
            self.publish_level(i, now, true, cx);
        }
    }

    fn on_edge(&mut self, edge: Edge, now: TokioInstant, cx: &mut Cx) {
        let Some(&i) = self.index.get(&edge.pin) else {
            return;
        };
        let line = &mut self.lines[i];
        let debounce = match &line.gpio.mode {
            GpioMode::Input { debounce, .. } => *debounce,
            GpioMode::Output { .. } => Duration::ZERO,
        };
        if debounce.is_zero() {
            // Every edge counts: publish the level the edge reported.
            let on = edge.level != line.gpio.active_low;
            self.publish(i, on, now, false, cx);
        } else {
            // (Re)start the quiet period: the level is read when it is over.
            line.settle_at = Some(now + debounce);
        }
    }

    /// Read the line of point `p` of device `d` now, for `<topic>/get` (the actor
    /// publishes the reading: its heartbeat counts from now).
    fn read_line(
        &mut self,
        d: usize,
        p: usize,
        now: TokioInstant,
        cx: &Cx,
    ) -> Result<Reading, GetError> {
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.device == d && l.point == p)
            .ok_or_else(|| GetError::Gpio("the line could not be set up".into()))?;
        let level = self
            .backend
            .read(line.gpio.pin)
            .map_err(|e| GetError::Gpio(e.to_string()))?;
        line.heartbeat_at = line.heartbeat.map(|h| now + h);
        let on = level != line.gpio.active_low;
        Ok(match cx.point(d, p) {
            Some(point) => reading(point, &Value::Bool(on)),
            None => Reading::Bool(on),
        })
    }

    /// Read line `i` and publish its logical state (`force`: even when unchanged).
    fn publish_level(&mut self, i: usize, now: TokioInstant, force: bool, cx: &mut Cx) {
        let pin = self.lines[i].gpio.pin;
        match self.backend.read(pin) {
            Ok(level) => {
                let on = level != self.lines[i].gpio.active_low;
                self.publish(i, on, now, force, cx);
            }
            Err(e) => {
                let topic = topic_of(cx, &self.lines[i]);
                warn!(topic = %topic, error = %e, "Cannot read GPIO line.");
            }
        }
    }

    fn publish(&mut self, i: usize, on: bool, now: TokioInstant, force: bool, cx: &mut Cx) {
        let line = &mut self.lines[i];
        let published = if force {
            let r = match cx.point(line.device, line.point) {
                Some(point) => reading(point, &Value::Bool(on)),
                None => return,
            };
            cx.force(line.device, line.point, r);
            true
        } else {
            cx.value(
                line.device,
                line.point,
                &Value::Bool(on),
                now,
                std::time::SystemTime::now(),
            )
        };
        if published {
            line.heartbeat_at = line.heartbeat.map(|h| now + h);
        }
    }
}

fn topic_of(cx: &Cx, line: &Line) -> String {
    cx.point(line.device, line.point)
        .map(|p: &Point| p.topic.clone())
        .unwrap_or_default()
}
