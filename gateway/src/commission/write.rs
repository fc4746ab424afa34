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
    flags::TransportArgs,
    target::Target,
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
            write_address: None,
            scale_register: None,
        }),
        ha_overrides: None,
        poll_interval: None,
        write_only: false,
        rewrite_every: None,
        key: None,
    }
}

/// A checked write: where, what, and the registers it becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Unit id.
    pub unit: u8,
    /// Holding registers or coils.
    pub table: Table,
    /// First address.
    pub address: u16,
    /// The value's type.
    pub ty: ValueType,
    /// Its word order.
    pub order: WordOrder,
    /// The value to write, as `/set` checks made it.
    pub raw: Value,
    /// The registers it is encoded into (none for a coil).
    pub registers: Vec<u16>,
    /// Always FC16/FC15.
    pub multiple: bool,
}

impl Request {
    /// Registers (or bits) the value takes.
    pub(crate) fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.ty.registers()
        }
    }
}

/// What the device holds after the write.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The function code the value was written with.
    pub function: u8,
    /// The value read back.
    pub value: Value,
    /// The registers read back (none for a coil).
    pub registers: Vec<u16>,
}

/// The flags checked and the value parsed, as a `/set` on such a point would be.
pub fn request(a: &WriteArgs) -> Result<Request, CommissionError> {
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
    Ok(Request {
        unit: a.unit,
        table,
        address,
        ty,
        order,
        raw,
        registers,
        multiple: a.multiple,
    })
}

/// Run `fieldlink write`.
pub async fn run(a: &WriteArgs, out: &mut impl Write) -> Result<(), CommissionError> {
    let req = request(a)?;
    let transport = match a.transport.resolve_one(Duration::from_secs(1)).await? {
        Target::Direct(t) => t,
        Target::Gateway(g) => return super::client::write(a, g, out).await,
    };
    super::check_unit(a.unit, &transport)?;
    let mut t = transport.open();
    let outcome = execute(&mut t, &req, &transport.describe()).await?;
    match writeln!(out, "{}", outcome.output(a, &req)).and_then(|()| out.flush()) {
        Err(e) if !closed(&e) => Err(CommissionError::Unavailable(format!(
            "standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Write as the bus task would (FC05/FC06, FC15/FC16 for more or with `multiple`), then
/// read back what the device holds.
pub async fn execute<T: ModbusTransport>(
    t: &mut T,
    req: &Request,
    endpoint: &str,
) -> Result<Outcome, CommissionError> {
    let (unit, address, multiple) = (req.unit, req.address, req.multiple);
    let function = if req.table.is_bits() {
        let on = matches!(req.raw, Value::Bool(true));
        t.write_coils(unit, address, &[on], multiple)
            .await
            .map(|()| if multiple { 15 } else { 5 })
    } else {
        let one = req.registers.len() == 1 && !multiple;
        t.write_registers(unit, address, &req.registers, multiple)
            .await
            .map(|()| if one { 6 } else { 16 })
    }
    .map_err(|e| refused(&e, unit, endpoint))?;
    let back = t
        .read(unit, req.table, address, req.count())
        .await
        .map_err(|e| match super::unavailable(&e, unit, endpoint) {
            CommissionError::Unavailable(why) => {
                CommissionError::Unavailable(format!("written, but the read-back failed: {why}"))
            }
            other => other,
        })?;
    let (value, registers) = match back {
        ReadData::Bits(b) => (Value::Bool(b.first().copied().unwrap_or(false)), Vec::new()),
        ReadData::Registers(r) => (
            codec::decode(&r, req.ty, req.order, None)
                .map_err(|e| CommissionError::Unavailable(format!("read-back: {e}")))?,
            r,
        ),
    };
    Ok(Outcome {
        function,
        value,
        registers,
    })
}

fn hex(r: &[u16]) -> Vec<String> {
    r.iter().map(|w| format!("{w:04x}")).collect()
}

impl Outcome {
    /// Whether the device holds what was written.
    fn same(&self, req: &Request) -> bool {
        if req.table.is_bits() {
            self.value == req.raw
        } else {
            self.registers == req.registers
        }
    }

    /// What `write` prints (without the last newline): the JSON object or the lines.
    pub fn output(&self, a: &WriteArgs, req: &Request) -> String {
        if a.json {
            self.json(req).to_string()
        } else {
            self.text(req)
        }
    }

    /// `write --json`.
    pub fn json(&self, req: &Request) -> serde_json::Value {
        let value = |v: &Value| match v {
            Value::Float(_) | Value::Int(_) | Value::U64(_) => decode::number_json(v, req.ty),
            Value::Bool(b) => json!(b),
            Value::Str(s) => json!(s),
        };
        json!({
            "unit": req.unit,
            "table": req.table.name(),
            "address": req.address,
            "type": req.ty.name(),
            "word_order": req.order.name(),
            "function": self.function,
            "written": {"value": value(&req.raw), "registers": hex(&req.registers)},
            "read_back": {"value": value(&self.value), "registers": hex(&self.registers)},
        })
    }

    /// The two lines `write` prints (three when the device holds another value).
    pub fn text(&self, req: &Request) -> String {
        let count = u32::from(req.count());
        let place = if count > 1 {
            format!("{}-{}", req.address, u32::from(req.address) + count - 1)
        } else {
            req.address.to_string()
        };
        let as_type = if req.table.is_bits() {
            String::new()
        } else if req.ty.registers() > 1 {
            format!(" as {} {}", req.ty, req.order.name())
        } else {
            format!(" as {}", req.ty)
        };
        let regs = |r: &[u16]| {
            if r.is_empty() {
                String::new()
            } else {
                format!(" (registers {})", hex(r).join(" "))
            }
        };
        let mut s = format!(
            "Wrote {}{as_type} to unit {}, {} {place}, with function {}{}.\n\
             Read back: {}{}.",
            decode::value_text(&req.raw, req.ty),
            req.unit,
            req.table.name(),
            self.function,
            regs(&req.registers),
            decode::value_text(&self.value, req.ty),
            regs(&self.registers),
        );
        if !self.same(req) {
            s.push_str("\nThe device holds another value than the one written.");
        }
        s
    }
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
