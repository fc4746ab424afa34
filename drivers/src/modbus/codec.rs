//! Decoding and encoding of point values: every type in every word order.
//!
//! Word orders name the byte sequence of a 32-bit value `0xAABBCCDD` as it appears on the
//! wire, register by register: `ABCD` is big-endian (Modbus standard), `CDAB` swaps the
//! 16-bit words (common on energy meters), `BADC` swaps the bytes inside each word and
//! `DCBA` is fully little-endian. The same rule extends to 64-bit values (word order
//! reversed for `CDAB`/`DCBA`, bytes swapped inside words for `BADC`/`DCBA`) and to
//! strings (bytes swapped inside words for `BADC`/`DCBA`).

use thiserror::Error;

pub use crate::value::{Value, ValueType};

/// Byte/word order of multi-byte values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// Big-endian: high word first, high byte first.
    #[default]
    Abcd,
    /// Word-swapped: low word first, high byte first.
    Cdab,
    /// Byte-swapped: high word first, low byte first.
    Badc,
    /// Little-endian: low word first, low byte first.
    Dcba,
}

impl WordOrder {
    fn reverse_words(self) -> bool {
        matches!(self, WordOrder::Cdab | WordOrder::Dcba)
    }
    fn swap_bytes(self) -> bool {
        matches!(self, WordOrder::Badc | WordOrder::Dcba)
    }
    /// The configuration name (`ABCD`...).
    pub fn name(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }
}

/// Why a value cannot be decoded or encoded.
#[derive(Debug, Error, PartialEq)]
pub enum CodecError {
    /// Not enough registers for the type.
    #[error("need {need} registers for {ty}, got {got}")]
    Short {
        /// The type.
        ty: ValueType,
        /// Registers needed.
        need: usize,
        /// Registers present.
        got: usize,
    },
    /// The bit index is outside 0–15.
    #[error("bit index {0} outside 0-15")]
    BadBit(u8),
    /// The value does not fit the type.
    #[error("value {value} does not fit {ty}")]
    OutOfRange {
        /// The value as text.
        value: String,
        /// The type.
        ty: ValueType,
    },
    /// The value has the wrong kind for the type (e.g. text for a number).
    #[error("a {got} value cannot be written as {ty}")]
    WrongKind {
        /// What was given.
        got: &'static str,
        /// The type.
        ty: ValueType,
    },
}

/// Registers → bytes in value order (most significant first for numbers).
fn to_bytes(regs: &[u16], order: WordOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(regs.len() * 2);
    let mut push = |r: u16| {
        let [hi, lo] = r.to_be_bytes();
        if order.swap_bytes() {
            out.extend_from_slice(&[lo, hi]);
        } else {
            out.extend_from_slice(&[hi, lo]);
        }
    };
    if order.reverse_words() {
        regs.iter().rev().copied().for_each(&mut push);
    } else {
        regs.iter().copied().for_each(&mut push);
    }
    out
}

/// Bytes in value order → registers (inverse of [`to_bytes`]).
fn from_bytes(bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let hi = c[0];
            let lo = c.get(1).copied().unwrap_or(0);
            if order.swap_bytes() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.reverse_words() {
        regs.reverse();
    }
    regs
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Decode a value from the registers of one point (`regs[0]` is the point's address).
///
/// `bit` selects one bit of the first register for `Bool` on register tables.
pub fn decode(
    regs: &[u16],
    ty: ValueType,
    order: WordOrder,
    bit: Option<u8>,
) -> Result<Value, CodecError> {
    let need = ty.registers() as usize;
    if regs.len() < need {
        return Err(CodecError::Short {
            ty,
            need,
            got: regs.len(),
        });
    }
    let regs = &regs[..need];
    let b = to_bytes(regs, order);
    Ok(match ty {
        ValueType::Bool => match bit {
            Some(n) if n > 15 => return Err(CodecError::BadBit(n)),
            Some(n) => Value::Bool(regs[0] >> n & 1 == 1),
            None => Value::Bool(regs[0] != 0),
        },
        ValueType::U16 => Value::Int(i64::from(u16::from_be_bytes(arr(&b)))),
        ValueType::I16 => Value::Int(i64::from(i16::from_be_bytes(arr(&b)))),
        ValueType::U32 => Value::Int(i64::from(u32::from_be_bytes(arr(&b)))),
        ValueType::I32 => Value::Int(i64::from(i32::from_be_bytes(arr(&b)))),
        ValueType::U64 => {
            let v = u64::from_be_bytes(arr(&b));
            i64::try_from(v).map_or(Value::U64(v), Value::Int)
        }
        ValueType::I64 => Value::Int(i64::from_be_bytes(arr(&b))),
        ValueType::F32 => Value::Float(f64::from(f32::from_be_bytes(arr(&b)))),
        ValueType::F64 => Value::Float(f64::from_be_bytes(arr(&b))),
        ValueType::String { len } => {
            let bytes = &b[..usize::from(len).min(b.len())];
            // The text ends at the first NUL (devices pad with NULs) and trailing spaces
            // are padding too; anything else, control characters included, is the
            // device's data and kept.
            let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
            Value::Str(
                String::from_utf8_lossy(&bytes[..end])
                    .trim_end_matches(' ')
                    .to_string(),
            )
        }
    })
}

fn int_of(value: &Value, ty: ValueType) -> Result<i128, CodecError> {
    match value {
        Value::Bool(b) => Ok(i128::from(*b)),
        Value::Int(i) => Ok(i128::from(*i)),
        Value::U64(u) => Ok(i128::from(*u)),
        Value::Float(f) => {
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(CodecError::OutOfRange {
                    value: f.to_string(),
                    ty,
                });
            }
            Ok(*f as i128)
        }
        Value::Str(_) => Err(CodecError::WrongKind { got: "text", ty }),
    }
}

fn ranged<T: TryFrom<i128>>(v: i128, ty: ValueType) -> Result<T, CodecError> {
    T::try_from(v).map_err(|_| CodecError::OutOfRange {
        value: v.to_string(),
        ty,
    })
}

/// Encode a value into registers for a write (inverse of [`decode`]).
///
/// `Bool` encodes as one register `0`/`1`; writing a single bit inside a register is the
/// command path's job (read-modify-write).
pub fn encode(value: &Value, ty: ValueType, order: WordOrder) -> Result<Vec<u16>, CodecError> {
    let bytes: Vec<u8> = match ty {
        ValueType::Bool => {
            let v = int_of(value, ty)?;
            if !(0..=1).contains(&v) {
                return Err(CodecError::OutOfRange {
                    value: v.to_string(),
                    ty,
                });
            }
            return Ok(vec![v as u16]);
        }
        ValueType::U16 => ranged::<u16>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::I16 => ranged::<i16>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::U32 => ranged::<u32>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::I32 => ranged::<i32>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::U64 => ranged::<u64>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::I64 => ranged::<i64>(int_of(value, ty)?, ty)?
            .to_be_bytes()
            .to_vec(),
        ValueType::F32 | ValueType::F64 => {
            let f = value
                .as_f64()
                .ok_or(CodecError::WrongKind { got: "text", ty })?;
            if ty == ValueType::F32 {
                if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                    return Err(CodecError::OutOfRange {
                        value: f.to_string(),
                        ty,
                    });
                }
                (f as f32).to_be_bytes().to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        ValueType::String { len } => {
            let Value::Str(s) = value else {
                return Err(CodecError::WrongKind { got: "numeric", ty });
            };
            if s.len() > usize::from(len) {
                return Err(CodecError::OutOfRange {
                    value: format!("{} bytes", s.len()),
                    ty,
                });
            }
            let mut b = s.as_bytes().to_vec();
            b.resize(usize::from(ty.registers()) * 2, 0);
            b
        }
    };
    Ok(from_bytes(&bytes, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    #[test]
    fn f32_word_orders_match_the_reference_layouts() {
        // 123.456f32 = 0x42F6E979
        let f = Value::Float(f64::from(123.456f32));
        assert_eq!(
            encode(&f, ValueType::F32, WordOrder::Abcd).unwrap(),
            [0x42F6, 0xE979]
        );
        assert_eq!(
            encode(&f, ValueType::F32, WordOrder::Cdab).unwrap(),
            [0xE979, 0x42F6]
        );
        assert_eq!(
            encode(&f, ValueType::F32, WordOrder::Badc).unwrap(),
            [0xF642, 0x79E9]
        );
        assert_eq!(
            encode(&f, ValueType::F32, WordOrder::Dcba).unwrap(),
            [0x79E9, 0xF642]
        );
    }

    #[test]
    fn u32_cdab_decodes_energy_meter_layout() {
        // 0x0001_86A0 = 100000 sent low word first.
        assert_eq!(
            decode(&[0x86A0, 0x0001], ValueType::U32, WordOrder::Cdab, None).unwrap(),
            Value::Int(100_000)
        );
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        let cases = [
            (ValueType::U16, Value::Int(65535)),
            (ValueType::I16, Value::Int(-1234)),
            (ValueType::U32, Value::Int(4_000_000_000)),
            (ValueType::I32, Value::Int(-2_000_000_000)),
            (ValueType::U64, Value::U64(u64::MAX - 5)),
            (ValueType::I64, Value::Int(-9_000_000_000_000)),
            (ValueType::F32, Value::Float(-1.5)),
            (ValueType::F64, Value::Float(1234.5678901234)),
            (ValueType::String { len: 7 }, Value::Str("casa-1".into())),
        ];
        for order in ORDERS {
            for (ty, v) in &cases {
                let regs = encode(v, *ty, order).unwrap();
                assert_eq!(regs.len(), usize::from(ty.registers()), "{ty} {order:?}");
                assert_eq!(
                    &decode(&regs, *ty, order, None).unwrap(),
                    v,
                    "{ty} {order:?}"
                );
            }
        }
    }

    #[test]
    fn strings_end_at_the_first_nul_and_lose_trailing_spaces_only() {
        let ty = ValueType::String { len: 8 };
        let regs = |b: &[u8; 8]| -> Vec<u16> {
            b.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        };
        let text = |b: &[u8; 8]| decode(&regs(b), ty, WordOrder::Abcd, None);
        assert_eq!(text(b"abc  \0\0\0").ok(), Some(Value::Str("abc".into())));
        assert_eq!(text(b"ab\0cdefg").ok(), Some(Value::Str("ab".into())));
        assert_eq!(text(b" ab\r\n   ").ok(), Some(Value::Str(" ab\r\n".into())));
        assert_eq!(text(b"ab\x0c     ").ok(), Some(Value::Str("ab\x0c".into())));
    }

    #[test]
    fn bit_inside_register_and_errors() {
        assert_eq!(
            decode(&[0b100], ValueType::Bool, WordOrder::Abcd, Some(2)).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            decode(&[0b100], ValueType::Bool, WordOrder::Abcd, Some(1)).unwrap(),
            Value::Bool(false)
        );
        assert!(decode(&[1], ValueType::U32, WordOrder::Abcd, None).is_err());
        assert!(encode(&Value::Int(70000), ValueType::U16, WordOrder::Abcd).is_err());
        assert!(encode(&Value::Float(1.5), ValueType::I16, WordOrder::Abcd).is_err());
    }
}
