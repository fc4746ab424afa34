//! Values and value types shared by every bus kind: a Modbus register, a field of a UART
//! line and a GPIO line all decode to a [`Value`] of a point's [`ValueType`].

use std::fmt;

/// A point's value type; the register count derives from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// One bit: a coil, a discrete input, or a bit inside a register.
    Bool,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// A string of `len` bytes (two per register), NUL/space padded.
    String {
        /// Length in bytes.
        len: u16,
    },
}

impl ValueType {
    /// Number of 16-bit registers the type occupies (1 for `Bool`).
    pub fn registers(self) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
            ValueType::String { len } => len.div_ceil(2),
        }
    }

    /// True for numeric types (scale/offset apply).
    pub fn is_numeric(self) -> bool {
        !matches!(self, ValueType::Bool | ValueType::String { .. })
    }

    /// The configuration name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
            ValueType::String { .. } => "string",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded raw value, before scale/offset.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A bit.
    Bool(bool),
    /// Any signed or unsigned integer type (u64 values above `i64::MAX` use `U64`).
    Int(i64),
    /// A u64 above `i64::MAX`.
    U64(u64),
    /// f32 or f64.
    Float(f64),
    /// A trimmed string.
    Str(String),
}

impl Value {
    /// The numeric value as f64, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::U64(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Str(_) => None,
        }
    }
}
