//! The Modbus TCP server (`modbus_server:`): other Modbus masters (Home Assistant's
//! `modbus`, evcc, a vendor's tool) read what the bus tasks last read, and write through
//! the same road as `<topic>/set`, so a device keeps exactly one master.
//!
//! # Layout
//!
//! - this file: the seam between the network side and the gateway ([`Backend`]).
//! - `front` (the network side): listener, `allow`, connection bound, MBAP framing with
//!   idle and frame timeouts ([`serve`]); `pdu`: requests checked as the Modbus
//!   specification orders it, and the replies; `clients`: the counters, in total and per
//!   client address ([`ServerStats`]). It knows nothing of devices: it asks a [`Backend`].
//! - `snapshot` / `backend` (the gateway side): the raw registers and bits each bus task
//!   last read of each served device, with when and whether the device is online; reads
//!   answered from them, writes turned into commands for the owning bus task.

use std::{future::Future, net::SocketAddr, pin::Pin};

mod clients;
mod front;
mod pdu;

pub use clients::{ServerStats, MAX_CLIENTS};
pub use fieldlink_drivers::modbus::{ReadData, Table};
pub use front::serve;

/// A Modbus exception code sent back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception(pub u8);

impl Exception {
    /// 0x01: function code not supported.
    pub const ILLEGAL_FUNCTION: Exception = Exception(0x01);
    /// 0x02: an address the gateway does not poll (or not a writable point's).
    pub const ILLEGAL_DATA_ADDRESS: Exception = Exception(0x02);
    /// 0x03: a value the point's checks refuse, or a malformed quantity.
    pub const ILLEGAL_DATA_VALUE: Exception = Exception(0x03);
    /// 0x04: the device failed the write in a way it has no exception for.
    pub const SERVER_DEVICE_FAILURE: Exception = Exception(0x04);
    /// 0x06: busy (the bus task's queue is full, or the write was superseded).
    pub const SERVER_DEVICE_BUSY: Exception = Exception(0x06);
    /// 0x0A: a unit id the server does not serve.
    pub const GATEWAY_PATH_UNAVAILABLE: Exception = Exception(0x0A);
    /// 0x0B: the device is offline, the value is older than `max_age` or not read yet,
    /// or the write timed out.
    pub const GATEWAY_TARGET_FAILED: Exception = Exception(0x0B);
}

/// A write request (FC05/06 as one item, FC15/16 as several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// [`Table::Coil`] (FC05/15) or [`Table::Holding`] (FC06/16).
    pub table: Table,
    /// First address.
    pub start: u16,
    /// The values: `Bits` for coils, `Registers` for holding registers.
    pub data: ReadData,
}

/// What a write resolves to: `Ok` once the device acknowledged every point written.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<(), Exception>> + Send>>;

/// The gateway side the network side asks. Reads never wait for a bus: they are served
/// from the snapshot; a write waits for the device's acknowledgement.
pub trait Backend: Send + Sync + 'static {
    /// `count` registers (FC03/04) or bits (FC01/02) at `start` of served unit `unit`.
    fn read(&self, unit: u8, table: Table, start: u16, count: u16) -> Result<ReadData, Exception>;

    /// Write `write` to served unit `unit` on behalf of `client` (logged at INFO).
    fn write(&self, unit: u8, write: Write, client: SocketAddr) -> WriteFuture;
}

// The gateway side (the snapshot, the backend) and the one entry the runtime calls.

mod backend;
mod snapshot;

pub use backend::GatewayBackend;
pub use snapshot::{DeviceSnapshot, Snapshots};

/// Serve Modbus TCP on `listener` with `settings`, asking `backend`, until `shutdown`;
/// `stats`: the gateway's counters. The runtime calls it when `modbus_server:` is
/// configured and waits for the task at shutdown.
pub fn start(
    listener: tokio::net::TcpListener,
    settings: std::sync::Arc<crate::model::ModbusServer>,
    backend: std::sync::Arc<dyn Backend>,
    stats: std::sync::Arc<crate::health::Stats>,
    shutdown: crate::shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    let server_stats = stats.modbus_server().unwrap_or_else(|| {
        let s = std::sync::Arc::new(ServerStats::new());
        stats.set_modbus_server(Some(s.clone()));
        s
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, units = settings.units.len(), writes = settings.writes, "Modbus server listening.");
    }
    tokio::spawn(serve(listener, settings, backend, server_stats, shutdown))
}
