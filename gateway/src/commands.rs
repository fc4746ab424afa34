//! Commands: a payload on `<topic>/set` is parsed, checked against the point (writable,
//! type, named values, min/max, scale/offset, the type's range) and only then queued to
//! the bus task that owns the device. Invalid commands never reach the device; the
//! outcome of every command is published on `<topic>/set/result` (not retained).

use std::{collections::HashMap, sync::Arc};

use fieldlink_drivers::modbus::{codec, DriverError, Value};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    health::{Availability, Stats},
    model::{Model, Point, ValueType},
    publish::Outgoing,
};

/// A validated command for a bus task.
#[derive(Clone, Debug)]
pub struct Command {
    /// Device index within the bus.
    pub device: usize,
    /// Point index within the device.
    pub point: usize,
    /// The raw value to encode (after the inverse of scale/offset).
    pub value: Value,
    /// The caller's id, echoed in the result.
    pub id: Option<serde_json::Value>,
}

/// Where a `<topic>/set` goes.
#[derive(Clone, Debug)]
struct Route {
    bus: usize,
    device: usize,
    point: usize,
    stats_index: usize,
}

/// Routes `<topic>/set` messages to the bus tasks.
#[derive(Clone)]
pub struct Router {
    model: Arc<Model>,
    routes: HashMap<String, Route>,
    buses: Vec<mpsc::Sender<Command>>,
    stats: Arc<Stats>,
}

impl Router {
    /// A router for the writable points of `model`; `buses[i]` feeds bus `i`'s task.
    pub fn new(model: Arc<Model>, buses: Vec<mpsc::Sender<Command>>, stats: Arc<Stats>) -> Self {
        let mut routes = HashMap::new();
        let mut stats_index = 0;
        for (b, bus) in model.buses.iter().enumerate() {
            for (d, dev) in bus.devices.iter().enumerate() {
                for (p, point) in dev.points.iter().enumerate() {
                    if point.writable {
                        routes.insert(
                            point.set_topic(),
                            Route {
                                bus: b,
                                device: d,
                                point: p,
                                stats_index,
                            },
                        );
                    }
                }
                stats_index += 1;
            }
        }
        Router {
            model,
            routes,
            buses,
            stats,
        }
    }

    /// The topics to subscribe to: `<topic>/set` of every writable point, nothing else.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routes.keys().cloned().collect();
        v.sort();
        v
    }

    /// Handle one incoming message. Returns the result message when the command was
    /// rejected here; accepted commands are answered by the bus task after the write.
    pub fn handle(&self, topic: &str, payload: &[u8]) -> Option<Outgoing> {
        let route = self.routes.get(topic)?;
        let point = &self.model.buses[route.bus].devices[route.device].points[route.point];
        let (value, id) = match parse_payload(payload) {
            Ok(v) => v,
            Err((e, id)) => return Some(result(point, Err(e), id.as_ref())),
        };
        let raw = match to_raw(point, &value) {
            Ok(r) => r,
            Err(e) => return Some(result(point, Err(e), id.as_ref())),
        };
        if self.stats.devices[route.stats_index].availability() == Availability::Offline {
            let dev = &self.model.buses[route.bus].devices[route.device].id;
            return Some(result(
                point,
                Err(format!("device `{dev}` is offline")),
                id.as_ref(),
            ));
        }
        let cmd = Command {
            device: route.device,
            point: route.point,
            value: raw,
            id: id.clone(),
        };
        match self.buses[route.bus].try_send(cmd) {
            Ok(()) => None,
            Err(_) => Some(result(
                point,
                Err("command queue full, try again".into()),
                id.as_ref(),
            )),
        }
    }
}

/// Parse a `/set` payload: a plain value (`21.5`, `true`, `ON`) or JSON
/// `{"value": 21.5, "id": "abc"}`.
pub fn parse_payload(
    payload: &[u8],
) -> Result<(serde_json::Value, Option<serde_json::Value>), (String, Option<serde_json::Value>)> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| ("unparsable payload: not UTF-8 text".to_string(), None))?
        .trim();
    if text.is_empty() {
        return Err(("unparsable payload: empty".into(), None));
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| (format!("unparsable payload: invalid JSON ({e})"), None))?;
        let id = v.get("id").cloned();
        return match v.get("value") {
            Some(value) => Ok((value.clone(), id)),
            None => Err((
                "unparsable payload: JSON needs a \"value\" field".into(),
                id,
            )),
        };
    }
    Ok((serde_json::Value::String(text.to_string()), None))
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Check a command value against the point and turn it into the raw value to encode.
pub fn to_raw(point: &Point, value: &serde_json::Value) -> Result<Value, String> {
    if !point.writable {
        return Err(format!("point `{}` is not writable", point.topic));
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
                (None, serde_json::Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    _ => {
                        return Err(format!(
                            "wrong type: `{s}` is not a boolean (true/false, ON/OFF, 1/0)"
                        ))
                    }
                },
                (None, other) => return Err(format!("wrong type: {other} is not a boolean")),
            };
            Ok(Value::Bool(b))
        }
        ValueType::String { len } => match value {
            serde_json::Value::String(s) if s.len() <= usize::from(len) => {
                Ok(Value::Str(s.clone()))
            }
            serde_json::Value::String(s) => Err(format!(
                "out of range: text of {} bytes is longer than the point's {len}",
                s.len()
            )),
            other => Err(format!("wrong type: {other} is not text")),
        },
        ty => {
            let v = match (named, value) {
                (Some(n), _) => n,
                (None, serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                (None, serde_json::Value::String(s)) => match s.parse::<f64>() {
                    Ok(v) if v.is_finite() => v,
                    _ => return Err(format!("wrong type: `{s}` is not a number")),
                },
                (None, serde_json::Value::Bool(b)) => f64::from(u8::from(*b)),
                (None, other) => return Err(format!("wrong type: {other} is not a number")),
            };
            if let Some(max) = point.max {
                if v > max {
                    return Err(format!("value {} above max {}", fmt_num(v), fmt_num(max)));
                }
            }
            if let Some(min) = point.min {
                if v < min {
                    return Err(format!("value {} below min {}", fmt_num(v), fmt_num(min)));
                }
            }
            let raw = (v - point.offset) / point.scale;
            let raw = if matches!(ty, ValueType::F32 | ValueType::F64) {
                Value::Float(raw)
            } else {
                let r = raw.round();
                if (raw - r).abs() > 1e-6 * r.abs().max(1.0) {
                    return Err(format!(
                        "out of range: {} is not a whole multiple of the scale {}",
                        fmt_num(v),
                        fmt_num(point.scale)
                    ));
                }
                if r >= 0.0 && r > i64::MAX as f64 {
                    Value::U64(r as u64)
                } else {
                    Value::Int(r as i64)
                }
            };
            // The type's own range (e.g. 70000 for a u16).
            codec::encode(&raw, ty, point.order).map_err(|e| {
                format!("out of range: value {} does not fit {ty} ({e})", fmt_num(v))
            })?;
            Ok(raw)
        }
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
                    Err("superseded by a newer command for the same point".into()),
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

/// Text of a driver error for a result message.
pub fn describe(e: &DriverError) -> String {
    match e {
        DriverError::Exception { code, name } => {
            format!("device exception {code:#04x} ({name})")
        }
        DriverError::Timeout(d) => format!("timeout: no reply within {d:?}"),
        DriverError::NotConnected(s) => format!("device not reachable ({s})"),
        DriverError::Io(s) => format!("i/o error: {s}"),
        DriverError::Protocol(s) => format!("protocol error: {s}"),
    }
}

/// The `<topic>/set/result` message.
pub fn result(
    point: &Point,
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
        topic: point.result_topic(),
        payload: body.to_string().into_bytes(),
        retain: false,
        // QoS 0: a PUBACK from the embedded broker (which does not set TCP_NODELAY)
        // would hold back the next command to us by a delayed ACK (~40 ms).
        qos: 0,
        slot: None,
    }
}
