//! Helpers for the tests of how points are written (`point_writes.rs`,
//! `point_rewrites.rs`): mapping text, commands with their results, requests counted at a
//! simulated device, and [`Direct`], a Modbus transport that hands every request to a
//! [`SimServer`]'s devices without a socket, for bus tasks on tokio's paused clock.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::{DriverError, ModbusTransport, ReadData, Table},
    sim::{SimDevice, SimServer},
};
use rumqttc::QoS;
use tokio::time::Instant;
use tokio_modbus::{Request, Response};

use crate::Observer;

/// How long a `/set` may take to be answered.
const T: Duration = Duration::from_secs(10);

/// Send `value` to `<topic>/set` and return its `/set/result` as JSON.
pub async fn set(
    client: &rumqttc::AsyncClient,
    obs: &mut Observer,
    topic: &str,
    value: &str,
) -> serde_json::Value {
    client
        .publish(format!("{topic}/set"), QoS::AtLeastOnce, false, value)
        .await
        .expect("publish");
    let res = obs
        .next_on(&format!("{topic}/set/result"), T)
        .await
        .unwrap_or_else(|| panic!("{topic}: no /set/result"));
    serde_json::from_str(&res.payload).expect("result is JSON")
}

/// The requests `dev` got with `function` at `address` of `table`.
pub fn requests(dev: &SimDevice, function: u8, table: Table, address: u16) -> usize {
    dev.log()
        .iter()
        .filter(|r| r.function == function && r.table == table && r.address == address)
        .count()
}

/// A device entry: `id` on bus `b` at `unit`, polled every `poll`; `points` are the
/// inside of flow maps.
pub fn device(id: &str, unit: u8, poll: &str, points: &[&str]) -> String {
    let mut s = format!(
        "  - id: {id}\n    bus: b\n    unit: {unit}\n    poll_interval: {poll}\n    points:\n"
    );
    for p in points {
        s.push_str(&format!("      - {{ {p} }}\n"));
    }
    s
}

/// A mapping with one Modbus TCP bus `b` on 127.0.0.1:`port` and `devices`.
pub fn mapping(port: u16, devices: &[String]) -> String {
    format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\ndevices:\n{}",
        devices.concat()
    )
}

/// Every write a [`Direct`] transport passed on: virtual time since the start, unit,
/// address, values.
pub type Writes = Arc<Mutex<Vec<(Duration, u8, u16, Vec<u16>)>>>;

/// Hands every request to the `SimDevice` of its unit, as the TCP server would; a device
/// that does not answer costs the `timeout`, as on the wire.
pub struct Direct {
    /// The devices, by unit.
    pub server: SimServer,
    /// What a request no device answers costs.
    pub timeout: Duration,
    /// Every write passed on.
    pub writes: Writes,
    /// When the test began.
    pub t0: Instant,
}

impl Direct {
    async fn call(&mut self, unit: u8, req: Request<'_>) -> Result<Response, DriverError> {
        let Some(dev) = self.server.device(unit) else {
            tokio::time::sleep(self.timeout).await;
            return Err(DriverError::Timeout(self.timeout));
        };
        match dev.handle(unit, &req) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => {
                tokio::time::sleep(self.timeout).await;
                Err(DriverError::Timeout(self.timeout))
            }
            Err(e) => Err(DriverError::Exception {
                code: u8::from(e),
                name: "exception",
            }),
        }
    }

    fn written(&self, unit: u8, addr: u16, values: Vec<u16>) {
        self.writes
            .lock()
            .expect("lock")
            .push((self.t0.elapsed(), unit, addr, values));
    }
}

impl ModbusTransport for Direct {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let req = match table {
            Table::Holding => Request::ReadHoldingRegisters(addr, count),
            Table::Input => Request::ReadInputRegisters(addr, count),
            Table::Coil => Request::ReadCoils(addr, count),
            Table::Discrete => Request::ReadDiscreteInputs(addr, count),
        };
        match self.call(unit, req).await? {
            Response::ReadHoldingRegisters(r) | Response::ReadInputRegisters(r) => {
                Ok(ReadData::Registers(r))
            }
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Ok(ReadData::Bits(b)),
            other => Err(DriverError::Protocol(format!("{other:?}"))),
        }
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let req = if values.len() == 1 && !multiple {
            Request::WriteSingleRegister(addr, values[0])
        } else {
            Request::WriteMultipleRegisters(addr, Cow::Borrowed(values))
        };
        self.call(unit, req).await?;
        self.written(unit, addr, values.to_vec());
        Ok(())
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let req = if values.len() == 1 && !multiple {
            Request::WriteSingleCoil(addr, values[0])
        } else {
            Request::WriteMultipleCoils(addr, Cow::Borrowed(values))
        };
        self.call(unit, req).await?;
        self.written(unit, addr, values.iter().map(|b| u16::from(*b)).collect());
        Ok(())
    }

    fn endpoint(&self) -> String {
        "sim devices (direct)".into()
    }
}
