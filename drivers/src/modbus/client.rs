//! The transport-independent client seam: a bus task talks to a [`ModbusTransport`] and
//! does not care whether TCP or RTU is underneath.

use std::{future::Future, time::Duration};

use thiserror::Error;

use super::{ReadData, Table};

/// Why a Modbus transaction failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// No reply within the request timeout.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// Transport (socket/serial) error; the connection was dropped.
    #[error("i/o error: {0}")]
    Io(String),
    /// Not connected; the next connection attempt is scheduled after a backoff.
    #[error("not connected ({0})")]
    NotConnected(String),
    /// The device answered with a Modbus exception.
    #[error("exception {code:#04x} ({name})")]
    Exception {
        /// The exception code.
        code: u8,
        /// Its Modbus name.
        name: &'static str,
    },
    /// The reply did not match the request (wrong length, unit, function).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A reply that failed its checks, with the kind of fault.
    #[error("bad reply ({fault}): {detail}")]
    BadReply {
        /// What was wrong.
        fault: super::frame::ReplyFault,
        /// The details, for the logs.
        detail: String,
    },
}

impl DriverError {
    /// True for exception 02, illegal data address.
    pub fn is_illegal_address(&self) -> bool {
        matches!(self, DriverError::Exception { code: 2, .. })
    }
}

/// The name of a Modbus exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// A Modbus master on one bus. One task owns it; calls are never concurrent.
pub trait ModbusTransport: Send {
    /// Read `count` registers or bits of `table` from unit `unit`, starting at `addr`.
    fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> impl Future<Output = Result<ReadData, DriverError>> + Send;

    /// Write holding registers starting at `addr`: FC06 for one register, FC16 for more,
    /// or always FC16 when `multiple` is set (devices that only accept FC16).
    fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Write coils starting at `addr`: FC05 for one coil, FC15 for more, or always FC15
    /// when `multiple` is set.
    fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Ask `unit` who it is: Read Device Identification (function 43, MEI type 14), the
    /// basic objects (vendor name, product code, revision), every page of them.
    fn read_identification(
        &mut self,
        unit: u8,
    ) -> impl Future<Output = Result<super::Identification, DriverError>> + Send {
        let _ = unit;
        std::future::ready(Err(DriverError::Protocol(
            "device identification is not supported by this transport".into(),
        )))
    }

    /// A short description of the endpoint for logs (`192.168.1.20:502`).
    fn endpoint(&self) -> String;

    /// The faults seen since the last call (rejected replies, skipped late frames, stray
    /// bytes), by kind; the bus task adds them to the device it was talking to.
    fn take_faults(&mut self) -> super::frame::Faults {
        super::frame::Faults::default()
    }
}
