//! A device profile as written (`mappings/profiles/<name>.yaml`, shipped in the binary, or
//! a user's own in a `profiles:` directory): what the device is, the vendor document the
//! file was written from, the device's usual settings, and its points. Every `///`
//! comment is the user reference for that key.
//!
//! A profile point is a mapping point ([`PointFile`]) with `key` instead of `topic`; an
//! entry of a device's `overrides:` is a mapping point whose keys are all optional. Both
//! are read into a [`PointFile`] through [`Renamed`], so that every point key (and every
//! key added to points later) is a profile key too, with its line and column.

use std::fmt;

use serde::{
    de::{self, value::StrDeserializer, DeserializeSeed, IntoDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{ParityName, PointFile, Spanned};

/// A profile file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// What the profile describes: name, device, the vendor document it was written
    /// from, the device's usual settings.
    pub profile: ProfileMetaFile,
    /// The device's points: each takes every key of a mapping point except `topic`, and
    /// `key` instead (a device using the profile publishes it at `<topic_prefix>/<key>`).
    #[serde(default)]
    pub points: Vec<ProfilePointFile>,
}

/// The kind of device a profile describes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKindName {
    /// An electricity meter.
    EnergyMeter,
    /// A PV (or hybrid) inverter.
    Inverter,
    /// A battery or its management system.
    Battery,
    /// A heat pump.
    HeatPump,
    /// An EV charger (wallbox).
    EvCharger,
    /// A sensor (temperature, humidity, ...).
    Sensor,
    /// A relay board (outputs and inputs).
    RelayBoard,
    /// Anything else.
    Other,
}

impl ProfileKindName {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            ProfileKindName::EnergyMeter => "energy_meter",
            ProfileKindName::Inverter => "inverter",
            ProfileKindName::Battery => "battery",
            ProfileKindName::HeatPump => "heat_pump",
            ProfileKindName::EvCharger => "ev_charger",
            ProfileKindName::Sensor => "sensor",
            ProfileKindName::RelayBoard => "relay_board",
            ProfileKindName::Other => "other",
        }
    }
}

/// `profile:` of a profile file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileMetaFile {
    /// The profile's name, as a device's `profile:` names it: `<manufacturer>-<model>` in
    /// lower case (`eastron-sdm630`; a no-name device by its model, `xy-md02`): letters,
    /// digits and `-`. It must be the file's name without `.yaml`.
    pub name: Spanned<String>,
    /// The device's manufacturer (`Eastron`).
    pub manufacturer: Spanned<String>,
    /// The device's model, as the manufacturer writes it (`SDM630-Modbus V2`).
    pub model: Spanned<String>,
    /// `energy_meter`, `inverter`, `battery`, `heat_pump`, `ev_charger`, `sensor`,
    /// `relay_board` or `other`.
    pub kind: Spanned<ProfileKindName>,
    /// The vendor's own document the register table was taken from. Required in a
    /// shipped profile; recommended in your own.
    #[serde(default)]
    pub document: Option<ProfileDocumentFile>,
    /// The device's usual serial settings (its factory defaults). A suggestion: a device
    /// on a `modbus_rtu` bus with other settings only makes `check` warn.
    #[serde(default)]
    pub serial: Option<ProfileSerialFile>,
    /// The device's usual Modbus unit id (its factory default), 0–255: the unit of a
    /// device using the profile that sets none of its own.
    #[serde(default)]
    pub unit: Option<Spanned<i64>>,
    /// Most registers one read may ask for, as the device's manual states (1–125): a
    /// device using the profile reads no more at once unless it sets its own
    /// `max_read_registers`.
    #[serde(default)]
    pub max_read_registers: Option<Spanned<i64>>,
    /// Most coils or discrete inputs one read may ask for (1–2000), as `max_read_registers`.
    #[serde(default)]
    pub max_read_bits: Option<Spanned<i64>>,
    /// Largest gap the read planner may bridge (0–124), for devices that refuse reads of
    /// registers they do not have; a device's own `max_gap` wins.
    #[serde(default)]
    pub max_gap: Option<Spanned<i64>>,
    /// How a device using the profile shows in Home Assistant, unless its own
    /// `homeassistant:` says otherwise. Default: `manufacturer` and `model` above.
    #[serde(default)]
    pub homeassistant: Option<ProfileHaFile>,
}

/// `profile.document:` the vendor document a profile was written from.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileDocumentFile {
    /// Its title, as on the document (`SDM630 Modbus Protocol`).
    pub title: Spanned<String>,
    /// Its version (`V1.8`); a document without one gives `date`.
    #[serde(default)]
    pub version: Option<Spanned<String>>,
    /// Its date, `YYYY-MM-DD` (or `YYYY-MM` when the document gives only the month), for a
    /// document without a version (or as well).
    #[serde(default)]
    pub date: Option<Spanned<String>>,
    /// Where the manufacturer publishes it (`https://...`).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
}

/// `profile.serial:` the device's usual serial settings.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSerialFile {
    /// Baud rate. Default 9600.
    #[serde(default)]
    pub baud: Option<Spanned<i64>>,
    /// `none` (default), `even` or `odd`.
    #[serde(default)]
    pub parity: Option<Spanned<ParityName>>,
    /// 7 or 8. Default 8.
    #[serde(default)]
    pub data_bits: Option<Spanned<i64>>,
    /// 1 or 2. Default 1.
    #[serde(default)]
    pub stop_bits: Option<Spanned<i64>>,
}

/// `profile.homeassistant:` the Home Assistant device of a device using the profile.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileHaFile {
    /// Manufacturer shown in Home Assistant. Default: `profile.manufacturer`.
    #[serde(default)]
    pub manufacturer: Option<Spanned<String>>,
    /// Model shown in Home Assistant. Default: `profile.model`.
    #[serde(default)]
    pub model: Option<Spanned<String>>,
}

/// A profile point: every mapping point key, with `key` (lower snake case, unique in the
/// profile: `voltage_l1`) instead of `topic`. In the [`PointFile`] the key is held as its
/// `topic`, until a device puts its `topic_prefix` in front.
#[derive(Debug)]
pub struct ProfilePointFile(pub PointFile);

impl<'de> Deserialize<'de> for ProfilePointFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PointFile::deserialize(Renamed {
            inner: d,
            mode: Mode::Profile,
        })
        .map(ProfilePointFile)
    }
}

/// One entry of a device's `overrides:`: any mapping point key, all optional (`topic`
/// too: the point is then published there instead of at `<topic_prefix>/<key>`).
#[derive(Debug)]
pub struct PointOverrideFile {
    /// The keys given (`topic` is empty, at line 0, when not given).
    pub point: PointFile,
    /// Whether `topic` was given.
    pub has_topic: bool,
}

impl<'de> Deserialize<'de> for PointOverrideFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let point = PointFile::deserialize(Renamed {
            inner: d,
            mode: Mode::Override,
        })?;
        Ok(PointOverrideFile {
            has_topic: point.topic.line() != 0,
            point,
        })
    }
}

/// A device's `overrides:`: point key → the keys that change, in file order, each key
/// with where it is written.
#[derive(Debug, Default)]
pub struct OverridesFile(pub Vec<(Spanned<String>, PointOverrideFile)>);

impl<'de> Deserialize<'de> for OverridesFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OverridesFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of point keys to point keys (`power: {deadband: 5}`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OverridesFile, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    out.push((k, map.next_value()?));
                }
                Ok(OverridesFile(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// How [`Renamed`] treats `topic` and `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A profile point: `key` is read as `topic`; `topic` is refused.
    Profile,
    /// An override: `topic` may be missing (read as an empty one at line 0).
    Override,
}

/// A deserializer of a [`PointFile`] that renames the keys of the map it reads, passing
/// every value on untouched (so each keeps its line and column).
struct Renamed<D> {
    inner: D,
    mode: Mode,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Renamed<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let mode = self.mode;
        self.inner.deserialize_struct(
            name,
            fields,
            RenamedVisitor {
                inner: visitor,
                mode,
            },
        )
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let mode = self.mode;
        self.inner.deserialize_any(RenamedVisitor {
            inner: visitor,
            mode,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// The visitor of a [`Renamed`] struct: hands the struct's visitor a renaming map.
struct RenamedVisitor<V> {
    inner: V,
    mode: Mode,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for RenamedVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(RenamedMap {
            map,
            mode: self.mode,
            topic_seen: false,
            ended: false,
            missing_topic: false,
        })
    }
}

/// The renaming map.
struct RenamedMap<A> {
    map: A,
    mode: Mode,
    topic_seen: bool,
    /// The map read to its end.
    ended: bool,
    /// The next value is the empty `topic` an override without one gets.
    missing_topic: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for RenamedMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.ended {
            return Ok(None);
        }
        let Some(key) = self.map.next_key::<String>()? else {
            self.ended = true;
            if self.mode == Mode::Override && !self.topic_seen {
                self.missing_topic = true;
                return seed.deserialize(key_name("topic")).map(Some);
            }
            return Ok(None);
        };
        let renamed = match (self.mode, key.as_str()) {
            (Mode::Profile, "key") => "topic",
            (Mode::Profile, "topic") => {
                return Err(de::Error::custom(
                    "a profile point has `key`, not `topic` (a device using the profile \
                     publishes it at `<topic_prefix>/<key>`)",
                ))
            }
            (_, k) => k,
        };
        if renamed == "topic" {
            self.topic_seen = true;
        }
        seed.deserialize(key_name(renamed)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        if std::mem::take(&mut self.missing_topic) {
            return seed.deserialize(Missing(std::marker::PhantomData));
        }
        self.map.next_value_seed(seed)
    }
}

/// A key name as a deserializer.
fn key_name<E: de::Error>(name: &str) -> StrDeserializer<'_, E> {
    name.into_deserializer()
}

/// The value of a `topic` an override does not give: an empty text at no location.
struct Missing<E>(std::marker::PhantomData<E>);

impl<'de, E: de::Error> Deserializer<'de> for Missing<E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_str("")
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(key_name::<E>(""))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}
