//! Bus tasks: one task owns each bus (the actor) and serialises all traffic on it.
//!
//! The task polls every device on its schedule with the read planner's requests, decodes
//! the replies, applies each point's publish policy and sends the messages to the MQTT
//! side. A device that fails `offline_after` polls in a row is published `offline` and
//! retried with exponential backoff (capped at its `max_backoff`, 60 s by default) so it
//! costs the bus little; it is
//! `online` again on the first good reply. A failed read publishes nothing.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Instant, SystemTime},
};

use fieldlink_drivers::modbus::{
    codec, DriverError, ModbusTransport, PlanItem, Planner, ReadData, ReadRequest,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::commands::CommandError;
use crate::{
    commands::{self, Command},
    health::{Availability, Stats},
    model::{Bus, Device, Model},
    publish::{payload, reading, Batch, Outgoing, PointState},
    shutdown::Shutdown,
};

/// Number of start offsets devices are spread over (see [`run_bus`]).
pub const STAGGER_SLOTS: u32 = 10;

struct DeviceRun {
    device: Arc<Device>,
    stats_index: usize,
    planner: Planner,
    states: Vec<PointState>,
    bad_points: Vec<bool>,
    failures: u32,
    next_due: tokio::time::Instant,
    availability_topic: String,
}

impl DeviceRun {
    /// Decode the values of an answered read and queue those due for publishing.
    fn publish_reply(
        &mut self,
        req: &ReadRequest,
        data: &ReadData,
        started: Instant,
        now_wall: SystemTime,
        messages: &mut Vec<Outgoing>,
    ) {
        for m in self.planner.read_ok(req) {
            if std::mem::replace(&mut self.bad_points[m], false) {
                let p = &self.device.points[m];
                info!(device = %self.device.id, topic = %p.topic, "Address readable again.");
            }
        }
        for &m in &req.members {
            let point = &self.device.points[m];
            let off = usize::from(point.address - req.start);
            let value = match data {
                ReadData::Bits(bits) => bits
                    .get(off)
                    .map(|b| fieldlink_drivers::modbus::Value::Bool(*b))
                    .ok_or_else(|| "short reply".to_string()),
                ReadData::Registers(regs) => regs
                    .get(off..)
                    .ok_or_else(|| "short reply".to_string())
                    .and_then(|r| {
                        codec::decode(r, point.ty, point.order, point.bit)
                            .map_err(|e| e.to_string())
                    }),
            };
            match value {
                Ok(v) => {
                    let r = reading(point, &v);
                    if self.states[m].should_publish(point, &r, started) {
                        messages.push(Outgoing::value(point, payload(point, r, now_wall)));
                    }
                }
                Err(e) => {
                    warn!(device = %self.device.id, topic = %point.topic, error = %e, "Cannot decode value.");
                }
            }
        }
    }

    /// Learn from an exception 02 on `req`; returns the reads that replace it in this
    /// cycle (none when its point fails alone: it is unreadable until its next check).
    fn illegal_address(&mut self, req: &ReadRequest) -> Vec<ReadRequest> {
        let replacements = self
            .planner
            .learn_illegal_address(req, tokio::time::Instant::now());
        if replacements.is_empty() {
            for &m in &req.members {
                if !self.bad_points[m] {
                    self.bad_points[m] = true;
                    let p = &self.device.points[m];
                    warn!(device = %self.device.id, topic = %p.topic, table = %p.table, address = p.address, "Device says the address does not exist (exception 02); checked again with backoff.");
                }
            }
        } else {
            debug!(device = %self.device.id, start = req.start, count = req.count, split_into = replacements.len(), "Merged read hit illegal address; split it.");
        }
        replacements
    }
}

/// The channels a bus task talks through.
pub struct BusIo {
    /// Messages for the MQTT side, one batch per poll or command.
    pub out: mpsc::Sender<Batch>,
    /// Validated commands for this bus's devices.
    pub commands: mpsc::Receiver<Command>,
    /// Shared counters.
    pub stats: Arc<Stats>,
    /// The shutdown signal.
    pub shutdown: Shutdown,
}

/// After its second failed poll in a row on a bus with several devices, a device waits
/// this many times the failed poll's duration before its next try (its tries then take
/// at most 1/20 of the bus time).
const FAILING_SHARE: u32 = 19;

/// Run one bus until shutdown.
///
/// Devices are spread over [`STAGGER_SLOTS`] start offsets inside their poll interval, so
/// a gateway with many devices does not burst all of them at every tick (bursts cost
/// memory in the broker and make slow subscribers skip), while devices in the same slot
/// still share wakeups.
pub async fn run_bus<T: ModbusTransport>(
    model: Arc<Model>,
    bus: Arc<Bus>,
    first_stats_index: usize,
    mut transport: T,
    io: BusIo,
) {
    let BusIo {
        out,
        mut commands,
        stats,
        mut shutdown,
    } = io;
    let start = tokio::time::Instant::now();
    let total = model.devices().count().max(1) as u32;
    let mut devices: Vec<DeviceRun> = bus
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let items = d
                .points
                .iter()
                .map(|p| PlanItem {
                    table: p.table,
                    address: p.address,
                    count: p.count(),
                })
                .collect();
            DeviceRun {
                planner: Planner::new(items, d.max_gap),
                states: vec![PointState::default(); d.points.len()],
                bad_points: vec![false; d.points.len()],
                failures: 0,
                next_due: start
                    + d.poll_interval / STAGGER_SLOTS.min(total)
                        * ((first_stats_index + i) as u32 % STAGGER_SLOTS.min(total)),
                availability_topic: model.availability_topic(&d.id),
                device: d.clone(),
                stats_index: first_stats_index + i,
            }
        })
        .collect();
    if devices.is_empty() {
        return;
    }
    info!(bus = %bus.id, endpoint = %transport.endpoint(), devices = devices.len(), "Bus started.");
    loop {
        let Some(idx) = (0..devices.len()).min_by_key(|&i| devices[i].next_due) else {
            return;
        };
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            // A closed channel disables the branch (no busy loop).
            Some(first) = commands.recv() => {
                // Everything queued now goes ahead of the next poll; several commands
                // for the same point collapse to the newest.
                let batch = commands::drain(first, &mut commands);
                run_commands(&mut devices, batch, &mut transport, &out).await;
                continue;
            }
            () = tokio::time::sleep_until(devices[idx].next_due) => {}
        }
        let shared = devices.len() > 1;
        let dev = &mut devices[idx];
        let began = tokio::time::Instant::now();
        let ok = poll_device(dev, &mut transport, &out, &stats, &bus.id).await;
        let interval = dev.device.poll_interval;
        let now = tokio::time::Instant::now();
        // A unit that does not answer holds a shared bus for its whole timeout (twice
        // on RTU, which listens for a late reply). From its second failure in a row (one
        // lost reply is line noise, not a dead unit) its next try waits until its tries
        // take at most 1/20 of the bus time, so its neighbours keep their cadence. The
        // price: it goes offline later (README "Modbus RTU").
        let fair = if ok || !shared || dev.failures < 2 {
            now
        } else {
            now + (now - began) * FAILING_SHARE
        };
        dev.next_due = fair.max(if ok || dev.failures < dev.device.offline_after {
            let next = dev.next_due + interval;
            if next < now {
                now
            } else {
                next
            }
        } else {
            // Offline: exponential backoff from the poll interval, capped.
            let k = (dev.failures - dev.device.offline_after).min(16);
            let wait = interval
                .saturating_mul(1 << k)
                .min(dev.device.max_backoff.max(interval));
            now + wait
        });
    }
    let mut refused = Vec::new();
    commands::refuse_queued(
        &mut commands,
        |c| {
            devices
                .get(c.device)
                .and_then(|d| d.device.points.get(c.point))
        },
        &mut refused,
    );
    if !refused.is_empty() {
        let _ = out.send(refused).await;
    }
    debug!(bus = %bus.id, "Bus stopped.");
}

async fn poll_device<T: ModbusTransport>(
    dev: &mut DeviceRun,
    transport: &mut T,
    out: &mpsc::Sender<Batch>,
    stats: &Stats,
    bus_id: &str,
) -> bool {
    let st = &stats.devices[dev.stats_index];
    st.polls.fetch_add(1, Relaxed);
    let started = Instant::now();
    let now_wall = SystemTime::now();
    // What was learned from exception 02 and is due is checked again in this cycle.
    dev.planner.refresh(tokio::time::Instant::now());
    let mut queue: VecDeque<ReadRequest> = dev.planner.plan().iter().cloned().collect();
    let mut answered = false;
    let mut last_error: Option<DriverError> = None;
    let mut messages = Vec::new();
    while let Some(req) = queue.pop_front() {
        st.requests.fetch_add(1, Relaxed);
        match transport
            .read(dev.device.unit, req.table, req.start, req.count)
            .await
        {
            Ok(data) => {
                answered = true;
                dev.publish_reply(&req, &data, started, now_wall, &mut messages);
            }
            Err(e) if e.is_illegal_address() => {
                answered = true;
                st.request_errors.fetch_add(1, Relaxed);
                for r in dev.illegal_address(&req).into_iter().rev() {
                    queue.push_front(r);
                }
            }
            Err(e @ DriverError::Exception { .. }) => {
                // The device is there but refused this read: those points publish nothing.
                answered = true;
                st.request_errors.fetch_add(1, Relaxed);
                debug!(device = %dev.device.id, start = req.start, error = %e, "Read refused.");
                last_error = Some(e);
            }
            Err(e) => {
                // Timeout or transport failure: the rest of this cycle would fail too.
                st.request_errors.fetch_add(1, Relaxed);
                last_error = Some(e);
                answered = false;
                break;
            }
        }
    }
    let unreadable: Vec<String> = dev
        .planner
        .unreadable()
        .map(|m| dev.device.points[m].topic.clone())
        .collect();
    st.set_unreadable(unreadable);
    if answered {
        st.last_poll_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        dev.failures = 0;
        if st.availability() != Availability::Online {
            info!(device = %dev.device.id, bus = bus_id, "Device online.");
            st.set_availability(Availability::Online);
            messages.insert(0, availability(&dev.availability_topic, true));
        }
    } else {
        st.failed_polls.fetch_add(1, Relaxed);
        dev.failures = dev.failures.saturating_add(1);
        let err = last_error.map(|e| e.to_string()).unwrap_or_default();
        debug!(device = %dev.device.id, failures = dev.failures, error = %err, "Poll failed.");
        if dev.failures >= dev.device.offline_after && st.availability() != Availability::Offline {
            warn!(device = %dev.device.id, bus = bus_id, failures = dev.failures, error = %err, "Device offline.");
            st.set_availability(Availability::Offline);
            messages.push(availability(&dev.availability_topic, false));
        }
    }
    st.published.fetch_add(messages.len() as u64, Relaxed);
    if !messages.is_empty() {
        let _ = out.send(messages).await;
    }
    answered
}

async fn run_commands<T: ModbusTransport>(
    devices: &mut [DeviceRun],
    batch: Vec<Command>,
    transport: &mut T,
    out: &mpsc::Sender<Batch>,
) {
    let mut messages = Vec::new();
    let run = commands::collapse(
        batch,
        |c| {
            devices
                .get(c.device)
                .and_then(|d| d.device.points.get(c.point))
        },
        &mut messages,
    );
    for c in run {
        let Some(dev) = devices.get_mut(c.device) else {
            continue;
        };
        let Some(point) = dev.device.points.get(c.point).cloned() else {
            continue;
        };
        let outcome = execute(dev, &point, &c.value, transport).await;
        match outcome {
            Ok(r) => {
                dev.states[c.point].force(&r, Instant::now());
                messages.push(Outgoing::value(
                    &point,
                    payload(&point, r.clone(), SystemTime::now()),
                ));
                messages.push(commands::result(&point, Ok(r.json()), c.id.as_ref()));
                info!(device = %dev.device.id, topic = %point.topic, value = %r.text(), "Command written.");
            }
            Err(e) => {
                warn!(device = %dev.device.id, topic = %point.topic, error = %e, "Command failed.");
                messages.push(commands::result(&point, Err(e), c.id.as_ref()));
            }
        }
    }
    if !messages.is_empty() {
        let _ = out.send(messages).await;
    }
}

/// Write one value and read it back.
async fn execute<T: ModbusTransport>(
    dev: &DeviceRun,
    point: &crate::model::Point,
    value: &fieldlink_drivers::modbus::Value,
    transport: &mut T,
) -> Result<crate::publish::Reading, CommandError> {
    use fieldlink_drivers::modbus::{Table, Value};
    let unit = dev.device.unit;
    let multiple = dev.device.write_multiple;
    let d = |e: DriverError| CommandError::Device(e);
    match (point.table, point.bit) {
        (Table::Coil, _) => {
            let b = matches!(value, Value::Bool(true));
            transport
                .write_coils(unit, point.address, &[b], multiple)
                .await
                .map_err(d)?;
        }
        (Table::Holding, Some(bit)) => {
            // Read-modify-write of one bit of a register.
            let cur = match transport
                .read(unit, Table::Holding, point.address, 1)
                .await
                .map_err(d)?
            {
                ReadData::Registers(r) if !r.is_empty() => r[0],
                _ => return Err(CommandError::Protocol("empty reply".into())),
            };
            let new = if matches!(value, Value::Bool(true)) {
                cur | 1 << bit
            } else {
                cur & !(1 << bit)
            };
            transport
                .write_registers(unit, point.address, &[new], multiple)
                .await
                .map_err(d)?;
        }
        (Table::Holding, None) => {
            let regs = codec::encode(value, point.ty, point.order)
                .map_err(|e| CommandError::OutOfRange(e.to_string()))?;
            transport
                .write_registers(unit, point.address, &regs, multiple)
                .await
                .map_err(d)?;
        }
        (table, _) => return Err(CommandError::NotWritable(format!("{table} is read-only"))),
    }
    // Read back what the device now holds.
    let data = transport
        .read(unit, point.table, point.address, point.count())
        .await
        .map_err(CommandError::ReadBack)?;
    let v = match data {
        ReadData::Bits(b) => b
            .first()
            .map(|b| fieldlink_drivers::modbus::Value::Bool(*b))
            .ok_or_else(|| CommandError::Protocol("empty reply".into()))?,
        ReadData::Registers(r) => codec::decode(&r, point.ty, point.order, point.bit)
            .map_err(|e| CommandError::Protocol(format!("read-back: {e}")))?,
    };
    Ok(reading(point, &v))
}

/// The retained availability message of a device.
pub fn availability(topic: &str, online: bool) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        payload: if online {
            b"online".to_vec()
        } else {
            b"offline".to_vec()
        },
        retain: true,
        qos: 1,
        slot: None,
    }
}
