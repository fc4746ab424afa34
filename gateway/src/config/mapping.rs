//! The mapping files together: buses, then devices, then the topics across all files.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{at, BusFile, BusKindName, GpioBackendName, MappingFile, Validator, DEFAULT_MAX_LINE};
use crate::{
    model::{Bus, BusKind, GpioBackendKind},
    topics::is_id,
};

/// What a device's bus is, for the checks that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Modbus,
    Gpio,
    Uart,
}

impl Validator {
    pub(super) fn mappings(
        &mut self,
        files: &[(PathBuf, MappingFile)],
        base: Option<&str>,
    ) -> Vec<Bus> {
        // Buses first: devices may refer to a bus of any file.
        let mut buses: Vec<Bus> = Vec::new();
        let mut bus_where: HashMap<String, (PathBuf, (u64, u64))> = HashMap::new();
        for (file, m) in files {
            for (i, b) in m.buses.iter().enumerate() {
                let path = format!("buses[{i}]");
                if let Some(bus) = self.bus(file, &path, b) {
                    if let Some((f0, l0)) = bus_where.get(&bus.id) {
                        self.error(
                            file,
                            at(&b.id),
                            format!("{path}.id"),
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
        let bus_ids: Vec<String> = buses.iter().map(|b| b.id.clone()).collect();
        let classes: HashMap<String, Class> = buses
            .iter()
            .map(|b| {
                let class = match b.kind {
                    BusKind::Gpio { .. } => Class::Gpio,
                    BusKind::Uart { .. } => Class::Uart,
                    BusKind::ModbusTcp { .. } | BusKind::ModbusRtu { .. } => Class::Modbus,
                };
                (b.id.clone(), class)
            })
            .collect();
        let mut device_where: HashMap<String, (PathBuf, (u64, u64))> = HashMap::new();
        let mut unit_where: HashMap<(String, u8), String> = HashMap::new();
        let mut topic_where: BTreeMap<String, (PathBuf, (u64, u64), String)> = BTreeMap::new();
        let mut device_ids = Vec::new();
        for (file, m) in files {
            for (i, d) in m.devices.iter().enumerate() {
                device_ids.push(d.id.value.clone());
                let path = format!("devices[{i}]");
                let class = classes.get(&d.bus.value).copied().unwrap_or(Class::Modbus);
                let Some((bus_id, dev)) =
                    self.device(file, &path, d, &bus_ids, class, &mut topic_where)
                else {
                    continue;
                };
                if let Some((f0, l0)) = device_where.get(&dev.id) {
                    self.error(
                        file,
                        at(&d.id),
                        format!("{path}.id"),
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
                let unit_valid = d.unit.as_ref().is_none_or(|u| (1..=247).contains(&u.value));
                let first = unit_where
                    .entry((bus_id.clone(), dev.unit))
                    .or_insert_with(|| dev.id.clone())
                    .clone();
                if unit_valid && first != dev.id && class == Class::Modbus {
                    let loc = d.unit.as_ref().map_or(at(&d.id), at);
                    let default = if d.unit.is_none() {
                        " (the default)"
                    } else {
                        ""
                    };
                    self.error(
                        file,
                        loc,
                        format!("{path}.unit"),
                        format!(
                            "unit id {}{default} is already used by device `{first}` on bus `{bus_id}`",
                            dev.unit
                        ),
                        Some("each device on a bus needs its own unit id".into()),
                    );
                }
                if let Some(bus) = buses.iter_mut().find(|b| b.id == bus_id) {
                    bus.devices.push(Arc::new(dev));
                }
            }
        }
        // Point topics must not collide with the gateway's own topics or command topics.
        if let Some(base) = base {
            let mut reserved = vec![format!("{base}/status"), format!("{base}/diagnostics")];
            reserved.extend(
                device_ids
                    .iter()
                    .map(|d| format!("{base}/{d}/availability")),
            );
            for r in reserved {
                if let Some((f, l, p)) = topic_where.get(&r) {
                    let (f, l, p) = (f.clone(), *l, p.clone());
                    self.error(
                        &f,
                        l,
                        p,
                        format!("topic `{r}` is one of the gateway's own topics"),
                        Some("choose another topic or change `base_topic`".into()),
                    );
                }
            }
        }
        let topics: Vec<(String, PathBuf, (u64, u64), String)> = topic_where
            .iter()
            .map(|(t, (f, l, p))| (t.clone(), f.clone(), *l, p.clone()))
            .collect();
        for (t, f, l, p) in &topics {
            for (suffix, what) in [("/set", "command"), ("/set/result", "command result")] {
                if let Some(parent) = t.strip_suffix(suffix) {
                    if topic_where.contains_key(parent) {
                        self.error(
                            f,
                            *l,
                            p.clone(),
                            format!("topic `{t}` is the {what} topic of point `{parent}`"),
                            Some(format!(
                                "`{suffix}` below a point topic is reserved for commands"
                            )),
                        );
                    }
                }
            }
        }
        for bus in &buses {
            if bus.devices.is_empty() && !self.unknown_bus && !self.parse_failed {
                let (f, l) = &bus_where[&bus.id];
                let (f, l) = (f.clone(), *l);
                self.warn(&f, l, "", format!("bus `{}` has no devices", bus.id));
            }
        }
        buses
    }

    pub(super) fn bus(&mut self, file: &Path, path: &str, b: &BusFile) -> Option<Bus> {
        let id = b.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&b.id),
                format!("{path}.id"),
                format!("bus id `{id}` may only use letters, digits, `-` and `_`"),
                None,
            );
        }
        let (kind_name, allowed): (&str, &[&str]) = match b.kind.value {
            BusKindName::ModbusTcp => ("modbus_tcp", &["host", "port", "timeout"]),
            BusKindName::ModbusRtu => (
                "modbus_rtu",
                &[
                    "path",
                    "baud",
                    "parity",
                    "data_bits",
                    "stop_bits",
                    "timeout",
                    "frame_delay",
                ],
            ),
            BusKindName::Uart => (
                "uart",
                &[
                    "path",
                    "baud",
                    "parity",
                    "data_bits",
                    "stop_bits",
                    "timeout",
                    "delimiter",
                    "max_line",
                ],
            ),
            BusKindName::Gpio => ("gpio", &["backend"]),
        };
        let present = [
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
            ("delimiter", b.delimiter.as_ref().map(at)),
            ("max_line", b.max_line.as_ref().map(at)),
        ];
        for (key, loc) in present {
            if let (Some(loc), false) = (loc, allowed.contains(&key)) {
                let hint = if key == "port" && matches!(kind_name, "modbus_rtu" | "uart") {
                    format!("the serial port of a {kind_name} bus is `path: /dev/ttyUSB0`")
                } else {
                    format!("a {kind_name} bus takes: {}", allowed.join(", "))
                };
                self.error(
                    file,
                    loc,
                    format!("{path}.{key}"),
                    format!("`{key}` does not apply to a {kind_name} bus"),
                    Some(hint),
                );
            }
        }
        match b.kind.value {
            BusKindName::ModbusRtu => {
                let serial = self.serial(file, path, b, kind_name, &id)?;
                let frame_delay = b.frame_delay.as_ref().map_or(Duration::ZERO, |d| d.value.0);
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                Some(Bus {
                    id,
                    kind: BusKind::ModbusRtu {
                        serial,
                        timeout,
                        frame_delay,
                    },
                    devices: Vec::new(),
                })
            }
            BusKindName::Uart => {
                let serial = self.serial(file, path, b, kind_name, &id)?;
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                let delimiter = match &b.delimiter {
                    None => b"\n".to_vec(),
                    Some(d) if d.value.is_empty() => {
                        self.error(
                            file,
                            at(d),
                            format!("{path}.delimiter"),
                            "the delimiter is empty",
                            Some(r#"write it in double quotes: `delimiter: "\r\n"`"#.into()),
                        );
                        b"\n".to_vec()
                    }
                    Some(d) => d.value.as_bytes().to_vec(),
                };
                let max_line = self.int_in(
                    file,
                    b.max_line.as_ref(),
                    &format!("{path}.max_line"),
                    "max_line",
                    (1, 65536),
                    DEFAULT_MAX_LINE as i64,
                ) as usize;
                Some(Bus {
                    id,
                    kind: BusKind::Uart {
                        serial,
                        delimiter,
                        max_line,
                        timeout,
                    },
                    devices: Vec::new(),
                })
            }
            BusKindName::Gpio => Some(Bus {
                id,
                kind: BusKind::Gpio {
                    backend: match b.backend.as_ref().map(|x| x.value) {
                        None | Some(GpioBackendName::Rppal) => GpioBackendKind::Rppal,
                        Some(GpioBackendName::Simulated) => GpioBackendKind::Simulated,
                    },
                },
                devices: Vec::new(),
            }),
            BusKindName::ModbusTcp => {
                let host = match &b.host {
                    Some(h) if !h.value.trim().is_empty() => h.value.trim().to_string(),
                    Some(h) => {
                        self.error(file, at(h), format!("{path}.host"), "host is empty", None);
                        return None;
                    }
                    None => {
                        self.error(
                            file,
                            at(&b.kind),
                            path.to_string(),
                            "a modbus_tcp bus needs `host`",
                            Some("add `host: 192.168.1.20` (the device or Modbus gateway)".into()),
                        );
                        return None;
                    }
                };
                let port = match &b.port {
                    Some(p) if p.value == 0 => {
                        self.error(
                            file,
                            at(p),
                            format!("{path}.port"),
                            "port 0 is not a valid TCP port",
                            Some("Modbus TCP uses 502".into()),
                        );
                        502
                    }
                    Some(p) => p.value,
                    None => 502,
                };
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                Some(Bus {
                    id,
                    kind: BusKind::ModbusTcp {
                        host,
                        port,
                        timeout,
                    },
                    devices: Vec::new(),
                })
            }
        }
    }
}
