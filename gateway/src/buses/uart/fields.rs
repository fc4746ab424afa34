//! A field's text (or JSON value) of a line as the point's type: named values first,
//! then the type's own text form (`commands::parse_bool` for booleans, the same parser
//! commands use).

use fieldlink_drivers::{
    modbus::{codec, WordOrder},
    uart::FieldValue,
    value::Value,
};

use crate::{
    commands,
    model::{Point, ValueType},
};

pub(super) fn raw_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Int(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
    }
}

/// A field's text or JSON value as the point's type (named values first).
pub fn to_value(point: &Point, fv: &FieldValue) -> Result<Value, String> {
    let named = match fv {
        FieldValue::Text(t) => point
            .value_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(t.trim()))
            .map(|(_, v)| *v),
        _ => None,
    };
    match point.ty {
        ValueType::Bool => {
            let b = match (named, fv) {
                (Some(n), _) => n != 0.0,
                (None, FieldValue::Bool(b)) => *b,
                (None, FieldValue::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
                (None, FieldValue::Text(t)) => commands::parse_bool(t)
                    .ok_or_else(|| format!("`{}` is not a boolean", t.trim()))?,
            };
            Ok(Value::Bool(b))
        }
        ValueType::String { len } => {
            let s = fv.to_string();
            if s.len() > usize::from(len) {
                Err(format!("text of {} bytes is longer than {len}", s.len()))
            } else {
                Ok(Value::Str(s))
            }
        }
        ty => {
            let v = match (named, fv) {
                (Some(n), _) => Value::Float(n),
                (None, FieldValue::Bool(b)) => Value::Int(i64::from(*b)),
                (None, FieldValue::Number(n)) => number(&n.to_string(), ty)?,
                (None, FieldValue::Text(t)) => number(t, ty)?,
            };
            let v = match (ty, v) {
                (ValueType::F32 | ValueType::F64, v) => {
                    Value::Float(v.as_f64().unwrap_or(f64::NAN))
                }
                (_, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::Int(f as i64)
                }
                (_, Value::Float(f)) => {
                    return Err(format!("{f} is not a whole number for `{ty}`"))
                }
                (_, v) => v,
            };
            if !matches!(ty, ValueType::F32 | ValueType::F64) {
                codec::encode(&v, ty, WordOrder::Abcd)
                    .map_err(|e| format!("{} does not fit `{ty}` ({e})", raw_text(&v)))?;
            }
            Ok(v)
        }
    }
}

fn number(t: &str, ty: ValueType) -> Result<Value, String> {
    commands::parse_number(t, ty).ok_or_else(|| format!("`{}` is not a number", t.trim()))
}
