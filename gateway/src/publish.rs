//! From a decoded value to an MQTT message: scale/offset, precision, payload format and
//! the publish policy (on change with deadband, every poll, heartbeat).

use std::time::SystemTime;

use tokio::time::Instant;

use fieldlink_drivers::value::Value;

use crate::model::{Payload, Point, PublishMode, ValueType};

/// A message for the MQTT side.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
    /// QoS 0–2.
    pub qos: u8,
    /// The point's slot, for a point's value; `None` for the gateway's own topics.
    pub slot: Option<u32>,
}

impl Outgoing {
    /// A point's value on its topic, with its retain flag and QoS.
    pub fn value(point: &Point, payload: Vec<u8>) -> Outgoing {
        Outgoing {
            topic: point.topic.clone(),
            payload,
            retain: point.retain,
            qos: point.qos,
            slot: Some(point.slot),
        }
    }
}

/// The messages of one poll cycle, sent to the MQTT side in one channel operation.
pub type Batch = Vec<Outgoing>;

/// An engineering value after scale/offset/precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// A number with its text form (as published).
    Number(f64, String),
    /// A bit.
    Bool(bool),
    /// Text.
    Text(String),
}

impl Reading {
    /// The plain payload text.
    pub fn text(&self) -> String {
        match self {
            Reading::Number(_, s) => s.clone(),
            Reading::Bool(b) => b.to_string(),
            Reading::Text(s) => s.clone(),
        }
    }

    /// The value as JSON (numbers as published, bools, text).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Reading::Number(f, s) => serde_json::from_str::<serde_json::Number>(s)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|_| {
                    serde_json::Number::from_f64(*f)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number)
                }),
            Reading::Bool(b) => serde_json::Value::Bool(*b),
            Reading::Text(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// Smallest number of decimals (≤ 10) that shows `x` exactly.
fn decimals_of(x: f64) -> usize {
    (0..=10)
        .find(|d| {
            let m = x * 10f64.powi(*d as i32);
            (m - m.round()).abs() < 1e-9 * m.abs().max(1.0)
        })
        .unwrap_or(10)
}

/// Apply scale, offset and precision to a decoded value, then the point's named values
/// (`values: {ON: 1, OFF: 0}` publishes `ON`).
pub fn reading(point: &Point, value: &Value) -> Reading {
    reading_scaled(point, value, 1.0)
}

/// [`reading`] of a value that is also × `factor` (10^sf of a `scale_register`), as if
/// the point's `scale` were that much larger.
pub fn reading_scaled(point: &Point, value: &Value, factor: f64) -> Reading {
    let r = scaled(point, value, factor);
    if point.value_map.is_empty() {
        return r;
    }
    let n = match &r {
        Reading::Number(n, _) => *n,
        Reading::Bool(b) => f64::from(u8::from(*b)),
        Reading::Text(_) => return r,
    };
    match point.value_map.iter().find(|(_, v)| (v - n).abs() < 1e-9) {
        Some((name, _)) => Reading::Text(name.clone()),
        None => r,
    }
}

fn scaled(point: &Point, value: &Value, factor: f64) -> Reading {
    let scale = point.scale * factor;
    match value {
        Value::Bool(b) => Reading::Bool(*b),
        Value::Str(s) => Reading::Text(s.clone()),
        _ => {
            let identity = scale == 1.0 && point.offset == 0.0;
            if identity && point.precision.is_none() {
                match value {
                    Value::Int(i) => return Reading::Number(*i as f64, i.to_string()),
                    Value::U64(u) => return Reading::Number(*u as f64, u.to_string()),
                    Value::Float(f) if point.ty == ValueType::F32 => {
                        let g = *f as f32;
                        return Reading::Number(
                            f64::from(g),
                            fmt_float(f64::from(g), g.to_string()),
                        );
                    }
                    _ => {}
                }
            }
            let raw = value.as_f64().unwrap_or(0.0);
            let v = raw * scale + point.offset;
            let text = match point.precision {
                Some(p) => format!("{:.*}", usize::from(p), v),
                None if point.ty == ValueType::F32 => fmt_float(v, (v as f32).to_string()),
                None if point.ty == ValueType::F64 => fmt_float(v, v.to_string()),
                None => {
                    let d = decimals_of(scale).max(decimals_of(point.offset));
                    format!("{v:.d$}")
                }
            };
            let text =
                if text.starts_with("-0") && text.trim_start_matches(['-', '0', '.']).is_empty() {
                    text[1..].to_string()
                } else {
                    text
                };
            let v = text.parse().unwrap_or(v);
            Reading::Number(v, text)
        }
    }
}

/// Non-finite floats become `NaN`/`inf` text; finite ones keep Rust's shortest form.
fn fmt_float(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        shortest
    }
}

/// The payload bytes for a reading (a plain payload reuses the reading's text).
pub fn payload(point: &Point, r: Reading, now: SystemTime) -> Vec<u8> {
    match point.payload {
        Payload::Plain => match r {
            Reading::Number(_, s) | Reading::Text(s) => s.into_bytes(),
            Reading::Bool(b) => b.to_string().into_bytes(),
        },
        Payload::Json => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), r.json());
            if let Some(u) = &point.unit {
                m.insert("unit".into(), serde_json::Value::String(u.clone()));
            }
            m.insert(
                "ts".into(),
                serde_json::Value::String(humantime::format_rfc3339_millis(now).to_string()),
            );
            serde_json::Value::Object(m).to_string().into_bytes()
        }
    }
}

/// What was last published for a point.
#[derive(Clone, Debug, Default)]
pub struct PointState {
    last: Option<(Reading, Instant)>,
}

impl PointState {
    /// The reading last published, if any.
    pub fn last(&self) -> Option<&Reading> {
        self.last.as_ref().map(|(r, _)| r)
    }

    /// Decide whether `r` is published now; records it when it is.
    pub fn should_publish(&mut self, point: &Point, r: &Reading, now: Instant) -> bool {
        let publish = match &self.last {
            None => true,
            Some((last, at)) => {
                let heartbeat_due = point
                    .heartbeat
                    .is_some_and(|h| now.saturating_duration_since(*at) >= h);
                heartbeat_due
                    || match point.publish {
                        PublishMode::EveryPoll => true,
                        PublishMode::OnChange { deadband } => changed(last, r, deadband),
                    }
            }
        };
        if publish {
            self.force(r, now);
        }
        publish
    }

    /// Record `r` as published now (a command's read-back is always published). The
    /// previous text's buffer is reused: no allocation per poll.
    pub fn force(&mut self, r: &Reading, now: Instant) {
        match (&mut self.last, r) {
            (Some((Reading::Number(v, t), at)), Reading::Number(nv, nt)) => {
                *v = *nv;
                t.clear();
                t.push_str(nt);
                *at = now;
            }
            (Some((Reading::Text(t), at)), Reading::Text(nt)) => {
                t.clear();
                t.push_str(nt);
                *at = now;
            }
            (last, r) => *last = Some((r.clone(), now)),
        }
    }
}

fn changed(last: &Reading, new: &Reading, deadband: f64) -> bool {
    match (last, new) {
        (Reading::Number(a, ta), Reading::Number(b, tb)) => {
            if ta == tb {
                false
            } else if deadband > 0.0 {
                (a - b).abs() >= deadband * (1.0 - 1e-9) || a.is_nan() != b.is_nan()
            } else {
                true
            }
        }
        (a, b) => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn point(ty: ValueType) -> Point {
        crate::model::test_point(ty)
    }

    #[test]
    fn scaled_values_print_cleanly() {
        let mut p = point(ValueType::I16);
        p.scale = 0.1;
        assert_eq!(reading(&p, &Value::Int(234)).text(), "23.4");
        assert_eq!(reading(&p, &Value::Int(-5)).text(), "-0.5");
        p.precision = Some(2);
        assert_eq!(reading(&p, &Value::Int(234)).text(), "23.40");
        let p = point(ValueType::F32);
        assert_eq!(
            reading(&p, &Value::Float(f64::from(230.1f32))).text(),
            "230.1"
        );
    }

    #[test]
    fn on_change_across_named_and_plain_values() {
        let mut p = point(ValueType::U16);
        p.value_map = vec![("ON".into(), 1.0), ("OFF".into(), 0.0)];
        let mut s = PointState::default();
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for v in [1, 1, 0, 2, 2, 3, 1, 1] {
            let r = reading(&p, &Value::Int(v));
            if s.should_publish(&p, &r, t0) {
                seen.push(String::from_utf8(payload(&p, r, SystemTime::now())).expect("utf-8"));
            }
        }
        assert_eq!(seen, ["ON", "OFF", "2", "3", "ON"]);
    }

    #[test]
    fn deadband_and_heartbeat() {
        let mut p = point(ValueType::F32);
        p.publish = PublishMode::OnChange { deadband: 0.5 };
        p.heartbeat = Some(Duration::from_secs(10));
        let mut s = PointState::default();
        let t0 = Instant::now();
        let r = |v: f32| reading(&p, &Value::Float(f64::from(v)));
        assert!(s.should_publish(&p, &r(20.0), t0));
        assert!(!s.should_publish(&p, &r(20.3), t0 + Duration::from_secs(1)));
        assert!(s.should_publish(&p, &r(20.5), t0 + Duration::from_secs(2)));
        assert!(!s.should_publish(&p, &r(20.5), t0 + Duration::from_secs(5)));
        assert!(s.should_publish(&p, &r(20.5), t0 + Duration::from_secs(12)));
    }
}
