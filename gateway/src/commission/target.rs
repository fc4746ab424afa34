//! Where a commissioning command goes ([`Target`]: a [`Transport`] opened here, or the
//! running gateway that owns the bus) and the opened transport ([`Opened`]) the
//! subcommands talk through. The flags that say which are read in `flags`.

use std::time::Duration;

use fieldlink_drivers::modbus::{
    rtu::{Parity, RtuOverTcpTransport, RtuTransport, SerialSettings},
    tcp::TcpTransport,
    DriverError, Identification, ModbusTransport, ReadData, Table,
};

use crate::model::BusKind;

/// Where a command goes.
///
/// A command opens its transport itself ([`Target::Direct`]), unless a running gateway
/// owns the bus named by `--config FILE --bus ID`: then the command goes to that gateway
/// ([`Target::Gateway`]: its embedded broker, `<base>/bus/<id>/request`) and runs in the
/// bus task between polls, through the same work functions, over the bus's transport.
#[derive(Debug)]
pub enum Target {
    /// Open the transport here.
    Direct(Transport),
    /// Ask the running gateway that owns the bus.
    Gateway(super::client::Gateway),
}

/// A Modbus transport and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// Modbus TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Reply (and connect) timeout.
        timeout: Duration,
    },
    /// RTU frames through a converter in transparent mode.
    RtuOverTcp {
        /// The converter's host name or address.
        host: String,
        /// Its port.
        port: u16,
        /// Reply (and connect) timeout.
        timeout: Duration,
        /// Silence between a reply and the next request.
        frame_delay: Duration,
        /// Wait after connecting.
        connect_delay: Duration,
    },
    /// RTU on a serial port.
    Rtu {
        /// Port and line settings.
        serial: SerialSettings,
        /// Reply timeout.
        timeout: Duration,
        /// Extra silence between frames.
        frame_delay: Duration,
    },
}

impl Transport {
    /// The transport of a configured bus, at its settings (`None`: not a Modbus bus).
    pub fn of_bus(kind: &BusKind) -> Option<Transport> {
        match kind {
            BusKind::ModbusTcp {
                host,
                port,
                timeout,
                ..
            } => Some(Transport::Tcp {
                host: host.clone(),
                port: *port,
                timeout: *timeout,
            }),
            BusKind::ModbusRtuOverTcp {
                host,
                port,
                timeout,
                frame_delay,
                connect_delay,
            } => Some(Transport::RtuOverTcp {
                host: host.clone(),
                port: *port,
                timeout: *timeout,
                frame_delay: *frame_delay,
                connect_delay: *connect_delay,
            }),
            BusKind::ModbusRtu {
                serial,
                timeout,
                frame_delay,
            } => Some(Transport::Rtu {
                serial: serial.clone(),
                timeout: *timeout,
                frame_delay: *frame_delay,
            }),
            BusKind::Uart { .. } | BusKind::Gpio { .. } => None,
        }
    }

    /// The same with another reply timeout.
    pub fn with_timeout(mut self, t: Duration) -> Transport {
        match &mut self {
            Transport::Tcp { timeout, .. }
            | Transport::RtuOverTcp { timeout, .. }
            | Transport::Rtu { timeout, .. } => *timeout = t,
        }
        self
    }

    /// Open it (the stream itself is opened by the first request).
    pub fn open(&self) -> Opened {
        match self.clone() {
            Transport::Tcp {
                host,
                port,
                timeout,
            } => Opened::Tcp(TcpTransport::new(host, port, timeout)),
            Transport::RtuOverTcp {
                host,
                port,
                timeout,
                frame_delay,
                connect_delay,
            } => Opened::RtuOverTcp(RtuOverTcpTransport::tcp(
                host,
                port,
                timeout,
                frame_delay,
                connect_delay,
            )),
            Transport::Rtu {
                serial,
                timeout,
                frame_delay,
            } => Opened::Rtu(RtuTransport::new(serial, timeout, frame_delay)),
        }
    }

    /// Whether it is a serial line (unit ids 1–247; 0 is broadcast).
    pub fn is_serial_line(&self) -> bool {
        !matches!(self, Transport::Tcp { .. })
    }

    /// The reply timeout.
    pub fn timeout(&self) -> Duration {
        match self {
            Transport::Tcp { timeout, .. }
            | Transport::RtuOverTcp { timeout, .. }
            | Transport::Rtu { timeout, .. } => *timeout,
        }
    }

    /// `TCP 127.0.0.1:502`, `RTU /dev/ttyUSB0 at 9600 8N1`.
    pub fn describe(&self) -> String {
        match self {
            Transport::Tcp { host, port, .. } => format!("Modbus TCP {}", endpoint(host, *port)),
            Transport::RtuOverTcp { host, port, .. } => {
                format!("RTU over TCP {}", endpoint(host, *port))
            }
            Transport::Rtu { serial, .. } => {
                format!("RTU {} at {}", serial.path, line_settings(serial))
            }
        }
    }

    /// The settings as JSON, for `scan --json`.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Transport::Tcp { host, port, .. } => {
                serde_json::json!({"tcp": endpoint(host, *port)})
            }
            Transport::RtuOverTcp { host, port, .. } => {
                serde_json::json!({"rtu_over_tcp": endpoint(host, *port)})
            }
            Transport::Rtu { serial, .. } => serde_json::json!({
                "rtu": serial.path,
                "baud": serial.baud,
                "parity": parity_name(serial.parity),
                "data_bits": serial.data_bits,
                "stop_bits": serial.stop_bits,
            }),
        }
    }
}

/// `host:port`, IPv6 addresses in brackets.
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `9600 8N1`.
pub fn line_settings(s: &SerialSettings) -> String {
    let p = match s.parity {
        Parity::None => 'N',
        Parity::Even => 'E',
        Parity::Odd => 'O',
    };
    format!("{} {}{p}{}", s.baud, s.data_bits, s.stop_bits)
}

fn parity_name(p: Parity) -> &'static str {
    match p {
        Parity::None => "none",
        Parity::Even => "even",
        Parity::Odd => "odd",
    }
}

/// The transport a command opened: one type for the three kinds, so that each subcommand
/// is one function over a [`ModbusTransport`].
pub enum Opened {
    /// Modbus TCP.
    Tcp(TcpTransport),
    /// RTU through a converter.
    RtuOverTcp(RtuOverTcpTransport),
    /// RTU on a serial port.
    Rtu(RtuTransport),
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            Opened::Tcp($t) => $e,
            Opened::RtuOverTcp($t) => $e,
            Opened::Rtu($t) => $e,
        }
    };
}

impl ModbusTransport for Opened {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        each!(self, t => t.read(unit, table, addr, count).await)
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        each!(self, t => t.write_registers(unit, addr, values, multiple).await)
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        each!(self, t => t.write_coils(unit, addr, values, multiple).await)
    }

    async fn read_identification(&mut self, unit: u8) -> Result<Identification, DriverError> {
        each!(self, t => t.read_identification(unit).await)
    }

    fn endpoint(&self) -> String {
        each!(self, t => t.endpoint())
    }
}
