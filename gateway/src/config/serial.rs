//! Serial lines, shared by `modbus_rtu` and `uart` buses: the port and its framing.

use serde::Deserialize;

use super::{at, BusFile, Cx, Validator};
use crate::model::{Parity, SerialSettings};

/// Parity of a serial line.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParityName {
    /// No parity bit.
    None,
    /// Even parity (the Modbus specification's default).
    Even,
    /// Odd parity.
    Odd,
}

impl Validator {
    /// Port and framing of a serial bus (`kind` is modbus_rtu or uart); each port belongs
    /// to one bus.
    pub(super) fn serial(
        &mut self,
        cx: &Cx,
        b: &BusFile,
        kind: &str,
        id: &str,
    ) -> Option<SerialSettings> {
        let path_at = b.path.as_ref().map_or(at(&b.kind), at);
        let port_path = match &b.path {
            Some(p) if !p.value.trim().is_empty() => p.value.trim().to_string(),
            _ => {
                self.error(
                    &cx.at("path"),
                    path_at,
                    format!("a {kind} bus needs the serial port's `path`"),
                    Some("add `path: /dev/ttyUSB0` (better: a /dev/serial/by-id/... link, stable across reboots)".into()),
                );
                return None;
            }
        };
        let baud = self.int_in(
            &cx.at("baud"),
            b.baud.as_ref(),
            "baud rate",
            (300, 4_000_000),
            9600,
        );
        let data_bits = self.int_in(
            &cx.at("data_bits"),
            b.data_bits.as_ref(),
            "data_bits",
            (7, 8),
            8,
        );
        let stop_bits = self.int_in(
            &cx.at("stop_bits"),
            b.stop_bits.as_ref(),
            "stop_bits",
            (1, 2),
            1,
        );
        if let Some((f0, l0, bus0)) = self.ports.get(&port_path) {
            let msg = format!(
                "serial port `{port_path}` is already used by bus `{bus0}` at {}:{}:{}",
                f0.display(),
                l0.0,
                l0.1
            );
            self.error(
                &cx.at("path"),
                path_at,
                msg,
                Some(
                    "one task owns each port: put every device of one serial line on one bus"
                        .into(),
                ),
            );
        } else {
            self.ports.insert(
                port_path.clone(),
                (cx.file.to_path_buf(), path_at, id.to_string()),
            );
        }
        Some(SerialSettings {
            path: port_path,
            baud: baud as u32,
            parity: match b.parity.as_ref().map(|p| p.value) {
                None | Some(ParityName::None) => Parity::None,
                Some(ParityName::Even) => Parity::Even,
                Some(ParityName::Odd) => Parity::Odd,
            },
            data_bits: data_bits as u8,
            stop_bits: stop_bits as u8,
        })
    }
}
