//! Modbus (`modbus_tcp`, `modbus_rtu`, `modbus_rtu_over_tcp`): the values of its point keys, its buses, the
//! Modbus half of a point and the registers two points of a device share.

use std::time::Duration;

use serde::Deserialize;

use super::{
    at, point::KindParts, value_type, BusFile, Cx, DeviceFile, HumanDuration, PointFile, Spanned,
    TypeName, Validator,
};
use crate::model::{BusKind, ModbusPoint, Point, Source, Table, ValueType, WordOrder};

/// Modbus table of a point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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

/// The keys of a `modbus_tcp` bus.
pub(super) const TCP_BUS_KEYS: &[&str] =
    &["host", "port", "timeout", "frame_delay", "connect_delay"];

/// The settings of a Modbus bus on TCP, as validated.
struct TcpBus {
    host: String,
    port: u16,
    timeout: Duration,
    frame_delay: Duration,
    connect_delay: Duration,
}

/// The keys of a `modbus_rtu_over_tcp` bus.
pub(super) const RTU_OVER_TCP_BUS_KEYS: &[&str] =
    &["host", "port", "timeout", "frame_delay", "connect_delay"];

/// The keys of a `modbus_rtu` bus.
pub(super) const RTU_BUS_KEYS: &[&str] = &[
    "path",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "timeout",
    "frame_delay",
];

/// A table's name in messages: "holding register", "coil", ...
pub(super) fn noun(t: Table) -> &'static str {
    match t {
        Table::Holding => "holding register",
        Table::Input => "input register",
        Table::Coil => "coil",
        Table::Discrete => "discrete input",
    }
}

/// What stands in for a Modbus point without `table` or `address` (an error is
/// reported, so it never reaches the model).
fn missing_parts() -> KindParts {
    KindParts {
        ty: ValueType::U16,
        source: Source::Modbus(ModbusPoint {
            table: Table::Holding,
            address: 0,
            order: WordOrder::Abcd,
            bit: None,
            write_address: None,
            scale_register: None,
        }),
    }
}

impl Validator {
    /// The `host` and `port` of a bus of `kind` on TCP (port 502 by default).
    fn tcp_endpoint(&mut self, cx: &Cx, b: &BusFile, kind: &str) -> Option<(String, u16)> {
        let host = match &b.host {
            Some(h) if !h.value.trim().is_empty() => h.value.trim().to_string(),
            Some(h) => {
                self.error(&cx.at("host"), h, "host is empty", None);
                return None;
            }
            None => {
                let what = if kind == "modbus_tcp" {
                    "the device or Modbus gateway"
                } else {
                    "the serial converter"
                };
                self.error(
                    cx,
                    &b.kind,
                    format!("a {kind} bus needs `host`"),
                    Some(format!("add `host: 192.168.1.20` ({what})")),
                );
                return None;
            }
        };
        let port = match &b.port {
            Some(p) if p.value == 0 => {
                let hint = if kind == "modbus_tcp" {
                    "Modbus TCP uses 502"
                } else {
                    "the converter's TCP port is on its setup page (Elfin EW11: 8899)"
                };
                self.error(
                    &cx.at("port"),
                    p,
                    "port 0 is not a valid TCP port",
                    Some(hint.into()),
                );
                502
            }
            Some(p) => p.value,
            None => 502,
        };
        Some((host, port))
    }

    /// The settings of a bus of `kind` on TCP: `host`, `port`, `timeout`, `frame_delay`,
    /// `connect_delay`.
    fn tcp_bus(&mut self, cx: &Cx, b: &BusFile, kind: &str) -> Option<TcpBus> {
        let (host, port) = self.tcp_endpoint(cx, b, kind)?;
        let timeout = self.positive_duration(
            &cx.at("timeout"),
            b.timeout.as_ref(),
            Duration::from_secs(1),
        );
        let pause =
            |d: &Option<Spanned<HumanDuration>>| d.as_ref().map_or(Duration::ZERO, |d| d.value.0);
        Some(TcpBus {
            host,
            port,
            timeout,
            frame_delay: pause(&b.frame_delay),
            connect_delay: pause(&b.connect_delay),
        })
    }

    /// A `modbus_tcp` bus.
    pub(super) fn modbus_tcp_bus(&mut self, cx: &Cx, b: &BusFile) -> Option<BusKind> {
        let t = self.tcp_bus(cx, b, "modbus_tcp")?;
        Some(BusKind::ModbusTcp {
            host: t.host,
            port: t.port,
            timeout: t.timeout,
            frame_delay: t.frame_delay,
            connect_delay: t.connect_delay,
        })
    }

    /// A `modbus_rtu_over_tcp` bus.
    pub(super) fn modbus_rtu_over_tcp_bus(&mut self, cx: &Cx, b: &BusFile) -> Option<BusKind> {
        let t = self.tcp_bus(cx, b, "modbus_rtu_over_tcp")?;
        Some(BusKind::ModbusRtuOverTcp {
            host: t.host,
            port: t.port,
            timeout: t.timeout,
            frame_delay: t.frame_delay,
            connect_delay: t.connect_delay,
        })
    }

    /// A `modbus_rtu` bus: a serial line, `timeout`, `frame_delay`.
    pub(super) fn modbus_rtu_bus(&mut self, cx: &Cx, b: &BusFile, id: &str) -> Option<BusKind> {
        let serial = self.serial(cx, b, "modbus_rtu", id)?;
        let frame_delay = b.frame_delay.as_ref().map_or(Duration::ZERO, |d| d.value.0);
        let timeout = self.positive_duration(
            &cx.at("timeout"),
            b.timeout.as_ref(),
            Duration::from_secs(1),
        );
        Some(BusKind::ModbusRtu {
            serial,
            timeout,
            frame_delay,
        })
    }

    /// The Modbus half of a point: table, address, type, word order, bit.
    pub(super) fn modbus_part(&mut self, cx: &Cx, p: &PointFile) -> KindParts {
        self.no_uart_keys(cx, p, "a Modbus");
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
            cx,
            &gpio_keys,
            |key| format!("`{key}` applies to GPIO points only; this device is on a Modbus bus"),
            "put the point on a device of a `kind: gpio` bus, or remove the key",
        );
        let Some(table_s) = &p.table else {
            self.error(
                cx,
                &p.topic,
                "a Modbus point needs `table`",
                Some("add `table: holding` (or `input`, `coil`, `discrete`)".into()),
            );
            return missing_parts();
        };
        let Some(address_s) = &p.address else {
            self.error(
                cx,
                &p.topic,
                "a Modbus point needs `address`",
                Some("add `address: 0` (0-based, as on the wire)".into()),
            );
            return missing_parts();
        };
        let table = match table_s.value {
            TableName::Holding => Table::Holding,
            TableName::Input => Table::Input,
            TableName::Coil => Table::Coil,
            TableName::Discrete => Table::Discrete,
        };
        let ty = self.modbus_type(cx, p, table, table_s);
        let bit = self.register_bit(cx, p, table, ty);
        let address = self.modbus_address(&cx.at("address"), address_s, table, ty);
        let order = match p.word_order.as_ref().map(|o| o.value) {
            None | Some(OrderName::Abcd) => WordOrder::Abcd,
            Some(OrderName::Cdab) => WordOrder::Cdab,
            Some(OrderName::Badc) => WordOrder::Badc,
            Some(OrderName::Dcba) => WordOrder::Dcba,
        };
        KindParts {
            ty,
            source: Source::Modbus(ModbusPoint {
                table,
                address,
                order,
                bit,
                write_address: None,
                scale_register: None,
            }),
        }
    }

    /// The value type of a Modbus point: `type` (default by table), `length` of a string.
    fn modbus_type(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        table: Table,
        table_s: &Spanned<TableName>,
    ) -> ValueType {
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
                    &cx.at("length"),
                    l,
                    format!("string length {} is outside 1–250 bytes", l.value),
                    Some("one read carries at most 125 registers (250 bytes)".into()),
                );
                ValueType::String { len: 2 }
            }
            None => {
                self.error(
                    &cx.at("type"),
                    type_loc,
                    "a `string` point needs `length` (bytes)",
                    Some("add `length: 16`".into()),
                );
                ValueType::String { len: 2 }
            }
        });
        self.length_only_for_strings(cx, p, ty);
        if table.is_bits() && ty != ValueType::Bool {
            self.error(
                &cx.at("type"),
                type_loc,
                format!(
                    "type `{ty}` is not allowed on a {}: it holds a single bit",
                    noun(table)
                ),
                Some("use `type: bool`, or `table: holding`/`input` for register values".into()),
            );
        }
        ty
    }

    /// `bit`: one bit of a register, for a `bool` point.
    fn register_bit(&mut self, cx: &Cx, p: &PointFile, table: Table, ty: ValueType) -> Option<u8> {
        let b = p.bit.as_ref()?;
        let cx = cx.at("bit");
        if table.is_bits() {
            self.error(
                &cx,
                b,
                format!(
                    "`bit` selects a bit inside a register; a {} is already one bit",
                    noun(table)
                ),
                Some("remove `bit`".into()),
            );
            None
        } else if ty != ValueType::Bool {
            self.error(
                &cx,
                b,
                format!("`bit` needs `type: bool`, this point is `{ty}`"),
                Some("set `type: bool` to read one bit of the register".into()),
            );
            None
        } else if (0..=15).contains(&b.value) {
            Some(b.value as u8)
        } else {
            self.error(
                &cx,
                b,
                format!("bit index {} is outside 0–15", b.value),
                Some("bit 0 is the least significant bit of the register".into()),
            );
            None
        }
    }

    /// `address`: 0–65535, and the value's last register too.
    pub(super) fn modbus_address(
        &mut self,
        cx: &Cx,
        address_s: &Spanned<i64>,
        table: Table,
        ty: ValueType,
    ) -> u16 {
        let count = if table.is_bits() {
            1
        } else {
            i64::from(ty.registers())
        };
        if !(0..=65535).contains(&address_s.value) {
            self.error(
                cx,
                address_s,
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
            return 0;
        }
        if address_s.value + count - 1 > 65535 {
            self.error(
                cx,
                address_s,
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
    }

    /// A warning for two points of a device (`cx`) that read overlapping registers
    /// differently; `points` holds each valid point with its index in `d.points`.
    /// Points larger than one read of the device may be (`max_read_registers`): such a
    /// value can never be read whole.
    pub(super) fn points_within_read_limit(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        points: &[(usize, Point)],
        limit: u16,
    ) {
        for (i, p) in points {
            let Some(m) = p.modbus() else { continue };
            let n = m.count(p.ty);
            // A write_only point is never read.
            if m.table.is_bits() || n <= limit || p.write_only {
                continue;
            }
            let pf = &d.points[*i];
            self.error(
                &cx.item("points", *i).at("type"),
                pf.ty.as_ref().map_or(at(&pf.topic), at),
                format!(
                    "a `{}` takes {n} registers, more than the device's max_read_registers {limit}",
                    p.ty
                ),
                Some(
                    "raise max_read_registers to at least the value's size, or read a smaller type"
                        .into(),
                ),
            );
        }
    }

    pub(super) fn overlapping_registers(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        points: &[(usize, Point)],
    ) {
        for (a, (_, pa)) in points.iter().enumerate() {
            for (ib, pb) in &points[a + 1..] {
                let (Some(ma), Some(mb)) = (pa.modbus(), pb.modbus()) else {
                    continue;
                };
                if ma.table != mb.table {
                    continue;
                }
                let (sa, ea) = (
                    u32::from(ma.address),
                    u32::from(ma.address) + u32::from(ma.count(pa.ty)),
                );
                let (sb, eb) = (
                    u32::from(mb.address),
                    u32::from(mb.address) + u32::from(mb.count(pb.ty)),
                );
                let overlap = sa < eb && sb < ea;
                let same = pa.ty == pb.ty && ma.order == mb.order && ma.address == mb.address;
                let both_bits = ma.bit.is_some() && mb.bit.is_some();
                if overlap && !same && !both_bits {
                    let pf = &d.points[*ib];
                    self.warn(
                        &cx.item("points", *ib).at("address"),
                        pf.address.as_ref().map_or(at(&pf.topic), at),
                        format!(
                            "points `{}` ({} at {} {}) and `{}` ({} at {} {}) read overlapping registers differently",
                            pa.topic, pa.ty, ma.table, ma.address, pb.topic, pb.ty, mb.table, mb.address
                        ),
                    );
                }
            }
        }
    }
}
