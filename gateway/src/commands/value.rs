//! A command's value: the payload parsed, checked against the point and turned into the
//! raw value to encode. Numbers keep their text until the point's type is known, so a
//! whole number is written exactly, never rounded through `f64` (2^53 + 1 stays odd and
//! 2^64 is refused on a `u64` point, not written as 2^64 − 1).

use fieldlink_drivers::{modbus::codec, value::Value};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{error::parse_number, parse_bool, CommandError};
use crate::model::{Point, ValueType};

/// A command's value as the client gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Given {
    /// Plain text (the whole payload) or a JSON string.
    Text(String),
    /// A JSON number, as written (`9007199254740993`, `21.5`, `1e3`).
    Number(String),
    /// A JSON `true` / `false`.
    Bool(bool),
    /// Any other JSON value (`null`, an array, an object): never a valid value.
    Other(serde_json::Value),
}

impl Given {
    /// The value as JSON text, for error messages.
    fn json(&self) -> String {
        match self {
            Given::Text(s) => serde_json::Value::String(s.clone()).to_string(),
            Given::Number(n) => n.clone(),
            Given::Bool(b) => b.to_string(),
            Given::Other(v) => v.to_string(),
        }
    }
}

impl From<&serde_json::Value> for Given {
    fn from(v: &serde_json::Value) -> Given {
        match v {
            serde_json::Value::String(s) => Given::Text(s.clone()),
            // serde_json prints integers exactly and floats in their shortest form.
            serde_json::Value::Number(n) => Given::Number(n.to_string()),
            serde_json::Value::Bool(b) => Given::Bool(*b),
            other => Given::Other(other.clone()),
        }
    }
}

/// The JSON form of a payload: `value` kept as written, `id` echoed back.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// A refused payload, with the caller's id when it could be read.
pub type PayloadError = (CommandError, Option<serde_json::Value>);

/// Parse a `/set` payload: a plain value (`21.5`, `true`, `ON`) or JSON
/// `{"value": 21.5, "id": "abc"}`.
pub fn parse_payload(payload: &[u8]) -> Result<(Given, Option<serde_json::Value>), PayloadError> {
    let bad = |why: String| CommandError::Unparsable(why);
    let text = std::str::from_utf8(payload)
        .map_err(|_| (bad("not UTF-8 text".into()), None))?
        .trim();
    if text.is_empty() {
        return Err((bad("empty".into()), None));
    }
    if !text.starts_with('{') {
        return Ok((Given::Text(text.to_string()), None));
    }
    let env: Envelope =
        serde_json::from_str(text).map_err(|e| (bad(format!("invalid JSON ({e})")), None))?;
    let Some(raw) = env.value else {
        return Err((bad("JSON needs a \"value\" field".into()), env.id));
    };
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| (bad(format!("invalid JSON ({e})")), env.id.clone()))?;
    let given = match value {
        serde_json::Value::Number(_) => Given::Number(raw.get().trim().to_string()),
        other => Given::from(&other),
    };
    Ok((given, env.id))
}

/// A number for messages: whole numbers without a fraction, huge ones in `e` notation.
pub(super) fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else if n.abs() >= 1e15 {
        format!("{n:e}")
    } else {
        n.to_string()
    }
}

/// A limit beside an exact whole number: whole limits in full, others as [`fmt_num`].
fn fmt_whole(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1.7e38 {
        (n as i128).to_string()
    } else {
        fmt_num(n)
    }
}

/// The whole number a decimal literal (`-12`, `12.000`, `1.2e3`, `+7`) denotes, exactly;
/// `None` when it is no literal, not a whole number, or beyond ±2^127.
fn exact_integer(text: &str) -> Option<i128> {
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    // digits × 10^shift, with the leading zeros gone.
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let shift = i64::from(exp) - frac.len() as i64;
    let (kept, zeros) = if shift < 0 {
        let cut = usize::try_from(-shift).ok()?;
        if cut > digits.len() {
            return None;
        }
        let (kept, dropped) = digits.split_at(digits.len() - cut);
        if dropped.bytes().any(|b| b != b'0') {
            return None;
        }
        (kept, 0)
    } else {
        (digits, usize::try_from(shift).ok()?)
    };
    if kept.len() + zeros > 39 {
        return None;
    }
    let mut n: i128 = 0;
    for b in kept.bytes().chain(std::iter::repeat_n(b'0', zeros)) {
        n = n.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// Whether the whole number `v` is above `max` (exact for any `max`).
fn int_above(v: i128, max: f64) -> bool {
    match max.floor() {
        m if m >= 1.7e38 => false,
        m if m <= -1.7e38 => true,
        m => v > m as i128,
    }
}

/// Whether the whole number `v` is below `min` (exact for any `min`).
fn int_below(v: i128, min: f64) -> bool {
    match min.ceil() {
        m if m <= -1.7e38 => false,
        m if m >= 1.7e38 => true,
        m => v < m as i128,
    }
}

/// The smallest and largest value of an integer register type.
fn int_range(ty: ValueType) -> (i128, i128) {
    match ty {
        ValueType::U16 => (0, u16::MAX.into()),
        ValueType::I16 => (i16::MIN.into(), i16::MAX.into()),
        ValueType::U32 => (0, u32::MAX.into()),
        ValueType::I32 => (i32::MIN.into(), i32::MAX.into()),
        ValueType::U64 => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    }
}

/// An in-range whole number as the value to encode.
fn int_value(r: i128) -> Value {
    match i64::try_from(r) {
        Ok(i) => Value::Int(i),
        // Only a u64 point lets a value past i64 through the range check.
        Err(_) => Value::U64(u64::try_from(r).unwrap_or(u64::MAX)),
    }
}

/// Check a command value against the point and turn it into the raw value to encode.
pub fn to_raw(point: &Point, value: &Given) -> Result<Value, CommandError> {
    use CommandError::WrongType;
    if !point.writable {
        return Err(CommandError::NotWritable(format!(
            "point `{}` is not writable",
            point.topic
        )));
    }
    // Named values first (`ON` → 1), exact then case-insensitive.
    let named = match value {
        Given::Text(s) => point
            .value_map
            .iter()
            .find(|(k, _)| k == s)
            .or_else(|| {
                point
                    .value_map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(s))
            })
            .map(|(_, v)| *v),
        _ => None,
    };
    match point.ty {
        ValueType::Bool => {
            let b = match (named, value) {
                (Some(n), _) => n != 0.0,
                (None, Given::Bool(b)) => *b,
                (None, Given::Number(n)) if exact_integer(n) == Some(0) => false,
                (None, Given::Number(n)) if exact_integer(n) == Some(1) => true,
                (None, Given::Text(s)) => parse_bool(s).ok_or_else(|| {
                    WrongType(format!(
                        "`{s}` is not a boolean (true/false, ON/OFF, 1/0, yes/no, high/low)"
                    ))
                })?,
                (None, other) => {
                    return Err(WrongType(format!("{} is not a boolean", other.json())))
                }
            };
            Ok(Value::Bool(b))
        }
        ValueType::String { len } => match value {
            Given::Text(s) if s.len() <= usize::from(len) => Ok(Value::Str(s.clone())),
            Given::Text(s) => Err(CommandError::OutOfRange(format!(
                "text of {} bytes is longer than the point's {len}",
                s.len()
            ))),
            other => Err(WrongType(format!("{} is not text", other.json()))),
        },
        ty => {
            let (text, v) = match (named, value) {
                (Some(n), _) => (None, n),
                (None, Given::Number(s) | Given::Text(s)) => {
                    match parse_number(s, ty).and_then(|v| v.as_f64()) {
                        Some(v) => (Some(s.as_str()), v),
                        None => return Err(WrongType(format!("`{s}` is not a number"))),
                    }
                }
                // A bool is not a number, in JSON as in plain text (`true` is refused
                // above as text that does not parse).
                (None, other) => {
                    return Err(WrongType(format!("{} is not a number", other.json())))
                }
            };
            number_to_raw(point, ty, text.and_then(exact_integer), v)
        }
    }
}

/// Check a raw value as a Modbus master wrote it (the registers or the coil of a point,
/// decoded with its type and word order; `modbus_server`) with exactly the checks of
/// `/set`: the point writable, its `min`/`max` and its type's range on the value after
/// scale and offset (a whole number on a point without them exactly, as `/set` checks
/// one). Returns the raw value to encode, as a `/set` of that value would.
pub fn check_raw(point: &Point, raw: &Value) -> Result<Value, CommandError> {
    use CommandError::WrongType;
    match (point.ty, raw) {
        (ValueType::Bool, Value::Bool(b)) => to_raw(point, &Given::Bool(*b)),
        (ValueType::String { .. }, Value::Str(s)) => to_raw(point, &Given::Text(s.clone())),
        (ValueType::Bool, _) => Err(WrongType("not a boolean".into())),
        (ValueType::String { .. }, _) => Err(WrongType("not text".into())),
        (_, Value::Bool(_) | Value::Str(_)) => Err(WrongType("not a number".into())),
        (ty, v) => {
            if !point.writable {
                return Err(CommandError::NotWritable(format!(
                    "point `{}` is not writable",
                    point.topic
                )));
            }
            let Some(f) = v.as_f64().filter(|f| f.is_finite()) else {
                return Err(WrongType("not a finite number".into()));
            };
            let exact = match v {
                Value::Int(i) => Some(i128::from(*i)),
                Value::U64(u) => Some(i128::from(*u)),
                _ => None,
            };
            number_to_raw(point, ty, exact, f * point.scale + point.offset)
        }
    }
}

/// A number `v` (engineering units) for a numeric point, checked: exactly when it is the
/// whole number `exact` and the point has no scale or offset, else in `f64`.
fn number_to_raw(
    point: &Point,
    ty: ValueType,
    exact: Option<i128>,
    v: f64,
) -> Result<Value, CommandError> {
    let exact = exact
        .filter(|_| point.scale == 1.0 && point.offset == 0.0)
        .filter(|_| !matches!(ty, ValueType::F32 | ValueType::F64));
    match exact {
        Some(i) => exact_to_raw(point, ty, i),
        None => float_to_raw(point, ty, v),
    }
}

/// A whole number for an integer point without scale or offset: checked and written
/// exactly, never through `f64`.
fn exact_to_raw(point: &Point, ty: ValueType, v: i128) -> Result<Value, CommandError> {
    if let Some(max) = point.max.filter(|m| int_above(v, *m)) {
        return Err(CommandError::AboveMax {
            value: v.to_string(),
            max: fmt_whole(max),
        });
    }
    if let Some(min) = point.min.filter(|m| int_below(v, *m)) {
        return Err(CommandError::BelowMin {
            value: v.to_string(),
            min: fmt_whole(min),
        });
    }
    let (lo, hi) = int_range(ty);
    if v < lo || v > hi {
        return Err(CommandError::OutOfRange(format!(
            "value {v} does not fit {ty} ({lo} to {hi})"
        )));
    }
    Ok(int_value(v))
}

/// Any other number: min/max, scale and offset, then the type's range, in `f64`.
fn float_to_raw(point: &Point, ty: ValueType, v: f64) -> Result<Value, CommandError> {
    use CommandError::OutOfRange;
    if let Some(max) = point.max.filter(|m| v > *m) {
        return Err(CommandError::AboveMax {
            value: fmt_num(v),
            max: fmt_num(max),
        });
    }
    if let Some(min) = point.min.filter(|m| v < *m) {
        return Err(CommandError::BelowMin {
            value: fmt_num(v),
            min: fmt_num(min),
        });
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
    // The type's own range (e.g. 70000 for a u16), checked on the number itself, so the
    // text names the real value and the type's limits. `hi + 1` is a power of two or
    // small, so exact in f64: every f64 below it is at most `hi`.
    let (lo, hi) = int_range(ty);
    if r < lo as f64 || r >= (hi + 1) as f64 {
        let scaled = if point.scale == 1.0 && point.offset == 0.0 {
            String::new()
        } else {
            format!(" ({} in the register)", fmt_num(r))
        };
        return Err(OutOfRange(format!(
            "value {}{scaled} does not fit {ty} ({lo} to {hi})",
            fmt_num(v)
        )));
    }
    // In range, so the conversion cannot saturate.
    Ok(int_value(r as i128))
}

/// The smallest and largest value a command may give point `p` by its type alone, in
/// engineering units (after scale and offset); floats: ±10¹².
pub(crate) fn value_range(p: &Point) -> (f64, f64) {
    if matches!(p.ty, ValueType::F32 | ValueType::F64) {
        return (-1e12, 1e12);
    }
    let (lo, hi) = int_range(p.ty);
    let (a, b) = (
        lo as f64 * p.scale + p.offset,
        hi as f64 * p.scale + p.offset,
    );
    (a.min(b).max(-1e15), a.max(b).min(1e15))
}

#[cfg(test)]
#[path = "value_tests.rs"]
mod tests;
