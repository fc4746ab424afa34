//! Modbus (`modbus_tcp`, `modbus_rtu`): the values of its point keys and the Modbus half
//! of a point.

use std::path::Path;

use serde::Deserialize;

use super::{at, value_type, PointFile, TypeName, Validator};
use crate::model::{Table, ValueType, WordOrder};

/// Modbus table of a point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableName {
    /// Holding registers (FC03).
    Holding,
    /// Input registers (FC04).
    Input,
    /// Coils (FC01).
    Coil,
    /// Discrete inputs (FC02).
    Discrete,
}

/// Word order.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum OrderName {
    /// Big-endian (the Modbus default).
    #[serde(rename = "ABCD")]
    Abcd,
    /// Words swapped.
    #[serde(rename = "CDAB")]
    Cdab,
    /// Bytes swapped inside words.
    #[serde(rename = "BADC")]
    Badc,
    /// Little-endian.
    #[serde(rename = "DCBA")]
    Dcba,
}

pub(super) fn noun(t: Table) -> &'static str {
    match t {
        Table::Holding => "holding register",
        Table::Input => "input register",
        Table::Coil => "coil",
        Table::Discrete => "discrete input",
    }
}

impl Validator {
    /// The Modbus half of a point: table, address, type, word order, bit.
    pub(super) fn modbus_part(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
    ) -> (Table, u16, ValueType, WordOrder, Option<u8>) {
        self.no_uart_keys(file, path, p, "a Modbus");
        let gpio_keys = [
            ("pin", p.pin.as_ref().map(at)),
            ("mode", p.mode.as_ref().map(at)),
            ("pull", p.pull.as_ref().map(at)),
            ("active_low", p.active_low.as_ref().map(at)),
            ("debounce", p.debounce.as_ref().map(at)),
            ("initial", p.initial.as_ref().map(at)),
            ("on_shutdown", p.on_shutdown.as_ref().map(at)),
            ("pulse", p.pulse.as_ref().map(at)),
        ];
        self.reject_keys(
            file,
            path,
            &gpio_keys,
            |key| format!("`{key}` applies to GPIO points only; this device is on a Modbus bus"),
            "put the point on a device of a `kind: gpio` bus, or remove the key",
        );
        let Some(table_s) = &p.table else {
            self.error(
                file,
                at(&p.topic),
                path.to_string(),
                "a Modbus point needs `table`",
                Some("add `table: holding` (or `input`, `coil`, `discrete`)".into()),
            );
            return (Table::Holding, 0, ValueType::U16, WordOrder::Abcd, None);
        };
        let Some(address_s) = &p.address else {
            self.error(
                file,
                at(&p.topic),
                path.to_string(),
                "a Modbus point needs `address`",
                Some("add `address: 0` (0-based, as on the wire)".into()),
            );
            return (Table::Holding, 0, ValueType::U16, WordOrder::Abcd, None);
        };
        let table = match table_s.value {
            TableName::Holding => Table::Holding,
            TableName::Input => Table::Input,
            TableName::Coil => Table::Coil,
            TableName::Discrete => Table::Discrete,
        };
        let type_name =
            p.ty.as_ref()
                .map(|t| t.value)
                .unwrap_or(if table.is_bits() {
                    TypeName::Bool
                } else {
                    TypeName::U16
                });
        let type_loc = p.ty.as_ref().map_or(at(table_s), at);
        let ty = value_type(type_name, || match &p.length {
            Some(l) if (1..=250).contains(&l.value) => ValueType::String {
                len: l.value as u16,
            },
            Some(l) => {
                self.error(
                    file,
                    at(l),
                    format!("{path}.length"),
                    format!("string length {} is outside 1–250 bytes", l.value),
                    Some("one read carries at most 125 registers (250 bytes)".into()),
                );
                ValueType::String { len: 2 }
            }
            None => {
                self.error(
                    file,
                    type_loc,
                    format!("{path}.type"),
                    "a `string` point needs `length` (bytes)",
                    Some("add `length: 16`".into()),
                );
                ValueType::String { len: 2 }
            }
        });
        self.length_only_for_strings(file, path, p, ty);
        if table.is_bits() && ty != ValueType::Bool {
            self.error(
                file,
                type_loc,
                format!("{path}.type"),
                format!(
                    "type `{ty}` is not allowed on a {}: it holds a single bit",
                    noun(table)
                ),
                Some("use `type: bool`, or `table: holding`/`input` for register values".into()),
            );
        }
        let bit = match &p.bit {
            None => None,
            Some(b) if table.is_bits() => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!(
                        "`bit` selects a bit inside a register; a {} is already one bit",
                        noun(table)
                    ),
                    Some("remove `bit`".into()),
                );
                None
            }
            Some(b) if ty != ValueType::Bool => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!("`bit` needs `type: bool`, this point is `{ty}`"),
                    Some("set `type: bool` to read one bit of the register".into()),
                );
                None
            }
            Some(b) if (0..=15).contains(&b.value) => Some(b.value as u8),
            Some(b) => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!("bit index {} is outside 0–15", b.value),
                    Some("bit 0 is the least significant bit of the register".into()),
                );
                None
            }
        };
        let count = if table.is_bits() {
            1
        } else {
            i64::from(ty.registers())
        };
        let address = if (0..=65535).contains(&address_s.value) {
            if address_s.value + count - 1 > 65535 {
                self.error(
                    file,
                    at(address_s),
                    format!("{path}.address"),
                    format!(
                        "address {} + {count} registers of `{ty}` goes beyond 65535",
                        address_s.value
                    ),
                    Some(format!(
                        "the last usable start address for `{ty}` is {}",
                        65536 - count
                    )),
                );
            }
            address_s.value as u16
        } else {
            self.error(
                file,
                at(address_s),
                format!("{path}.address"),
                format!("address {} is outside 0–65535", address_s.value),
                Some(format!(
                    "addresses are 0-based on the wire: {} is `address: 0` of `table: {table}`",
                    match table {
                        Table::Holding => "register 40001",
                        Table::Input => "input register 30001",
                        Table::Coil => "coil 00001",
                        Table::Discrete => "discrete input 10001",
                    }
                )),
            );
            0
        };
        let order = match p.word_order.as_ref().map(|o| o.value) {
            None | Some(OrderName::Abcd) => WordOrder::Abcd,
            Some(OrderName::Cdab) => WordOrder::Cdab,
            Some(OrderName::Badc) => WordOrder::Badc,
            Some(OrderName::Dcba) => WordOrder::Dcba,
        };
        (table, address, ty, order, bit)
    }
}
