//! The names of every topic the gateway publishes or accepts, made in one place ([`Topics`])
//! from the base topic, the Home Assistant discovery prefix and the upstream prefix; and
//! what a given topic is in that contract ([`Topics::classify`]), which the broker's
//! rights check, the command router and `check`'s reserved-topic rule all ask.
//!
//! | name | made by |
//! | --- | --- |
//! | `<base>/status` | [`Topics::status`] |
//! | `<base>/diagnostics` | [`Topics::diagnostics`] |
//! | `<base>/<device>/availability` | [`Topics::availability`] |
//! | `<point>/set`, `/set/result`, `/get`, `/get/result` | [`Topics::below`] ([`Below`]) |
//! | a device's `json_topic` | as written ([`Role::DeviceJson`]) |
//! | `<discovery prefix>/<component>/<unique id>/config` | [`Topics::ha_config`] |
//! | `<discovery prefix>/status` (Home Assistant's birth) | [`Topics::ha_status`] |
//! | any of the gateway's topics upstream | [`Topics::upstream`]: the prefix in front |

use crate::model::Model;

/// A topic below a point topic that the gateway uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Below {
    /// `<topic>/set`: a command (accepted).
    Set,
    /// `<topic>/set/result`: its outcome (published).
    SetResult,
    /// `<topic>/get`: a read on demand (accepted).
    Get,
    /// `<topic>/get/result`: a failed read's outcome (published).
    GetResult,
}

impl Below {
    /// All of them, the longer suffixes first (so parsing a topic finds `/set/result`
    /// before `/set` would be tried on its parent).
    pub(crate) const ALL: [Below; 4] = [Below::SetResult, Below::GetResult, Below::Set, Below::Get];

    /// The suffix, with its leading `/`.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Below::Set => "/set",
            Below::SetResult => "/set/result",
            Below::Get => "/get",
            Below::GetResult => "/get/result",
        }
    }

    /// What the topic is for, in a sentence of `check`.
    pub(crate) fn what(self) -> &'static str {
        match self {
            Below::Set => "command",
            Below::SetResult => "command result",
            Below::Get => "read request",
            Below::GetResult => "read result",
        }
    }

    /// Whether only the gateway publishes on it (results), rather than hears it.
    pub(crate) fn published(self) -> bool {
        matches!(self, Below::SetResult | Below::GetResult)
    }
}

/// What a topic is in the gateway's contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role<'a> {
    /// A point's state topic.
    Point,
    /// A topic below the point topic given.
    Below(Below, &'a str),
    /// `<base>/status`.
    Status,
    /// `<base>/diagnostics`.
    Diagnostics,
    /// `<base>/<device>/availability` of the device given.
    Availability(&'a str),
    /// The `json_topic` of the device given.
    DeviceJson(&'a str),
    /// Home Assistant's `<discovery prefix>/status`.
    HaStatus,
    /// One of the gateway's own discovery configs.
    DiscoveryConfig,
}

impl Role<'_> {
    /// Whether only the gateway publishes on a topic of this role (no client may).
    pub(crate) fn published(self) -> bool {
        match self {
            Role::Below(b, _) => b.published(),
            Role::HaStatus => false,
            _ => true,
        }
    }
}

/// The point and device topics a configuration has: the contract asks, the validator
/// (files being checked) and the runtime contract (a model) answer.
pub(crate) trait Known {
    /// Whether `topic` is a point's topic.
    fn is_point(&self, topic: &str) -> bool;
    /// The device whose `json_topic` is `topic`.
    fn json_of(&self, topic: &str) -> Option<&str>;
    /// The device `id`, when there is one.
    fn device(&self, id: &str) -> Option<&str>;
}

/// Home Assistant discovery as the topics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Discovery {
    /// `<discovery prefix>`.
    prefix: String,
    /// On the embedded broker.
    embedded: bool,
    /// On the upstream broker.
    upstream: bool,
}

/// Builds every topic name of one gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topics {
    /// `<base>`: the root of the gateway's own topics.
    base: String,
    /// `fieldlink_<gateway id>_`: how the gateway's discovery ids start.
    ids: String,
    /// Home Assistant discovery, when on.
    discovery: Option<Discovery>,
    /// Put in front of every topic upstream (empty without an upstream broker).
    upstream: String,
}

impl Topics {
    /// The names of a gateway with base topic `base` and id `gateway_id`, Home Assistant
    /// discovery under `discovery` (`(prefix, embedded, upstream)`) when on, and the
    /// upstream prefix `upstream` (empty without an upstream broker).
    pub(crate) fn new(
        base: &str,
        gateway_id: &str,
        discovery: Option<(&str, bool, bool)>,
        upstream: &str,
    ) -> Topics {
        Topics {
            base: base.to_string(),
            ids: format!("fieldlink_{gateway_id}_"),
            discovery: discovery.map(|(prefix, embedded, upstream)| Discovery {
                prefix: prefix.to_string(),
                embedded,
                upstream,
            }),
            upstream: upstream.to_string(),
        }
    }

    /// The names of `model`'s gateway.
    pub fn of(model: &Model) -> Topics {
        Topics::new(
            &model.base_topic,
            &model.gateway_id,
            model
                .homeassistant
                .as_ref()
                .map(|h| (h.discovery_prefix.as_str(), h.embedded, h.upstream)),
            model
                .mqtt
                .upstream
                .as_ref()
                .map_or("", |u| u.prefix.as_str()),
        )
    }

    /// `<base>/status`: `online` / `offline`, retained; the Last Will upstream.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// `<base>/diagnostics`: the counters, retained.
    pub fn diagnostics(&self) -> String {
        format!("{}/diagnostics", self.base)
    }

    /// `<base>/<device>/availability`: `online` / `offline`, retained.
    pub fn availability(&self, device: &str) -> String {
        format!("{}/{device}/availability", self.base)
    }

    /// `<point>/set`, `/set/result`, `/get` or `/get/result`.
    pub(crate) fn below(point: &str, below: Below) -> String {
        let suffix = below.suffix();
        let mut t = String::with_capacity(point.len() + suffix.len());
        t.push_str(point);
        t.push_str(suffix);
        t
    }

    /// `<point>/set`: commands.
    pub fn set(point: &str) -> String {
        Topics::below(point, Below::Set)
    }

    /// `<point>/set/result`: the outcome of every command.
    pub fn set_result(point: &str) -> String {
        Topics::below(point, Below::SetResult)
    }

    /// `<point>/get`: reads on demand.
    pub fn get(point: &str) -> String {
        Topics::below(point, Below::Get)
    }

    /// `<point>/get/result`: the outcome of a failed read on demand.
    pub fn get_result(point: &str) -> String {
        Topics::below(point, Below::GetResult)
    }

    /// The discovery prefix, with discovery on.
    pub fn discovery_prefix(&self) -> Option<&str> {
        self.discovery.as_ref().map(|d| d.prefix.as_str())
    }

    /// Home Assistant's `<discovery prefix>/status`, with discovery on (anywhere).
    pub fn ha_status(&self) -> Option<String> {
        self.discovery_prefix().map(|p| format!("{p}/status"))
    }

    /// Home Assistant's status topic as the embedded side hears it (discovery on there).
    pub(crate) fn ha_status_embedded(&self) -> Option<String> {
        self.discovery
            .as_ref()
            .filter(|d| d.embedded)
            .map(|d| format!("{}/status", d.prefix))
    }

    /// Home Assistant's status topic as the upstream side hears it: not under the upstream
    /// prefix (Home Assistant publishes it there), only with `homeassistant.upstream`.
    pub(crate) fn ha_status_upstream(&self) -> Option<String> {
        self.discovery
            .as_ref()
            .filter(|d| d.upstream)
            .map(|d| format!("{}/status", d.prefix))
    }

    /// `<discovery prefix>/<component>/<unique_id>/config` (never under the upstream
    /// prefix: Home Assistant listens on its own). `None` with discovery off.
    pub fn ha_config(&self, component: &str, unique_id: &str) -> Option<String> {
        self.discovery_prefix()
            .map(|p| format!("{p}/{component}/{unique_id}/config"))
    }

    /// How the gateway's discovery ids start: `fieldlink_<gateway id>_`.
    pub(crate) fn discovery_ids(&self) -> &str {
        &self.ids
    }

    /// Whether `topic` is a discovery config (of anyone) under the discovery prefix.
    pub(crate) fn is_config(&self, topic: &str) -> bool {
        self.discovery_prefix().is_some_and(|p| {
            topic
                .strip_prefix(p)
                .is_some_and(|r| r.starts_with('/') && r.ends_with("/config"))
        })
    }

    /// Whether `topic` is one of the gateway's discovery configs, in both forms Home
    /// Assistant reads, `<prefix>/<component>/<object_id>/config` and
    /// `<prefix>/<component>/<node_id>/<object_id>/config`: a node or object id that starts
    /// with `fieldlink_<id>_`.
    pub(crate) fn is_gateway_config(&self, topic: &str) -> bool {
        let Some(p) = self.discovery_prefix() else {
            return false;
        };
        topic
            .strip_prefix(p)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix("/config"))
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, ids)| ids.split('/').any(|l| l.starts_with(self.ids.as_str())))
    }

    /// The upstream prefix (empty without an upstream broker).
    pub fn upstream_prefix(&self) -> &str {
        &self.upstream
    }

    /// `topic` as it is upstream: the prefix in front.
    pub fn upstream(&self, topic: &str) -> String {
        let mut t = String::with_capacity(self.upstream.len() + topic.len());
        t.push_str(&self.upstream);
        t.push_str(topic);
        t
    }

    /// A topic upstream as the gateway names it: without the prefix (`None`: not under
    /// it).
    pub fn strip_upstream<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(self.upstream.as_str())
    }

    /// What `topic` is among the names the gateway reserves: its own topics, a topic
    /// below a point, Home Assistant's status and the gateway's discovery configs; not a
    /// point's or a device's JSON topic themselves ([`Topics::classify`] says those too).
    pub(crate) fn reserved<'a>(&self, topic: &'a str, known: &'a impl Known) -> Option<Role<'a>> {
        if let Some(rest) = topic
            .strip_prefix(self.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .filter(|_| !self.base.is_empty())
        {
            match rest {
                "status" => return Some(Role::Status),
                "diagnostics" => return Some(Role::Diagnostics),
                _ => {}
            }
            if let Some(d) = rest
                .strip_suffix("/availability")
                .and_then(|id| known.device(id))
            {
                return Some(Role::Availability(d));
            }
        }
        for b in Below::ALL {
            if let Some(parent) = topic.strip_suffix(b.suffix()) {
                if known.is_point(parent) {
                    return Some(Role::Below(b, parent));
                }
            }
        }
        if self
            .discovery_prefix()
            .is_some_and(|p| topic.strip_prefix(p) == Some("/status"))
        {
            return Some(Role::HaStatus);
        }
        if self.is_gateway_config(topic) {
            return Some(Role::DiscoveryConfig);
        }
        None
    }

    /// What `topic` is in the contract, if anything: a point's topic, a device's JSON
    /// topic, or one of the [reserved](Topics::reserved) names.
    pub(crate) fn classify<'a>(&self, topic: &'a str, known: &'a impl Known) -> Option<Role<'a>> {
        if known.is_point(topic) {
            return Some(Role::Point);
        }
        if let Some(d) = known.json_of(topic) {
            return Some(Role::DeviceJson(d));
        }
        self.reserved(topic, known)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// A configuration's topics, as `check` or the runtime would know them.
    struct Set {
        points: HashSet<&'static str>,
        json: HashMap<&'static str, &'static str>,
        devices: HashSet<&'static str>,
    }

    impl Known for Set {
        fn is_point(&self, topic: &str) -> bool {
            self.points.contains(topic)
        }
        fn json_of(&self, topic: &str) -> Option<&str> {
            self.json.get(topic).copied()
        }
        fn device(&self, id: &str) -> Option<&str> {
            self.devices.get(id).copied()
        }
    }

    fn known() -> Set {
        Set {
            points: ["casa/luz", "casa/sala/temp"].into_iter().collect(),
            json: [("casa/medidor", "medidor")].into_iter().collect(),
            devices: ["medidor", "sala"].into_iter().collect(),
        }
    }

    fn topics() -> Topics {
        Topics::new(
            "fieldlink/casa",
            "casa",
            Some(("homeassistant", true, false)),
            "sites/a/",
        )
    }

    #[test]
    fn every_name() {
        let t = topics();
        assert_eq!(t.status(), "fieldlink/casa/status");
        assert_eq!(t.diagnostics(), "fieldlink/casa/diagnostics");
        assert_eq!(t.availability("sala"), "fieldlink/casa/sala/availability");
        assert_eq!(Topics::set("casa/luz"), "casa/luz/set");
        assert_eq!(Topics::set_result("casa/luz"), "casa/luz/set/result");
        assert_eq!(Topics::get("casa/luz"), "casa/luz/get");
        assert_eq!(Topics::get_result("casa/luz"), "casa/luz/get/result");
        for b in Below::ALL {
            assert_eq!(Topics::below("x", b), format!("x{}", b.suffix()));
        }
        assert_eq!(t.ha_status().as_deref(), Some("homeassistant/status"));
        assert_eq!(
            t.ha_status_embedded().as_deref(),
            Some("homeassistant/status")
        );
        assert_eq!(t.ha_status_upstream(), None, "discovery is not on upstream");
        assert_eq!(
            t.ha_config("sensor", "fieldlink_casa_sala_t").as_deref(),
            Some("homeassistant/sensor/fieldlink_casa_sala_t/config")
        );
        assert_eq!(t.discovery_ids(), "fieldlink_casa_");
        let off = Topics::new("fieldlink/casa", "casa", None, "");
        assert_eq!(
            (off.ha_status(), off.ha_config("sensor", "x")),
            (None, None)
        );
    }

    #[test]
    fn the_upstream_prefix_goes_in_front_of_every_name_but_home_assistants() {
        let t = topics();
        assert_eq!(t.upstream_prefix(), "sites/a/");
        assert_eq!(t.upstream(&t.status()), "sites/a/fieldlink/casa/status");
        assert_eq!(t.upstream(&Topics::set("casa/luz")), "sites/a/casa/luz/set");
        assert_eq!(
            t.strip_upstream("sites/a/casa/luz/set"),
            Some("casa/luz/set")
        );
        assert_eq!(t.strip_upstream("other/casa/luz/set"), None);
        let both = Topics::new("b", "g", Some(("ha", false, true)), "p/");
        // Home Assistant publishes its status on its own prefix, upstream too.
        assert_eq!(both.ha_status_upstream().as_deref(), Some("ha/status"));
        assert_eq!(both.ha_status_embedded(), None);
        assert_eq!(Topics::new("b", "g", None, "").upstream("x"), "x");
    }

    #[test]
    fn what_each_topic_is() {
        let (t, k) = (topics(), known());
        let c = |topic: &'static str| t.classify(topic, &k);
        assert_eq!(c("casa/luz"), Some(Role::Point));
        assert_eq!(c("casa/medidor"), Some(Role::DeviceJson("medidor")));
        assert_eq!(c("fieldlink/casa/status"), Some(Role::Status));
        assert_eq!(c("fieldlink/casa/diagnostics"), Some(Role::Diagnostics));
        assert_eq!(
            c("fieldlink/casa/sala/availability"),
            Some(Role::Availability("sala"))
        );
        assert_eq!(
            c("fieldlink/casa/porta/availability"),
            None,
            "no such device"
        );
        assert_eq!(c("casa/luz/set"), Some(Role::Below(Below::Set, "casa/luz")));
        assert_eq!(
            c("casa/luz/set/result"),
            Some(Role::Below(Below::SetResult, "casa/luz"))
        );
        assert_eq!(
            c("casa/sala/temp/get"),
            Some(Role::Below(Below::Get, "casa/sala/temp"))
        );
        assert_eq!(
            c("casa/sala/temp/get/result"),
            Some(Role::Below(Below::GetResult, "casa/sala/temp"))
        );
        assert_eq!(
            c("casa/medidor/set"),
            None,
            "a JSON object takes no commands"
        );
        assert_eq!(c("homeassistant/status"), Some(Role::HaStatus));
        for form in [
            "homeassistant/sensor/fieldlink_casa_sala_t/config",
            "homeassistant/sensor/node/fieldlink_casa_sala_t/config",
        ] {
            assert_eq!(c(form), Some(Role::DiscoveryConfig), "{form}");
        }
        for other in [
            "homeassistant/sensor/mine/config",
            "homeassistant/sensor/fieldlink_casablanca_x/config",
            "casa/luz/state",
            "fieldlink/casa/other",
        ] {
            assert_eq!(c(other), None, "{other}");
        }
        // Published by the gateway only, or heard.
        assert!(Role::Below(Below::SetResult, "x").published());
        assert!(Role::Below(Below::GetResult, "x").published());
        assert!(!Role::Below(Below::Set, "x").published());
        assert!(!Role::Below(Below::Get, "x").published());
        assert!(!Role::HaStatus.published());
        assert!(Role::DeviceJson("d").published());
        // Reserved: not a point's or a JSON object's own topic.
        assert_eq!(t.reserved("casa/luz", &k), None);
        assert_eq!(t.reserved("casa/medidor", &k), None);
    }

    #[test]
    fn without_a_base_topic_only_the_names_below_points_are_reserved() {
        let (t, k) = (Topics::default(), known());
        assert_eq!(t.reserved("/status", &k), None);
        assert_eq!(
            t.reserved("casa/luz/get", &k),
            Some(Role::Below(Below::Get, "casa/luz"))
        );
    }
}
