//! `fieldlink probe`: read a range of registers or bits and show every decoding of every
//! address, so that a user finds the base of the addresses, the word order and the scale
//! without writing a mapping first.
//!
//! The range is read in requests of at most 125 registers or 2000 bits. A request the
//! device answers with an exception is read again address by address, so each address
//! shows its own value or its own exception. `--watch` reads again every interval and
//! prints the addresses that changed, marked `*`; `--json` prints one object;
//! `--yaml --type T` prints the range as draft points.

use std::{io::Write, time::Duration};

use fieldlink_drivers::modbus::{codec, DriverError, ModbusTransport, ReadData, Table, ValueType};

use super::{
    closed,
    decode::{self, Cell, OrderArg, Reading, TableArg, TypeArg},
    flags::TransportArgs,
    target::Target,
    CommissionError,
};

/// `fieldlink probe`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Where the device is.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Unit id (slave address) of the device.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// The table to read.
    #[arg(long, value_enum, default_value = "holding")]
    pub table: TableArg,
    /// The first address, 0-based as on the wire (decimal, or hex as 0x1F).
    #[arg(long, value_parser = super::number)]
    pub address: u32,
    /// How many addresses.
    #[arg(long, default_value_t = 10, value_parser = super::number)]
    pub count: u32,
    /// Add the 64-bit decodings (u64, i64, f64 of four registers).
    #[arg(long)]
    pub wide: bool,
    /// Read again every INTERVAL (`2s`) and print what changed, marked `*`.
    #[arg(long, value_name = "INTERVAL")]
    pub watch: Option<String>,
    /// Print one JSON object (with `--watch`: one per change).
    #[arg(long, conflicts_with = "yaml")]
    pub json: bool,
    /// Print the range as draft `points:` entries of `--type`.
    #[arg(long, requires = "ty", conflicts_with = "watch")]
    pub yaml: bool,
    /// The type of the drafted points.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub ty: Option<TypeArg>,
    /// Length in bytes of a `string`.
    #[arg(long)]
    pub length: Option<u16>,
    /// The word order of the drafted points.
    #[arg(long, value_enum, ignore_case = true)]
    pub word_order: Option<OrderArg>,
}

/// What a probe asks for, checked.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Unit id.
    pub unit: u8,
    /// Table.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// How many addresses (up to 65 536).
    pub count: u32,
}

/// A probe checked: what to read, and how to print it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to read.
    pub req: Request,
    /// The type of the drafted points (`--yaml`).
    pub ty: Option<ValueType>,
    /// Their word order.
    pub order: codec::WordOrder,
    /// `--watch`: how often to read again.
    pub interval: Option<Duration>,
}

/// Check the flags of `fieldlink probe` (the transport aside).
pub fn plan(a: &ProbeArgs) -> Result<Plan, CommissionError> {
    use CommissionError::Usage;
    let (start, count) = super::range(a.address, a.count)?;
    let table = Table::from(a.table);
    let ty = decode::value_type(a.ty, a.length).map_err(Usage)?;
    if (a.ty.is_some() || a.word_order.is_some()) && !a.yaml {
        return Err(Usage(
            "--type and --word-order draft points: add --yaml".into(),
        ));
    }
    if let Some(ty) = ty {
        if table.is_bits() && ty != ValueType::Bool {
            return Err(Usage(format!(
                "a {} holds one bit: --type bool",
                if table == Table::Coil {
                    "coil"
                } else {
                    "discrete input"
                }
            )));
        }
    }
    let interval = match &a.watch {
        Some(w) => Some(super::flags::duration(w, "--watch")?),
        None => None,
    };
    Ok(Plan {
        req: Request {
            unit: a.unit,
            table,
            start,
            count,
        },
        ty,
        order: a.word_order.map(Into::into).unwrap_or_default(),
        interval,
    })
}

/// What `probe` prints for a reading: the draft points, the JSON line or the table.
pub fn output(a: &ProbeArgs, plan: &Plan, r: &Reading, endpoint: &str) -> String {
    if let Some(ty) = plan.ty {
        return draft(&plan.req, r, ty, plan.order);
    }
    if a.json {
        return format!("{}\n", decode::reading_json(plan.req.unit, r, a.wide));
    }
    let mut text = Vec::new();
    // Writing into memory does not fail.
    let _ = print_table(&mut text, &plan.req, r, a.wide, endpoint);
    String::from_utf8_lossy(&text).into_owned()
}

/// Print `text`; a closed standard output ends the command quietly (`Ok(false)`).
pub(crate) fn print(out: &mut impl Write, text: &str) -> Result<bool, CommissionError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if closed(&e) => Ok(false),
        Err(e) => Err(CommissionError::Unavailable(format!(
            "standard output: {e}"
        ))),
        Ok(()) => Ok(true),
    }
}

/// Run `fieldlink probe`.
pub async fn run(a: &ProbeArgs, out: &mut impl Write) -> Result<(), CommissionError> {
    let plan = plan(a)?;
    let transport = match a.transport.resolve_one(Duration::from_secs(1)).await? {
        Target::Direct(t) => t,
        Target::Gateway(g) => return super::client::probe(a, &plan, g, out).await,
    };
    super::check_unit(a.unit, &transport)?;
    let mut t = transport.open();
    let endpoint = transport.describe();
    let first = read(&mut t, &plan.req)
        .await
        .map_err(|e| super::unavailable(&e, a.unit, &endpoint))?;
    if !print(out, &output(a, &plan, &first, &endpoint))? {
        return Ok(());
    }
    let Some(every) = plan.interval else {
        return Ok(());
    };
    let req = plan.req;
    let mut ticks = Ticks::new(every);
    let mut last = first;
    loop {
        let secs = ticks.next().await;
        match read(&mut t, &req).await {
            Ok(now) => match changes(&last, &now, secs, a) {
                Some(text) if !print(out, &text)? => return Ok(()),
                _ => last = now,
            },
            Err(e) => eprintln!(
                "+{secs:.1}s: {}",
                super::unavailable(&e, req.unit, &t.endpoint())
            ),
        }
    }
}

/// Read the whole range: requests within the protocol's limits, and address by address
/// where one is answered with an exception. A failure of the transport ends it.
pub async fn read<T: ModbusTransport>(t: &mut T, req: &Request) -> Result<Reading, DriverError> {
    let mut cells = Vec::with_capacity(req.count as usize);
    let max = u32::from(req.table.max_read());
    let end = u32::from(req.start) + req.count;
    let mut at = u32::from(req.start);
    while at < end {
        let n = (end - at).min(max) as u16;
        let a = at as u16;
        match t.read(req.unit, req.table, a, n).await {
            Ok(data) => cells.extend(cells_of(data, n)?),
            Err(DriverError::Exception { .. }) if n > 1 => {
                for k in 0..n {
                    cells.push(read_one(t, req, a + k).await?);
                }
            }
            Err(DriverError::Exception { code, .. }) => cells.push(Cell::Exception(code)),
            Err(e) => return Err(e),
        }
        at += u32::from(n);
    }
    Ok(Reading {
        table: req.table,
        start: req.start,
        cells,
    })
}

/// One address read alone: its value or its exception.
async fn read_one<T: ModbusTransport>(
    t: &mut T,
    req: &Request,
    address: u16,
) -> Result<Cell, DriverError> {
    match t.read(req.unit, req.table, address, 1).await {
        Ok(data) => Ok(cells_of(data, 1)?.remove(0)),
        Err(DriverError::Exception { code, .. }) => Ok(Cell::Exception(code)),
        Err(e) => Err(e),
    }
}

fn cells_of(data: ReadData, n: u16) -> Result<Vec<Cell>, DriverError> {
    let cells: Vec<Cell> = match data {
        ReadData::Registers(r) => r.into_iter().map(Cell::Word).collect(),
        ReadData::Bits(b) => b.into_iter().map(Cell::Bit).collect(),
    };
    if cells.len() == usize::from(n) {
        Ok(cells)
    } else {
        Err(DriverError::Protocol(format!(
            "{} values in the reply, {n} asked for",
            cells.len()
        )))
    }
}

fn print_table(
    out: &mut impl Write,
    req: &Request,
    r: &Reading,
    wide: bool,
    endpoint: &str,
) -> std::io::Result<()> {
    let last = u32::from(req.start) + req.count - 1;
    writeln!(
        out,
        "Unit {} on {endpoint}, {} {}-{last}:",
        req.unit,
        noun(req.table),
        req.start
    )?;
    writeln!(out, "{}", decode::header(req.table, wide))?;
    for i in 0..r.cells.len() {
        writeln!(out, "{}", decode::row_text(r, i, wide, ' '))?;
    }
    Ok(())
}

fn noun(t: Table) -> &'static str {
    match t {
        Table::Holding => "holding registers",
        Table::Input => "input registers",
        Table::Coil => "coils",
        Table::Discrete => "discrete inputs",
    }
}

/// `--watch`'s clock: a tick every interval (late ticks delayed, not bunched), and the
/// seconds since the first reading.
pub(crate) struct Ticks {
    started: tokio::time::Instant,
    ticks: tokio::time::Interval,
}

impl Ticks {
    pub(crate) fn new(every: Duration) -> Ticks {
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval_at(started + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { started, ticks }
    }

    /// Wait for the next tick; the seconds since the start.
    pub(crate) async fn next(&mut self) -> f64 {
        self.ticks.tick().await;
        self.started.elapsed().as_secs_f64()
    }
}

/// `--watch`: what to print when a reading `secs` after the first differs from the last
/// one (the addresses whose value or exception changed, marked `*`, under a line saying
/// when; with `--json` one object with `changed`); `None` when nothing changed.
pub(crate) fn changes(last: &Reading, now: &Reading, secs: f64, a: &ProbeArgs) -> Option<String> {
    let changed: Vec<usize> = (0..now.cells.len())
        .filter(|i| now.cells.get(*i) != last.cells.get(*i))
        .collect();
    if changed.is_empty() {
        return None;
    }
    if a.json {
        let mut j = decode::reading_json(a.unit, now, a.wide);
        let addrs: Vec<u32> = changed.iter().map(|i| now.address(*i)).collect();
        j["changed"] = serde_json::json!(addrs);
        return Some(format!("{j}\n"));
    }
    let mut text = format!("-- +{secs:.1}s: {} changed\n", changed.len());
    for i in &changed {
        text.push_str(&decode::row_text(now, *i, a.wide, '*'));
        text.push('\n');
    }
    Some(text)
}

/// The range as draft `points:` of type `ty`: one per value that fits in the range and
/// was read whole, with its value now as a comment; topics left empty for the user.
pub fn draft(req: &Request, r: &Reading, ty: ValueType, order: codec::WordOrder) -> String {
    let step = if req.table.is_bits() {
        1
    } else {
        usize::from(ty.registers())
    };
    let mut s = format!(
        "# Drafted by `fieldlink probe`: unit {}, {} {}-{}, as {ty}{}.\n\
         # Give each point a topic (and a unit, a scale...), delete the ones you do not\n\
         # want, put the list under the device in your mapping file, then run\n\
         # `fieldlink check`.\npoints:\n",
        req.unit,
        noun(req.table),
        req.start,
        u32::from(req.start) + req.count - 1,
        if ty.registers() > 1 || matches!(order, codec::WordOrder::Badc | codec::WordOrder::Dcba) {
            format!(" {}", order.name())
        } else {
            String::new()
        },
    );
    let mut i = 0;
    while i + step <= r.cells.len() {
        let address = r.address(i);
        let value = match r.cells[i] {
            Cell::Bit(b) => Ok(u8::from(b).to_string()),
            _ => match r.words(i, step) {
                Some(words) => codec::decode(&words, ty, order, None)
                    .map(|v| decode::value_text(&v, ty))
                    .map_err(|e| e.to_string()),
                None => Err(r.cells[i..i + step]
                    .iter()
                    .find_map(|c| match c {
                        Cell::Exception(code) => Some(format!("exception {code:#04x}")),
                        _ => None,
                    })
                    .unwrap_or_else(|| "not read".into())),
            },
        };
        match value {
            Ok(v) => {
                s.push_str(&format!(
                    "  - topic: \"\"                # now {v}\n    table: {}\n    address: {address}\n    type: {ty}\n",
                    req.table.name()
                ));
                if let ValueType::String { len } = ty {
                    s.push_str(&format!("    length: {len}\n"));
                }
                if !req.table.is_bits() && order != codec::WordOrder::Abcd {
                    s.push_str(&format!("    word_order: {}\n", order.name()));
                }
            }
            Err(why) => s.push_str(&format!("  # address {address}: {why}; no point drafted\n")),
        }
        i += step;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_points_step_by_the_type_and_skip_exceptions() {
        let req = Request {
            unit: 1,
            table: Table::Input,
            start: 0,
            count: 6,
        };
        // 230.5 CDAB at 0, an exception at 3, 1.5 CDAB at 4.
        let r = Reading {
            table: Table::Input,
            start: 0,
            cells: vec![
                Cell::Word(0x8000),
                Cell::Word(0x4366),
                Cell::Word(0),
                Cell::Exception(2),
                Cell::Word(0),
                Cell::Word(0x3FC0),
            ],
        };
        let y = draft(&req, &r, ValueType::F32, codec::WordOrder::Cdab);
        assert!(
            y.contains("address: 0\n    type: f32\n    word_order: CDAB\n"),
            "{y}"
        );
        assert!(y.contains("# now 230.5\n"), "{y}");
        assert!(
            y.contains("# address 2: exception 0x02; no point drafted"),
            "{y}"
        );
        assert!(y.contains("address: 4\n"), "{y}");
        assert!(y.contains("# now 1.5\n"), "{y}");
        assert_eq!(y.matches("- topic: \"\"").count(), 2, "{y}");
    }
}
