//! Modbus: codec, read planner, client seam, and the one master (framing × link) behind
//! the RTU, RTU-over-TCP and TCP transports.

pub mod client;
pub mod codec;
pub mod frame;
pub mod ident;
pub mod link;
pub mod master;
pub mod planner;
pub mod rtu;
pub mod tcp;

pub use client::{DriverError, ModbusTransport};
pub use codec::{CodecError, Value, ValueType, WordOrder};
pub use frame::{Faults, ReplyFault};
pub use ident::Identification;
pub use planner::{Plan, PlanItem, Planner, ReadLimits, ReadRequest};

use std::fmt;

/// The four Modbus data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read/write 16-bit registers (FC03 read, FC06/FC16 write).
    Holding,
    /// Read-only 16-bit registers (FC04).
    Input,
    /// Read/write bits (FC01 read, FC05/FC15 write).
    Coil,
    /// Read-only bits (FC02).
    Discrete,
}

impl Table {
    /// True for the bit tables (coils and discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The largest quantity one read request may ask for (Modbus PDU limit).
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }

    /// The configuration name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Raw data returned by one read: registers or bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// 16-bit registers (holding/input).
    Registers(Vec<u16>),
    /// Bits (coils/discrete inputs).
    Bits(Vec<bool>),
}
