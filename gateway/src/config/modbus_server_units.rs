//! `modbus_server.units`: which served unit id is which Modbus device. As written in
//! `units:`, or else every Modbus device at its own unit id, which must then be unique
//! across buses. And the warnings that need the served devices: `writes: true` with
//! nothing writable, a `max_age` shorter than a device's cadence.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    at, did_you_mean, modbus_server::SERVED_UNITS, Cx, MappingFile, ModbusServerFile, Severity,
    Spanned, Validator,
};
use crate::model::{Bus, BusKind, Device, DeviceKind};

/// A device of the model with its bus.
type Served<'a> = (&'a Bus, &'a Device);

/// Where each device id is written: its file and the position of its `id`.
type Written<'a> = HashMap<&'a str, (&'a Path, (u64, u64))>;

/// The name of a bus kind, as a mapping file writes it.
fn kind_name(kind: &BusKind) -> &'static str {
    match kind {
        BusKind::ModbusTcp { .. } => "modbus_tcp",
        BusKind::ModbusRtu { .. } => "modbus_rtu",
        BusKind::ModbusRtuOverTcp { .. } => "modbus_rtu_over_tcp",
        BusKind::Uart { .. } => "uart",
        BusKind::Gpio { .. } => "gpio",
    }
}

impl Validator {
    /// The served units, sorted by unit id; `cx` is `modbus_server`.
    pub(super) fn modbus_units(
        &mut self,
        cx: &Cx,
        file: &Spanned<ModbusServerFile>,
        buses: &[Bus],
        files: &[(PathBuf, MappingFile)],
    ) -> Vec<(u8, String)> {
        let devices: HashMap<&str, Served> = buses
            .iter()
            .flat_map(|b| b.devices.iter().map(move |d| (d.id.as_str(), (b, &**d))))
            .collect();
        let written: Written = files
            .iter()
            .flat_map(|(f, m)| {
                m.devices
                    .iter()
                    .map(move |d| (d.id.value.as_str(), (f.as_path(), at(&d.id))))
            })
            .collect();
        let mut units = match &file.value.units {
            Some(u) => self.units_written(&cx.at("units"), u, &devices, &written),
            None => self.units_own(cx, at(file), buses, &written),
        };
        units.sort_by_key(|(u, _)| *u);
        let served: Vec<Served> = units
            .iter()
            .filter_map(|(_, id)| devices.get(id.as_str()).copied())
            .collect();
        self.served_warnings(cx, &file.value, &served);
        units
    }

    /// `units:` as written: each key a unit id 1–247 (once), each value a Modbus device.
    fn units_written(
        &mut self,
        cx: &Cx,
        units: &Spanned<super::modbus_server::UnitsFile>,
        devices: &HashMap<&str, Served>,
        written: &Written,
    ) -> Vec<(u8, String)> {
        if units.value.0.is_empty() {
            self.error(
                cx,
                units,
                "`units` is empty: the server would serve no device",
                Some(
                    "map a unit id to a device (`units: {1: meter}`), or leave `units` out \
                     to serve every Modbus device at its own unit id"
                        .into(),
                ),
            );
        }
        let mut seen: HashMap<u8, (u64, u64)> = HashMap::new();
        let mut out = Vec::new();
        for (key, device) in &units.value.0 {
            let kcx = cx.at(key.value.trim());
            let Some(unit) = self.served_unit(&kcx, key, device, written) else {
                continue;
            };
            if let Some(first) = seen.get(&unit) {
                self.error(
                    &kcx,
                    key,
                    format!("unit id {unit} is listed twice (first at line {})", first.0),
                    Some("each served unit id names one device".into()),
                );
                continue;
            }
            seen.insert(unit, at(key));
            if self.served_device(&kcx, device, devices, written) {
                out.push((unit, device.value.clone()));
            }
        }
        out
    }

    /// A key of `units`: a unit id the server can serve.
    fn served_unit(
        &mut self,
        cx: &Cx,
        key: &Spanned<String>,
        device: &Spanned<String>,
        written: &Written,
    ) -> Option<u8> {
        let text = key.value.trim();
        let Ok(n) = text.strip_prefix('+').unwrap_or(text).parse::<i64>() else {
            let swapped = written.contains_key(text) && device.value.trim().parse::<u8>().is_ok();
            let hint = if swapped {
                format!("the unit id comes first: `{}: {text}`", device.value.trim())
            } else {
                "`units` maps a served unit id (1–247) to a device id: `units: {1: meter}`".into()
            };
            self.error(cx, key, format!("`{text}` is not a unit id"), Some(hint));
            return None;
        };
        if !SERVED_UNITS.contains(&n) {
            self.error(
                cx,
                key,
                format!("unit id {n} cannot be served"),
                Some(
                    "serve it at one of 1–247 (0 is the broadcast address, 248–255 are \
                     reserved); the device's own unit id does not matter"
                        .into(),
                ),
            );
            return None;
        }
        u8::try_from(n).ok()
    }

    /// A value of `units`: a device of a Modbus bus. A device written in a mapping file
    /// but not in the model failed its own checks (reported there): no error here.
    fn served_device(
        &mut self,
        cx: &Cx,
        device: &Spanned<String>,
        devices: &HashMap<&str, Served>,
        written: &Written,
    ) -> bool {
        let id = device.value.trim();
        match devices.get(id) {
            Some((_, d)) if matches!(d.kind, DeviceKind::Modbus(_)) => true,
            Some((b, _)) => {
                self.error(
                    cx,
                    device,
                    format!(
                        "device `{id}` is on {} bus `{}`: only Modbus devices can be served",
                        kind_name(&b.kind),
                        b.id
                    ),
                    Some(
                        "name a device of a modbus_tcp, modbus_rtu or modbus_rtu_over_tcp bus"
                            .into(),
                    ),
                );
                false
            }
            None if written.contains_key(id) || self.parse_failed => false,
            None => {
                let mut modbus: Vec<&str> = devices
                    .iter()
                    .filter(|(_, (_, d))| matches!(d.kind, DeviceKind::Modbus(_)))
                    .map(|(id, _)| *id)
                    .collect();
                modbus.sort_unstable();
                let hint = match did_you_mean(id, modbus.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None if modbus.is_empty() => {
                        "the mapping files have no Modbus device".to_string()
                    }
                    None => format!("Modbus devices: {}", modbus.join(", ")),
                };
                self.error(cx, device, format!("no device `{id}`"), Some(hint));
                false
            }
        }
    }

    /// No `units:`: every Modbus device at its own unit id; `loc` is the section's.
    fn units_own(
        &mut self,
        cx: &Cx,
        loc: (u64, u64),
        buses: &[Bus],
        written: &Written,
    ) -> Vec<(u8, String)> {
        let mut by_unit: BTreeMap<u8, Vec<Served>> = BTreeMap::new();
        let mut any = false;
        for b in buses {
            for d in &b.devices {
                let Some(m) = d.modbus() else { continue };
                any = true;
                if SERVED_UNITS.contains(&i64::from(m.unit)) {
                    by_unit.entry(m.unit).or_default().push((b, d));
                } else {
                    self.push(
                        Severity::Warning,
                        cx.file,
                        loc,
                        cx.path.clone(),
                        format!(
                            "device `{}` (bus `{}`, {}) has unit id {}, which a Modbus \
                             server cannot serve (1–247): it is not served",
                            d.id,
                            b.id,
                            place(written, &d.id),
                            m.unit
                        ),
                        Some(format!(
                            "serve it at another unit id with `units:`, e.g. `units: {{{}: {}}}`",
                            free_unit(buses),
                            d.id
                        )),
                    );
                }
            }
        }
        if !any && !self.parse_failed {
            self.warn(
                cx,
                loc,
                "the mapping files have no Modbus device: the Modbus server serves nothing",
            );
        }
        let mut out = Vec::new();
        for (unit, served) in &by_unit {
            match served.as_slice() {
                [(_, d)] => out.push((*unit, d.id.clone())),
                many => self.unit_conflict(cx, loc, *unit, many, written, &by_unit),
            }
        }
        out
    }

    /// Devices of several buses at one unit id, without `units:`.
    fn unit_conflict(
        &mut self,
        cx: &Cx,
        loc: (u64, u64),
        unit: u8,
        many: &[Served],
        written: &Written,
        by_unit: &BTreeMap<u8, Vec<Served>>,
    ) {
        let names: Vec<String> = many
            .iter()
            .map(|(b, d)| format!("`{}` (bus `{}`, {})", d.id, b.id, place(written, &d.id)))
            .collect();
        // An example: the first keeps the unit, the others get unit ids nobody has.
        let mut taken: Vec<u8> = by_unit.keys().copied().collect();
        let mut example = vec![format!("{unit}: {}", many[0].1.id)];
        for (_, d) in &many[1..] {
            let free = (1..=247u8).find(|u| !taken.contains(u)).unwrap_or(unit);
            taken.push(free);
            example.push(format!("{free}: {}", d.id));
        }
        self.error(
            cx,
            loc,
            format!(
                "unit id {unit} is the unit of {} devices, and the server can serve only one \
                 of them at it: {}",
                many.len(),
                names.join(", ")
            ),
            Some(format!(
                "say which device each served unit id is with `units:`, e.g. `units: {{{}}}`",
                example.join(", ")
            )),
        );
    }

    /// Warnings about the served devices: writes on with nothing writable, values too
    /// young for `max_age`.
    fn served_warnings(&mut self, cx: &Cx, f: &ModbusServerFile, served: &[Served]) {
        if let Some(w) = f.writes.as_ref().filter(|w| w.value) {
            let writable = served
                .iter()
                .any(|(_, d)| d.points.iter().any(|p| p.writable && p.modbus().is_some()));
            if !writable && !served.is_empty() {
                self.warn(
                    &cx.at("writes"),
                    w,
                    "no served device has a writable point: every write will be refused",
                );
            }
        }
        let Some(max_age) = f.max_age.as_ref().filter(|a| !a.value.0.is_zero()) else {
            return;
        };
        let mut seen = Vec::new();
        for (_, d) in served {
            if seen.contains(&d.id.as_str()) {
                continue;
            }
            seen.push(d.id.as_str());
            let slowest = slowest_cadence(d);
            if slowest > max_age.value.0 {
                self.warn(
                    &cx.at("max_age"),
                    max_age,
                    format!(
                        "device `{}` is read every {}, longer than max_age {}: its values \
                         will mostly be refused as too old (exception 0x0B)",
                        d.id,
                        humantime::format_duration(slowest),
                        humantime::format_duration(max_age.value.0)
                    ),
                );
            }
        }
    }
}

/// The longest time between two reads of a device's points: its `poll_interval`, or a
/// slower one of a point's own.
fn slowest_cadence(d: &Device) -> Duration {
    d.points
        .iter()
        .filter(|p| !p.write_only)
        .map(|p| p.poll_interval.unwrap_or(d.poll_interval))
        .max()
        .unwrap_or(d.poll_interval)
}

/// A unit id no Modbus device has (for an example), or 1.
fn free_unit(buses: &[Bus]) -> u8 {
    let own: Vec<u8> = buses
        .iter()
        .flat_map(|b| b.devices.iter().filter_map(|d| d.modbus().map(|m| m.unit)))
        .collect();
    (1..=247u8).find(|u| !own.contains(u)).unwrap_or(1)
}

/// `file:line:col` of a device's id.
fn place(written: &Written, id: &str) -> String {
    match written.get(id) {
        Some((f, (l, c))) => format!("{}:{l}:{c}", f.display()),
        None => "?".into(),
    }
}
