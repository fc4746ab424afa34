//! One device: the keys its bus kind takes, its points, overlapping registers.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{at, did_you_mean, Class, DeviceFile, Validator};
use crate::{
    model::{Device, Point, UartDevice},
    topics::is_id,
};

/// Default cap of an offline device's retry interval.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Validator {
    pub(super) fn device(
        &mut self,
        file: &Path,
        path: &str,
        d: &DeviceFile,
        bus_ids: &[String],
        class: Class,
        topics: &mut BTreeMap<String, (PathBuf, (u64, u64), String)>,
    ) -> Option<(String, Device)> {
        if class != Class::Uart {
            self.reject_keys(
                file,
                path,
                &[
                    ("query", d.query.as_ref().map(at)),
                    ("parser", d.parser.as_ref().map(|p| at(&p.kind))),
                ],
                |key| format!("`{key}` applies to devices on a uart bus only"),
                "put the device on a `kind: uart` bus, or remove the key",
            );
        }
        if class == Class::Uart {
            self.reject_keys(
                file,
                path,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a uart bus"),
                "a uart device takes `parser`, `query`, `poll_interval`, `offline_after`, `max_backoff`",
            );
        }
        if class == Class::Gpio {
            self.reject_keys(
                file,
                path,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("poll_interval", d.poll_interval.as_ref().map(at)),
                ("offline_after", d.offline_after.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
                ("max_backoff", d.max_backoff.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a gpio bus"),
                "GPIO inputs are interrupt-driven, not polled; use a point's `heartbeat` to republish",
            );
        }
        let id = d.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&d.id),
                format!("{path}.id"),
                format!("device id `{id}` may only use letters, digits, `-` and `_`"),
                Some("it becomes a topic level of `<base>/<device>/availability`".into()),
            );
        }
        let bus_ok = bus_ids.contains(&d.bus.value);
        if !bus_ok && !self.parse_failed {
            self.unknown_bus = true;
            let hint = match did_you_mean(&d.bus.value, bus_ids.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None if bus_ids.is_empty() => "no bus is defined; add one under `buses:`".into(),
                None => format!("defined buses: {}", bus_ids.join(", ")),
            };
            self.error(
                file,
                at(&d.bus),
                format!("{path}.bus"),
                format!("unknown bus `{}`", d.bus.value),
                Some(hint),
            );
        }
        let unit = self.int_in(
            file,
            d.unit.as_ref(),
            &format!("{path}.unit"),
            "unit id",
            (1, 247),
            1,
        );
        let poll_interval = self.positive_duration(
            file,
            d.poll_interval.as_ref(),
            &format!("{path}.poll_interval"),
            Duration::from_secs(1),
        );
        let offline_after = self.int_in(
            file,
            d.offline_after.as_ref(),
            &format!("{path}.offline_after"),
            "offline_after",
            (1, 1000),
            3,
        );
        let max_gap = self.int_in(
            file,
            d.max_gap.as_ref(),
            &format!("{path}.max_gap"),
            "max_gap",
            (0, 124),
            8,
        );
        let max_backoff = self.positive_duration(
            file,
            d.max_backoff.as_ref(),
            &format!("{path}.max_backoff"),
            DEFAULT_MAX_BACKOFF,
        );
        let uart = if class == Class::Uart {
            let parser = d.parser.as_ref().and_then(|pf| self.parser(file, path, pf));
            let query = match &d.query {
                Some(q) if q.value.is_empty() => {
                    self.error(
                        file,
                        at(q),
                        format!("{path}.query"),
                        "the query is empty",
                        Some("remove `query` for a device that sends on its own".into()),
                    );
                    None
                }
                Some(q) => {
                    if d.parser.is_none() {
                        self.error(
                            file,
                            at(q),
                            format!("{path}.query"),
                            "a `query` needs a `parser` to read the reply",
                            Some("add e.g. `parser: {kind: key_value}`".into()),
                        );
                    }
                    Some(q.value.as_bytes().to_vec())
                }
                None => None,
            };
            Some(UartDevice { parser, query })
        } else {
            None
        };
        let parser = uart.as_ref().and_then(|u| u.parser.as_ref());
        let parser_failed = class == Class::Uart && d.parser.is_some() && parser.is_none();
        let mut points = Vec::new();
        for (i, p) in d.points.iter().enumerate() {
            let ppath = format!("{path}.points[{i}]");
            if let Some(pt) = self.point(file, &ppath, p, class, parser, parser_failed) {
                if let Some((f0, l0, _)) = topics.get(&pt.topic) {
                    self.error(
                        file,
                        at(&p.topic),
                        format!("{ppath}.topic"),
                        format!(
                            "duplicate topic `{}` (first used at {}:{}:{})",
                            pt.topic,
                            f0.display(),
                            l0.0,
                            l0.1
                        ),
                        Some("every point needs its own topic".into()),
                    );
                    continue;
                }
                topics.insert(
                    pt.topic.clone(),
                    (file.to_path_buf(), at(&p.topic), format!("{ppath}.topic")),
                );
                points.push((i, pt));
            }
        }
        if d.points.is_empty() {
            self.warn(
                file,
                at(&d.id),
                format!("{path}.points"),
                format!("device `{id}` has no points"),
            );
        }
        // Overlapping registers with different interpretations: a warning.
        let modbus_points = if class == Class::Modbus {
            points.len()
        } else {
            0
        };
        for a in 0..modbus_points {
            for b in a + 1..points.len() {
                let (_, pa) = &points[a];
                let (ib, pb) = &points[b];
                if pa.table != pb.table {
                    continue;
                }
                let (sa, ea) = (
                    u32::from(pa.address),
                    u32::from(pa.address) + u32::from(pa.count()),
                );
                let (sb, eb) = (
                    u32::from(pb.address),
                    u32::from(pb.address) + u32::from(pb.count()),
                );
                let overlap = sa < eb && sb < ea;
                let same = pa.ty == pb.ty && pa.order == pb.order && pa.address == pb.address;
                let both_bits = pa.bit.is_some() && pb.bit.is_some();
                if overlap && !same && !both_bits {
                    self.warn(
                        file,
                        d.points[*ib].address.as_ref().map_or(at(&d.points[*ib].topic), at),
                        format!("{path}.points[{ib}].address"),
                        format!(
                            "points `{}` ({} at {} {}) and `{}` ({} at {} {}) read overlapping registers differently",
                            pa.topic, pa.ty, pa.table, pa.address, pb.topic, pb.ty, pb.table, pb.address
                        ),
                    );
                }
            }
        }
        if !bus_ok {
            return None;
        }
        // Exactly as long as needed: the model lives as long as the process.
        let mut points: Vec<Point> = points.into_iter().map(|(_, p)| p).collect();
        points.shrink_to_fit();
        Some((
            d.bus.value.clone(),
            Device {
                id,
                unit: unit as u8,
                poll_interval,
                offline_after: offline_after as u32,
                max_gap: max_gap as u16,
                write_multiple: d.write_multiple.as_ref().is_some_and(|w| w.value),
                max_backoff,
                uart,
                points,
            },
        ))
    }
}
