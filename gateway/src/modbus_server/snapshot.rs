//! What the bus tasks last read of each served device: its raw registers and bits, byte
//! for byte as the device sent them, each with how long it may still be served, and
//! whether the device is online.
//!
//! A device's snapshot covers the addresses its bus task polls: every read point's
//! registers or bit and every scale factor register from the start, and the gaps a read
//! bridged once a read covered them. A bus task records every read reply (polls, reads on
//! demand, a command's read-back) with the age it may reach: `max_age` when set, else 3 ×
//! the cadence of the read (the longest poll interval among the points it was made for).
//! The server reads under a short lock and never waits for a bus; a value not read yet,
//! older than its age, or of a device that is offline is never served.
//!
//! Only served devices have one ([`Snapshots`], by device id, made by the runtime when
//! `modbus_server:` is configured): a bus task records nothing for the others. A reload
//! gives a changed device a fresh (empty) snapshot and drops a removed one's; an
//! unchanged device keeps its own.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{Exception, ReadData, Table};
use crate::{
    health::{Availability, DeviceStats},
    model::{same, Bus, BusKind, Device, Model},
};

/// One address: the raw register (a bit as 0/1) and until when it may be served (`None`:
/// covered, not read yet).
#[derive(Clone, Copy, Debug)]
struct Cell {
    value: u16,
    until: Option<Instant>,
}

impl Cell {
    const UNREAD: Cell = Cell {
        value: 0,
        until: None,
    };
}

/// Covered addresses `start..start + cells.len()`, one after the other. The runs of a
/// table are sorted, apart, and never touch (touching ones are merged), so a covered
/// range always lies in one run.
#[derive(Debug)]
struct Run {
    start: u32,
    cells: Vec<Cell>,
}

impl Run {
    fn end(&self) -> u32 {
        self.start + self.cells.len() as u32
    }
}

/// The four tables' runs.
#[derive(Debug, Default)]
struct Tables([Vec<Run>; 4]);

fn index(table: Table) -> usize {
    match table {
        Table::Holding => 0,
        Table::Input => 1,
        Table::Coil => 2,
        Table::Discrete => 3,
    }
}

impl Tables {
    /// Cover `start..end` of `table`: the index of the run that holds it afterwards
    /// (merging the runs it overlaps or touches; new addresses are unread).
    fn cover(&mut self, table: Table, start: u32, end: u32) -> usize {
        let runs = &mut self.0[index(table)];
        // The first run that ends at or after `start`: it overlaps or touches.
        let i = runs.partition_point(|r| r.end() < start);
        if let Some(r) = runs.get(i) {
            if r.start <= start && r.end() >= end {
                return i;
            }
        }
        // Every run from `i` that begins at or before `end` overlaps or touches.
        let j = i + runs[i..].partition_point(|r| r.start <= end);
        let from = runs
            .get(i)
            .filter(|_| j > i)
            .map_or(start, |r| r.start.min(start));
        let to = if j > i {
            runs[j - 1].end().max(end)
        } else {
            end
        };
        let mut cells = vec![Cell::UNREAD; (to - from) as usize];
        for r in runs.drain(i..j) {
            let at = (r.start - from) as usize;
            cells[at..at + r.cells.len()].copy_from_slice(&r.cells);
        }
        runs.insert(i, Run { start: from, cells });
        i
    }

    /// The run of `table` holding all of `start..end`, if one does.
    fn find(&self, table: Table, start: u32, end: u32) -> Option<&Run> {
        let runs = &self.0[index(table)];
        let i = runs.partition_point(|r| r.end() <= start);
        runs.get(i).filter(|r| r.start <= start && r.end() >= end)
    }
}

/// What the bus task last read of one served device.
#[derive(Debug)]
pub struct DeviceSnapshot {
    /// The device as defined when the snapshot was made.
    device: Arc<Device>,
    /// Its bus's request timeout (a write's wait is bounded by it).
    timeout: Duration,
    /// `modbus_server.max_age`.
    max_age: Option<Duration>,
    /// The device's availability as its bus task last set it.
    online: AtomicBool,
    /// Reads served from it (answered with data).
    served: AtomicU64,
    tables: RwLock<Tables>,
}

impl DeviceSnapshot {
    /// An empty snapshot of `device` (on a bus whose request timeout is `timeout`):
    /// covering what its bus task polls, nothing read yet.
    pub fn new(device: Arc<Device>, timeout: Duration, max_age: Option<Duration>) -> Self {
        let mut tables = Tables::default();
        let read: Vec<_> = device
            .points
            .iter()
            .filter(|p| !p.write_only)
            .filter_map(|p| Some((p.modbus()?, p.ty)))
            .collect();
        for (m, ty) in &read {
            let start = u32::from(m.address);
            tables.cover(m.table, start, start + u32::from(m.count(*ty)));
        }
        let factors: Vec<_> = read.iter().map(|(m, _)| **m).collect();
        for f in crate::buses::scale_registers(&factors).0 {
            let start = u32::from(f.address);
            tables.cover(f.table, start, start + u32::from(f.count));
        }
        DeviceSnapshot {
            device,
            timeout,
            max_age,
            online: AtomicBool::new(true),
            served: AtomicU64::new(0),
            tables: RwLock::new(tables),
        }
    }

    /// The device as defined when the snapshot was made.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Its bus's request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the device is online (as its bus task last said).
    pub fn online(&self) -> bool {
        self.online.load(Relaxed)
    }

    /// Reads served from this snapshot so far.
    pub fn served_reads(&self) -> u64 {
        self.served.load(Relaxed)
    }

    /// The device went online or offline (its bus task's availability).
    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Relaxed);
    }

    /// The age a value read at a cadence of `cadence` may reach.
    fn age(&self, cadence: Duration) -> Duration {
        self.max_age.unwrap_or(cadence.saturating_mul(3))
    }

    /// A read of `count` registers or bits of `table` at `start` answered `data` at
    /// `now`; `cadence`: the longest poll interval among the points it was made for.
    /// Covers the addresses it read (a bridged gap, the first time).
    pub fn record(
        &self,
        table: Table,
        start: u16,
        count: u16,
        data: &ReadData,
        cadence: Duration,
        now: Instant,
    ) {
        let until = Some(now + self.age(cadence));
        let n = match data {
            ReadData::Registers(r) => r.len(),
            ReadData::Bits(b) => b.len(),
        }
        .min(usize::from(count));
        if n == 0 {
            return;
        }
        let start = u32::from(start);
        let end = (start + n as u32).min(1 << 16);
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        let i = tables.cover(table, start, end);
        let run = &mut tables.0[index(table)][i];
        let at = (start - run.start) as usize;
        let cells = &mut run.cells[at..at + (end - start) as usize];
        match data {
            ReadData::Registers(r) => {
                for (c, v) in cells.iter_mut().zip(r) {
                    *c = Cell { value: *v, until };
                }
            }
            ReadData::Bits(b) => {
                for (c, v) in cells.iter_mut().zip(b) {
                    *c = Cell {
                        value: u16::from(*v),
                        until,
                    };
                }
            }
        }
    }

    /// `count` registers (holding, input) or bits (coils, discrete inputs) of `table` at
    /// `start`, as served at `now`: exception 02 unless the snapshot covers every one of
    /// them; 0x0B when the device is offline, or one of them is not read yet or older
    /// than its age.
    pub fn read(
        &self,
        table: Table,
        start: u16,
        count: u16,
        now: Instant,
    ) -> Result<ReadData, Exception> {
        if count == 0 {
            return Err(Exception::ILLEGAL_DATA_VALUE);
        }
        let (start, end) = (u32::from(start), u32::from(start) + u32::from(count));
        let mut out = Vec::with_capacity(usize::from(count));
        {
            let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
            let run = tables
                .find(table, start, end)
                .ok_or(Exception::ILLEGAL_DATA_ADDRESS)?;
            if !self.online() {
                return Err(Exception::GATEWAY_TARGET_FAILED);
            }
            let at = (start - run.start) as usize;
            for c in &run.cells[at..at + usize::from(count)] {
                match c.until {
                    Some(until) if until > now => out.push(c.value),
                    _ => return Err(Exception::GATEWAY_TARGET_FAILED),
                }
            }
        }
        self.served.fetch_add(1, Relaxed);
        Ok(if table.is_bits() {
            ReadData::Bits(out.into_iter().map(|v| v != 0).collect())
        } else {
            ReadData::Registers(out)
        })
    }
}

/// The snapshots of the served devices, by device id; clones share them. The runtime
/// makes it when `modbus_server:` is configured; the bus tasks record into it, the
/// server reads from it, a reload updates it.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// The served device ids (`modbus_server.units`; fixed until a restart).
    served: Arc<[String]>,
    max_age: Option<Duration>,
    by_id: Arc<RwLock<HashMap<String, Arc<DeviceSnapshot>>>>,
}

impl Snapshots {
    /// Empty snapshots of the devices `model.modbus_server` serves; `None` without
    /// `modbus_server:`.
    pub fn new(model: &Model) -> Option<Snapshots> {
        let settings = model.modbus_server.as_ref()?;
        let s = Snapshots {
            served: settings.units.iter().map(|(_, id)| id.clone()).collect(),
            max_age: settings.max_age,
            by_id: Arc::default(),
        };
        s.update(model);
        Some(s)
    }

    /// The snapshot of device `id`, when it is served and exists.
    pub fn get(&self, id: &str) -> Option<Arc<DeviceSnapshot>> {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The snapshots of `bus`'s devices (`None`: not served), each online unless its
    /// device's counters (`counters`, in bus order) say it is offline.
    pub(crate) fn of_bus(
        &self,
        bus: &Bus,
        counters: &[Arc<DeviceStats>],
    ) -> Vec<Option<Arc<DeviceSnapshot>>> {
        let all: Vec<_> = bus.devices.iter().map(|d| self.get(&d.id)).collect();
        for (s, st) in all.iter().zip(counters) {
            if let Some(s) = s {
                s.set_online(st.availability() != Availability::Offline);
            }
        }
        all
    }

    /// Follow `model` (a reload, before the bus tasks take it): a served device defined
    /// the same keeps its snapshot, a changed or new one gets an empty one, a removed
    /// one's is dropped.
    pub(crate) fn update(&self, model: &Model) {
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(self.served.len());
        for bus in &model.buses {
            let timeout = match &bus.kind {
                BusKind::ModbusTcp { timeout, .. }
                | BusKind::ModbusRtu { timeout, .. }
                | BusKind::ModbusRtuOverTcp { timeout, .. } => *timeout,
                _ => continue,
            };
            for d in bus.devices.iter().filter(|d| self.served.contains(&d.id)) {
                let snapshot = match by_id.remove(&d.id) {
                    Some(s) if same(&s.device, d) && s.timeout == timeout => s,
                    _ => Arc::new(DeviceSnapshot::new(d.clone(), timeout, self.max_age)),
                };
                next.insert(d.id.clone(), snapshot);
            }
        }
        *by_id = next;
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
