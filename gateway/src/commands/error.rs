//! Why a command was not carried out. The `Display` texts are the `error` field of
//! `<topic>/set/result`; README "Commands" lists how they start, and that list is checked
//! against these variants by a unit test below.

use fieldlink_drivers::{
    modbus::DriverError,
    value::{Value, ValueType},
};
use thiserror::Error;

/// Why a command was refused or failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CommandError {
    /// The payload is not text, is empty, or is JSON without a `value`.
    #[error("unparsable payload: {0}")]
    Unparsable(String),
    /// The value is of the wrong kind for the point (text for a number, a bool for a
    /// number, ...).
    #[error("wrong type: {0}")]
    WrongType(String),
    /// Above the point's `max`.
    #[error("value {value} above max {max}")]
    AboveMax {
        /// The value as sent.
        value: String,
        /// The point's `max`.
        max: String,
    },
    /// Below the point's `min`.
    #[error("value {value} below min {min}")]
    BelowMin {
        /// The value as sent.
        value: String,
        /// The point's `min`.
        min: String,
    },
    /// Outside what the point's type or length can hold.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The device is offline: nothing is sent to it.
    #[error("device `{0}` is offline")]
    Offline(String),
    /// The bus task has too many commands waiting.
    #[error("command queue full, try again")]
    QueueFull,
    /// The device or the transport failed the write.
    #[error("{}", device_text(.0))]
    Device(DriverError),
    /// The write went through but reading the value back failed.
    #[error("written, but the read-back failed: {}", device_text(.0))]
    ReadBack(DriverError),
    /// A newer command for the same point was queued behind this one.
    #[error("superseded by a newer command for the same point")]
    Superseded,
    /// The gateway stopped before writing the command.
    #[error("gateway shutting down; command not written")]
    ShuttingDown,
    /// The point was changed or removed by a configuration reload while the command
    /// waited: its value was checked against the old definition, so it is not written.
    #[error(
        "configuration reloaded: the point changed while the command waited; command not written"
    )]
    Reloaded,
    /// The point's bus is being restarted by a configuration reload.
    #[error("configuration reloading: the bus restarts; command not written, send it again")]
    BusRestarting,
    /// The gateway stopped after writing, before the device acknowledged.
    #[error("gateway shutting down before the acknowledgement")]
    ShuttingDownUnacknowledged,
    /// The serial port (UART) is not open.
    #[error("serial port {0} is not available")]
    PortUnavailable(String),
    /// The serial port was lost after the command was written.
    #[error("serial port lost ({0}) before the acknowledgement")]
    PortLost(String),
    /// A GPIO line could not be set.
    #[error("gpio error: {0}")]
    Gpio(String),
    /// A UART command value that would break the line protocol.
    #[error("control characters (line breaks, NUL...) are not allowed in a UART command value")]
    ControlCharacters,
    /// A UART device answered something other than the expected acknowledgement.
    #[error("wrong acknowledgement: `{0}`")]
    WrongAcknowledgement(String),
    /// No acknowledgement within the timeout (as text, e.g. `2s`).
    #[error("no acknowledgement within {0}")]
    NoAcknowledgement(String),
    /// The point cannot be written on this table or bus.
    #[error("not writable: {0}")]
    NotWritable(String),
    /// The device's reply did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The text of a driver error as users read it in a result.
pub(super) fn device_text(e: &DriverError) -> String {
    match e {
        DriverError::Exception { code, name } => {
            format!("device exception {code:#04x} ({name})")
        }
        DriverError::Timeout(d) => format!("timeout: no reply within {d:?}"),
        DriverError::NotConnected(s) => format!("device not reachable ({s})"),
        DriverError::Io(s) => format!("i/o error: {s}"),
        DriverError::Protocol(s) => format!("protocol error: {s}"),
        DriverError::BadReply { fault, detail } => {
            format!("protocol error: bad reply ({fault}): {detail}")
        }
    }
}

/// Words that mean on / off in a command or a reading, case-insensitive; the same for
/// every bus kind.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" | "high" => Some(true),
        "false" | "off" | "0" | "no" | "low" => Some(false),
        _ => None,
    }
}

/// A number's text as a value, the same for every bus kind and for commands: a whole
/// number stays exact (`i64`, or `u64` for a `u64` point), anything else is a finite
/// float. `None` when it is not a number.
pub fn parse_number(text: &str, ty: ValueType) -> Option<Value> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if ty == ValueType::U64 {
        if let Ok(u) = t.parse::<u64>() {
            return Some(Value::U64(u));
        }
    }
    t.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Float)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_number_parser_for_commands_and_readings() {
        use fieldlink_drivers::value::{Value, ValueType};
        assert_eq!(parse_number(" 42 ", ValueType::U16), Some(Value::Int(42)));
        assert_eq!(parse_number("-7", ValueType::I16), Some(Value::Int(-7)));
        assert_eq!(
            parse_number("18446744073709551615", ValueType::U64),
            Some(Value::U64(u64::MAX)),
            "exact, not through f64"
        );
        assert_eq!(
            parse_number("21.5", ValueType::F32),
            Some(Value::Float(21.5))
        );
        assert_eq!(
            parse_number("1e3", ValueType::U16),
            Some(Value::Float(1000.0))
        );
        for bad in ["", "abc", "inf", "NaN", "1e999", "0x10", "true"] {
            assert_eq!(parse_number(bad, ValueType::U16), None, "{bad}");
        }
    }

    /// Every result text starts with one of the prefixes README "Commands" lists.
    #[test]
    fn every_text_starts_as_the_readme_says() {
        let prefixes = super::super::readme_prefixes("Error texts start with:");
        assert!(prefixes.len() >= 9, "{prefixes:?}");
        let exc = DriverError::Exception {
            code: 2,
            name: "illegal data address",
        };
        let all = [
            CommandError::Unparsable("empty".into()),
            CommandError::WrongType("`x` is not a number".into()),
            CommandError::AboveMax {
                value: "3".into(),
                max: "2".into(),
            },
            CommandError::BelowMin {
                value: "1".into(),
                min: "2".into(),
            },
            CommandError::OutOfRange("x".into()),
            CommandError::Offline("d".into()),
            CommandError::QueueFull,
            CommandError::Device(exc.clone()),
            CommandError::Device(DriverError::Timeout(Duration::from_secs(1))),
            CommandError::Device(DriverError::Io("reset".into())),
            CommandError::Device(DriverError::NotConnected("refused".into())),
            CommandError::Device(DriverError::Protocol("short".into())),
            CommandError::ReadBack(exc),
            CommandError::Superseded,
            CommandError::ShuttingDown,
            CommandError::Reloaded,
            CommandError::BusRestarting,
            CommandError::ShuttingDownUnacknowledged,
            CommandError::PortUnavailable("/dev/ttyUSB0".into()),
            CommandError::PortLost("unplugged".into()),
            CommandError::Gpio("busy".into()),
            CommandError::ControlCharacters,
            CommandError::WrongAcknowledgement("ERR".into()),
            CommandError::NoAcknowledgement("1s".into()),
            CommandError::NotWritable("input registers are read-only".into()),
            CommandError::Protocol("empty reply".into()),
        ];
        let listed = |t: &str| prefixes.iter().any(|p| t.starts_with(p.as_str()));
        for e in all {
            let t = e.to_string();
            assert!(listed(&t), "`{t}` starts with none of {prefixes:?}");
        }
    }

    #[test]
    fn one_word_list_for_on_and_off() {
        for w in ["true", "ON", "1", "yes", "High", " on "] {
            assert_eq!(parse_bool(w), Some(true), "{w}");
        }
        for w in ["false", "Off", "0", "NO", "low"] {
            assert_eq!(parse_bool(w), Some(false), "{w}");
        }
        for w in ["2", "", "onn", "enabled"] {
            assert_eq!(parse_bool(w), None, "{w}");
        }
    }
}
