//! Commissioning: find a device and its registers from the command line.
//!
//! - `fieldlink probe`: read a range and show every decoding of every address
//!   ([`probe`]), `--watch` to see what changes, `--json`, `--yaml` draft points.
//! - `fieldlink scan`: which unit ids answer, and what they say they are ([`scan`]).
//! - `fieldlink write`: one value written exactly as a `/set` would, then read back
//!   ([`mod@write`]).
//!
//! Each takes its transport as flags or as a configured bus ([`flags`], [`target`]). The
//! work of each subcommand is one function over an already opened
//! [`ModbusTransport`](fieldlink_drivers::modbus::ModbusTransport) ([`probe::read`],
//! [`scan::scan`], [`write::execute`]), so that the same functions can run in a bus task
//! when the command comes through the running gateway. The decodings and their text and
//! JSON forms are in `decode`.
//!
//! Bad input ends the command with one line and a sysexits code: 64 usage (flags, an
//! address range past 65535), 65 data (a value the type cannot hold, a value the device
//! refuses), 69 unavailable (an unreachable host, a busy port, no or garbled replies), 78
//! a `--config` that does not load.

mod decode;
pub mod flags;
pub mod probe;
pub mod scan;
pub mod target;
pub mod write;

use fieldlink_drivers::modbus::{DriverError, ReplyFault};
pub use flags::TransportArgs;
pub use probe::ProbeArgs;
pub use scan::ScanArgs;
pub use target::{Target, Transport};
pub use write::WriteArgs;

use crate::config::Diagnostic;

/// Why a commissioning command stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommissionError {
    /// Wrong or inconsistent flags (EX_USAGE, 64).
    #[error("{0}")]
    Usage(String),
    /// A value that cannot be written (EX_DATAERR, 65).
    #[error("{0}")]
    Data(String),
    /// The device or the transport cannot be reached or understood (EX_UNAVAILABLE, 69).
    #[error("{0}")]
    Unavailable(String),
    /// The file of `--config` does not load (EX_CONFIG, 78): its diagnostics.
    #[error("the configuration does not load")]
    Config(Vec<Diagnostic>),
}

impl CommissionError {
    /// The process exit code (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            CommissionError::Usage(_) => 64,
            CommissionError::Data(_) => 65,
            CommissionError::Unavailable(_) => 69,
            CommissionError::Config(_) => 78,
        }
    }
}

/// A commissioning subcommand with its flags.
pub enum Commission {
    /// `fieldlink probe`.
    Probe(ProbeArgs),
    /// `fieldlink scan`.
    Scan(ScanArgs),
    /// `fieldlink write`.
    Write(WriteArgs),
}

/// Run one commissioning subcommand, printing its results on standard output.
pub async fn run(cmd: Commission) -> Result<(), CommissionError> {
    let mut out = std::io::stdout();
    match cmd {
        Commission::Probe(a) => probe::run(&a, &mut out).await,
        Commission::Scan(a) => scan::run(&a, &mut out).await,
        Commission::Write(a) => write::run(&a, &mut out).await,
    }
}

/// The line for a request that failed on the transport, with what to check.
pub(crate) fn unavailable(e: &DriverError, unit: u8, endpoint: &str) -> CommissionError {
    let line = match e {
        DriverError::Timeout(d) => format!(
            "no reply from unit {unit} on {endpoint} within {}: check the unit id, the \
             wiring, and on a serial line the baud rate and parity",
            humantime::format_duration(*d)
        ),
        DriverError::BadReply {
            fault: ReplyFault::Crc,
            ..
        } => format!(
            "garbled reply from unit {unit} on {endpoint} (CRC error): the baud rate or \
             parity is probably wrong"
        ),
        DriverError::BadReply { fault, detail } => format!(
            "unusable reply from unit {unit} on {endpoint} ({fault}: {detail}); on a serial \
             line, check the baud rate and parity"
        ),
        DriverError::NotConnected(s) => format!("cannot reach {endpoint}: {}", strip_open(s)),
        DriverError::Io(s) => format!("{endpoint}: connection lost ({s})"),
        DriverError::Protocol(s) => format!("unit {unit} on {endpoint}: protocol error: {s}"),
        DriverError::Exception { code, name } => {
            format!("unit {unit} on {endpoint} answered exception {code:#04x} ({name})")
        }
    };
    CommissionError::Unavailable(line)
}

/// The master's "cannot open X: why" without the repeated endpoint.
fn strip_open(s: &str) -> &str {
    s.split_once(": ").map_or(s, |(_, why)| why)
}

/// Whether printing failed because standard output went away (`| head`): the command
/// then ends quietly.
pub(crate) fn closed(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// A number flag that may be written in hex (`0x1F`): `--address`.
pub fn number(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => t.parse::<u32>(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number (decimal, or hex as 0x1F)"))
}

/// A checked address range: `count` addresses from `start`, within 0–65535.
pub(crate) fn range(start: u32, count: u32) -> Result<(u16, u32), CommissionError> {
    if count == 0 {
        return Err(CommissionError::Usage("--count must be at least 1".into()));
    }
    let last = u64::from(start) + u64::from(count) - 1;
    if start > 65535 || last > 65535 {
        return Err(CommissionError::Usage(format!(
            "addresses {start}-{last} go past 65535, the last Modbus address"
        )));
    }
    Ok((start as u16, count))
}

/// A unit id for this transport: 0–255 on Modbus TCP, 1–247 on a serial line.
pub(crate) fn check_unit(unit: u8, t: &Transport) -> Result<(), CommissionError> {
    if t.is_serial_line() && !(1..=247).contains(&unit) {
        return Err(CommissionError::Usage(format!(
            "unit {unit} on a serial line: unit ids are 1-247 (0 is broadcast)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stop_at_65535() {
        assert_eq!(range(65530, 6).unwrap(), (65530, 6));
        assert!(matches!(range(65530, 7), Err(CommissionError::Usage(_))));
        assert!(matches!(range(70000, 1), Err(CommissionError::Usage(_))));
        assert!(matches!(range(0, 0), Err(CommissionError::Usage(_))));
        assert_eq!(range(0, 65536).unwrap(), (0, 65536));
    }

    #[test]
    fn transport_failures_say_what_to_check() {
        use std::time::Duration;
        let line = |e: DriverError| unavailable(&e, 3, "RTU /dev/ttyUSB0 at 9600 8N1").to_string();
        let t = line(DriverError::Timeout(Duration::from_millis(200)));
        assert!(
            t.starts_with("no reply from unit 3 on RTU /dev/ttyUSB0 at 9600 8N1 within 200ms"),
            "{t}"
        );
        assert!(t.contains("baud rate and parity"), "{t}");
        let g = line(DriverError::BadReply {
            fault: ReplyFault::Crc,
            detail: "CRC error in the reply".into(),
        });
        assert!(
            g.contains("garbled reply") && g.contains("baud rate or parity"),
            "{g}"
        );
        let n = line(DriverError::NotConnected(
            "cannot open /dev/ttyUSB0: Device or resource busy".into(),
        ));
        assert_eq!(
            n,
            "cannot reach RTU /dev/ttyUSB0 at 9600 8N1: Device or resource busy"
        );
        assert_eq!(
            unavailable(&DriverError::Timeout(Duration::ZERO), 1, "x").exit_code(),
            69
        );
    }

    #[test]
    fn addresses_in_decimal_or_hex() {
        assert_eq!(number("40"), Ok(40));
        assert_eq!(number("0x1F"), Ok(31));
        assert!(number("4x").is_err());
    }
}
