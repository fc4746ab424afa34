//! The mapping files together: buses (of any file), then devices, then the topics across
//! all files (duplicates, the gateway's own topics, command topics). Which kind a bus is
//! decides the file that checks it: `modbus.rs`, `uart.rs` or `gpio.rs`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use super::{at, gpio, modbus, uart, BusFile, BusKindName, Cx, DeviceFile, MappingFile, Validator};
use crate::{
    model::{Bus, BusKind, Device},
    topics::is_id,
};

/// What a device's bus is, for the checks that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// `modbus_tcp`, `modbus_rtu` or `modbus_rtu_over_tcp`.
    Modbus,
    /// `gpio`.
    Gpio,
    /// `uart`.
    Uart,
}

impl Class {
    /// The class of a bus kind.
    fn of(kind: &BusKind) -> Class {
        match kind {
            BusKind::Gpio { .. } => Class::Gpio,
            BusKind::Uart { .. } => Class::Uart,
            BusKind::ModbusTcp { .. }
            | BusKind::ModbusRtu { .. }
            | BusKind::ModbusRtuOverTcp { .. } => Class::Modbus,
        }
    }
}

/// The unit ids a device on a bus of `kind` may have: 0–255 on Modbus TCP (devices that
/// answer only unit 0 or 255 exist), 1–247 on a serial line (0 is broadcast there).
pub(super) fn unit_range(kind: &BusKind) -> (i64, i64) {
    match kind {
        BusKind::ModbusTcp { .. } => (0, 255),
        _ => (1, 247),
    }
}

/// Where something was first defined: file and position.
type Where = (PathBuf, (u64, u64));

/// Every point topic: where it is and its field path.
pub(super) type Topics = BTreeMap<String, (PathBuf, (u64, u64), String)>;

/// The bus keys every kind may have, with where they are.
fn bus_keys(b: &BusFile) -> [(&'static str, Option<(u64, u64)>); 13] {
    [
        ("host", b.host.as_ref().map(at)),
        ("port", b.port.as_ref().map(at)),
        ("timeout", b.timeout.as_ref().map(at)),
        ("backend", b.backend.as_ref().map(at)),
        ("path", b.path.as_ref().map(at)),
        ("baud", b.baud.as_ref().map(at)),
        ("parity", b.parity.as_ref().map(at)),
        ("data_bits", b.data_bits.as_ref().map(at)),
        ("stop_bits", b.stop_bits.as_ref().map(at)),
        ("frame_delay", b.frame_delay.as_ref().map(at)),
        ("connect_delay", b.connect_delay.as_ref().map(at)),
        ("delimiter", b.delimiter.as_ref().map(at)),
        ("max_line", b.max_line.as_ref().map(at)),
    ]
}

impl Validator {
    /// Every mapping file: buses first (devices may refer to a bus of any file), then
    /// devices, then the topics across files.
    pub(super) fn mappings(
        &mut self,
        files: &[(PathBuf, MappingFile)],
        names: Option<&crate::topics::Topics>,
    ) -> Vec<Bus> {
        let (mut buses, bus_where) = self.buses(files);
        let mut topics = Topics::new();
        let device_ids = self.devices(files, &mut buses, &mut topics);
        // Point and device JSON topics must not collide with the names the gateway
        // reserves (without a valid gateway file: the names below points only).
        let names = names.cloned().unwrap_or_default();
        self.topic_contract(files, &names, &device_ids, &topics);
        for bus in &buses {
            if bus.devices.is_empty() && !self.unknown_bus && !self.parse_failed {
                let (f, l) = &bus_where[&bus.id];
                self.warn(&Cx::new(f), *l, format!("bus `{}` has no devices", bus.id));
            }
        }
        buses
    }

    /// The buses of every file, each id once; with where each was defined.
    fn buses(&mut self, files: &[(PathBuf, MappingFile)]) -> (Vec<Bus>, HashMap<String, Where>) {
        let mut buses: Vec<Bus> = Vec::new();
        let mut bus_where: HashMap<String, Where> = HashMap::new();
        for (file, m) in files {
            for (i, b) in m.buses.iter().enumerate() {
                let cx = Cx::new(file).item("buses", i);
                if let Some(bus) = self.bus(&cx, b) {
                    if let Some((f0, l0)) = bus_where.get(&bus.id) {
                        self.error(
                            &cx.at("id"),
                            &b.id,
                            format!(
                                "bus id `{}` is already used at {}:{}:{}",
                                bus.id,
                                f0.display(),
                                l0.0,
                                l0.1
                            ),
                            Some("give every bus its own id".into()),
                        );
                        continue;
                    }
                    bus_where.insert(bus.id.clone(), (file.clone(), at(&b.id)));
                    buses.push(bus);
                }
            }
        }
        (buses, bus_where)
    }

    /// The devices of every file, each put on its bus; returns every device id written.
    fn devices(
        &mut self,
        files: &[(PathBuf, MappingFile)],
        buses: &mut [Bus],
        topics: &mut Topics,
    ) -> Vec<String> {
        let bus_ids: Vec<String> = buses.iter().map(|b| b.id.clone()).collect();
        let classes: HashMap<String, (Class, (i64, i64))> = buses
            .iter()
            .map(|b| (b.id.clone(), (Class::of(&b.kind), unit_range(&b.kind))))
            .collect();
        let mut device_where: HashMap<String, Where> = HashMap::new();
        let mut unit_where: HashMap<(String, u8), String> = HashMap::new();
        let mut device_ids = Vec::new();
        for (file, m) in files {
            for (i, d) in m.devices.iter().enumerate() {
                device_ids.push(d.id.value.clone());
                let cx = Cx::new(file).item("devices", i);
                let (class, units) = classes
                    .get(&d.bus.value)
                    .copied()
                    .unwrap_or((Class::Modbus, (1, 247)));
                let Some((bus_id, dev)) = self.device(&cx, d, &bus_ids, (class, units), topics)
                else {
                    continue;
                };
                if let Some((f0, l0)) = device_where.get(&dev.id) {
                    self.error(
                        &cx.at("id"),
                        &d.id,
                        format!(
                            "device id `{}` is already used at {}:{}:{}",
                            dev.id,
                            f0.display(),
                            l0.0,
                            l0.1
                        ),
                        Some("device ids name availability topics and must be unique".into()),
                    );
                    continue;
                }
                device_where.insert(dev.id.clone(), (file.clone(), at(&d.id)));
                // A bus holds devices of one class: only Modbus ones have unit ids.
                if class == Class::Modbus {
                    self.unique_unit(&cx, d, &dev, (&bus_id, units), &mut unit_where);
                }
                if let Some(bus) = buses.iter_mut().find(|b| b.id == bus_id) {
                    bus.devices.push(Arc::new(dev));
                }
            }
        }
        device_ids
    }

    /// Each Modbus device on a bus needs its own unit id.
    fn unique_unit(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        dev: &Device,
        (bus_id, (lo, hi)): (&str, (i64, i64)),
        unit_where: &mut HashMap<(String, u8), String>,
    ) {
        // An out-of-range unit is reported where it is read; it claims no unit id here
        // (it would make the default unit 1 of a later device look taken).
        if !d.unit.as_ref().is_none_or(|u| (lo..=hi).contains(&u.value)) {
            return;
        }
        let Some(unit) = dev.modbus().map(|m| m.unit) else {
            return;
        };
        let first = unit_where
            .entry((bus_id.to_string(), unit))
            .or_insert_with(|| dev.id.clone());
        if *first != dev.id {
            let loc = d.unit.as_ref().map_or(at(&d.id), at);
            let default = if d.unit.is_none() {
                " (the default)"
            } else {
                ""
            };
            let msg = format!(
                "unit id {unit}{default} is already used by device `{first}` on bus `{bus_id}`"
            );
            self.error(
                &cx.at("unit"),
                loc,
                msg,
                Some("each device on a bus needs its own unit id".into()),
            );
        }
    }

    /// One bus: its id, the keys its kind takes, and the kind's own checks.
    fn bus(&mut self, cx: &Cx, b: &BusFile) -> Option<Bus> {
        let id = b.id.value.clone();
        if !is_id(&id) {
            self.error(
                &cx.at("id"),
                &b.id,
                format!("bus id `{id}` may only use letters, digits, `-` and `_`"),
                None,
            );
        }
        let (kind_name, allowed): (&str, &[&str]) = match b.kind.value {
            BusKindName::ModbusTcp => ("modbus_tcp", modbus::TCP_BUS_KEYS),
            BusKindName::ModbusRtu => ("modbus_rtu", modbus::RTU_BUS_KEYS),
            BusKindName::ModbusRtuOverTcp => ("modbus_rtu_over_tcp", modbus::RTU_OVER_TCP_BUS_KEYS),
            BusKindName::Uart => ("uart", uart::BUS_KEYS),
            BusKindName::Gpio => ("gpio", gpio::BUS_KEYS),
        };
        for (key, loc) in bus_keys(b) {
            if let (Some(loc), false) = (loc, allowed.contains(&key)) {
                let serial = ["path", "baud", "parity", "data_bits", "stop_bits"];
                let hint = if key == "port" && matches!(kind_name, "modbus_rtu" | "uart") {
                    format!("the serial port of a {kind_name} bus is `path: /dev/ttyUSB0`")
                } else if kind_name == "modbus_rtu_over_tcp" && serial.contains(&key) {
                    "the converter's serial side (baud, parity, ...) is set on the converter \
                     itself; here it is `host` and `port`"
                        .into()
                } else {
                    format!("a {kind_name} bus takes: {}", allowed.join(", "))
                };
                self.error(
                    &cx.at(key),
                    loc,
                    format!("`{key}` does not apply to a {kind_name} bus"),
                    Some(hint),
                );
            }
        }
        let kind = match b.kind.value {
            BusKindName::ModbusTcp => self.modbus_tcp_bus(cx, b)?,
            BusKindName::ModbusRtu => self.modbus_rtu_bus(cx, b, &id)?,
            BusKindName::ModbusRtuOverTcp => self.modbus_rtu_over_tcp_bus(cx, b)?,
            BusKindName::Uart => self.uart_bus(cx, b, &id)?,
            BusKindName::Gpio => gpio::bus(b),
        };
        Some(Bus {
            id,
            kind,
            devices: Vec::new(),
        })
    }
}
