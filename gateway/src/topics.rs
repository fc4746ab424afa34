//! MQTT topic rules: what a point topic may look like, and the topic contract of a model
//! (which topics only the gateway publishes, which `<topic>/set` carry commands and which
//! `<topic>/get` read requests, and where each goes), computed in one place for the
//! broker's rights check and the command router.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use crate::model::Model;

/// Where a `<topic>/set` goes: bus, device and point indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PointRef {
    /// Bus index in the model.
    pub(crate) bus: usize,
    /// Device index in its bus.
    pub(crate) device: usize,
    /// Point index in its device.
    pub(crate) point: usize,
    /// The device's index among all devices of the model (its counters).
    pub(crate) stats_index: usize,
}

/// The topic contract of a model.
#[derive(Debug, Default)]
pub(crate) struct Contract {
    /// Topics only the gateway publishes besides the points' ([`Contract::points`]): their
    /// `/set/result`, status, availability and diagnostics.
    pub(crate) protected: HashSet<String>,
    /// `<topic>/set` of every writable point, and its point.
    pub(crate) commands: HashMap<String, PointRef>,
    /// Other topics whose publishes the gateway hears: Home Assistant's
    /// `<prefix>/status`.
    pub(crate) heard: HashSet<String>,
    /// The gateway's discovery configs, `<prefix>/<component>/<these>…/config`: the
    /// prefix with its `/`, and `fieldlink_<gateway id>_` (a pattern, not a list: at
    /// 10 000 points a list of topics would cost a megabyte).
    pub(crate) discovery: Option<(String, String)>,
    // Reads on demand (issue #23).
    /// The topic of every point: only the gateway publishes on it and on its
    /// `<topic>/get/result`, and its `<topic>/get` is a read request ([`Contract::reads`]).
    /// Kept once, not as three topics a point: at 10 000 points those would cost 2.6 MB.
    pub(crate) points: HashSet<String>,
}

impl Contract {
    /// The contract of `model`.
    pub(crate) fn new(model: &Model) -> Contract {
        let mut c = Contract::default();
        let mut stats_index = 0;
        for (b, bus) in model.buses.iter().enumerate() {
            for (d, dev) in bus.devices.iter().enumerate() {
                for (p, point) in dev.points.iter().enumerate() {
                    c.points.insert(point.topic.clone());
                    c.protected.insert(point.result_topic());
                    if point.writable {
                        let at = PointRef {
                            bus: b,
                            device: d,
                            point: p,
                            stats_index,
                        };
                        c.commands.insert(point.set_topic(), at);
                    }
                }
                c.protected.insert(model.availability_topic(&dev.id));
                stats_index += 1;
            }
        }
        c.protected.insert(model.status_topic());
        c.protected.insert(model.diagnostics_topic());
        if let Some(ha) = model.homeassistant.as_ref().filter(|h| h.embedded) {
            c.heard.insert(format!("{}/status", ha.discovery_prefix));
            c.discovery = Some((
                format!("{}/", ha.discovery_prefix),
                format!("fieldlink_{}_", model.gateway_id),
            ));
        }
        c
    }

    /// Whether only the gateway may publish on `topic`: its own topics, and its
    /// discovery configs (nobody else may replace or clear them), in both forms Home
    /// Assistant reads, `<prefix>/<component>/<object_id>/config` and
    /// `<prefix>/<component>/<node_id>/<object_id>/config`: a node or object id that
    /// starts with the gateway's `fieldlink_<id>_`. (A config elsewhere that carries the
    /// gateway's ids in its payload is refused by `broker::discovery`.)
    pub(crate) fn protects(&self, topic: &str) -> bool {
        if self.protected.contains(topic) || self.points.contains(topic) {
            return true;
        }
        if self.point_of(topic, "/get/result").is_some() {
            return true;
        }
        let Some((prefix, id)) = &self.discovery else {
            return false;
        };
        topic
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_suffix("/config"))
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, ids)| ids.split('/').any(|l| l.starts_with(id.as_str())))
    }
}

// Reads on demand (issue #23).
impl Contract {
    /// Whether `topic` is the `<topic>/get` of a point: a read request.
    pub(crate) fn reads(&self, topic: &str) -> bool {
        self.point_of(topic, "/get").is_some()
    }

    /// The point topic `topic` is `<point topic><suffix>` of.
    fn point_of<'a>(&self, topic: &'a str, suffix: &str) -> Option<&'a str> {
        topic
            .strip_suffix(suffix)
            .filter(|t| self.points.contains(*t))
    }
}

/// Every point of `model` and where it is, sorted by topic: where a `<topic>/get` goes
/// ([`find_point`]). 32 bytes a point, the topics not copied.
pub(crate) fn points_by_topic(model: &Model) -> Vec<PointRef> {
    let mut all = Vec::with_capacity(model.points().count());
    let mut stats_index = 0;
    for (b, bus) in model.buses.iter().enumerate() {
        for (d, dev) in bus.devices.iter().enumerate() {
            all.extend((0..dev.points.len()).map(|p| PointRef {
                bus: b,
                device: d,
                point: p,
                stats_index,
            }));
            stats_index += 1;
        }
    }
    all.sort_by(|x, y| topic_at(model, x).cmp(topic_at(model, y)));
    all
}

/// The point `<topic>/get` asks for, in `sorted` ([`points_by_topic`] of `model`).
pub(crate) fn find_point(model: &Model, sorted: &[PointRef], topic: &str) -> Option<PointRef> {
    let t = topic.strip_suffix("/get")?;
    let i = sorted
        .binary_search_by(|r| topic_at(model, r).cmp(t))
        .ok()?;
    sorted.get(i).copied()
}

/// The topic of the point at `r` (empty when `r` is not of `model`).
fn topic_at<'a>(model: &'a Model, r: &PointRef) -> &'a str {
    model
        .buses
        .get(r.bus)
        .and_then(|b| b.devices.get(r.device))
        .and_then(|d| d.points.get(r.point))
        .map_or("", |p| p.topic.as_str())
}

/// The contract in force: a reload replaces it. Clones share it (the broker's rights
/// check reads it for every publish).
#[derive(Clone, Debug, Default)]
pub struct LiveContract(Arc<RwLock<Arc<Contract>>>);

impl LiveContract {
    /// The contract of `model`.
    pub(crate) fn new(model: &Model) -> LiveContract {
        LiveContract(Arc::new(RwLock::new(Arc::new(Contract::new(model)))))
    }

    /// The contract now.
    pub(crate) fn get(&self) -> Arc<Contract> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// From now on, the contract of `model`.
    pub(crate) fn set(&self, model: &Model) {
        let c = Arc::new(Contract::new(model));
        match self.0.write() {
            Ok(mut w) => *w = c,
            Err(poisoned) => *poisoned.into_inner() = c,
        }
    }
}

/// Maximum length of an MQTT topic in bytes.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// A problem with a topic name: `Err` is an error, `Ok(Some)` a warning.
pub fn check_topic(topic: &str) -> Result<Option<String>, String> {
    if topic.is_empty() {
        return Err("topic is empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic is {} bytes long, MQTT allows at most {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "topic `{topic}` contains a wildcard (`+` or `#`); wildcards are only for subscriptions"
        ));
    }
    if topic.contains('\0') {
        return Err("topic contains a NUL character".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "topic `{topic}` starts with `$`, which is reserved for the broker"
        ));
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let inner = if topic.starts_with('/') {
        &levels[1..]
    } else {
        &levels[..]
    };
    if let Some(i) = inner.iter().position(|l| l.is_empty()) {
        if i + 1 == inner.len() {
            return Err(format!(
                "topic `{topic}` ends with `/` (an empty last level)"
            ));
        }
        return Err(format!(
            "topic `{topic}` has an empty level (`//`) in the middle"
        ));
    }
    if topic.starts_with('/') {
        return Ok(Some(format!(
            "topic `{topic}` starts with `/`: legal and kept as written, but it creates an empty first level"
        )));
    }
    Ok(None)
}

/// True when `s` is usable as one topic level and an id (`[A-Za-z0-9_-]+`).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert_eq!(check_topic("casa/terreo/temperatura"), Ok(None));
        assert!(check_topic("/casa/terreo").unwrap().is_some());
        assert!(check_topic("casa/+/x").is_err());
        assert!(check_topic("casa/#").is_err());
        assert!(check_topic("casa//x").is_err());
        assert!(check_topic("casa/").is_err());
        assert!(check_topic(&"a".repeat(70_000)).is_err());
    }

    #[test]
    fn the_contract_commands_only_writable_points_and_protects_the_gateways_topics() {
        let gateway =
            "id: t\nmappings: m.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:1883\"\n";
        let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\ndevices:\n  - id: d1\n    bus: b\n    points:\n      - { topic: casa/a, table: holding, address: 0 }\n      - { topic: casa/b, table: holding, address: 1, writable: true }\n  - id: d2\n    bus: b\n    unit: 2\n    points:\n      - { topic: casa/c, table: coil, address: 0, writable: true }\n";
        let checked =
            crate::config::check_sources(std::path::Path::new("/g.yaml"), gateway, |_, _| {
                vec![("m.yaml".into(), mapping.to_string())]
            })
            .expect("valid");
        let c = Contract::new(&checked.model);
        let mut commands: Vec<_> = c.commands.iter().collect();
        commands.sort_by_key(|(t, _)| t.as_str());
        let b = |device, point, stats_index| PointRef {
            bus: 0,
            device,
            point,
            stats_index,
        };
        assert_eq!(
            commands,
            [
                (&"casa/b/set".to_string(), &b(0, 1, 0)),
                (&"casa/c/set".to_string(), &b(1, 0, 1))
            ]
        );
        for t in ["casa/a", "casa/a/set/result", "casa/c"] {
            assert!(c.protects(t), "{t}");
        }
        let m = &checked.model;
        assert!(c.protected.contains(&m.availability_topic("d2")));
        assert!(c.protected.contains(&m.status_topic()));
        assert!(!c.protected.contains("casa/b/set"));
    }

    #[test]
    fn every_point_takes_get_and_only_the_gateway_answers_it() {
        let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\n  - { id: s, kind: uart, path: /dev/ttyUSB0 }\ndevices:\n  - id: d1\n    bus: b\n    points:\n      - { topic: casa/a, table: input, address: 0 }\n      - { topic: casa/b, table: holding, address: 1, writable: true }\n  - id: r\n    bus: s\n    points:\n      - { topic: casa/rele, type: bool, command: \"R {value}\\n\" }\n";
        let checked = crate::config::check_sources(
            std::path::Path::new("/g.yaml"),
            "id: t\nmappings: m.yaml\n",
            |_, _| vec![("m.yaml".into(), mapping.to_string())],
        )
        .expect("valid");
        let m = &checked.model;
        let c = Contract::new(m);
        // Every point, read-only, writable or command-only (that one is answered why not).
        for t in ["casa/a/get", "casa/b/get", "casa/rele/get"] {
            assert!(c.reads(t), "{t}");
            assert!(!c.protects(t), "clients publish the request: {t}");
        }
        for t in [
            "casa/get",
            "casa/a/set/get",
            "casa/a/get/get",
            "fieldlink/t/status/get",
        ] {
            assert!(!c.reads(t), "{t}");
        }
        for t in [
            "casa/a/get/result",
            "casa/b/get/result",
            "casa/rele/get/result",
        ] {
            assert!(c.protects(t), "{t}");
        }
        assert!(!c.protects("fieldlink/t/status/get/result"));
        assert!(!c.commands.contains_key("casa/a/get"));
        let sorted = points_by_topic(m);
        let at =
            |t: &str| find_point(m, &sorted, t).map(|r| (r.bus, r.device, r.point, r.stats_index));
        assert_eq!(at("casa/a/get"), Some((0, 0, 0, 0)));
        assert_eq!(at("casa/b/get"), Some((0, 0, 1, 0)));
        assert_eq!(at("casa/rele/get"), Some((1, 0, 0, 1)));
        assert_eq!(at("casa/a"), None);
        assert_eq!(at("casa/x/get"), None);
    }
}
