//! Commands: a payload on `<topic>/set` is parsed, checked against the point (writable,
//! type, named values, min/max, scale/offset, the type's range) and only then queued to
//! the bus task that owns the device. Invalid commands never reach the device; the
//! outcome of every command is published on `<topic>/set/result` (not retained).

mod error;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, RwLock,
    },
};

pub use error::{parse_bool, parse_number, CommandError};
use fieldlink_drivers::{modbus::codec, value::Value};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    health::{Availability, DeviceStats, Stats},
    model::{Model, Point, ValueType},
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
}

/// Routes `<topic>/set` messages to the bus tasks. Clones share the routes, which a
/// reload replaces ([`Router::update`]).
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
    buses: Vec<mpsc::Sender<Command>>,
}

impl Router {
    /// A router for the writable points of `model`; `buses[i]` feeds bus `i`'s task.
    pub fn new(model: Arc<Model>, buses: Vec<mpsc::Sender<Command>>, stats: Arc<Stats>) -> Self {
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
        buses: Vec<mpsc::Sender<Command>>,
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

    /// The topics to subscribe to: `<topic>/set` of every writable point, nothing else.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.current().commands.keys().cloned().collect();
        v.sort();
        v
    }

    /// Handle one incoming message. Returns the result message when the command was
    /// rejected here; accepted commands are answered by the bus task after the write.
    pub fn handle(&self, topic: &str, payload: &[u8]) -> Option<Outgoing> {
        let routes = self.current();
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
        let offline = routes
            .devices
            .get(route.stats_index)
            .is_some_and(|s| s.availability() == Availability::Offline);
        if offline {
            return Some(result(
                point,
                Err(CommandError::Offline(device.id.clone())),
                id.as_ref(),
            ));
        }
        let cmd = Command {
            device: route.device,
            point: route.point,
            topic: point.topic.clone(),
            generation: routes.generation,
            value: raw,
            id: id.clone(),
        };
        match routes.buses[route.bus].try_send(cmd) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Some(result(point, Err(CommandError::QueueFull), id.as_ref()))
            }
            // The bus task has ended: a reload restarts it, or the gateway is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let e = if self.restarting.load(Relaxed) {
                    CommandError::BusRestarting
                } else {
                    CommandError::ShuttingDown
                };
                Some(result(point, Err(e), id.as_ref()))
            }
        }
    }
}

impl Routes {
    fn new(
        generation: u64,
        model: Arc<Model>,
        buses: Vec<mpsc::Sender<Command>>,
        stats: &Stats,
    ) -> Routes {
        Routes {
            generation,
            commands: crate::topics::Contract::new(&model).commands,
            devices: stats.devices(),
            model,
            buses,
        }
    }
}

/// Parse a `/set` payload: a plain value (`21.5`, `true`, `ON`) or JSON
/// `{"value": 21.5, "id": "abc"}`.
pub fn parse_payload(
    payload: &[u8],
) -> Result<(serde_json::Value, Option<serde_json::Value>), (CommandError, Option<serde_json::Value>)>
{
    let bad = |why: String| CommandError::Unparsable(why);
    let text = std::str::from_utf8(payload)
        .map_err(|_| (bad("not UTF-8 text".into()), None))?
        .trim();
    if text.is_empty() {
        return Err((bad("empty".into()), None));
    }
    if text.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| (bad(format!("invalid JSON ({e})")), None))?;
        let id = v.get("id").cloned();
        return match v.get("value") {
            Some(value) => Ok((value.clone(), id)),
            None => Err((bad("JSON needs a \"value\" field".into()), id)),
        };
    }
    Ok((serde_json::Value::String(text.to_string()), None))
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else if n.abs() >= 1e15 {
        format!("{n:e}")
    } else {
        n.to_string()
    }
}

/// Check a command value against the point and turn it into the raw value to encode.
pub fn to_raw(point: &Point, value: &serde_json::Value) -> Result<Value, CommandError> {
    use CommandError::{OutOfRange, WrongType};
    if !point.writable {
        return Err(CommandError::NotWritable(format!(
            "point `{}` is not writable",
            point.topic
        )));
    }
    // Named values first (`ON` → 1), exact then case-insensitive.
    let named = value.as_str().and_then(|s| {
        point
            .value_map
            .iter()
            .find(|(k, _)| k == s)
            .or_else(|| {
                point
                    .value_map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(s))
            })
            .map(|(_, v)| *v)
    });
    match point.ty {
        ValueType::Bool => {
            let b = match (named, value) {
                (Some(n), _) => n != 0.0,
                (None, serde_json::Value::Bool(b)) => *b,
                (None, serde_json::Value::Number(n)) if n.as_f64() == Some(0.0) => false,
                (None, serde_json::Value::Number(n)) if n.as_f64() == Some(1.0) => true,
                (None, serde_json::Value::String(s)) => parse_bool(s).ok_or_else(|| {
                    WrongType(format!(
                        "`{s}` is not a boolean (true/false, ON/OFF, 1/0, yes/no, high/low)"
                    ))
                })?,
                (None, other) => return Err(WrongType(format!("{other} is not a boolean"))),
            };
            Ok(Value::Bool(b))
        }
        ValueType::String { len } => match value {
            serde_json::Value::String(s) if s.len() <= usize::from(len) => {
                Ok(Value::Str(s.clone()))
            }
            serde_json::Value::String(s) => Err(OutOfRange(format!(
                "text of {} bytes is longer than the point's {len}",
                s.len()
            ))),
            other => Err(WrongType(format!("{other} is not text"))),
        },
        ty => {
            let v = match (named, value) {
                (Some(n), _) => n,
                (None, serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                (None, serde_json::Value::String(s)) => {
                    match parse_number(s, ty).and_then(|v| v.as_f64()) {
                        Some(v) => v,
                        None => return Err(WrongType(format!("`{s}` is not a number"))),
                    }
                }
                // A bool is not a number, in JSON as in plain text (`true` is refused
                // above as text that does not parse).
                (None, other) => return Err(WrongType(format!("{other} is not a number"))),
            };
            if let Some(max) = point.max {
                if v > max {
                    return Err(CommandError::AboveMax {
                        value: fmt_num(v),
                        max: fmt_num(max),
                    });
                }
            }
            if let Some(min) = point.min {
                if v < min {
                    return Err(CommandError::BelowMin {
                        value: fmt_num(v),
                        min: fmt_num(min),
                    });
                }
            }
            let raw = (v - point.offset) / point.scale;
            if matches!(ty, ValueType::F32 | ValueType::F64) {
                let raw = Value::Float(raw);
                codec::encode(&raw, ty, fieldlink_drivers::modbus::WordOrder::Abcd)
                    .map_err(|_| OutOfRange(format!("value {} does not fit {ty}", fmt_num(v))))?;
                return Ok(raw);
            }
            let r = raw.round();
            if (raw - r).abs() > 1e-6 * r.abs().max(1.0) {
                return Err(OutOfRange(format!(
                    "{} is not a whole multiple of the scale {}",
                    fmt_num(v),
                    fmt_num(point.scale)
                )));
            }
            // The type's own range (e.g. 70000 for a u16), checked here on the number
            // itself, so the text names the real value and the type's limits.
            let (lo, hi) = int_range(ty);
            if r < lo || r > hi {
                let scaled = if point.scale == 1.0 && point.offset == 0.0 {
                    String::new()
                } else {
                    format!(" ({} in the register)", fmt_num(r))
                };
                return Err(OutOfRange(format!(
                    "value {}{scaled} does not fit {ty} ({} to {})",
                    fmt_num(v),
                    fmt_num(lo),
                    fmt_num(hi)
                )));
            }
            Ok(if r > i64::MAX as f64 {
                Value::U64(r as u64)
            } else {
                Value::Int(r as i64)
            })
        }
    }
}

/// The smallest and largest value a command may give point `p` by its type alone, in
/// engineering units (after scale and offset); floats: ±10¹².
pub(crate) fn value_range(p: &Point) -> (f64, f64) {
    if matches!(p.ty, ValueType::F32 | ValueType::F64) {
        return (-1e12, 1e12);
    }
    let (lo, hi) = int_range(p.ty);
    let (a, b) = (lo * p.scale + p.offset, hi * p.scale + p.offset);
    (a.min(b).max(-1e15), a.max(b).min(1e15))
}

/// The smallest and largest value of an integer register type.
fn int_range(ty: ValueType) -> (f64, f64) {
    match ty {
        ValueType::U16 => (0.0, f64::from(u16::MAX)),
        ValueType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        ValueType::U32 => (0.0, f64::from(u32::MAX)),
        ValueType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        ValueType::U64 => (0.0, u64::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    }
}

/// `first` and every command already queued behind it.
pub fn drain(first: Command, rx: &mut mpsc::Receiver<Command>) -> Vec<Command> {
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
    let mut body = match outcome {
        Ok(v) => json!({"ok": true, "value": v}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    if let (Some(id), Some(map)) = (id, body.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    Outgoing {
        topic: format!("{topic}/set/result"),
        payload: body.to_string().into_bytes(),
        retain: false,
        // QoS 0: a PUBACK from the embedded broker (which does not set TCP_NODELAY)
        // would hold back the next command to us by a delayed ACK (~40 ms).
        qos: 0,
        slot: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn point(ty: ValueType) -> Point {
        let mut p = crate::model::test_point(ty);
        p.writable = true;
        p
    }

    fn err(p: &Point, v: serde_json::Value) -> String {
        match to_raw(p, &v) {
            Ok(raw) => panic!("{v} accepted as {raw:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_bool_is_not_a_number_in_any_form() {
        for ty in [ValueType::U16, ValueType::I32, ValueType::F32] {
            let p = point(ty);
            assert_eq!(err(&p, json!(true)), "wrong type: true is not a number");
            assert_eq!(err(&p, json!("true")), "wrong type: `true` is not a number");
        }
        // On a bool point both forms are fine.
        let b = point(ValueType::Bool);
        assert_eq!(to_raw(&b, &json!(true)), Ok(Value::Bool(true)));
        assert_eq!(to_raw(&b, &json!("yes")), Ok(Value::Bool(true)));
        assert_eq!(to_raw(&b, &json!("LOW")), Ok(Value::Bool(false)));
    }

    #[test]
    fn out_of_range_names_the_value_and_the_limits_once() {
        let p = point(ValueType::U16);
        assert_eq!(
            err(&p, json!(70000)),
            "out of range: value 70000 does not fit u16 (0 to 65535)"
        );
        assert_eq!(
            err(&p, json!(3.5e38)),
            "out of range: value 3.5e38 does not fit u16 (0 to 65535)"
        );
        assert_eq!(
            err(&point(ValueType::I16), json!(-40000)),
            "out of range: value -40000 does not fit i16 (-32768 to 32767)"
        );
        let mut scaled = point(ValueType::U16);
        scaled.scale = 0.1;
        assert_eq!(
            err(&scaled, json!(7000)),
            "out of range: value 7000 (70000 in the register) does not fit u16 (0 to 65535)"
        );
        assert_eq!(to_raw(&scaled, &json!(6553.5)), Ok(Value::Int(65535)));
        assert_eq!(
            err(&point(ValueType::F32), json!(1e39)),
            "out of range: value 1e39 does not fit f32"
        );
        assert_eq!(
            to_raw(&point(ValueType::U64), &json!(18446744073709551615u64)),
            Ok(Value::U64(18446744073709551615))
        );
    }

    #[test]
    fn limits_scale_and_names() {
        let mut p = point(ValueType::I16);
        p.max = Some(30.0);
        p.min = Some(5.0);
        assert_eq!(err(&p, json!(31)), "value 31 above max 30");
        assert_eq!(err(&p, json!("4.5")), "value 4.5 below min 5");
        p.scale = 0.5;
        assert_eq!(
            err(&p, json!(10.2)),
            "out of range: 10.2 is not a whole multiple of the scale 0.5"
        );
        assert_eq!(to_raw(&p, &json!(10.5)), Ok(Value::Int(21)));
        let mut named = point(ValueType::U16);
        named.value_map = vec![("ECO".into(), 2.0)];
        assert_eq!(to_raw(&named, &json!("eco")), Ok(Value::Int(2)));
        let mut ro = point(ValueType::U16);
        ro.writable = false;
        assert_eq!(
            err(&ro, json!(1)),
            "not writable: point `t` is not writable"
        );
    }

    #[test]
    fn payload_forms() {
        assert_eq!(parse_payload(b" 21.5 ").map(|(v, _)| v), Ok(json!("21.5")));
        let (v, id) = parse_payload(br#"{"value": 2, "id": "a"}"#).expect("json");
        assert_eq!((v, id), (json!(2), Some(json!("a"))));
        let cases: [(&[u8], &str); 4] = [
            (b"", "unparsable payload: empty"),
            (b"\xff", "unparsable payload: not UTF-8 text"),
            (
                br#"{"id": 1}"#,
                "unparsable payload: JSON needs a \"value\" field",
            ),
            (b"{nope", "unparsable payload: invalid JSON"),
        ];
        for (payload, text) in cases {
            let (e, _) = parse_payload(payload).expect_err("refused");
            assert!(e.to_string().starts_with(text), "{e}");
        }
    }
}
