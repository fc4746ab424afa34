//! One device: the keys its bus kind takes, its bus, its settings and its points (each
//! topic once across all files).

use std::time::Duration;

use super::{at, did_you_mean, mapping::Topics, Class, Cx, DeviceFile, Validator};
use crate::{
    model::{Device, DeviceKind, ModbusDevice, Parser, Point},
    topics::is_id,
};

/// Default cap of an offline device's retry interval.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Validator {
    /// One device on a bus of `class`; `None` when its bus does not exist (its problems
    /// are reported all the same). Returns the bus id with the device.
    pub(super) fn device(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        bus_ids: &[String],
        (class, units): (Class, (i64, i64)),
        topics: &mut Topics,
    ) -> Option<(String, Device)> {
        self.device_keys(cx, d, class);
        let id = d.id.value.clone();
        if !is_id(&id) {
            self.error(
                &cx.at("id"),
                &d.id,
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
                &cx.at("bus"),
                &d.bus,
                format!("unknown bus `{}`", d.bus.value),
                Some(hint),
            );
        }
        let unit = self.int_in(&cx.at("unit"), d.unit.as_ref(), "unit id", units, 1);
        let poll_interval = self.positive_duration(
            &cx.at("poll_interval"),
            d.poll_interval.as_ref(),
            Duration::from_secs(1),
        );
        let offline_after = self.int_in(
            &cx.at("offline_after"),
            d.offline_after.as_ref(),
            "offline_after",
            (1, 1000),
            3,
        );
        let max_gap = self.int_in(
            &cx.at("max_gap"),
            d.max_gap.as_ref(),
            "max_gap",
            (0, 124),
            8,
        );
        let max_backoff = self.positive_duration(
            &cx.at("max_backoff"),
            d.max_backoff.as_ref(),
            DEFAULT_MAX_BACKOFF,
        );
        let kind = match class {
            Class::Modbus => DeviceKind::Modbus(ModbusDevice {
                unit: unit as u8,
                max_gap: max_gap as u16,
                max_read_registers: self.int_in(
                    &cx.at("max_read_registers"),
                    d.max_read_registers.as_ref(),
                    "max_read_registers",
                    (1, 125),
                    125,
                ) as u16,
                max_read_bits: self.int_in(
                    &cx.at("max_read_bits"),
                    d.max_read_bits.as_ref(),
                    "max_read_bits",
                    (1, 2000),
                    2000,
                ) as u16,
                write_multiple: d.write_multiple.as_ref().is_some_and(|w| w.value),
            }),
            Class::Uart => DeviceKind::Uart(self.uart_device(cx, d)),
            Class::Gpio => DeviceKind::Gpio,
        };
        let parser = match &kind {
            DeviceKind::Uart(u) => u.parser.as_ref(),
            _ => None,
        };
        let parser_failed = class == Class::Uart && d.parser.is_some() && parser.is_none();
        let points = self.device_points(cx, d, class, parser, parser_failed, topics);
        // A device with a profile that could not be used has its error already.
        if d.points.is_empty() && d.profile.is_none() {
            self.warn(
                &cx.at("points"),
                &d.id,
                format!("device `{id}` has no points"),
            );
        }
        if let DeviceKind::Modbus(m) = &kind {
            self.overlapping_registers(cx, d, &points);
            self.points_within_read_limit(cx, d, &points, m.max_read_registers);
        }
        let json_topic = self.json_topic(cx, d, &points);
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
                poll_interval,
                offline_after: offline_after as u32,
                max_backoff,
                kind,
                ha: self.device_ha(cx, d.homeassistant.as_ref()),
                points,
                json_topic,
            },
        ))
    }

    /// The device keys that do not apply to its bus kind.
    fn device_keys(&mut self, cx: &Cx, d: &DeviceFile, class: Class) {
        if class != Class::Uart {
            self.reject_keys(
                cx,
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
                cx,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
                ("max_read_registers", d.max_read_registers.as_ref().map(at)),
                ("max_read_bits", d.max_read_bits.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a uart bus"),
                "a uart device takes `parser`, `query`, `poll_interval`, `offline_after`, `max_backoff`",
            );
        }
        if class == Class::Gpio {
            self.reject_keys(
                cx,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("poll_interval", d.poll_interval.as_ref().map(at)),
                ("offline_after", d.offline_after.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
                ("max_read_registers", d.max_read_registers.as_ref().map(at)),
                ("max_read_bits", d.max_read_bits.as_ref().map(at)),
                ("max_backoff", d.max_backoff.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a gpio bus"),
                "GPIO inputs are interrupt-driven, not polled; use a point's `heartbeat` to republish",
            );
        }
    }

    /// The valid points of a device, with their index; each topic once across all files.
    fn device_points(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        class: Class,
        parser: Option<&Parser>,
        parser_failed: bool,
        topics: &mut Topics,
    ) -> Vec<(usize, Point)> {
        let mut points = Vec::new();
        for (i, p) in d.points.iter().enumerate() {
            let pcx = cx.item("points", i);
            let Some(pt) = self.point(&pcx, p, class, parser, parser_failed) else {
                continue;
            };
            let tcx = pcx.at("topic");
            if let Some((f0, l0, _)) = topics.get(&pt.topic) {
                self.error(
                    &tcx,
                    &p.topic,
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
                (cx.file.to_path_buf(), at(&p.topic), tcx.path),
            );
            points.push((i, pt));
        }
        points
    }
}
