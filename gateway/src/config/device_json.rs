//! One JSON object per device (`json_topic`, a point's `key`), and the topic contract as
//! `check` applies it: no point topic and no device JSON topic may be a name the gateway
//! reserves (its own topics, a topic below a point, Home Assistant's status, the gateway's
//! discovery configs), nor each other's. What is reserved is decided by
//! [`crate::topics::Topics`], the same as at run time.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use super::{
    at, mapping::Topics as PointTopics, Cx, DeviceFile, MappingFile, PointFile, Validator,
};
use crate::{
    buses::device_json::TS_KEY,
    model::Point,
    topics::{check_topic, Below, Known, Role, Topics},
};

/// Every device JSON topic: where it is written, its field path and the device.
type JsonTopics = BTreeMap<String, (PathBuf, (u64, u64), String, String)>;

/// What the topic contract needs to know of the files being checked.
struct Names<'a> {
    points: &'a PointTopics,
    json: &'a JsonTopics,
    devices: HashSet<&'a str>,
}

impl Known for Names<'_> {
    fn is_point(&self, topic: &str) -> bool {
        self.points.contains_key(topic)
    }

    fn json_of(&self, topic: &str) -> Option<&str> {
        self.json.get(topic).map(|(_, _, _, d)| d.as_str())
    }

    fn device(&self, id: &str) -> Option<&str> {
        self.devices.get(id).copied()
    }
}

/// `topic` is reserved as `role`: the message and its hint.
fn reserved_message(what: &str, topic: &str, role: Role) -> (String, String) {
    match role {
        Role::Below(b, parent) => (
            format!(
                "{what} `{topic}` is the {} topic of point `{parent}`",
                b.what()
            ),
            format!(
                "`{}` below a point topic is reserved for {}",
                b.suffix(),
                if matches!(b, Below::Set | Below::SetResult) {
                    "commands"
                } else {
                    "reads on demand"
                }
            ),
        ),
        Role::HaStatus => (
            format!("{what} `{topic}` is Home Assistant's status topic"),
            "choose another topic or change `homeassistant.discovery_prefix`".into(),
        ),
        Role::DiscoveryConfig => (
            format!("{what} `{topic}` is one of the gateway's Home Assistant discovery topics"),
            "choose another topic or change `homeassistant.discovery_prefix`".into(),
        ),
        Role::Point => (
            format!("{what} `{topic}` is a point's topic"),
            "give the device's JSON object a topic of its own".into(),
        ),
        Role::DeviceJson(d) => (
            format!("{what} `{topic}` is the json_topic of device `{d}`"),
            "give every device's JSON object a topic of its own".into(),
        ),
        Role::Status | Role::Diagnostics | Role::Availability(_) => (
            format!("{what} `{topic}` is one of the gateway's own topics"),
            "choose another topic or change `base_topic`".into(),
        ),
    }
}

impl Validator {
    /// A point's `key`: a non-empty name without `/`.
    pub(super) fn point_key(&mut self, cx: &Cx, p: &PointFile) -> Option<String> {
        let k = p.key.as_ref()?;
        let problem = if k.value.is_empty() {
            Some("key is empty")
        } else if k.value.contains('/') {
            Some("key contains `/`")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                &cx.at("key"),
                k,
                problem,
                Some("a key names the point in its device's JSON object, e.g. `key: power`".into()),
            );
        }
        Some(k.value.clone())
    }

    /// A device's `json_topic`: a valid topic; its points' keys unique and not `ts`. A
    /// `key` without it is a warning.
    pub(super) fn json_topic(
        &mut self,
        cx: &Cx,
        d: &DeviceFile,
        points: &[(usize, Point)],
    ) -> Option<String> {
        let Some(j) = &d.json_topic else {
            for (i, _) in points {
                if let Some(k) = &d.points[*i].key {
                    self.warn(
                        &cx.item("points", *i).at("key"),
                        k,
                        "has no effect: the device has no `json_topic`",
                    );
                }
            }
            return None;
        };
        match check_topic(&j.value) {
            Err(e) => self.error(&cx.at("json_topic"), j, e, None),
            Ok(Some(w)) => self.warn(&cx.at("json_topic"), j, w),
            Ok(None) => {}
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (i, p) in points {
            let file = &d.points[*i];
            let (pcx, loc) = match &file.key {
                Some(k) => (cx.item("points", *i).at("key"), at(k)),
                None => (cx.item("points", *i).at("topic"), at(&file.topic)),
            };
            let key = p.json_key();
            let default = if file.key.is_none() {
                " (the last level of its topic)"
            } else {
                ""
            };
            if key == TS_KEY {
                self.error(
                    &pcx,
                    loc,
                    format!(
                        "key `{TS_KEY}`{default} of point `{}` is the JSON object's timestamp",
                        p.topic
                    ),
                    Some("give the point another `key:`".into()),
                );
            } else if let Some(first) = seen.insert(key, &p.topic) {
                self.error(
                    &pcx,
                    loc,
                    format!(
                        "key `{key}`{default} of point `{}` is also the key of point `{first}` in the device's JSON object",
                        p.topic
                    ),
                    Some("keys are unique within a device; give one of them its own `key:`".into()),
                );
            }
        }
        Some(j.value.clone())
    }

    /// No point topic or device JSON topic is a name the gateway reserves, and no JSON
    /// topic is a point's or another device's.
    pub(super) fn topic_contract(
        &mut self,
        files: &[(PathBuf, MappingFile)],
        names: &Topics,
        device_ids: &[String],
        points: &PointTopics,
    ) {
        let json = self.json_topics(files, points);
        let known = Names {
            points,
            json: &json,
            devices: device_ids.iter().map(String::as_str).collect(),
        };
        for (t, (f, l, p)) in points {
            if let Some(role) = names.reserved(t, &known) {
                let (msg, hint) = reserved_message("topic", t, role);
                self.error(&Cx::new(f).at(p), *l, msg, Some(hint));
            }
        }
        for (t, (f, l, p, _)) in &json {
            if let Some(role) = names.reserved(t, &known) {
                let (msg, hint) = reserved_message("json_topic", t, role);
                self.error(&Cx::new(f).at(p), *l, msg, Some(hint));
            }
        }
    }

    /// Every valid device JSON topic written; one that is a point's or another device's
    /// is reported here and left out.
    fn json_topics(
        &mut self,
        files: &[(PathBuf, MappingFile)],
        points: &PointTopics,
    ) -> JsonTopics {
        let mut json = JsonTopics::new();
        for (file, m) in files {
            for (i, d) in m.devices.iter().enumerate() {
                let Some(j) = d
                    .json_topic
                    .as_ref()
                    .filter(|j| check_topic(&j.value).is_ok())
                else {
                    continue;
                };
                let cx = Cx::new(file).item("devices", i).at("json_topic");
                let clash = if points.contains_key(&j.value) {
                    Some(Role::Point)
                } else {
                    json.get(&j.value).map(|(_, _, _, d)| Role::DeviceJson(d))
                };
                if let Some(role) = clash {
                    let (msg, hint) = reserved_message("json_topic", &j.value, role);
                    self.error(&cx, j, msg, Some(hint));
                    continue;
                }
                json.insert(
                    j.value.clone(),
                    (file.clone(), at(j), cx.path, d.id.value.clone()),
                );
            }
        }
        json
    }
}
