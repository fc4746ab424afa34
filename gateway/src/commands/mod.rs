//! Commands: a payload on `<topic>/set` is parsed, checked against the point (writable,
//! type, named values, min/max, scale/offset, the type's range) and only then queued to
//! the bus task that owns the device. Invalid commands never reach the device; the
//! outcome of every command is published on `<topic>/set/result` (not retained). Reads on
//! demand (`<topic>/get`, `get.rs`) take the same road to the bus task.

mod commission;
mod error;
mod get;
mod value;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
};

pub use error::{parse_bool, parse_number, CommandError};
use fieldlink_drivers::value::Value;
pub use get::{get_result_on, Get, GetError};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
pub(crate) use value::value_range;
pub use value::{check_raw, parse_payload, to_raw};

use crate::{
    health::{Availability, DeviceStats, Stats},
    model::{Model, Point},
    publish::Outgoing,
    topics::PointRef,
};

/// A validated command for a bus task.
#[derive(Clone, Debug)]
pub struct Command {
    /// Device index within the bus.
    pub device: usize,
    /// Point index within the device.
    pub point: usize,
    /// The point's topic (a bus task that was reconfigured meanwhile finds the point by
    /// it).
    pub topic: String,
    /// The configuration generation the command was checked against.
    pub generation: u64,
    /// The raw value to encode (after the inverse of scale/offset).
    pub value: Value,
    /// The caller's id, echoed in the result.
    pub id: Option<serde_json::Value>,
    /// Who waits for the outcome besides `<topic>/set/result` (a Modbus master's write
    /// through `modbus_server`); every place that answers a command completes it.
    pub reply: Option<Reply>,
}

/// The outcome of a command for a caller that waits for it: `Ok` once the device
/// acknowledged the write (the read-back aside). Clones share it; the first answer wins.
#[derive(Clone)]
pub struct Reply(Arc<Mutex<Option<ReplySender>>>);

/// Where a [`Reply`]'s outcome goes.
type ReplySender = oneshot::Sender<Result<(), CommandError>>;

impl Reply {
    /// A reply and where its outcome arrives (an error when the command is dropped
    /// unanswered).
    pub fn new() -> (Reply, oneshot::Receiver<Result<(), CommandError>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// Send `outcome` (once; later answers are ignored).
    fn complete(&self, outcome: Result<(), CommandError>) {
        let tx = match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl Command {
    /// Answer the command: its `<topic>/set/result` message, and its [`Reply`] completed.
    pub fn answer(&self, outcome: Result<serde_json::Value, CommandError>) -> Outgoing {
        self.complete(&outcome);
        result_on(&self.topic, outcome, self.id.as_ref())
    }

    /// Complete the [`Reply`] of the command, if it has one, with `outcome`.
    pub fn complete<T>(&self, outcome: &Result<T, CommandError>) {
        if let Some(r) = &self.reply {
            r.complete(outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        }
    }
}

/// What a bus task is asked to do, in the order asked.
#[derive(Debug)]
pub enum Request {
    /// Write a command (`<topic>/set`).
    Set(Command),
    /// Read a point now (`<topic>/get`).
    Get(Get),
    /// A commissioning request (`<base>/bus/<id>/request`), run between polls.
    Commission(Box<crate::commission::gateway::Job>),
}

/// Routes `<topic>/set` and `<topic>/get` messages to the bus tasks. Clones share the
/// routes, which a reload replaces ([`Router::update`]).
#[derive(Clone)]
pub struct Router {
    routes: Arc<RwLock<Arc<Routes>>>,
    /// A reload is restarting buses: a closed bus channel means that, not shutdown.
    restarting: Arc<AtomicBool>,
}

/// The routes of one configuration generation.
struct Routes {
    generation: u64,
    model: Arc<Model>,
    commands: HashMap<String, PointRef>,
    /// Counters of every device, by the routes' `stats_index`.
    devices: Vec<Arc<DeviceStats>>,
    buses: Vec<mpsc::Sender<Request>>,
    /// Every point, sorted by topic: where a `<topic>/get` goes (reads on demand).
    reads: Vec<PointRef>,
}

impl Router {
    /// A router for the writable points of `model` (and reads of every point); `buses[i]`
    /// feeds bus `i`'s task.
    pub fn new(model: Arc<Model>, buses: Vec<mpsc::Sender<Request>>, stats: Arc<Stats>) -> Self {
        let routes = Routes::new(0, model, buses, &stats);
        Router {
            routes: Arc::new(RwLock::new(Arc::new(routes))),
            restarting: Arc::default(),
        }
    }

    fn current(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The configuration generation commands are checked against now.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Route by a reloaded `model` from now on (`buses[i]` feeds its bus `i`); returns the
    /// new generation. `stats` must already follow the model ([`Stats::update`]).
    pub fn update(
        &self,
        model: Arc<Model>,
        buses: Vec<mpsc::Sender<Request>>,
        stats: &Stats,
    ) -> u64 {
        let generation = self.generation() + 1;
        let routes = Arc::new(Routes::new(generation, model, buses, stats));
        match self.routes.write() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
        generation
    }

    /// While a reload restarts buses, a command for one of them is refused as such.
    pub fn set_restarting(&self, on: bool) {
        self.restarting.store(on, Relaxed);
    }

    /// The topics to subscribe to: `<topic>/set` of every writable point and `<topic>/get`
    /// of every point, nothing else.
    pub fn subscriptions(&self) -> Vec<String> {
        let routes = self.current();
        let gets = routes.model.points().map(Point::get_topic);
        let mut v: Vec<String> = routes.commands.keys().cloned().chain(gets).collect();
        v.sort();
        v
    }

    /// Handle one incoming message. Returns the result message when the command (or read)
    /// was rejected here; accepted ones are answered by the bus task after the write (or
    /// read).
    pub fn handle(&self, topic: &str, payload: &[u8]) -> Option<Outgoing> {
        let routes = self.current();
        if let Some(route) = crate::topics::find_point(&routes.model, &routes.reads, topic) {
            return self.get(&routes, route, payload);
        }
        let route = routes.commands.get(topic)?;
        let device = &routes.model.buses[route.bus].devices[route.device];
        let point = &device.points[route.point];
        let (value, id) = match parse_payload(payload) {
            Ok(v) => v,
            Err((e, id)) => return Some(result(point, Err(e), id.as_ref())),
        };
        let raw = match to_raw(point, &value) {
            Ok(r) => r,
            Err(e) => return Some(result(point, Err(e), id.as_ref())),
        };
        self.send(&routes, route, raw, id, None)
    }

    /// Route a write of point `point` of device `device` (by id) with raw value `raw`,
    /// checked already against `checked` (that point's definition), as [`Router::handle`]
    /// routes a `<topic>/set`: to the same queue, refused here the same ways (device
    /// offline, queue full, bus task ended), answered by the bus task after the write.
    /// A point that is no longer defined as `checked` (a reload came between) is refused
    /// as [`CommandError::Reloaded`]. Returns the result message of a refusal; `reply` is
    /// completed in every case.
    pub(crate) fn set_point(
        &self,
        device: &str,
        point: usize,
        checked: &Point,
        raw: Value,
        id: Option<serde_json::Value>,
        reply: Reply,
    ) -> Option<Outgoing> {
        let routes = self.current();
        let route = routes.commands.get(&checked.set_topic()).filter(|r| {
            let d = &routes.model.buses[r.bus].devices[r.device];
            d.id == device && r.point == point && d.points[r.point] == *checked
        });
        let Some(route) = route else {
            reply.complete(Err(CommandError::Reloaded));
            return Some(result(checked, Err(CommandError::Reloaded), id.as_ref()));
        };
        self.send(&routes, route, raw, id, Some(reply))
    }

    /// Queue a checked command for the bus task of `route`, or refuse it: the result
    /// message of a refusal (its reply completed).
    fn send(
        &self,
        routes: &Routes,
        route: &PointRef,
        raw: Value,
        id: Option<serde_json::Value>,
        reply: Option<Reply>,
    ) -> Option<Outgoing> {
        let device = &routes.model.buses[route.bus].devices[route.device];
        let point = &device.points[route.point];
        let cmd = Command {
            device: route.device,
            point: route.point,
            topic: point.topic.clone(),
            generation: routes.generation,
            value: raw,
            id,
            reply,
        };
        // A device that is only written (never polled) comes back through a write.
        let offline = device.polled()
            && routes
                .devices
                .get(route.stats_index)
                .is_some_and(|s| s.availability() == Availability::Offline);
        if offline {
            return Some(cmd.answer(Err(CommandError::Offline(device.id.clone()))));
        }
        match routes.buses[route.bus].try_send(Request::Set(cmd)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(Request::Set(cmd))) => {
                Some(cmd.answer(Err(CommandError::QueueFull)))
            }
            // The bus task has ended: a reload restarts it, or the gateway is stopping.
            Err(mpsc::error::TrySendError::Closed(Request::Set(cmd))) => {
                let e = if self.restarting.load(Relaxed) {
                    CommandError::BusRestarting
                } else {
                    CommandError::ShuttingDown
                };
                Some(cmd.answer(Err(e)))
            }
            // Only a `Set` was sent.
            Err(_) => None,
        }
    }
}

impl Routes {
    fn new(
        generation: u64,
        model: Arc<Model>,
        buses: Vec<mpsc::Sender<Request>>,
        stats: &Stats,
    ) -> Routes {
        Routes {
            generation,
            commands: crate::topics::Contract::new(&model).commands,
            devices: stats.devices(),
            reads: crate::topics::points_by_topic(&model),
            model,
            buses,
        }
    }
}

/// `first` and every request already queued behind it.
pub fn drain(first: Request, rx: &mut mpsc::Receiver<Request>) -> Vec<Request> {
    let mut batch = vec![first];
    while let Ok(c) = rx.try_recv() {
        batch.push(c);
    }
    batch
}

/// Collapse a batch of queued commands: several for the same point keep only the newest;
/// each one superseded is answered on its result topic (pushed to `messages`).
pub fn collapse<'a>(
    batch: Vec<Command>,
    point_of: impl Fn(&Command) -> Option<&'a Point>,
    messages: &mut Vec<Outgoing>,
) -> Vec<Command> {
    let mut run: Vec<Command> = Vec::new();
    for c in batch {
        if let Some(old) = run
            .iter_mut()
            .find(|o| o.device == c.device && o.point == c.point)
        {
            old.complete::<()>(&Err(CommandError::Superseded));
            if let Some(point) = point_of(old) {
                messages.push(result(
                    point,
                    Err(CommandError::Superseded),
                    old.id.as_ref(),
                ));
            }
            *old = c;
        } else {
            run.push(c);
        }
    }
    run
}

/// The `<topic>/set/result` message.
pub fn result(
    point: &Point,
    outcome: Result<serde_json::Value, CommandError>,
    id: Option<&serde_json::Value>,
) -> Outgoing {
    result_on(&point.topic, outcome, id)
}

/// The `<topic>/set/result` message of point topic `topic`.
pub fn result_on(
    topic: &str,
    outcome: Result<serde_json::Value, CommandError>,
    id: Option<&serde_json::Value>,
) -> Outgoing {
    reply(
        crate::topics::Topics::set_result(topic),
        outcome.map_err(|e| e.to_string()),
        id,
    )
}

/// A result message on `topic`: `{"ok":true,"value":..}` or `{"ok":false,"error":..}`,
/// with the caller's `id`.
fn reply(
    topic: String,
    outcome: Result<serde_json::Value, String>,
    id: Option<&serde_json::Value>,
) -> Outgoing {
    let mut body = match outcome {
        Ok(v) => json!({"ok": true, "value": v}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    if let (Some(id), Some(map)) = (id, body.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    Outgoing {
        topic,
        payload: body.to_string().into_bytes(),
        retain: false,
        // QoS 0: a PUBACK from the embedded broker (which does not set TCP_NODELAY)
        // would hold back the next command to us by a delayed ACK (~40 ms).
        qos: 0,
        slot: None,
    }
}

/// The error-text prefixes README lists after `heading` (each `quoted` text of the list up
/// to its first `…`): the result texts' tests check every text against them.
#[cfg(test)]
pub(crate) fn readme_prefixes(heading: &str) -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let list = readme
        .split(heading)
        .nth(1)
        .and_then(|rest| rest.split("\n\n").nth(1))
        .unwrap_or_else(|| panic!("README lists the texts after {heading:?}"));
    list.lines()
        .filter(|l| l.starts_with("- `"))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .map(|p| {
            p.split('…')
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_string()
        })
        .filter(|p| !p.is_empty())
        .collect()
}
