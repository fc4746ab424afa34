//! MQTT topic rules and the topic contract: what a point topic may look like; every name
//! the gateway publishes or accepts, built in one place ([`Topics`], in `names.rs`); and
//! the contract of a model (which topics only the gateway publishes, which `<topic>/set`
//! carry commands and which `<topic>/get` read requests, and where each goes), computed
//! in one place for the broker's rights check and the command router.

mod names;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

pub use names::Topics;
pub(crate) use names::{Below, Known, Role};

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
    /// The names of the gateway's topics.
    pub(crate) topics: Topics,
    /// Every point topic (the names below one follow from it: [`Topics::classify`]).
    pub(crate) points: HashSet<String>,
    /// Every device id.
    pub(crate) devices: HashSet<String>,
    /// The devices' JSON topics, and whose each is.
    pub(crate) json: HashMap<String, String>,
    /// `<topic>/set` of every writable point, and its point.
    pub(crate) commands: HashMap<String, PointRef>,
    /// Other topics whose publishes the gateway hears: Home Assistant's
    /// `<prefix>/status`.
    pub(crate) heard: HashSet<String>,
    /// The gateway's discovery configs, `<prefix>/<component>/<these>…/config`: the
    /// prefix with its `/`, and `fieldlink_<gateway id>_` (a pattern, not a list: at
    /// 10 000 points a list of topics would cost a megabyte). With discovery on the
    /// embedded broker only.
    pub(crate) discovery: Option<(String, String)>,
}

impl Known for Contract {
    fn is_point(&self, topic: &str) -> bool {
        self.points.contains(topic)
    }

    fn json_of(&self, topic: &str) -> Option<&str> {
        self.json.get(topic).map(String::as_str)
    }

    fn device(&self, id: &str) -> Option<&str> {
        self.devices.get(id).map(String::as_str)
    }
}

impl Contract {
    /// The contract of `model`.
    pub(crate) fn new(model: &Model) -> Contract {
        let topics = Topics::of(model);
        let mut c = Contract {
            heard: topics.ha_status_embedded().into_iter().collect(),
            discovery: topics.ha_status_embedded().and_then(|_| {
                Some((
                    format!("{}/", topics.discovery_prefix()?),
                    topics.discovery_ids().to_string(),
                ))
            }),
            topics,
            points: HashSet::new(),
            devices: HashSet::new(),
            json: HashMap::new(),
            commands: HashMap::new(),
        };
        let mut stats_index = 0;
        for (b, bus) in model.buses.iter().enumerate() {
            for (d, dev) in bus.devices.iter().enumerate() {
                for (p, point) in dev.points.iter().enumerate() {
                    c.points.insert(point.topic.clone());
                    if point.writable {
                        let at = PointRef {
                            bus: b,
                            device: d,
                            point: p,
                            stats_index,
                        };
                        c.commands.insert(Topics::set(&point.topic), at);
                    }
                }
                c.devices.insert(dev.id.clone());
                if let Some(t) = &dev.json_topic {
                    c.json.insert(t.clone(), dev.id.clone());
                }
                stats_index += 1;
            }
        }
        c
    }

    /// What `topic` is in this contract ([`Topics::classify`]).
    pub(crate) fn classify<'a>(&'a self, topic: &'a str) -> Option<Role<'a>> {
        self.topics.classify(topic, self)
    }

    /// Whether only the gateway may publish on `topic`: its own topics (points, their
    /// `/set/result` and `/get/result`, status, availability, diagnostics, the devices'
    /// JSON objects), and its discovery configs (nobody else may replace or clear them),
    /// in both forms Home Assistant reads, `<prefix>/<component>/<object_id>/config` and
    /// `<prefix>/<component>/<node_id>/<object_id>/config`: a node or object id that
    /// starts with the gateway's `fieldlink_<id>_`. (A config elsewhere that carries the
    /// gateway's ids in its payload is refused by `broker::discovery`.)
    pub(crate) fn protects(&self, topic: &str) -> bool {
        match self.classify(topic) {
            Some(Role::DiscoveryConfig) => self.discovery.is_some(),
            Some(role) => role.published(),
            None => false,
        }
    }
}

// Reads on demand (issue #23).
impl Contract {
    /// Whether `topic` is the `<topic>/get` of a point: a read request.
    pub(crate) fn reads(&self, topic: &str) -> bool {
        matches!(self.classify(topic), Some(Role::Below(Below::Get, _)))
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

/// The last level of `topic` (`casa/sala/temperatura` → `temperatura`).
pub fn last_level(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
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
        assert!(c.protects(&m.availability_topic("d2")));
        assert!(c.protects(&m.status_topic()));
        assert!(!c.protects("casa/b/set"));
    }

    /// A model from a mapping, with discovery on the embedded broker and an upstream
    /// broker with a prefix.
    fn model(mapping: &str) -> Result<Model, Vec<String>> {
        let gateway = "id: casa\nmappings: m.yaml\nstate_dir: /tmp\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:1883\"\n  upstream:\n    url: mqtt://127.0.0.1:1\n    prefix: sites/a/\nhomeassistant: {}\n";
        crate::config::check_sources(std::path::Path::new("/g.yaml"), gateway, |_, _| {
            vec![("m.yaml".into(), mapping.to_string())]
        })
        .map(|c| c.model)
        .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    const BUS: &str = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\n";

    #[test]
    fn the_protected_set_and_what_is_heard() {
        let m = model(&format!("{BUS}devices:\n  - id: medidor\n    bus: b\n    json_topic: casa/medidor\n    points:\n      - {{ topic: casa/potencia, table: input, address: 0 }}\n      - {{ topic: casa/limite, table: holding, address: 1, writable: true }}\n")).expect("valid");
        let c = Contract::new(&m);
        for t in [
            "casa/potencia",
            "casa/potencia/set/result",
            "casa/potencia/get/result",
            "casa/limite/set/result",
            "casa/medidor",
            "fieldlink/casa/status",
            "fieldlink/casa/diagnostics",
            "fieldlink/casa/medidor/availability",
            "homeassistant/number/fieldlink_casa_medidor_casa_limite/config",
        ] {
            assert!(c.protects(t), "{t} is the gateway's");
        }
        for t in [
            "casa/limite/set",
            "casa/potencia/get",
            "homeassistant/status",
            "homeassistant/sensor/mine/config",
            "fieldlink/casa/other/availability",
            "casa/other",
        ] {
            assert!(!c.protects(t), "{t} is not the gateway's alone");
        }
        assert_eq!(c.commands.keys().collect::<Vec<_>>(), ["casa/limite/set"]);
        assert!(c.heard.contains("homeassistant/status"));
        assert_eq!(c.topics.upstream("casa/potencia"), "sites/a/casa/potencia");
        // The same names as the model's own methods give.
        assert_eq!(c.topics.status(), m.status_topic());
        assert_eq!(
            c.topics.availability("medidor"),
            m.availability_topic("medidor")
        );
    }

    #[test]
    fn check_refuses_topics_that_clash_with_the_contract() {
        let errors = model(&format!("{BUS}devices:\n  - id: medidor\n    bus: b\n    json_topic: casa/luz/set\n    points:\n      - {{ topic: casa/luz, table: coil, address: 0 }}\n      - {{ topic: casa/luz/get, table: coil, address: 1 }}\n      - {{ topic: casa/luz/get/result, table: coil, address: 2 }}\n      - {{ topic: homeassistant/status, table: coil, address: 3 }}\n      - {{ topic: homeassistant/sensor/fieldlink_casa_x/config, table: coil, address: 4 }}\n      - {{ topic: fieldlink/casa/diagnostics, table: coil, address: 5 }}\n  - id: outro\n    bus: b\n    unit: 2\n    json_topic: casa/luz\n    points:\n      - {{ topic: casa/x, table: coil, address: 0 }}\n  - id: terceiro\n    bus: b\n    unit: 3\n    json_topic: fieldlink/casa/medidor/availability\n    points:\n      - {{ topic: casa/y, table: coil, address: 0 }}\n")).expect_err("clashes");
        let expect = [
            "json_topic `casa/luz/set` is the command topic of point `casa/luz`",
            "topic `casa/luz/get` is the read request topic of point `casa/luz`",
            "topic `casa/luz/get/result` is the read result topic of point `casa/luz`",
            "topic `homeassistant/status` is Home Assistant's status topic",
            "topic `homeassistant/sensor/fieldlink_casa_x/config` is one of the gateway's Home Assistant discovery topics",
            "topic `fieldlink/casa/diagnostics` is one of the gateway's own topics",
            "json_topic `casa/luz` is a point's topic",
            "json_topic `fieldlink/casa/medidor/availability` is one of the gateway's own topics",
        ];
        for e in expect {
            assert!(errors.iter().any(|l| l.contains(e)), "{e} in {errors:#?}");
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
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
