//! What `probe` shows for each address: the raw word and every decoding of the words
//! from there (u16, i16, text; u32, i32, f32 of the pair in each word order; with `--wide`
//! u64, i64, f64 of four), as a text row or as JSON; and the flag values shared by the
//! subcommands (table, type, word order).

use fieldlink_drivers::modbus::{
    client::exception_name, codec, Table, Value, ValueType, WordOrder,
};
use serde_json::{json, Map, Value as Json};

/// The four word orders, in the order they are shown.
pub const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

/// A Modbus table, as a flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableArg {
    /// Holding registers (FC03).
    Holding,
    /// Input registers (FC04).
    Input,
    /// Coils (FC01).
    Coil,
    /// Discrete inputs (FC02).
    Discrete,
}

impl From<TableArg> for Table {
    fn from(t: TableArg) -> Table {
        match t {
            TableArg::Holding => Table::Holding,
            TableArg::Input => Table::Input,
            TableArg::Coil => Table::Coil,
            TableArg::Discrete => Table::Discrete,
        }
    }
}

/// A value type, as a flag (the mapping's `type`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeArg {
    /// One bit (a coil, a discrete input, or a register that is 0 or not).
    Bool,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
    /// Text of `--length` bytes.
    String,
}

/// A word order, as a flag (the mapping's `word_order`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "UPPER")]
pub enum OrderArg {
    /// Big-endian (the Modbus standard).
    Abcd,
    /// Words swapped (many energy meters).
    Cdab,
    /// Bytes swapped in each word.
    Badc,
    /// Little-endian.
    Dcba,
}

impl From<OrderArg> for WordOrder {
    fn from(o: OrderArg) -> WordOrder {
        match o {
            OrderArg::Abcd => WordOrder::Abcd,
            OrderArg::Cdab => WordOrder::Cdab,
            OrderArg::Badc => WordOrder::Badc,
            OrderArg::Dcba => WordOrder::Dcba,
        }
    }
}

/// The value type of `--type` (and `--length` for a string); `None` for no `--type`.
pub fn value_type(ty: Option<TypeArg>, length: Option<u16>) -> Result<Option<ValueType>, String> {
    let Some(ty) = ty else {
        return match length {
            Some(_) => Err("--length is for --type string".into()),
            None => Ok(None),
        };
    };
    if length.is_some() && ty != TypeArg::String {
        return Err("--length is for --type string".into());
    }
    Ok(Some(match ty {
        TypeArg::Bool => ValueType::Bool,
        TypeArg::U16 => ValueType::U16,
        TypeArg::I16 => ValueType::I16,
        TypeArg::U32 => ValueType::U32,
        TypeArg::I32 => ValueType::I32,
        TypeArg::U64 => ValueType::U64,
        TypeArg::I64 => ValueType::I64,
        TypeArg::F32 => ValueType::F32,
        TypeArg::F64 => ValueType::F64,
        TypeArg::String => match length {
            Some(len @ 1..=250) => ValueType::String { len },
            Some(len) => return Err(format!("--length {len}: a string is 1-250 bytes")),
            None => return Err("--type string needs --length (bytes)".into()),
        },
    }))
}

/// What one address answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// A register.
    Word(u16),
    /// A coil or discrete input.
    Bit(bool),
    /// The exception the device answered when this address was read alone.
    Exception(u8),
}

/// A range as read: `cells[i]` is address `start + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The table.
    pub table: Table,
    /// The first address.
    pub start: u16,
    /// One per address.
    pub cells: Vec<Cell>,
}

impl Reading {
    /// The address of cell `i`.
    pub fn address(&self, i: usize) -> u32 {
        u32::from(self.start) + i as u32
    }

    /// The `n` registers from cell `i`, when all of them were read.
    pub fn words(&self, i: usize, n: usize) -> Option<Vec<u16>> {
        let cells = self.cells.get(i..i.checked_add(n)?)?;
        cells
            .iter()
            .map(|c| match c {
                Cell::Word(w) => Some(*w),
                _ => None,
            })
            .collect()
    }
}

/// The number of a decoded value, as JSON: integers exactly, floats in their shortest
/// form (an f32 as the f32 it is: `21.1`, not `21.100000381469727`), `null` for NaN and
/// the infinities, which JSON cannot carry.
pub fn number_json(v: &Value, ty: ValueType) -> Json {
    match v {
        Value::Int(i) => json!(i),
        Value::U64(u) => json!(u),
        Value::Float(f) if ty == ValueType::F32 => format!("{}", *f as f32)
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Bool(b) => json!(b),
        Value::Str(s) => json!(s),
    }
}

/// A decoded value as text: floats in their shortest form, tiny and huge ones in `e`
/// notation (what a wrong word order usually gives).
pub fn value_text(v: &Value, ty: ValueType) -> String {
    match v {
        Value::Float(f) => {
            let f = if ty == ValueType::F32 {
                f64::from(*f as f32)
            } else {
                *f
            };
            float_text(f, ty == ValueType::F32)
        }
        Value::Int(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Str(s) => format!("{s:?}"),
    }
}

fn float_text(f: f64, single: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 || (1e-4..1e9).contains(&f.abs()) {
        if single {
            format!("{}", f as f32)
        } else {
            format!("{f}")
        }
    } else {
        format!("{f:.4e}")
    }
}

/// The register's two bytes as text: printable ASCII as it is, anything else `.`.
fn text_of(w: u16) -> String {
    w.to_be_bytes()
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                char::from(*b)
            } else {
                '.'
            }
        })
        .collect()
}

/// The wider types a row shows: the pair's, and with `--wide` the four registers'.
fn wider(wide: bool) -> &'static [ValueType] {
    const PAIR: [ValueType; 3] = [ValueType::F32, ValueType::U32, ValueType::I32];
    const WIDE: [ValueType; 6] = [
        ValueType::F32,
        ValueType::U32,
        ValueType::I32,
        ValueType::F64,
        ValueType::U64,
        ValueType::I64,
    ];
    if wide {
        &WIDE
    } else {
        &PAIR
    }
}

/// Column width of a type in the text table.
fn width(ty: ValueType) -> usize {
    match ty {
        ValueType::F32 => 13,
        ValueType::U32 => 11,
        ValueType::I32 => 12,
        ValueType::F64 => 14,
        _ => 21,
    }
}

/// The header line of the text table.
pub fn header(table: Table, wide: bool) -> String {
    if table.is_bits() {
        return " address  value".into();
    }
    let mut h = format!(
        "{:>8}  {:<4}  {:>6}  {:>6}  {:<4}",
        "address", "hex", "u16", "i16", "text"
    );
    for ty in wider(wide) {
        for o in ORDERS {
            let name = format!("{ty} {}", o.name());
            h.push_str(&format!("{name:>w$}", w = width(*ty)));
        }
    }
    h
}

/// Row `i` of the text table; `mark` is the first column (`*`: changed).
pub fn row_text(r: &Reading, i: usize, wide: bool, mark: char) -> String {
    let address = r.address(i);
    match r.cells[i] {
        Cell::Exception(code) => format!(
            "{mark}{address:>7}  exception {code:#04x} ({})",
            exception_name(code)
        ),
        Cell::Bit(b) => format!("{mark}{address:>7}  {}", u8::from(b)),
        Cell::Word(w) => {
            let mut line = format!(
                "{mark}{address:>7}  {w:04x}  {w:>6}  {:>6}  {:<4}",
                w as i16,
                text_of(w)
            );
            for ty in wider(wide) {
                let n = usize::from(ty.registers());
                for o in ORDERS {
                    let text = r
                        .words(i, n)
                        .and_then(|words| codec::decode(&words, *ty, o, None).ok())
                        .map(|v| value_text(&v, *ty))
                        .unwrap_or_default();
                    line.push_str(&format!("{text:>w$}", w = width(*ty)));
                }
            }
            line.trim_end().to_string()
        }
    }
}

/// Entry `i` of `registers` in `probe --json`.
pub fn row_json(r: &Reading, i: usize, wide: bool) -> Json {
    let mut m = Map::new();
    m.insert("address".into(), json!(r.address(i)));
    match r.cells[i] {
        Cell::Exception(code) => {
            m.insert("exception".into(), json!(code));
        }
        Cell::Bit(b) => {
            m.insert("bool".into(), json!(b));
        }
        Cell::Word(w) => {
            m.insert("raw".into(), json!(format!("{w:04x}")));
            m.insert("u16".into(), json!(w));
            m.insert("i16".into(), json!(w as i16));
            for ty in wider(wide) {
                let Some(words) = r.words(i, usize::from(ty.registers())) else {
                    continue;
                };
                let mut orders = Map::new();
                for o in ORDERS {
                    if let Ok(v) = codec::decode(&words, *ty, o, None) {
                        orders.insert(o.name().into(), number_json(&v, *ty));
                    }
                }
                m.insert(ty.name().into(), Json::Object(orders));
            }
        }
    }
    Json::Object(m)
}

/// The whole reading as `probe --json` prints it.
pub fn reading_json(unit: u8, r: &Reading, wide: bool) -> Json {
    let registers: Vec<Json> = (0..r.cells.len()).map(|i| row_json(r, i, wide)).collect();
    json!({"unit": unit, "table": r.table.name(), "registers": registers})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cells: Vec<Cell>) -> Reading {
        Reading {
            table: Table::Holding,
            start: 10,
            cells,
        }
    }

    #[test]
    fn every_decoding_of_a_pair_in_json() {
        // 230.5f32 = 0x43668000, sent CDAB: 8000 4366.
        let r = reading(vec![Cell::Word(0x8000), Cell::Word(0x4366)]);
        let j = row_json(&r, 0, false);
        assert_eq!(j["address"], 10);
        assert_eq!(j["raw"], "8000");
        assert_eq!(j["u16"], 32768);
        assert_eq!(j["i16"], -32768);
        assert_eq!(j["f32"]["CDAB"], 230.5);
        assert_eq!(j["u32"]["ABCD"], 0x8000_4366u32);
        assert_eq!(j["i32"]["ABCD"], 0x8000_4366u32 as i32);
        assert_eq!(j["u32"]["DCBA"], 0x6643_0080u32);
        assert!(j.get("u64").is_none());
        // The last address has no pair.
        let last = row_json(&r, 1, false);
        assert!(last.get("u32").is_none() && last.get("f32").is_none());
    }

    #[test]
    fn f32_prints_as_the_f32_it_is() {
        let v = codec::decode(&[0x41A8, 0xCCCD], ValueType::F32, WordOrder::Abcd, None).unwrap();
        assert_eq!(number_json(&v, ValueType::F32).to_string(), "21.1");
        assert_eq!(value_text(&v, ValueType::F32), "21.1");
        let nan = codec::decode(&[0x7FC0, 0], ValueType::F32, WordOrder::Abcd, None).unwrap();
        assert_eq!(number_json(&nan, ValueType::F32), Json::Null);
        assert_eq!(value_text(&nan, ValueType::F32), "NaN");
        let tiny = codec::decode(&[0, 1], ValueType::F32, WordOrder::Abcd, None).unwrap();
        assert_eq!(value_text(&tiny, ValueType::F32), "1.4013e-45");
    }

    #[test]
    fn exceptions_and_holes_end_the_pairs() {
        let r = reading(vec![Cell::Word(1), Cell::Exception(2), Cell::Word(3)]);
        assert!(row_json(&r, 0, false).get("u32").is_none());
        assert_eq!(
            row_json(&r, 1, false),
            json!({"address": 11, "exception": 2})
        );
        assert!(row_text(&r, 1, false, ' ').contains("exception 0x02 (illegal data address)"));
    }

    #[test]
    fn wide_rows_have_the_64_bit_types() {
        let r = reading(vec![
            Cell::Word(0x3FF0),
            Cell::Word(0),
            Cell::Word(0),
            Cell::Word(0),
        ]);
        let j = row_json(&r, 0, true);
        assert_eq!(j["f64"]["ABCD"], 1.0);
        assert_eq!(j["u64"]["ABCD"], 0x3FF0_u64 << 48);
        assert!(row_json(&r, 1, true).get("f64").is_none());
        let line = row_text(&r, 0, true, ' ');
        assert!(line.contains(" 1 ") || line.contains(" 1"), "{line}");
        assert_eq!(
            header(Table::Holding, true).split_whitespace().count(),
            5 + 24 * 2
        );
    }

    #[test]
    fn text_column_shows_printable_bytes() {
        assert_eq!(text_of(0x4142), "AB");
        assert_eq!(text_of(0x0041), ".A");
        let r = reading(vec![Cell::Word(0x4142)]);
        assert!(row_text(&r, 0, false, ' ').contains(" AB"));
    }

    #[test]
    fn bits_are_bools() {
        let r = Reading {
            table: Table::Coil,
            start: 0,
            cells: vec![Cell::Bit(true)],
        };
        assert_eq!(row_json(&r, 0, false), json!({"address": 0, "bool": true}));
        assert_eq!(row_text(&r, 0, false, ' '), "       0  1");
    }

    #[test]
    fn types_and_lengths() {
        assert_eq!(
            value_type(Some(TypeArg::F32), None),
            Ok(Some(ValueType::F32))
        );
        assert_eq!(
            value_type(Some(TypeArg::String), Some(8)),
            Ok(Some(ValueType::String { len: 8 }))
        );
        assert!(value_type(Some(TypeArg::String), None).is_err());
        assert!(value_type(Some(TypeArg::String), Some(251)).is_err());
        assert!(value_type(Some(TypeArg::U16), Some(2)).is_err());
        assert!(value_type(None, Some(2)).is_err());
        assert_eq!(value_type(None, None), Ok(None));
    }
}
