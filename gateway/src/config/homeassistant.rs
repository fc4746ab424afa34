//! Home Assistant: the gateway file's `homeassistant:` section and the `homeassistant:`
//! overrides of a device and of a point in a mapping file (their structs, whose `///`
//! comments are the user reference, and their validation).

use serde::Deserialize;

use super::{Cx, HumanDuration, Spanned, Validator};
use crate::{
    model::{Component, DeviceHa, EntityCategory, HomeAssistant, Point, PointHa, StateClass},
    topics::check_topic,
};

/// `homeassistant:` in the gateway file: MQTT discovery, so that every point appears in
/// Home Assistant as an entity without any YAML there.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantFile {
    /// Publish discovery configs on the embedded broker. Default `true` (with the embedded
    /// broker); `false` turns Home Assistant discovery off.
    #[serde(default)]
    pub enabled: Option<Spanned<bool>>,
    /// The discovery prefix Home Assistant's MQTT integration listens on. Default
    /// `homeassistant`.
    #[serde(default)]
    pub discovery_prefix: Option<Spanned<String>>,
    /// Publish the discovery configs on the upstream broker too (a Home Assistant that
    /// connects to the cloud broker): their state and command topics carry
    /// `mqtt.upstream.prefix`. Default `false`.
    #[serde(default)]
    pub upstream: Option<Spanned<bool>>,
}

/// The component (entity platform) of a point in Home Assistant.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentName {
    /// A value to read (numbers, text, or one of several names).
    Sensor,
    /// On or off, read-only.
    BinarySensor,
    /// On or off, writable.
    Switch,
    /// A writable number.
    Number,
    /// One of several names, writable.
    Select,
    /// A momentary action (a pulse output).
    Button,
    /// Writable text.
    Text,
}

/// The entity category of a point in Home Assistant.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntityCategoryName {
    /// A setting of the device.
    Config,
    /// Shows the device's health, not its purpose.
    Diagnostic,
}

/// The state class of a sensor (long-term statistics in Home Assistant).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateClassName {
    /// A value at a moment (a temperature).
    Measurement,
    /// A total that may go up and down (a net energy meter).
    Total,
    /// A total that only grows, except when it resets (an energy meter).
    TotalIncreasing,
}

/// `homeassistant:` of a device: how it shows in Home Assistant.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceHaFile {
    /// The device's name in Home Assistant. Default: the device id.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Its manufacturer, shown in Home Assistant.
    #[serde(default)]
    pub manufacturer: Option<Spanned<String>>,
    /// Its model, shown in Home Assistant.
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// The area Home Assistant suggests for it (`Kitchen`).
    #[serde(default)]
    pub suggested_area: Option<Spanned<String>>,
}

/// `homeassistant:` of a point: overrides of what discovery derives from the point.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointHaFile {
    /// The entity's name (shown after the device's name). Default: the last level of the
    /// topic, `_` and `-` as spaces, first letter capitalised.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// `sensor`, `binary_sensor`, `switch`, `number`, `select`, `button` or `text`.
    /// Default: from the point (type, writable, `values`, `pulse`).
    #[serde(default)]
    pub component: Option<Spanned<ComponentName>>,
    /// Home Assistant's device class (`temperature`, `power`, `door`, ...). Default: from
    /// the unit (°C → temperature, W → power, kWh → energy, ...).
    #[serde(default)]
    pub device_class: Option<Spanned<String>>,
    /// `measurement`, `total` or `total_increasing` (sensors). Default: `measurement`
    /// for numbers, `total_increasing` for energy.
    #[serde(default)]
    pub state_class: Option<Spanned<StateClassName>>,
    /// An icon, `mdi:<name>` (`mdi:water-pump`).
    #[serde(default)]
    pub icon: Option<Spanned<String>>,
    /// `config` or `diagnostic`. Default: none (a primary entity).
    #[serde(default)]
    pub entity_category: Option<Spanned<EntityCategoryName>>,
    /// Whether Home Assistant enables the entity when it first sees it. Default `true`.
    #[serde(default)]
    pub enabled_by_default: Option<Spanned<bool>>,
    /// Home Assistant marks the value unavailable when no new value came for this long
    /// (sensors and binary sensors); for points with `publish: every_poll` or a
    /// `heartbeat`.
    #[serde(default)]
    pub expire_after: Option<Spanned<HumanDuration>>,
    /// Publish no discovery config for this point (it stays on MQTT). Default `false`.
    #[serde(default)]
    pub hidden: Option<Spanned<bool>>,
}

/// The default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

impl Validator {
    /// The gateway file's `homeassistant:`; `None` when discovery is off (no embedded
    /// broker, or `enabled: false`).
    pub(super) fn homeassistant(
        &mut self,
        cx: &Cx,
        f: Option<&HomeAssistantFile>,
        embedded: bool,
        upstream: bool,
    ) -> Option<HomeAssistant> {
        let cx = cx.at("homeassistant");
        let enabled = f.and_then(|f| f.enabled.as_ref());
        let prefix = match f.and_then(|f| f.discovery_prefix.as_ref()) {
            Some(p) => {
                let pcx = cx.at("discovery_prefix");
                match check_topic(&p.value) {
                    Err(e) => self.error(&pcx, p, e, None),
                    Ok(Some(w)) => self.warn(&pcx, p, w),
                    Ok(None) => {}
                }
                if p.value.ends_with('/') {
                    self.error(
                        &pcx,
                        p,
                        "the discovery prefix ends with `/`",
                        Some(format!("write `{}`", p.value.trim_end_matches('/'))),
                    );
                }
                p.value.clone()
            }
            None => DEFAULT_DISCOVERY_PREFIX.to_string(),
        };
        let up = f.and_then(|f| f.upstream.as_ref());
        if let (Some(u), false) = (up, upstream) {
            if u.value {
                self.error(
                    &cx.at("upstream"),
                    u,
                    "discovery on the upstream broker needs `mqtt.upstream`",
                    Some("add `mqtt.upstream`, or remove `homeassistant.upstream`".into()),
                );
            }
        }
        let up = up.is_some_and(|u| u.value) && upstream;
        match enabled {
            Some(e) if !e.value => None,
            Some(e) if !embedded && !up => {
                self.warn(
                    &cx.at("enabled"),
                    e,
                    "Home Assistant discovery goes to the embedded broker, which is off, \
                     and not upstream (`homeassistant.upstream: true`): no discovery",
                );
                None
            }
            _ if !embedded && !up => None,
            _ => Some(HomeAssistant {
                discovery_prefix: prefix,
                embedded,
                upstream: up,
            }),
        }
    }

    /// A device's `homeassistant:`.
    pub(super) fn device_ha(&mut self, cx: &Cx, f: Option<&DeviceHaFile>) -> DeviceHa {
        let Some(f) = f else {
            return DeviceHa::default();
        };
        let cx = cx.at("homeassistant");
        let text = |v: &mut Validator, key: &str, s: &Option<Spanned<String>>| {
            let s = s.as_ref()?;
            if s.value.trim().is_empty() {
                v.error(&cx.at(key), s, format!("`{key}` is empty"), None);
                return None;
            }
            Some(s.value.clone())
        };
        DeviceHa {
            name: text(self, "name", &f.name),
            manufacturer: text(self, "manufacturer", &f.manufacturer),
            model: text(self, "model", &f.model),
            suggested_area: text(self, "suggested_area", &f.suggested_area),
        }
    }

    /// A point's `homeassistant:`, checked against the point it belongs to.
    pub(super) fn point_ha(&mut self, cx: &Cx, f: Option<&PointHaFile>, point: &Point) -> PointHa {
        let Some(f) = f else {
            return PointHa::default();
        };
        let cx = cx.at("homeassistant");
        let mut ha = PointHa {
            name: f.name.as_ref().map(|n| n.value.clone()),
            device_class: f.device_class.as_ref().map(|d| d.value.clone()),
            hidden: f.hidden.as_ref().is_some_and(|h| h.value),
            enabled_by_default: f.enabled_by_default.as_ref().map(|e| e.value),
            expire_after: f.expire_after.as_ref().map(|e| e.value.0),
            ..PointHa::default()
        };
        if let Some(n) = &f.name {
            if n.value.trim().is_empty() {
                self.error(&cx.at("name"), n, "`name` is empty", None);
            }
        }
        if let Some(d) = &f.device_class {
            let ok = !d.value.is_empty()
                && d.value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                self.error(
                    &cx.at("device_class"),
                    d,
                    format!("`{}` is not a Home Assistant device class", d.value),
                    Some("device classes are lower case with `_`, e.g. `temperature`, `power`, `door`".into()),
                );
            }
        }
        if let Some(i) = &f.icon {
            match i.value.strip_prefix("mdi:") {
                Some(name) if !name.is_empty() => ha.icon = Some(i.value.clone()),
                _ => self.error(
                    &cx.at("icon"),
                    i,
                    format!("icon `{}` is not an `mdi:` icon", i.value),
                    Some(
                        "write e.g. `mdi:water-pump` (the names at pictogrammers.com/library/mdi)"
                            .into(),
                    ),
                ),
            }
        }
        ha.entity_category = f.entity_category.as_ref().map(|e| match e.value {
            EntityCategoryName::Config => EntityCategory::Config,
            EntityCategoryName::Diagnostic => EntityCategory::Diagnostic,
        });
        ha.state_class = f.state_class.as_ref().map(|s| match s.value {
            StateClassName::Measurement => StateClass::Measurement,
            StateClassName::Total => StateClass::Total,
            StateClassName::TotalIncreasing => StateClass::TotalIncreasing,
        });
        if let Some(c) = &f.component {
            let component = component_of(c.value);
            if let Err(why) = component.fits(point) {
                self.error(
                    &cx.at("component"),
                    c,
                    format!(
                        "component `{}` does not fit this point: {why}",
                        component.name()
                    ),
                    None,
                );
            } else {
                ha.component = Some(component);
            }
        }
        let sensor_like = matches!(
            ha.component.unwrap_or_else(|| Component::derive(point)),
            Component::Sensor | Component::BinarySensor
        );
        if let Some(s) = &f.state_class {
            if !matches!(
                ha.component.unwrap_or_else(|| Component::derive(point)),
                Component::Sensor
            ) {
                self.error(
                    &cx.at("state_class"),
                    s,
                    "`state_class` is for sensors",
                    None,
                );
            }
        }
        if let Some(e) = &f.expire_after {
            if !sensor_like {
                self.error(
                    &cx.at("expire_after"),
                    e,
                    "`expire_after` is for sensors and binary sensors",
                    None,
                );
            } else if e.value.0.as_secs() == 0 {
                self.error(
                    &cx.at("expire_after"),
                    e,
                    "`expire_after` must be at least 1s",
                    None,
                );
            }
        }
        ha
    }
}

fn component_of(c: ComponentName) -> Component {
    match c {
        ComponentName::Sensor => Component::Sensor,
        ComponentName::BinarySensor => Component::BinarySensor,
        ComponentName::Switch => Component::Switch,
        ComponentName::Number => Component::Number,
        ComponentName::Select => Component::Select,
        ComponentName::Button => Component::Button,
        ComponentName::Text => Component::Text,
    }
}
