//! The gateway side the network side asks ([`GatewayBackend`]).
//!
//! Reads are answered from the served device's snapshot (`snapshot.rs`) and never wait
//! for a bus. A write (only with `writes: true`) must cover whole writable points of the
//! device exactly: each point starts at its write register (`write_address`, else
//! `address`), coils by FC05/15 and holding registers by FC06/16; a `bit:` point, a
//! register of no writable point, or a range that cuts a point gets exception 02. Each
//! point's words are decoded with its type and word order and checked with the checks of
//! `<topic>/set` (`commands::check_raw`); one value refused refuses the whole request with
//! exception 03 and nothing is written. Then each point goes down the road of a `/set`,
//! in the same queue: the bus task writes it, reads it back, publishes the read-back and
//! answers on `<topic>/set/result` with the id `{"modbus": "<client address>"}`. The
//! Modbus reply waits for the device's acknowledgement of every point (bounded by the
//! bus's timeout: see [`write_wait`]).
//!
//! A command's error as the Modbus client gets it ([`exception_of`]): a value the checks
//! refuse 03; a point no longer writable 02; the device's own exception as it sent it;
//! no answer (timeout, connection lost, device offline, serial port gone) 0x0B; the queue
//! full or the write superseded by a newer one for the same point 06 (busy); the gateway
//! shutting down or a reload changing the point or restarting its bus 0x0B; a reply that
//! made no sense 04. A failed read-back after an acknowledged write is a success: the
//! device took the write.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use fieldlink_drivers::{
    modbus::{codec, DriverError},
    value::{Value, ValueType},
};
use tokio::{sync::mpsc, time::Instant};
use tracing::info;

use super::{Backend, DeviceSnapshot, Exception, ReadData, Snapshots, Table, Write, WriteFuture};
use crate::{
    commands::{check_raw, CommandError, Reply, Router},
    model::{Device, ModbusServer, Point},
    publish::{reading, Batch},
};

/// Reads from the snapshots, writes through the `/set` road.
pub struct GatewayBackend {
    settings: Arc<ModbusServer>,
    /// Served unit id → device id.
    units: HashMap<u8, String>,
    snapshots: Snapshots,
    router: Router,
    /// Where a write refused by the router is answered (`/set/result`); weak, so that a
    /// backend still held somewhere never keeps the MQTT side from stopping.
    out: mpsc::WeakSender<Batch>,
}

/// A write checked and ready to route: the device's snapshot and each point with the
/// raw value to write, in address order.
struct Checked {
    snapshot: Arc<DeviceSnapshot>,
    points: Vec<(usize, Value)>,
}

impl GatewayBackend {
    /// The backend of the server configured by `settings`, reading from `snapshots` and
    /// routing writes with `router`; a refusal's result goes to `out`.
    pub(crate) fn new(
        settings: Arc<ModbusServer>,
        snapshots: Snapshots,
        router: Router,
        out: &mpsc::Sender<Batch>,
    ) -> GatewayBackend {
        GatewayBackend {
            units: settings.units.iter().cloned().collect(),
            settings,
            snapshots,
            router,
            out: out.downgrade(),
        }
    }

    /// The snapshot of served unit `unit`: 0x0A for a unit id not served (or a device
    /// a reload removed).
    fn snapshot(&self, unit: u8) -> Result<Arc<DeviceSnapshot>, Exception> {
        self.units
            .get(&unit)
            .and_then(|id| self.snapshots.get(id))
            .ok_or(Exception::GATEWAY_PATH_UNAVAILABLE)
    }

    /// Check write `w` to unit `unit`: the points it covers and their raw values, or the
    /// exception that refuses it (nothing written).
    fn check(&self, unit: u8, w: &Write, client: SocketAddr) -> Result<Checked, Exception> {
        if !self.settings.writes {
            return Err(Exception::ILLEGAL_FUNCTION);
        }
        let snapshot = self.snapshot(unit)?;
        let words: Vec<u16> = match (w.table, &w.data) {
            (Table::Coil, ReadData::Bits(b)) => b.iter().map(|b| u16::from(*b)).collect(),
            (Table::Holding, ReadData::Registers(r)) => r.clone(),
            (Table::Coil | Table::Holding, _) => return Err(Exception::ILLEGAL_DATA_VALUE),
            _ => return Err(Exception::ILLEGAL_FUNCTION),
        };
        if words.is_empty() {
            return Err(Exception::ILLEGAL_DATA_VALUE);
        }
        let device = snapshot.device().clone();
        let refuse = |address: u32, why: &str, e: Exception| {
            info!(client = %client, unit, device = %device.id, table = %w.table, address, error = %why, "Modbus write refused.");
            e
        };
        let (start, end) = (u32::from(w.start), u32::from(w.start) + words.len() as u32);
        if end > 1 << 16 {
            return Err(refuse(
                start,
                "past the last address",
                Exception::ILLEGAL_DATA_ADDRESS,
            ));
        }
        let mut points = Vec::new();
        let mut at = start;
        while at < end {
            let (p, n) = whole_point(&device, w.table, at, end)
                .map_err(|why| refuse(at, why, Exception::ILLEGAL_DATA_ADDRESS))?;
            let point = &device.points[p];
            let off = (at - start) as usize;
            let raw = decode(point, w.table, &words[off..off + n as usize])
                .and_then(|raw| check_raw(point, &raw))
                .map_err(|e| {
                    let code = exception_of(&e).unwrap_or(Exception::ILLEGAL_DATA_VALUE);
                    refuse(at, &e.to_string(), code)
                })?;
            points.push((p, raw));
            at += n;
        }
        Ok(Checked { snapshot, points })
    }
}

impl Backend for GatewayBackend {
    fn read(&self, unit: u8, table: Table, start: u16, count: u16) -> Result<ReadData, Exception> {
        self.snapshot(unit)?
            .read(table, start, count, Instant::now())
    }

    fn write(&self, unit: u8, write: Write, client: SocketAddr) -> WriteFuture {
        match self.check(unit, &write, client) {
            Ok(checked) => Box::pin(route(
                checked,
                unit,
                client,
                self.router.clone(),
                self.out.clone(),
            )),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// The writable point of `device` whose write register in `table` is `at` and that
/// ends by `end`: its index and its registers (bits); or why there is none.
fn whole_point(
    device: &Device,
    table: Table,
    at: u32,
    end: u32,
) -> Result<(usize, u32), &'static str> {
    let mut bit = false;
    let mut cut = false;
    for (i, p) in device.points.iter().enumerate() {
        let Some(m) = p.modbus().filter(|m| p.writable && m.table == table) else {
            continue;
        };
        if u32::from(m.write_address.unwrap_or(m.address)) != at {
            continue;
        }
        let n = u32::from(m.count(p.ty));
        if m.bit.is_some() {
            bit = true;
        } else if at + n > end {
            cut = true;
        } else {
            return Ok((i, n));
        }
    }
    Err(if cut {
        "the range ends inside a writable point"
    } else if bit {
        "the point there is a bit of a register; write it through /set"
    } else {
        "no writable point there"
    })
}

/// The raw value a client wrote to `point` (its registers, or its coil as 0/1).
fn decode(point: &Point, table: Table, words: &[u16]) -> Result<Value, CommandError> {
    let m = point
        .modbus()
        .ok_or_else(|| CommandError::NotWritable("not a Modbus point".into()))?;
    match (table, point.ty) {
        (Table::Coil, _) => Ok(Value::Bool(words[0] != 0)),
        // A bool in a whole register: 0 or 1, as a `/set` writes it.
        (_, ValueType::Bool) if words[0] > 1 => Err(CommandError::OutOfRange(format!(
            "{} in a bool register (0 or 1)",
            words[0]
        ))),
        (_, ty) => codec::decode(words, ty, m.order, None)
            .map_err(|e| CommandError::OutOfRange(e.to_string())),
    }
}

/// How long a Modbus write waits for its points' acknowledgements: the exchange in
/// flight and each point's write, read-modify-write and read-back at the bus's timeout
/// `timeout`, and 5 s for the queue.
pub fn write_wait(timeout: Duration, points: usize) -> Duration {
    let exchanges = u32::try_from(3 * points + 1).unwrap_or(u32::MAX);
    timeout.saturating_mul(exchanges) + Duration::from_secs(5)
}

/// Route the points of a checked write, in order, as `/set` commands, and wait for
/// their acknowledgements. A point the router refuses (device offline, queue full) is
/// answered on its `/set/result` here, and the points after it are not sent.
async fn route(
    checked: Checked,
    unit: u8,
    client: SocketAddr,
    router: Router,
    out: mpsc::WeakSender<Batch>,
) -> Result<(), Exception> {
    let device = checked.snapshot.device();
    let deadline = Instant::now() + write_wait(checked.snapshot.timeout(), checked.points.len());
    let id = serde_json::json!({ "modbus": client.to_string() });
    let mut replies = Vec::with_capacity(checked.points.len());
    for (p, raw) in checked.points {
        let point = &device.points[p];
        let value = reading(point, &raw).text();
        info!(client = %client, unit, device = %device.id, topic = %point.topic, value = %value, "Modbus write.");
        let (reply, rx) = Reply::new();
        replies.push(rx);
        if let Some(m) = router.set_point(&device.id, p, point, raw, Some(id.clone()), reply) {
            if let Some(out) = out.upgrade() {
                let _ = out.send(vec![m]).await;
            }
            break;
        }
    }
    let mut outcome = Ok(());
    for rx in replies {
        let got = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => exception_of(&e).map_or(Ok(()), Err),
            // Dropped unanswered, or no answer in time.
            Ok(Err(_)) | Err(_) => Err(Exception::GATEWAY_TARGET_FAILED),
        };
        outcome = outcome.and(got);
    }
    outcome
}

/// The exception a Modbus client gets for a command's error; `None`: the device
/// acknowledged the write (its read-back failed).
pub fn exception_of(e: &CommandError) -> Option<Exception> {
    use CommandError as E;
    Some(match e {
        E::ReadBack(_) => return None,
        E::Unparsable(_)
        | E::WrongType(_)
        | E::AboveMax { .. }
        | E::BelowMin { .. }
        | E::OutOfRange(_)
        | E::ControlCharacters => Exception::ILLEGAL_DATA_VALUE,
        E::NotWritable(_) => Exception::ILLEGAL_DATA_ADDRESS,
        E::Device(DriverError::Exception { code, .. }) => Exception(*code),
        E::Device(_)
        | E::Offline(_)
        | E::PortUnavailable(_)
        | E::PortLost(_)
        | E::NoAcknowledgement(_)
        | E::ShuttingDown
        | E::ShuttingDownUnacknowledged
        | E::Reloaded
        | E::BusRestarting => Exception::GATEWAY_TARGET_FAILED,
        E::QueueFull | E::Superseded => Exception::SERVER_DEVICE_BUSY,
        E::Protocol(_) | E::Gpio(_) | E::WrongAcknowledgement(_) => {
            Exception::SERVER_DEVICE_FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_error_has_its_exception() {
        let exc = DriverError::Exception {
            code: 4,
            name: "server device failure",
        };
        let cases = [
            (
                CommandError::BelowMin {
                    value: "1".into(),
                    min: "2".into(),
                },
                Some(0x03),
            ),
            (CommandError::OutOfRange("x".into()), Some(0x03)),
            (CommandError::NotWritable("x".into()), Some(0x02)),
            (CommandError::Device(exc.clone()), Some(0x04)),
            (
                CommandError::Device(DriverError::Timeout(Duration::from_secs(1))),
                Some(0x0B),
            ),
            (CommandError::Offline("d".into()), Some(0x0B)),
            (CommandError::QueueFull, Some(0x06)),
            (CommandError::Superseded, Some(0x06)),
            (CommandError::ShuttingDown, Some(0x0B)),
            (CommandError::BusRestarting, Some(0x0B)),
            (CommandError::Reloaded, Some(0x0B)),
            (CommandError::ReadBack(exc), None),
        ];
        for (e, code) in cases {
            assert_eq!(exception_of(&e).map(|x| x.0), code, "{e}");
        }
    }

    #[test]
    fn a_write_waits_for_every_exchange_it_may_take() {
        let w = write_wait(Duration::from_secs(1), 2);
        assert_eq!(w, Duration::from_secs(12));
    }
}
