//! Modbus buses (TCP and RTU): what they supply to the device actor.
//!
//! A poll runs the read planner's requests for the device (merged blocks, split again
//! where the device answers exception 02, with what was learned re-checked on backoff),
//! decodes each reply and publishes through the point's policy. A command is a write
//! (FC05/FC06, or FC15/FC16 when `write_multiple` or the value needs several registers; a
//! bit of a register is a read-modify-write) at the point's `write_address` (else its
//! `address`), followed by a read-back of what the device now holds at `address`.
//! `write_only` points are not in the read plan and not read back (a device of only
//! such points is not polled). A read on demand (`<topic>/get`) plans its own merged read
//! of just the points asked for, within the device's read limits.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime},
};

use fieldlink_drivers::modbus::{
    codec, DriverError, ModbusTransport, PlanItem, Planner, ReadData, ReadRequest, Table, Value,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{actor, cadence::Due, scale::Scales, BusIo, Cx, Driver, Polled};
use crate::{
    commands::{Command, CommandError, GetError},
    modbus_server::DeviceSnapshot,
    model::{Bus, Device, ModbusDevice, ModbusPoint, Model, Point},
    publish::{reading, reading_scaled, Reading},
};

/// Run a Modbus bus over `transport` until shutdown.
pub async fn run_modbus<T: ModbusTransport + Send>(
    model: Arc<Model>,
    bus: Arc<Bus>,
    first_stats_index: usize,
    transport: T,
    io: BusIo,
) {
    let devices = bus.devices.iter().map(|d| Unit::new(d)).collect();
    let driver = Modbus { transport, devices };
    actor::run(model, bus, first_stats_index, driver, io).await;
}

/// A Modbus bus: its transport and what the planner learned of each device.
struct Modbus<T> {
    transport: T,
    devices: Vec<Unit>,
}

/// One device's read plan. The planner sees only the Modbus points that are read (not
/// `write_only`): its item `i` is point `points[i]` of the device.
struct Unit {
    planner: Planner,
    points: Vec<(usize, ModbusPoint)>,
    /// Planner items the device says do not exist (exception 02 when read alone).
    bad_points: Vec<bool>,
    // Points at their own cadence (#23).
    /// The planner items due in the poll under way; empty when every item is.
    due_items: Vec<bool>,
    /// Polled: not a device of `write_only` points only.
    polled: bool,
    // Scale factor registers (#25): planner items after the points' (`scale.rs`).
    scales: Scales,
    // The Modbus server (#26).
    /// The cadence of each planner item (a factor's: the fastest of the points it
    /// scales): a served device's reads are kept for 3 × the longest of a read's.
    cadences: Vec<Duration>,
}

impl<T: ModbusTransport + Send> Driver for Modbus<T> {
    type Event = std::convert::Infallible;

    fn reconfigure(&mut self, kept: &[Option<usize>], cx: &mut Cx) {
        let mut old: Vec<Option<Unit>> = self.devices.drain(..).map(Some).collect();
        self.devices = kept
            .iter()
            .enumerate()
            .map(|(j, k)| {
                k.and_then(|i| old.get_mut(i)?.take())
                    .unwrap_or_else(|| Unit::new(&cx.bus.devices[j]))
            })
            .collect();
    }

    fn endpoint(&self) -> String {
        self.transport.endpoint()
    }

    fn polls(&self, d: usize) -> bool {
        self.devices[d].polled
    }

    async fn poll(&mut self, d: usize, cx: &mut Cx) -> Polled {
        self.poll_points(d, Due::All, cx).await
    }

    async fn poll_points(&mut self, d: usize, due: Due<'_>, cx: &mut Cx) -> Polled {
        let device = cx.device(d).clone();
        let unit = &mut self.devices[d];
        let started = tokio::time::Instant::now();
        let wall = SystemTime::now();
        // What was learned from exception 02 and is due is checked again in this cycle.
        unit.planner.refresh(tokio::time::Instant::now());
        unit.scales.begin();
        let mut queue: VecDeque<ReadRequest> = unit.plan(due).iter().cloned().collect();
        if queue.is_empty() && !due.all() {
            // The points due now are all known unreadable: nothing to read this time.
            return Polled::Skipped;
        }
        let mut answered = false;
        let mut last_error: Option<DriverError> = None;
        while let Some(req) = queue.pop_front() {
            cx.stats_of(d).requests.fetch_add(1, Relaxed);
            let reply = self
                .transport
                .read(settings(&device).unit, req.table, req.start, req.count)
                .await;
            if reply.is_err() {
                cx.stats_of(d).request_errors.fetch_add(1, Relaxed);
            }
            let faults = self.transport.take_faults();
            if !faults.is_empty() {
                cx.stats_of(d).add_faults(&faults);
            }
            match reply {
                Ok(data) => {
                    answered = true;
                    if let Some(s) = cx.snapshot(d) {
                        record(s, &unit.cadences, &req, &data, &device);
                    }
                    unit.publish_reply(&device, d, &req, &data, started, wall, cx);
                }
                Err(e) if e.is_illegal_address() => {
                    answered = true;
                    for r in unit.illegal_address(&device, &req).into_iter().rev() {
                        queue.push_front(r);
                    }
                }
                Err(e @ DriverError::Exception { .. }) => {
                    // The device is there but refused this read: those points publish
                    // nothing.
                    answered = true;
                    debug!(device = %device.id, start = req.start, error = %e, "Read refused.");
                    last_error = Some(e);
                }
                Err(e) => {
                    // Timeout or transport failure: the rest of this cycle would fail too.
                    last_error = Some(e);
                    answered = false;
                    break;
                }
            }
        }
        let unreadable: Vec<String> = unit
            .planner
            .unreadable()
            .map(|m| unit.item_name(&device, m))
            .collect();
        cx.stats_of(d).set_unreadable(unreadable);
        if answered {
            Polled::Answered
        } else {
            // Every failure says why: no request left to send means every point's address
            // answered exception 02 and waits to be probed again.
            Polled::Failed(last_error.map_or_else(
                || {
                    "every point's address answered exception 0x02 (illegal data address); \
                     probed again with backoff"
                        .to_string()
                },
                |e| e.to_string(),
            ))
        }
    }

    async fn write(&mut self, c: &Command, cx: &mut Cx) -> Result<Reading, CommandError> {
        let device = cx.device(c.device).clone();
        let Some((point, at)) = device
            .points
            .get(c.point)
            .and_then(|p| p.modbus().map(|m| (p, *m)))
        else {
            return Err(CommandError::NotWritable("not a Modbus point".into()));
        };
        // A served device's snapshot takes the read-back.
        let snapshot = cx.snapshot(c.device).cloned();
        let keep = snapshot.as_deref().map(|s| (s, point.cadence(&device)));
        let written = write_point(&mut self.transport, &device, (point, at, keep), &c.value).await;
        let faults = self.transport.take_faults();
        if !faults.is_empty() {
            cx.stats_of(c.device).add_faults(&faults);
        }
        written
    }

    async fn read(
        &mut self,
        d: usize,
        points: &[usize],
        cx: &mut Cx,
    ) -> Vec<Result<Reading, GetError>> {
        self.read_now(d, points, cx).await
    }

    async fn exchange(&mut self, ex: super::commission::Exchange, _cx: &mut Cx) {
        ex.run(&mut self.transport).await;
    }

    async fn event(&mut self) -> Self::Event {
        std::future::pending().await
    }
}

impl Unit {
    fn new(d: &Device) -> Unit {
        let points: Vec<(usize, ModbusPoint)> = d
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.write_only)
            .filter_map(|(i, p)| p.modbus().map(|m| (i, *m)))
            .collect();
        let mut items: Vec<PlanItem> = points
            .iter()
            .map(|&(i, m)| PlanItem {
                table: m.table,
                address: m.address,
                count: m.count(d.points[i].ty),
            })
            .collect();
        let read: Vec<ModbusPoint> = points.iter().map(|(_, m)| *m).collect();
        let (scales, factors) = Scales::new(&read);
        items.extend(factors);
        let cadences = item_cadences(d, points.iter().map(|(i, _)| *i), &scales, items.len());
        Unit {
            bad_points: vec![false; items.len()],
            planner: Planner::with_limits(items, settings(d).read_limits()),
            points,
            due_items: Vec::new(),
            polled: d.polled(),
            scales,
            cadences,
        }
    }

    /// Where planner item `m` is: its table and first address.
    fn item_at(&self, m: usize) -> (Table, u16) {
        match self.points.get(m) {
            Some((_, mp)) => (mp.table, mp.address),
            None => self.scales.register(m),
        }
    }

    /// A planner item for logs: its point's topic, or what a factor register is.
    fn item_name(&self, device: &Device, m: usize) -> String {
        match self.points.get(m) {
            Some((i, _)) => device.points[*i].topic.clone(),
            None => self.scales.name(m),
        }
    }

    /// The reads of a poll of the points `due` says are due (the whole plan when all are).
    fn plan(&mut self, due: Due<'_>) -> &fieldlink_drivers::modbus::Plan {
        self.due_items.clear();
        if due.all() {
            return self.planner.plan();
        }
        self.due_items
            .extend(self.points.iter().map(|(i, _)| due.point(*i)));
        let factors: Vec<bool> = self.scales.due(&self.due_items).collect();
        self.due_items.extend(factors);
        self.planner.plan_for(&self.due_items)
    }

    /// Decode the values of an answered read and publish those due.
    #[allow(clippy::too_many_arguments)]
    fn publish_reply(
        &mut self,
        device: &Device,
        d: usize,
        req: &ReadRequest,
        data: &ReadData,
        started: tokio::time::Instant,
        wall: SystemTime,
        cx: &mut Cx,
    ) {
        for m in self.planner.read_ok(req) {
            if std::mem::replace(&mut self.bad_points[m], false) {
                let topic = self.item_name(device, m);
                info!(device = %device.id, topic = %topic, "Address readable again.");
            }
        }
        // Factors first: the values of this read that they scale go out with them.
        let (factors, values): (Vec<usize>, Vec<usize>) =
            req.members.iter().partition(|m| self.scales.is_factor(**m));
        let mut ready = Vec::new();
        for m in factors {
            let (_, m_at) = self.item_at(m);
            if let Some(raw) = data_register(data, usize::from(m_at - req.start)) {
                ready.extend(self.scales.read(&device.id, m, raw));
            }
        }
        for m in values {
            let (i, mp) = self.points[m];
            let point = &device.points[i];
            let value = decode_at(data, usize::from(mp.address - req.start), point, mp);
            match value {
                Ok(v) => ready.extend(self.scales.value(&device.id, m, v).map(|(v, f)| (m, v, f))),
                Err(e) => {
                    warn!(device = %device.id, topic = %point.topic, error = %e, "Cannot decode value.");
                }
            }
        }
        for (m, v, f) in ready {
            let i = self.points[m].0;
            let r = reading_scaled(&device.points[i], &v, f);
            cx.reading(d, i, r, started, wall);
        }
    }

    /// Learn from an exception 02 on `req`; returns the reads that replace it in this
    /// cycle (none when its point fails alone: it is unreadable until its next check).
    fn illegal_address(&mut self, device: &Device, req: &ReadRequest) -> Vec<ReadRequest> {
        let due = (!self.due_items.is_empty()).then_some(self.due_items.as_slice());
        let replacements =
            self.planner
                .learn_illegal_address_for(req, tokio::time::Instant::now(), due);
        if replacements.is_empty() {
            for &m in &req.members {
                if !self.bad_points[m] {
                    self.bad_points[m] = true;
                    let topic = self.item_name(device, m);
                    let (table, address) = self.item_at(m);
                    warn!(device = %device.id, topic = %topic, %table, address, "Device says the address does not exist (exception 02); checked again with backoff.");
                }
            }
        } else {
            debug!(device = %device.id, start = req.start, count = req.count, split_into = replacements.len(), "Merged read hit illegal address; split it.");
        }
        replacements
    }
}

/// The cadence of each of `n` planner items of `device`: the points' items (device
/// points `points`) first, then the factor registers of `scales` (each the fastest of
/// the points it scales).
fn item_cadences(
    device: &Device,
    points: impl Iterator<Item = usize>,
    scales: &Scales,
    n: usize,
) -> Vec<Duration> {
    let mut out: Vec<Duration> = points.map(|i| device.points[i].cadence(device)).collect();
    let first = out.len();
    for s in 0..n.saturating_sub(first) {
        let fastest = (0..first)
            .filter(|&k| scales.of(k) == Some(s))
            .map(|k| out[k])
            .min();
        out.push(fastest.unwrap_or(device.poll_interval));
    }
    out
}

/// Keep the reply `data` to `req` in the device's snapshot (the Modbus server serves it),
/// with the age the longest cadence among the read's points allows.
fn record(
    snapshot: &crate::modbus_server::DeviceSnapshot,
    cadences: &[Duration],
    req: &ReadRequest,
    data: &ReadData,
    device: &Device,
) {
    let cadence = longest(cadences, &req.members, device);
    snapshot.record(
        req.table,
        req.start,
        req.count,
        data,
        cadence,
        Instant::now(),
    );
}

/// The longest cadence among planner items `members` (`cadences` by item).
fn longest(cadences: &[Duration], members: &[usize], device: &Device) -> Duration {
    members
        .iter()
        .filter_map(|&m| cadences.get(m).copied())
        .max()
        .unwrap_or(device.poll_interval)
}

/// Register `off` of a reply of registers.
fn data_register(data: &ReadData, off: usize) -> Option<u16> {
    match data {
        ReadData::Registers(r) => r.get(off).copied(),
        ReadData::Bits(_) => None,
    }
}

/// The value of `point` (at `mp`) in a reply, `off` registers or bits into it.
fn decode_at(data: &ReadData, off: usize, point: &Point, mp: ModbusPoint) -> Result<Value, String> {
    match data {
        ReadData::Bits(bits) => bits
            .get(off)
            .map(|b| Value::Bool(*b))
            .ok_or_else(|| "short reply".to_string()),
        ReadData::Registers(regs) => regs
            .get(off..)
            .ok_or_else(|| "short reply".to_string())
            .and_then(|r| codec::decode(r, point.ty, mp.order, mp.bit).map_err(|e| e.to_string())),
    }
}

// Reads on demand (`<topic>/get`, issue #23).
impl<T: ModbusTransport + Send> Modbus<T> {
    /// Read points `points` of device `d` now: a plan of just those points within the
    /// device's read limits (one request where they lie close enough). A merged read the
    /// device refuses is tried again point by point, so one bad address does not fail the
    /// others; a timeout or a lost connection fails the rest.
    async fn read_now(
        &mut self,
        d: usize,
        points: &[usize],
        cx: &mut Cx,
    ) -> Vec<Result<Reading, GetError>> {
        let device = cx.device(d).clone();
        let not_modbus = GetError::NotReadable("not a Modbus point".into());
        let mut out = vec![Err(not_modbus); points.len()];
        // Planner item `m` is `points[at[m].0]`.
        let at: Vec<(usize, ModbusPoint)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| Some((i, *device.points.get(p)?.modbus()?)))
            .collect();
        let mut items: Vec<PlanItem> = at
            .iter()
            .map(|&(i, m)| PlanItem {
                table: m.table,
                address: m.address,
                count: m.count(device.points[points[i]].ty),
            })
            .collect();
        // Scale factor registers (#25): read with the values they scale.
        let (mut scales, factors) = Scales::new(&at.iter().map(|(_, m)| *m).collect::<Vec<_>>());
        items.extend(factors);
        scales.begin();
        let unit = settings(&device).unit;
        let planner = Planner::with_limits(items.clone(), settings(&device).read_limits());
        // Kept for the Modbus server when it serves the device.
        let snapshot = cx.snapshot(d).cloned();
        let cadences = snapshot.as_ref().map_or_else(Vec::new, |_| {
            let asked = at.iter().map(|&(i, _)| points[i]);
            item_cadences(&device, asked, &scales, items.len())
        });
        let mut queue: VecDeque<ReadRequest> = planner.plan().iter().cloned().collect();
        while let Some(req) = queue.pop_front() {
            cx.stats_of(d).requests.fetch_add(1, Relaxed);
            let reply = self
                .transport
                .read(unit, req.table, req.start, req.count)
                .await;
            if reply.is_err() {
                cx.stats_of(d).request_errors.fetch_add(1, Relaxed);
            }
            let faults = self.transport.take_faults();
            if !faults.is_empty() {
                cx.stats_of(d).add_faults(&faults);
            }
            match reply {
                Ok(data) => {
                    if let Some(s) = &snapshot {
                        record(s, &cadences, &req, &data, &device);
                    }
                    let n = at.len();
                    for &m in req.members.iter().filter(|m| **m >= n) {
                        let off = usize::from(items[m].address - req.start);
                        if let Some(raw) = data_register(&data, off) {
                            for (p, v, f) in scales.read(&device.id, m, raw) {
                                let point = &device.points[points[at[p].0]];
                                out[at[p].0] = Ok(reading_scaled(point, &v, f));
                            }
                        }
                    }
                    for &m in req.members.iter().filter(|m| **m < n) {
                        let (i, mp) = at[m];
                        let point = &device.points[points[i]];
                        let off = usize::from(mp.address - req.start);
                        out[i] = match decode_at(&data, off, point, mp) {
                            Ok(v) => match scales.value(&device.id, m, v) {
                                Some((v, f)) => Ok(reading_scaled(point, &v, f)),
                                None => Err(GetError::Decode(
                                    "its scale factor was not read, or is unusable".into(),
                                )),
                            },
                            Err(e) => Err(GetError::Decode(e)),
                        };
                    }
                }
                Err(DriverError::Exception { .. }) if req.members.len() > 1 => {
                    for &m in req.members.iter().rev() {
                        queue.push_front(ReadRequest {
                            table: items[m].table,
                            start: items[m].address,
                            count: items[m].count,
                            members: vec![m],
                        });
                    }
                }
                Err(e @ DriverError::Exception { .. }) => {
                    for &m in &req.members {
                        if let Some(&(i, _)) = at.get(m) {
                            out[i] = Err(GetError::Device(e.clone()));
                        }
                    }
                }
                Err(e) => {
                    let rest = queue.iter().flat_map(|r| &r.members);
                    for &m in req.members.iter().chain(rest) {
                        if let Some(&(i, _)) = at.get(m) {
                            out[i] = Err(GetError::Device(e.clone()));
                        }
                    }
                    break;
                }
            }
        }
        out
    }
}

/// Write one value at the point's `write_address` (else its `address`) and read back what
/// the device now holds at `address`; a `write_only` point is not read back: its reading
/// is what was written (the registers decoded as a read would).
/// `keep`: the device's snapshot, with the point's cadence, when the Modbus server serves
/// it (the read-back goes into it).
async fn write_point<T: ModbusTransport>(
    transport: &mut T,
    device: &Device,
    (point, at, keep): (&Point, ModbusPoint, Option<(&DeviceSnapshot, Duration)>),
    value: &Value,
) -> Result<Reading, CommandError> {
    let ModbusPoint {
        table,
        address,
        order,
        bit,
        write_address,
        ..
    } = at;
    let ModbusDevice {
        unit,
        write_multiple: multiple,
        ..
    } = settings(device);
    let target = write_address.unwrap_or(address);
    let d = |e: DriverError| CommandError::Device(e);
    let written = match (table, bit) {
        (Table::Coil, _) => {
            let b = matches!(value, Value::Bool(true));
            transport
                .write_coils(unit, target, &[b], multiple)
                .await
                .map_err(d)?;
            Value::Bool(b)
        }
        (Table::Holding, Some(bit)) => {
            // Read-modify-write of one bit of the register written.
            let cur = match transport
                .read(unit, Table::Holding, target, 1)
                .await
                .map_err(d)?
            {
                ReadData::Registers(r) if !r.is_empty() => r[0],
                _ => return Err(CommandError::Protocol("empty reply".into())),
            };
            let on = matches!(value, Value::Bool(true));
            let new = if on {
                cur | 1 << bit
            } else {
                cur & !(1 << bit)
            };
            transport
                .write_registers(unit, target, &[new], multiple)
                .await
                .map_err(d)?;
            Value::Bool(on)
        }
        (Table::Holding, None) => {
            let regs = codec::encode(value, point.ty, order)
                .map_err(|e| CommandError::OutOfRange(e.to_string()))?;
            transport
                .write_registers(unit, target, &regs, multiple)
                .await
                .map_err(d)?;
            codec::decode(&regs, point.ty, order, None).unwrap_or_else(|_| value.clone())
        }
        (table, _) => return Err(CommandError::NotWritable(format!("{table} is read-only"))),
    };
    if point.write_only {
        return Ok(reading(point, &written));
    }
    let data = transport
        .read(unit, table, address, at.count(point.ty))
        .await
        .map_err(CommandError::ReadBack)?;
    if let Some((s, cadence)) = keep {
        s.record(
            table,
            address,
            at.count(point.ty),
            &data,
            cadence,
            Instant::now(),
        );
    }
    let v = match data {
        ReadData::Bits(b) => b
            .first()
            .map(|b| Value::Bool(*b))
            .ok_or_else(|| CommandError::Protocol("empty reply".into()))?,
        ReadData::Registers(r) => codec::decode(&r, point.ty, order, bit)
            .map_err(|e| CommandError::Protocol(format!("read-back: {e}")))?,
    };
    Ok(reading(point, &v))
}

/// The Modbus settings of a device on a Modbus bus (validation gives every such device
/// its [`DeviceKind::Modbus`]; the defaults only stand for what cannot happen).
fn settings(d: &Device) -> ModbusDevice {
    d.modbus().copied().unwrap_or(ModbusDevice {
        unit: 1,
        max_gap: 0,
        max_read_registers: 125,
        max_read_bits: 2000,
        write_multiple: false,
    })
}
