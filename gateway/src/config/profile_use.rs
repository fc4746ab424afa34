//! A device using a profile (`profile:`, `topic_prefix:`, `exclude:`, `overrides:`): its
//! points expanded before validation, and every diagnostic about them moved afterwards
//! to where the cause is written, naming the other file too.
//!
//! Expansion puts the profile's points (less the excluded, with the overrides merged in)
//! in front of the device's own, each at `<topic_prefix>/<key>`, and gives the device the
//! profile's unit id, read limits and Home Assistant manufacturer and model where it has
//! none. The mapping is then validated as if the user had written all of it. A
//! diagnostic about an expanded point is then moved ([`remap`]):
//!
//! - about its topic: to the device's `topic_prefix` (or the override's `topic`);
//! - about a key an override gives: to that override, naming the profile's point;
//! - about anything else: into the profile file (`points[3].address`), naming the device.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    at, mapping_file::BusKindName, profiles::Library, BusFile, Cx, DeviceFile, Diagnostic,
    MappingFile, ParityName, PointFile, PointOverrideFile, ProfileFile, Severity, Spanned,
    Validator,
};
use crate::topics::check_topic;

/// A device that uses a profile: what was expanded, for [`remap`].
#[derive(Debug)]
pub(super) struct ProfileUse {
    /// The user's mapping file.
    file: PathBuf,
    /// The device's field path, `devices[2]`.
    device: String,
    /// The device's id.
    device_id: String,
    /// Where its `profile:` value is.
    profile_at: (u64, u64),
    /// The profile's name.
    profile: String,
    /// The profile's file.
    profile_path: PathBuf,
    /// The expanded points, in the order they come in `points` (before the device's own).
    points: Vec<Expanded>,
    /// Device keys the profile gave: the device key and where the profile has it.
    injected: Vec<(&'static str, (u64, u64))>,
}

/// One expanded point.
#[derive(Debug)]
struct Expanded {
    /// Its index in the profile's `points`.
    index: usize,
    /// Its key.
    key: String,
    /// Where the profile writes its key.
    key_at: (u64, u64),
    /// Where its topic comes from (the `topic_prefix` or the override's `topic`).
    topic_at: (u64, u64),
    /// The override gave `topic`.
    topic_overridden: bool,
    /// The keys the override gave (`deadband`, `homeassistant.name`).
    overridden: Vec<String>,
}

/// A bus as a profile's checks need it: its kind and serial settings.
struct BusInfo {
    kind: BusKindName,
    serial: Serial,
}

/// Baud, parity, data bits, stop bits.
type Serial = (i64, ParityName, i64, i64);

/// `9600 8N1`.
fn serial_text((baud, parity, data, stop): Serial) -> String {
    let p = match parity {
        ParityName::None => 'N',
        ParityName::Even => 'E',
        ParityName::Odd => 'O',
    };
    format!("{baud} {data}{p}{stop}")
}

impl Validator {
    /// Expand the profile of every device that has one, in every mapping file.
    pub(super) fn expand_profiles(
        &mut self,
        mappings: &mut [(PathBuf, MappingFile)],
        lib: &mut Library,
    ) -> Vec<ProfileUse> {
        let mut buses: HashMap<String, BusInfo> = HashMap::new();
        for (_, m) in mappings.iter() {
            for b in &m.buses {
                buses
                    .entry(b.id.value.clone())
                    .or_insert_with(|| bus_info(b));
            }
        }
        let mut uses = Vec::new();
        for (file, m) in mappings.iter_mut() {
            for (i, d) in m.devices.iter_mut().enumerate() {
                let cx = Cx::new(file).item("devices", i);
                if let Some(u) = self.expand_device(&cx, d, lib, &buses) {
                    uses.push(u);
                }
            }
        }
        uses
    }

    /// One device: its profile's points in front of its own.
    fn expand_device(
        &mut self,
        cx: &Cx,
        d: &mut DeviceFile,
        lib: &mut Library,
        buses: &HashMap<String, BusInfo>,
    ) -> Option<ProfileUse> {
        let Some(name) = d.profile.clone() else {
            self.profile_keys_without_profile(cx, d);
            return None;
        };
        let pcx = cx.at("profile");
        if !lib.contains(&name.value) {
            let hint = match lib.suggest(&name.value) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "`fieldlink profiles` lists the profiles there are".into(),
            };
            self.error(
                &pcx,
                &name,
                format!("unknown profile `{}`", name.value),
                Some(hint),
            );
            return None;
        }
        // A profile that does not parse is reported in its own file.
        let profile = lib.get(self, &name.value)?;
        let (path, pf) = (profile.path.clone(), profile.file.as_ref()?);
        let Some(prefix) = d.topic_prefix.clone() else {
            self.error(
                &pcx,
                &name,
                "a device with `profile` needs `topic_prefix`",
                Some(
                    "add e.g. `topic_prefix: casa/energia/medidor`: the profile's points are \
                     published at `<topic_prefix>/<key>`"
                        .into(),
                ),
            );
            return None;
        };
        if let Err(e) = check_topic(&prefix.value) {
            self.error(&cx.at("topic_prefix"), &prefix, e, None);
            return None;
        }
        let bus = buses.get(&d.bus.value);
        if let Some(b) = bus.filter(|b| !is_modbus(b.kind)) {
            self.error(
                &pcx,
                &name,
                format!(
                    "profile `{}` describes a Modbus device; bus `{}` is a {} bus",
                    name.value,
                    d.bus.value,
                    if b.kind == BusKindName::Gpio {
                        "gpio"
                    } else {
                        "uart"
                    }
                ),
                Some(
                    "put the device on a modbus_tcp, modbus_rtu or modbus_rtu_over_tcp bus".into(),
                ),
            );
            return None;
        }
        self.profile_key_refs(cx, d, pf, &name.value);
        let mut u = ProfileUse {
            file: cx.file.to_path_buf(),
            device: cx.path.clone(),
            device_id: d.id.value.clone(),
            profile_at: at(&name),
            profile: name.value.clone(),
            profile_path: path,
            points: Vec::new(),
            injected: Vec::new(),
        };
        let mut points = Vec::with_capacity(pf.points.len() + d.points.len());
        for (k, pp) in pf.points.iter().enumerate() {
            let key = &pp.0.topic.value;
            if d.exclude.iter().flatten().any(|e| e.value == *key) {
                continue;
            }
            let ov = d
                .overrides
                .iter()
                .flat_map(|o| &o.0)
                .find(|(ok, _)| ok.value == *key)
                .map(|(_, o)| o);
            let json = d.json_topic.is_some();
            let (point, e) = expand_point(&pp.0, k, &prefix, ov, json);
            points.push(point);
            u.points.push(e);
        }
        points.append(&mut d.points);
        d.points = points;
        u.injected = inject_device_keys(d, pf);
        if let (Some(b), Some(s)) = (bus, &pf.profile.serial) {
            self.usual_serial(cx, d, b, s, &name);
        }
        Some(u)
    }

    /// `topic_prefix`, `exclude` and `overrides` on a device without `profile`.
    fn profile_keys_without_profile(&mut self, cx: &Cx, d: &DeviceFile) {
        let keys = [
            ("topic_prefix", d.topic_prefix.as_ref().map(at)),
            (
                "exclude",
                d.exclude.as_ref().and_then(|e| e.first()).map(at),
            ),
            (
                "overrides",
                d.overrides
                    .as_ref()
                    .and_then(|o| o.0.first())
                    .map(|o| at(&o.0)),
            ),
        ];
        self.reject_keys(
            cx,
            &keys,
            |key| format!("`{key}` applies to a device with a `profile`"),
            "add `profile: <name>` (`fieldlink profiles` lists them), or remove the key",
        );
    }

    /// `exclude` and `overrides` name points the profile has.
    fn profile_key_refs(&mut self, cx: &Cx, d: &DeviceFile, pf: &ProfileFile, name: &str) {
        let keys: Vec<&str> = pf.points.iter().map(|p| p.0.topic.value.as_str()).collect();
        let unknown = |v: &mut Validator, kcx: Cx, key: &Spanned<String>| {
            if keys.contains(&key.value.as_str()) {
                return true;
            }
            let hint = match super::did_you_mean(&key.value, keys.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("`fieldlink profiles show {name}` lists its points"),
            };
            v.error(
                &kcx,
                key,
                format!("profile `{name}` has no point `{}`", key.value),
                Some(hint),
            );
            false
        };
        for (i, e) in d.exclude.iter().flatten().enumerate() {
            unknown(self, cx.item("exclude", i), e);
        }
        for (k, _) in d.overrides.iter().flat_map(|o| &o.0) {
            let ocx = cx.at("overrides").at(&k.value);
            if unknown(self, ocx.clone(), k)
                && d.exclude.iter().flatten().any(|e| e.value == k.value)
            {
                self.warn(
                    &ocx,
                    k,
                    format!("point `{}` is excluded: its override does nothing", k.value),
                );
            }
        }
    }

    /// A device on a `modbus_rtu` bus whose settings are not the profile's usual ones.
    fn usual_serial(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        bus: &BusInfo,
        s: &super::ProfileSerialFile,
        name: &Spanned<String>,
    ) {
        if bus.kind != BusKindName::ModbusRtu {
            return;
        }
        let usual: Serial = (
            s.baud.as_ref().map_or(9600, |v| v.value),
            s.parity.as_ref().map_or(ParityName::None, |v| v.value),
            s.data_bits.as_ref().map_or(8, |v| v.value),
            s.stop_bits.as_ref().map_or(1, |v| v.value),
        );
        if usual == bus.serial {
            return;
        }
        self.push(
            Severity::Warning,
            cx.file,
            at(name),
            cx.at("profile").path,
            format!(
                "bus `{}` runs at {}; profile `{}` says the device's usual settings are {}",
                d.bus.value,
                serial_text(bus.serial),
                name.value,
                serial_text(usual)
            ),
            Some(
                "set the bus to the device's settings, or the device (its menu) to the bus's"
                    .into(),
            ),
        );
    }
}

/// A bus's kind and serial settings as written (with their defaults).
fn bus_info(b: &BusFile) -> BusInfo {
    BusInfo {
        kind: b.kind.value,
        serial: (
            b.baud.as_ref().map_or(9600, |v| v.value),
            b.parity.as_ref().map_or(ParityName::None, |v| v.value),
            b.data_bits.as_ref().map_or(8, |v| v.value),
            b.stop_bits.as_ref().map_or(1, |v| v.value),
        ),
    }
}

fn is_modbus(k: BusKindName) -> bool {
    matches!(
        k,
        BusKindName::ModbusTcp | BusKindName::ModbusRtu | BusKindName::ModbusRtuOverTcp
    )
}

/// One profile point (`k`-th) as the device's point: at `<prefix>/<key>`, its topic
/// located at the `topic_prefix`, with the override merged in; with `json` (the device
/// has a `json_topic`) its key is its key in the device's JSON object. The one place a
/// profile point becomes a mapping point.
fn expand_point(
    pp: &PointFile,
    k: usize,
    prefix: &Spanned<String>,
    ov: Option<&PointOverrideFile>,
    json: bool,
) -> (PointFile, Expanded) {
    let key = &pp.topic;
    let mut p = pp.clone();
    p.topic = Spanned::at(format!("{}/{}", prefix.value, key.value), at(prefix));
    // The profile's key is the point's key in its device's JSON object too (#23), also
    // when an override moves its topic.
    if json {
        p.key = Some(key.clone());
    }
    let mut e = Expanded {
        index: k,
        key: key.value.clone(),
        key_at: at(key),
        topic_at: at(prefix),
        topic_overridden: false,
        overridden: Vec::new(),
    };
    if let Some(o) = ov {
        if o.has_topic {
            p.topic = o.point.topic.clone();
            e.topic_at = at(&o.point.topic);
            e.topic_overridden = true;
        }
        merge(&mut p, &o.point, &mut e.overridden);
    }
    (p, e)
}

/// Give the device the profile's unit id, read limits and Home Assistant manufacturer and
/// model where it has none of its own; returns the keys given.
fn inject_device_keys(d: &mut DeviceFile, pf: &ProfileFile) -> Vec<(&'static str, (u64, u64))> {
    let m = &pf.profile;
    let mut given = Vec::new();
    let mut give =
        |key: &'static str, ours: &mut Option<Spanned<i64>>, theirs: &Option<Spanned<i64>>| {
            if let (None, Some(v)) = (&ours, theirs) {
                *ours = Some(v.clone());
                given.push((key, at(v)));
            }
        };
    give("unit", &mut d.unit, &m.unit);
    give(
        "max_read_registers",
        &mut d.max_read_registers,
        &m.max_read_registers,
    );
    give("max_read_bits", &mut d.max_read_bits, &m.max_read_bits);
    give("max_gap", &mut d.max_gap, &m.max_gap);
    let ha = d.homeassistant.get_or_insert_with(Default::default);
    let pha = m.homeassistant.as_ref();
    let manufacturer = pha
        .and_then(|h| h.manufacturer.as_ref())
        .unwrap_or(&m.manufacturer);
    let model = pha.and_then(|h| h.model.as_ref()).unwrap_or(&m.model);
    if ha.manufacturer.is_none() {
        ha.manufacturer = Some(manufacturer.clone());
        given.push(("homeassistant.manufacturer", at(manufacturer)));
    }
    if ha.model.is_none() {
        ha.model = Some(model.clone());
        given.push(("homeassistant.model", at(model)));
    }
    given
}

/// Copy every key `$name` the override `$o` gives onto `$p`, noting it in `$out`.
macro_rules! point_keys {
    ($($f:ident: $name:literal),* $(,)?) => {
        /// Every point key an override can give, but `topic` and `homeassistant` (merged
        /// on their own).
        #[cfg(test)]
        const MERGED_KEYS: &[&str] = &[$($name),*];

        /// The keys of `o` over those of `p`.
        fn merge_keys(p: &mut PointFile, o: &PointFile, out: &mut Vec<String>) {
            $(if o.$f.is_some() {
                p.$f = o.$f.clone();
                out.push($name.to_string());
            })*
        }
    };
}

point_keys! {
    table: "table", address: "address", pin: "pin", mode: "mode", pull: "pull",
    active_low: "active_low", debounce: "debounce", initial: "initial",
    on_shutdown: "on_shutdown", pulse: "pulse", ty: "type", length: "length",
    word_order: "word_order", bit: "bit", scale: "scale", offset: "offset",
    precision: "precision", unit: "unit", retain: "retain", qos: "qos", payload: "payload",
    publish: "publish", deadband: "deadband", heartbeat: "heartbeat", writable: "writable",
    min: "min", max: "max", values: "values", field: "field", command: "command",
    params: "params", ack: "ack", ack_timeout: "ack_timeout", poll_interval: "poll_interval",
    write_address: "write_address", write_only: "write_only", rewrite_every: "rewrite_every",
    scale_register: "scale_register", key: "key",
}

/// An override over a profile point: each key it gives replaces the profile's;
/// `homeassistant:` key by key.
fn merge(p: &mut PointFile, o: &PointFile, out: &mut Vec<String>) {
    merge_keys(p, o, out);
    let Some(oha) = &o.homeassistant else { return };
    let ha = p.homeassistant.get_or_insert_with(Default::default);
    macro_rules! ha_keys {
        ($($f:ident),*) => {
            $(if oha.$f.is_some() {
                ha.$f = oha.$f.clone();
                out.push(concat!("homeassistant.", stringify!($f)).to_string());
            })*
        };
    }
    ha_keys!(
        name,
        component,
        device_class,
        state_class,
        icon,
        entity_category,
        enabled_by_default,
        expire_after,
        hidden
    );
}

/// Move every diagnostic about what a profile gave a device to where it is written.
pub(super) fn remap(diags: &mut [Diagnostic], uses: &[ProfileUse]) {
    for d in diags.iter_mut() {
        let file = d.file.clone();
        for u in uses.iter().filter(|u| u.file == file) {
            if u.remap(d) {
                break;
            }
        }
    }
}

/// `file:line:column`.
fn place(file: &Path, (l, c): (u64, u64)) -> String {
    format!("{}:{l}:{c}", file.display())
}

impl ProfileUse {
    /// Move `d` if it is about this device's expanded points or the keys the profile
    /// gave it; whether it was.
    fn remap(&self, d: &mut Diagnostic) -> bool {
        let Some(rest) = d
            .path
            .strip_prefix(&self.device)
            .filter(|r| r.is_empty() || r.starts_with('.'))
        else {
            return false;
        };
        if let Some(points) = rest.strip_prefix(".points[") {
            let Some((j, rest)) = points.split_once(']') else {
                return false;
            };
            let Ok(j) = j.parse::<usize>() else {
                return false;
            };
            let rest = rest.to_string();
            match self.points.get(j) {
                Some(e) => self.remap_point(d, e, &rest),
                None => {
                    d.path = format!("{}.points[{}]{rest}", self.device, j - self.points.len());
                }
            }
            return true;
        }
        let key = rest.strip_prefix('.').unwrap_or("");
        let Some((k, from)) = self
            .injected
            .iter()
            .find(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
        else {
            return false;
        };
        d.line = self.profile_at.0;
        d.column = self.profile_at.1;
        d.message = format!(
            "{} (the `{k}` of profile `{}`, {}; set the device's own to change it)",
            d.message,
            self.profile,
            place(&self.profile_path, *from)
        );
        true
    }

    /// Move a diagnostic about expanded point `e`; `rest` is its path below the point
    /// (`.address`, or empty).
    fn remap_point(&self, d: &mut Diagnostic, e: &Expanded, rest: &str) {
        let field = rest.strip_prefix('.').unwrap_or(rest);
        let first = field.split(['.', '[']).next().unwrap_or("");
        let overridden = e
            .overridden
            .iter()
            .any(|o| field == o || field.starts_with(&format!("{o}.")));
        if first == "topic" && !e.topic_overridden {
            d.path = format!("{}.topic_prefix", self.device);
            d.message = format!(
                "{} (point `{}` of profile `{}`)",
                d.message, e.key, self.profile
            );
        } else if overridden || first == "topic" {
            d.path = format!("{}.overrides.{}{rest}", self.device, e.key);
            d.message = format!(
                "{} (overriding point `{}` of profile `{}`, {})",
                d.message,
                e.key,
                self.profile,
                place(&self.profile_path, e.key_at)
            );
        } else {
            // Where a check had no location of its own it used the topic's, which is the
            // user's: the point's key stands for it in the profile.
            if (d.line, d.column) == e.topic_at {
                (d.line, d.column) = e.key_at;
            }
            d.message = format!(
                "{} (in profile `{}`, used by device `{}` at {})",
                d.message,
                self.profile,
                self.device_id,
                place(&self.file, self.profile_at)
            );
            d.file = self.profile_path.clone();
            d.path = format!("points[{}]{rest}", e.index);
        }
    }
}

/// Check a profile on its own, as a Modbus TCP device's (its shipped copy, or the one in
/// `dir`): every problem and warning, in the profile's file.
pub fn check_profile(name: &str, dir: Option<&Path>) -> Vec<Diagnostic> {
    let base = Path::new("/profile-check");
    let profiles = dir.map_or(String::new(), |d| {
        format!("profiles: {:?}\n", d.display().to_string())
    });
    let gateway = format!("id: p\nmappings: m.yaml\n{profiles}");
    let mapping = format!(
        "buses: [{{ id: b, kind: modbus_tcp, host: 127.0.0.1 }}]\n\
         devices: [{{ id: d, bus: b, profile: {name}, topic_prefix: p }}]\n"
    );
    match super::check_sources(&base.join("gateway.yaml"), &gateway, |_, _| {
        vec![(base.join("m.yaml"), mapping)]
    }) {
        Ok(c) => c.warnings,
        Err(d) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of a [`PointFile`]'s keys, as serde knows them.
    fn point_file_keys() -> &'static [&'static str] {
        struct Fields(Option<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("fields only"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = Some(fields);
                Err(serde::de::Error::custom("fields only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut f = Fields(None);
        let _ = <PointFile as serde::Deserialize>::deserialize(&mut f);
        f.0.unwrap_or_default()
    }

    /// A point key added later is one an override can give too (or this fails: add it to
    /// `point_keys!`).
    #[test]
    fn overrides_merge_every_point_key() {
        let keys = point_file_keys();
        assert!(keys.len() > 30, "{keys:?}");
        for k in keys {
            assert!(
                MERGED_KEYS.contains(k) || ["topic", "homeassistant"].contains(k),
                "an override cannot give `{k}`: add it to point_keys!"
            );
        }
    }

    #[test]
    fn serial_settings_read_as_usual() {
        assert_eq!(serial_text((9600, ParityName::Even, 8, 1)), "9600 8E1");
        assert_eq!(serial_text((19200, ParityName::None, 8, 2)), "19200 8N2");
    }
}
