//! Home Assistant MQTT discovery: one retained config per point on
//! `<prefix>/<component>/<unique_id>/config`, derived from the mapping (and its
//! `homeassistant:` overrides), and the gateway itself as a device with diagnostic
//! entities.
//!
//! - Components by point: read-only numbers and text → `sensor` (an `enum` sensor for
//!   more than two named values), read-only on/off → `binary_sensor`, writable on/off →
//!   `switch`, writable numbers → `number`, writable named values → `select`, a pulse
//!   output → `button`, writable text → `text`.
//! - `unique_id` is `fieldlink_<gateway>_<device>_<topic>`: stable across restarts,
//!   reloads and renamed files (never a file name or an address).
//! - Every entity is available only while the gateway and its device are
//!   (`availability_mode: all` over `<base>/status` and `<base>/<device>/availability`).
//!
//! The embedded side (`mqtt::embedded`) republishes the configs and then the current
//! states a moment after Home Assistant announces itself on `<prefix>/status`; a reload
//! publishes only what changed and clears what is gone.

mod classes;
mod expire;

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use crate::{
    commands,
    model::{
        Component, Device, EntityCategory, GpioMode, Model, Payload, Point, Source, StateClass,
        ValueType,
    },
    publish::Outgoing,
    topics::Topics,
};

/// The origin block: who made the config (and where it is from, when the package says).
fn origin() -> Value {
    let url = env!("CARGO_PKG_REPOSITORY");
    let mut o = json!({"name": "fieldlink", "sw": env!("CARGO_PKG_VERSION")});
    if let (false, Some(m)) = (url.is_empty(), o.as_object_mut()) {
        m.insert("url".into(), json!(url));
    }
    o
}

impl Component {
    /// Its name in Home Assistant (the discovery topic's component level).
    pub fn name(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Switch => "switch",
            Component::Number => "number",
            Component::Select => "select",
            Component::Button => "button",
            Component::Text => "text",
        }
    }

    /// The component a point gets without an override.
    pub fn derive(p: &Point) -> Component {
        let choice = p.value_map.len() > 2 || (p.value_map.len() == 2 && on_off(p).is_none());
        if pulse(p) && p.writable {
            Component::Button
        } else if choice {
            if p.writable {
                Component::Select
            } else {
                Component::Sensor
            }
        } else if on_off(p).is_some() {
            if p.writable {
                Component::Switch
            } else {
                Component::BinarySensor
            }
        } else if matches!(p.ty, ValueType::String { .. }) {
            if p.writable {
                Component::Text
            } else {
                Component::Sensor
            }
        } else if p.writable {
            Component::Number
        } else {
            Component::Sensor
        }
    }

    /// Whether the component can show point `p`; the reason when not.
    pub fn fits(self, p: &Point) -> Result<(), String> {
        let writable = || {
            if p.writable {
                Ok(())
            } else {
                Err("it is not writable (`writable: true`)".to_string())
            }
        };
        match self {
            Component::Sensor => Ok(()),
            Component::BinarySensor => on_off(p)
                .map(|_| ())
                .ok_or_else(|| "it is not on/off (a bool, or two values named on and off)".into()),
            Component::Switch => {
                writable()?;
                Component::BinarySensor.fits(p)
            }
            Component::Number => {
                writable()?;
                if p.ty.is_numeric() && p.value_map.is_empty() {
                    Ok(())
                } else {
                    Err("it is not a number without named values".into())
                }
            }
            Component::Select => {
                writable()?;
                if p.value_map.len() >= 2 {
                    Ok(())
                } else {
                    Err("it has fewer than two named values (`values:`)".into())
                }
            }
            Component::Button => writable(),
            Component::Text => {
                writable()?;
                if matches!(p.ty, ValueType::String { .. }) {
                    Ok(())
                } else {
                    Err("it is not a `string`".into())
                }
            }
        }
    }
}

/// A GPIO output with `pulse`.
fn pulse(p: &Point) -> bool {
    matches!(
        &p.source,
        Source::Gpio(g) if matches!(g.mode, GpioMode::Output { pulse: Some(_), .. })
    )
}

/// The published texts of ON and OFF when the point is on/off: a bool (`true`/`false`,
/// or its names), or two named values that read as on and off.
fn on_off(p: &Point) -> Option<(String, String)> {
    let name = |v: f64| {
        p.value_map
            .iter()
            .find(|(_, x)| (*x - v).abs() < 1e-9)
            .map(|(n, _)| n.clone())
    };
    match p.value_map.len() {
        0 if p.ty == ValueType::Bool => Some(("true".into(), "false".into())),
        0 => None,
        2 => {
            let (on, off) = (name(1.0)?, name(0.0)?);
            let reads_on_off = commands::parse_bool(&on) == Some(true)
                && commands::parse_bool(&off) == Some(false);
            (reads_on_off || p.ty == ValueType::Bool).then_some((on, off))
        }
        _ => None,
    }
}

/// One entity's discovery message: its config topic and payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `<prefix>/<component>/<unique_id>/config`.
    pub topic: String,
    /// The component.
    pub component: Component,
    /// The config.
    pub payload: Value,
}

impl Config {
    /// As a retained QoS 1 message.
    pub fn message(&self) -> Outgoing {
        Outgoing {
            topic: self.topic.clone(),
            payload: self.payload.to_string().into_bytes(),
            retain: true,
            qos: 1,
            slot: None,
        }
    }
}

/// `s` with every character but ASCII letters, digits, `_` and `-` as `_`.
fn id_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `s` as an entity id's object part: lower case letters, digits and single `_`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// The default entity name: the topic's last level, `_`/`-` as spaces, first letter
/// capitalised.
fn default_name(topic: &str) -> String {
    let last = topic.rsplit('/').find(|l| !l.is_empty()).unwrap_or(topic);
    let words = last.replace(['_', '-'], " ");
    let mut c = words.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => words,
    }
}

/// FNV-1a of `s`, to tell apart ids that differ only in characters an id cannot hold.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Every discovery config of `model` for the embedded broker (none when discovery is off
/// there).
pub fn configs(model: &Model) -> Vec<Config> {
    iter(model).collect()
}

/// [`configs`] one at a time: the gateway's own, then every point's (10 000 configs at
/// once would be ~30 MB of JSON trees). The configs for the embedded broker (none when
/// discovery is not on there).
pub fn iter(model: &Model) -> impl Iterator<Item = Config> + Send + '_ {
    let on = model.homeassistant.as_ref().is_some_and(|h| h.embedded);
    iter_with(model, false).filter(move |_| on)
}

/// The configs for the upstream broker (`homeassistant.upstream`): the same entities
/// with the upstream prefix in front of every state, command and availability topic (the
/// config topics themselves are not prefixed: Home Assistant listens on its own prefix).
pub fn iter_upstream(model: &Model) -> impl Iterator<Item = Config> + Send + '_ {
    let on = model.homeassistant.as_ref().is_some_and(|h| h.upstream);
    iter_with(model, true).filter(move |_| on)
}

/// The configs with every topic in them as the embedded broker has it, or (`upstream`)
/// as the upstream broker has it.
fn iter_with(model: &Model, upstream: bool) -> impl Iterator<Item = Config> + Send + '_ {
    let ha = model.homeassistant.as_ref();
    let topics = Topics::of(model);
    let gateway = ha
        .map(|_| gateway_configs(model, &topics, upstream))
        .unwrap_or_default()
        .into_iter();
    let mut ids: HashSet<String> = HashSet::new();
    let points = ha
        .into_iter()
        .flat_map(move |ha| {
            model.devices().flat_map(move |d| {
                d.points
                    .iter()
                    .filter(|p| !p.ha().hidden)
                    .map(move |p| (ha, d, p))
            })
        })
        .map(move |(_, d, p)| {
            let mut uid = format!(
                "fieldlink_{}_{}_{}",
                id_safe(&model.gateway_id),
                id_safe(&d.id),
                id_safe(&p.topic)
            );
            if !ids.insert(uid.clone()) {
                uid = format!("{uid}_{:08x}", fnv(&p.topic));
                ids.insert(uid.clone());
            }
            point_config(model, &topics, d, p, uid, upstream)
        });
    gateway.chain(points)
}

/// How many entities of each component `model` yields (for `check`).
pub fn counts(model: &Model) -> BTreeMap<&'static str, usize> {
    let mut n = BTreeMap::new();
    for c in iter_with(model, false) {
        *n.entry(c.component.name()).or_default() += 1;
    }
    n
}

/// The device block of device `d`.
fn device_block(model: &Model, d: &Device) -> Value {
    let mut m = Map::new();
    m.insert(
        "identifiers".into(),
        json!([format!("fieldlink_{}_{}", model.gateway_id, d.id)]),
    );
    m.insert(
        "name".into(),
        json!(d.ha.name.clone().unwrap_or_else(|| d.id.clone())),
    );
    for (k, v) in [
        ("manufacturer", &d.ha.manufacturer),
        ("model", &d.ha.model),
        ("suggested_area", &d.ha.suggested_area),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    m.insert(
        "via_device".into(),
        json!(format!("fieldlink_{}", model.gateway_id)),
    );
    Value::Object(m)
}

/// The gateway as a device, with its status, uptime, failed polls and (with an upstream
/// broker) the upstream queue as diagnostic entities.
fn gateway_configs(model: &Model, topics: &Topics, upstream: bool) -> Vec<Config> {
    let side = |t: String| if upstream { topics.upstream(&t) } else { t };
    let gw = id_safe(&model.gateway_id);
    let device = json!({
        "identifiers": [format!("fieldlink_{}", model.gateway_id)],
        "name": format!("fieldlink {}", model.gateway_id),
        "manufacturer": "fieldlink",
        "model": "gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let diag = side(topics.diagnostics());
    let status = side(topics.status());
    let mut out = vec![(
        Component::BinarySensor,
        "status",
        json!({
            "name": "Status",
            "state_topic": status,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
        }),
    )];
    let mut sensor = |key: &'static str, name: &str, template: &str, extra: Value| {
        let mut p = json!({
            "name": name,
            "state_topic": diag,
            "value_template": template,
            "availability_topic": status,
        });
        if let (Some(m), Value::Object(e)) = (p.as_object_mut(), extra) {
            m.extend(e);
        }
        out.push((Component::Sensor, key, p));
    };
    sensor(
        "uptime",
        "Uptime",
        "{{ value_json.uptime_s }}",
        json!({"unit_of_measurement": "s", "device_class": "duration", "state_class": "measurement"}),
    );
    sensor(
        "failed_polls",
        "Failed polls",
        "{{ value_json.failed_polls }}",
        json!({"state_class": "total_increasing"}),
    );
    if model.mqtt.upstream.is_some() {
        sensor(
            "upstream_queue",
            "Upstream queue",
            "{{ value_json.upstream.queue_depth }}",
            json!({"unit_of_measurement": "messages", "state_class": "measurement"}),
        );
    }
    out.into_iter()
        .map(|(component, key, mut payload)| {
            let uid = format!("fieldlink_{gw}_{key}");
            if let Some(m) = payload.as_object_mut() {
                m.insert("unique_id".into(), json!(uid));
                m.insert(
                    "default_entity_id".into(),
                    json!(format!(
                        "{}.fieldlink_{}_{key}",
                        component.name(),
                        slug(&gw)
                    )),
                );
                m.insert("entity_category".into(), json!("diagnostic"));
                m.insert("device".into(), device.clone());
                m.insert("origin".into(), origin());
            }
            Config {
                topic: topics.ha_config(component.name(), &uid).unwrap_or_default(),
                component,
                payload,
            }
        })
        .collect()
}

/// The config of point `p` of device `d`.
fn point_config(
    model: &Model,
    topics: &Topics,
    d: &Device,
    p: &Point,
    uid: String,
    upstream: bool,
) -> Config {
    let side = |t: String| if upstream { topics.upstream(&t) } else { t };
    let component = p.ha().component.unwrap_or_else(|| Component::derive(p));
    let mut m = Map::new();
    let name = p
        .ha()
        .name
        .clone()
        .unwrap_or_else(|| default_name(&p.topic));
    m.insert("name".into(), json!(name));
    m.insert("unique_id".into(), json!(uid));
    m.insert(
        "default_entity_id".into(),
        json!(format!("{}.{}", component.name(), slug(&p.topic))),
    );
    if component != Component::Button {
        m.insert("state_topic".into(), json!(side(p.topic.clone())));
    }
    if p.payload == Payload::Json && component != Component::Button {
        let template = if p.ty == ValueType::Bool && p.value_map.is_empty() {
            "{{ value_json.value | lower }}"
        } else {
            "{{ value_json.value }}"
        };
        m.insert("value_template".into(), json!(template));
    }
    if p.writable {
        m.insert("command_topic".into(), json!(side(Topics::set(&p.topic))));
    }
    m.insert(
        "availability".into(),
        json!([
            {"topic": side(topics.status())},
            {"topic": side(topics.availability(&d.id))},
        ]),
    );
    m.insert("availability_mode".into(), json!("all"));
    component_keys(&mut m, component, p);
    overrides(&mut m, component, p);
    m.insert("device".into(), device_block(model, d));
    m.insert("origin".into(), origin());
    Config {
        topic: topics.ha_config(component.name(), &uid).unwrap_or_default(),
        component,
        payload: Value::Object(m),
    }
}

/// The keys of `component` for point `p`.
fn component_keys(m: &mut Map<String, Value>, component: Component, p: &Point) {
    let names = || -> Vec<String> { p.value_map.iter().map(|(n, _)| n.clone()).collect() };
    match component {
        Component::Sensor => {
            if p.value_map.len() >= 2 {
                m.insert("device_class".into(), json!("enum"));
                m.insert("options".into(), json!(names()));
            } else if p.ty.is_numeric() {
                let class = classes::of(p);
                if let Some(u) = &p.unit {
                    m.insert("unit_of_measurement".into(), json!(u));
                }
                if let Some(c) = class.device_class {
                    m.insert("device_class".into(), json!(c));
                }
                m.insert("state_class".into(), json!(class.state_class));
                if let Some(pr) = p.precision {
                    m.insert("suggested_display_precision".into(), json!(pr));
                }
            }
        }
        Component::BinarySensor | Component::Switch => {
            let (on, off) = on_off(p).unwrap_or_else(|| ("true".into(), "false".into()));
            m.insert("payload_on".into(), json!(on));
            m.insert("payload_off".into(), json!(off));
            if component == Component::Switch {
                m.insert("state_on".into(), json!(on));
                m.insert("state_off".into(), json!(off));
            }
        }
        Component::Number => number_keys(m, p),
        Component::Select => {
            m.insert("options".into(), json!(names()));
        }
        Component::Button => {
            let press = on_off(p).map_or_else(|| "ON".to_string(), |(on, _)| on);
            m.insert("payload_press".into(), json!(press));
        }
        Component::Text => {
            if let ValueType::String { len } = p.ty {
                m.insert("max".into(), json!(len.min(255)));
            }
        }
    }
}

/// `min`, `max`, `step`, `mode` and the unit of a number.
fn number_keys(m: &mut Map<String, Value>, p: &Point) {
    let (lo, hi) = commands::value_range(p);
    let min = p.min.unwrap_or(lo);
    let max = p.max.unwrap_or(hi);
    let step = match p.precision {
        Some(d) => 10f64.powi(-i32::from(d)),
        None if !matches!(p.ty, ValueType::F32 | ValueType::F64) => p.scale.abs(),
        None => 0.001,
    }
    .max(0.001);
    let mode = if p.min.is_some() && p.max.is_some() && (max - min) / step <= 1000.0 {
        "slider"
    } else {
        "box"
    };
    m.insert("min".into(), json!(min));
    m.insert("max".into(), json!(max));
    m.insert("step".into(), json!(step));
    m.insert("mode".into(), json!(mode));
    if let Some(u) = &p.unit {
        m.insert("unit_of_measurement".into(), json!(u));
    }
    if let Some(c) = classes::of(p).device_class {
        m.insert("device_class".into(), json!(c));
    }
}

/// The point's `homeassistant:` overrides.
fn overrides(m: &mut Map<String, Value>, component: Component, p: &Point) {
    let o = p.ha();
    if let Some(c) = &o.device_class {
        m.insert("device_class".into(), json!(c));
    }
    if let Some(s) = o.state_class {
        m.insert(
            "state_class".into(),
            json!(match s {
                StateClass::Measurement => "measurement",
                StateClass::Total => "total",
                StateClass::TotalIncreasing => "total_increasing",
            }),
        );
    }
    if let Some(i) = &o.icon {
        m.insert("icon".into(), json!(i));
    }
    if let Some(e) = o.entity_category {
        m.insert(
            "entity_category".into(),
            json!(match e {
                EntityCategory::Config => "config",
                EntityCategory::Diagnostic => "diagnostic",
            }),
        );
    }
    if let Some(e) = o.enabled_by_default {
        m.insert("enabled_by_default".into(), json!(e));
    }
    if let Some(e) = o.expire_after.or_else(|| expire::default_for(p)) {
        if matches!(component, Component::Sensor | Component::BinarySensor) {
            m.insert("expire_after".into(), json!(e.as_secs()));
        }
    }
}

/// The discovery configs a reload changed or added, and an empty retained message on
/// the config topic of every entity that is gone (Home Assistant removes it). Unchanged
/// ones are not sent again.
pub(crate) fn changes(old: &Model, new: &Model) -> Vec<Outgoing> {
    diff(iter(old).collect(), iter(new).collect())
}

/// [`changes`] of the upstream configs (topics under the upstream prefix).
pub(crate) fn changes_upstream(old: &Model, new: &Model) -> Vec<Outgoing> {
    diff(iter_upstream(old).collect(), iter_upstream(new).collect())
}

fn diff(old: Vec<Config>, after: Vec<Config>) -> Vec<Outgoing> {
    let before: std::collections::HashMap<String, Value> =
        old.into_iter().map(|c| (c.topic, c.payload)).collect();
    let now: HashSet<&str> = after.iter().map(|c| c.topic.as_str()).collect();
    let mut out: Vec<Outgoing> = after
        .iter()
        .filter(|c| before.get(&c.topic) != Some(&c.payload))
        .map(Config::message)
        .collect();
    for topic in before.keys().filter(|t| !now.contains(t.as_str())) {
        out.push(Outgoing {
            topic: topic.clone(),
            payload: Vec::new(),
            retain: true,
            qos: 1,
            slot: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(default_name("casa/terreo/temperatura"), "Temperatura");
        assert_eq!(default_name("casa/sala_luz"), "Sala luz");
        assert_eq!(slug("casa/Térreo/temp-1"), "casa_t_rreo_temp_1");
        assert_eq!(id_safe("casa/terreo/x.y"), "casa_terreo_x_y");
    }
}
