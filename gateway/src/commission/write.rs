//! `fieldlink write`: one value written exactly as a `/set` on such a point would be: the
//! same parsing and checks (`commands::to_raw`), the same function codes as the bus task
//! (FC05 for a coil, FC06 for one register, FC16 for more, FC15/FC16 always with
//! `--multiple`), then read back; both are printed.

use std::{io::Write, time::Duration};

use fieldlink_drivers::modbus::{codec, DriverError, ModbusTransport, ReadData, Table, Value};
use serde_json::json;

use super::{
    closed,
    decode::{self, OrderArg, TypeArg},
    target::{Target, TransportArgs},
    CommissionError,
};
use crate::{
    commands::{parse_payload, to_raw},
    model::{ModbusPoint, Payload, Point, PublishMode, Source, ValueType, WordOrder},
};

/// The tables a value can be written to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTable {
    /// Holding registers (FC06/FC16).
    Holding,
    /// Coils (FC05/FC15).
    Coil,
}

/// `fieldlink write`.
#[derive(clap::Args, Debug, Clone)]
pub struct WriteArgs {
    /// Where the device is.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Unit id (slave address) of the device.
    #[arg(long)]
    pub unit: u8,
    /// The table.
    #[arg(long, value_enum, default_value = "holding")]
    pub table: WriteTable,
    /// The address, 0-based as on the wire (decimal, or hex as 0x1F).
    #[arg(long, value_parser = super::number)]
    pub address: u32,
    /// The value's type (default: `bool` on a coil, `u16` on a register).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub ty: Option<TypeArg>,
    /// Length in bytes of a `string`.
    #[arg(long)]
    pub length: Option<u16>,
    /// The word order of a value of several registers.
    #[arg(long, value_enum, ignore_case = true)]
    pub word_order: Option<OrderArg>,
    /// Always write with FC16 (registers) or FC15 (coils), for devices that refuse
    /// FC06/FC05.
    #[arg(long)]
    pub multiple: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The value, as a `/set` payload would give it: `21.5`, `-3`, `ON`, `true`, text.
    #[arg(allow_hyphen_values = true)]
    pub value: String,
}

/// The point a `/set` would be checked against: writable, no scale, offset or limits.
fn point(ty: ValueType, table: Table, address: u16, order: WordOrder) -> Point {
    Point {
        topic: "fieldlink/write".into(),
        slot: 0,
        ty,
        scale: 1.0,
        offset: 0.0,
        precision: None,
        unit: None,
        retain: false,
        qos: 0,
        payload: Payload::Plain,
        publish: PublishMode::EveryPoll,
        heartbeat: None,
        writable: true,
        min: None,
        max: None,
        value_map: Vec::new(),
        source: Source::Modbus(ModbusPoint {
            table,
            address,
            order,
            bit: None,
        }),
        ha_overrides: None,
    }
}

/// Run `fieldlink write`.
pub async fn run(a: &WriteArgs, out: &mut impl Write) -> Result<(), CommissionError> {
    use CommissionError::{Data, Usage};
    let table = match a.table {
        WriteTable::Holding => Table::Holding,
        WriteTable::Coil => Table::Coil,
    };
    let ty = decode::value_type(a.ty, a.length)
        .map_err(Usage)?
        .unwrap_or(if table.is_bits() {
            ValueType::Bool
        } else {
            ValueType::U16
        });
    if table.is_bits() && ty != ValueType::Bool {
        return Err(Usage(format!(
            "a coil holds one bit, not a {ty}: --type bool"
        )));
    }
    let count = if table.is_bits() {
        1
    } else {
        u32::from(ty.registers())
    };
    let (address, _) = super::range(a.address, count)?;
    let order: WordOrder = a.word_order.map(Into::into).unwrap_or_default();
    let p = point(ty, table, address, order);
    let (given, _) = parse_payload(a.value.as_bytes()).map_err(|(e, _)| Data(e.to_string()))?;
    let raw = to_raw(&p, &given).map_err(|e| Data(e.to_string()))?;
    let registers = match table {
        Table::Coil => Vec::new(),
        _ => codec::encode(&raw, ty, order).map_err(|e| Data(format!("out of range: {e}")))?,
    };
    let Target::Direct(transport) = a.transport.target(Duration::from_secs(1))?;
    super::check_unit(a.unit, &transport)?;
    let endpoint = transport.describe();
    let mut t = transport.open();
    let function = write(&mut t, a.unit, table, address, &raw, &registers, a.multiple)
        .await
        .map_err(|e| refused(&e, a.unit, &endpoint))?;
    let back = t
        .read(a.unit, table, address, count as u16)
        .await
        .map_err(|e| match super::unavailable(&e, a.unit, &endpoint) {
            CommissionError::Unavailable(why) => {
                CommissionError::Unavailable(format!("written, but the read-back failed: {why}"))
            }
            other => other,
        })?;
    let (back_value, back_regs) = match back {
        ReadData::Bits(b) => (Value::Bool(b.first().copied().unwrap_or(false)), Vec::new()),
        ReadData::Registers(r) => (
            codec::decode(&r, ty, order, None)
                .map_err(|e| CommissionError::Unavailable(format!("read-back: {e}")))?,
            r,
        ),
    };
    let hex = |r: &[u16]| r.iter().map(|w| format!("{w:04x}")).collect::<Vec<_>>();
    let text = if a.json {
        let value = |v: &Value| match v {
            Value::Float(_) | Value::Int(_) | Value::U64(_) => decode::number_json(v, ty),
            Value::Bool(b) => json!(b),
            Value::Str(s) => json!(s),
        };
        json!({
            "unit": a.unit,
            "table": table.name(),
            "address": address,
            "type": ty.name(),
            "word_order": order.name(),
            "function": function,
            "written": {"value": value(&raw), "registers": hex(&registers)},
            "read_back": {"value": value(&back_value), "registers": hex(&back_regs)},
        })
        .to_string()
    } else {
        let place = if count > 1 {
            format!("{}-{}", address, u32::from(address) + count - 1)
        } else {
            address.to_string()
        };
        let as_type = if table.is_bits() {
            String::new()
        } else if ty.registers() > 1 {
            format!(" as {ty} {}", order.name())
        } else {
            format!(" as {ty}")
        };
        let regs = |r: &[u16]| {
            if r.is_empty() {
                String::new()
            } else {
                format!(" (registers {})", hex(r).join(" "))
            }
        };
        let mut s = format!(
            "Wrote {}{as_type} to unit {}, {} {place}, with function {function}{}.\n\
             Read back: {}{}.",
            decode::value_text(&raw, ty),
            a.unit,
            table.name(),
            regs(&registers),
            decode::value_text(&back_value, ty),
            regs(&back_regs),
        );
        let same = if table.is_bits() {
            back_value == raw
        } else {
            back_regs == registers
        };
        if !same {
            s.push_str("\nThe device holds another value than the one written.");
        }
        s
    };
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if !closed(&e) => Err(CommissionError::Unavailable(format!(
            "standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Write as the bus task would; the function code used.
async fn write<T: ModbusTransport>(
    t: &mut T,
    unit: u8,
    table: Table,
    address: u16,
    raw: &Value,
    registers: &[u16],
    multiple: bool,
) -> Result<u8, DriverError> {
    if table.is_bits() {
        let on = matches!(raw, Value::Bool(true));
        t.write_coils(unit, address, &[on], multiple).await?;
        return Ok(if multiple { 15 } else { 5 });
    }
    t.write_registers(unit, address, registers, multiple)
        .await?;
    Ok(if registers.len() == 1 && !multiple {
        6
    } else {
        16
    })
}

/// A write the device refused: exceptions 01–03 say the request was wrong for it (data),
/// anything else that it could not be reached (unavailable).
fn refused(e: &DriverError, unit: u8, endpoint: &str) -> CommissionError {
    match e {
        DriverError::Exception {
            code: code @ 1..=3,
            name,
        } => CommissionError::Data(format!(
            "unit {unit} on {endpoint} refused the write: exception {code:#04x} ({name})"
        )),
        _ => super::unavailable(e, unit, endpoint),
    }
}
