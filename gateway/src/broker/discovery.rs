//! Home Assistant discovery configs that would pass for the gateway's: no client may
//! publish one.
//!
//! The topics are covered by `topics::Contract::protects` (both forms Home Assistant
//! reads, `<prefix>/<component>/<object_id>/config` and
//! `<prefix>/<component>/<node_id>/<object_id>/config`, with a node or object id of the
//! gateway's). But Home Assistant takes an entity's identity from the payload: a config
//! under any other discovery topic that carries one of the gateway's `unique_id`s, or
//! the `identifiers` of the gateway's devices (which would add an entity to the boiler's
//! device page), would be read as the gateway's. Such a config is refused here, whatever
//! the topic's form, Home Assistant's abbreviations (`uniq_id`, `dev`, `ids`) and device
//! discovery (`cmps`) included. Other configs under the prefix (a user's own entities) go
//! through.

use serde_json::Value;

use crate::topics::Contract;

/// Whether a client's `payload` on `topic` is a discovery config that claims one of the
/// gateway's entities or devices.
pub(crate) fn claims_gateway(contract: &Contract, topic: &str, payload: &[u8]) -> bool {
    let Some((_, id)) = &contract.discovery else {
        return false;
    };
    if payload.is_empty() || !contract.topics.is_config(topic) {
        return false;
    }
    // Not JSON: Home Assistant reads nothing from it.
    serde_json::from_slice::<Value>(payload).is_ok_and(|v| names_gateway(&v, id))
}

/// Whether `v`, at any depth, holds a `unique_id` that starts with `id`
/// (`fieldlink_<gateway>_`) or a device identifier of the gateway's.
fn names_gateway(v: &Value, id: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| match (k.as_str(), v) {
            ("unique_id" | "uniq_id", Value::String(s)) => s.starts_with(id),
            ("identifiers" | "ids", Value::String(s)) => is_gateway_device(s, id),
            ("identifiers" | "ids", Value::Array(a)) => a
                .iter()
                .any(|s| s.as_str().is_some_and(|s| is_gateway_device(s, id))),
            _ => names_gateway(v, id),
        }),
        Value::Array(a) => a.iter().any(|v| names_gateway(v, id)),
        _ => false,
    }
}

/// The gateway is the device `fieldlink_<gateway>`, its devices
/// `fieldlink_<gateway>_<device>`.
fn is_gateway_device(s: &str, id: &str) -> bool {
    s.starts_with(id) || id.strip_suffix('_') == Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        Contract {
            topics: crate::topics::Topics::new(
                "fieldlink/casa",
                "casa",
                Some(("homeassistant", true, false)),
                "",
            ),
            discovery: Some(("homeassistant/".into(), "fieldlink_casa_".into())),
            ..Contract::default()
        }
    }

    #[test]
    fn configs_naming_the_gateways_entities_or_devices_are_claims() {
        let c = contract();
        let claims = |t: &str, p: &str| claims_gateway(&c, t, p.as_bytes());
        let t5 = "homeassistant/sensor/node/x/config";
        assert!(claims(t5, r#"{"unique_id":"fieldlink_casa_d_casa_temp"}"#));
        assert!(claims(t5, r#"{"uniq_id":"fieldlink_casa_status"}"#));
        assert!(claims(
            "homeassistant/switch/mine/config",
            r#"{"unique_id":"mine","device":{"identifiers":["fieldlink_casa_boiler"]}}"#
        ));
        assert!(claims(
            t5,
            r#"{"uniq_id":"mine","dev":{"ids":"fieldlink_casa"}}"#
        ));
        assert!(claims(
            "homeassistant/device/x/config",
            r#"{"dev":{"ids":"mine"},"cmps":{"a":{"p":"sensor","unique_id":"fieldlink_casa_a"}}}"#
        ));
        // A user's own entity, a removal, not JSON, outside the prefix: not claims.
        assert!(!claims(
            t5,
            r#"{"unique_id":"mine","device":{"identifiers":["mine"],"via_device":"fieldlink_casa"}}"#
        ));
        assert!(!claims(t5, ""));
        assert!(!claims(t5, "fieldlink_casa_x"));
        assert!(!claims(
            "other/sensor/x/config",
            r#"{"unique_id":"fieldlink_casa_x"}"#
        ));
        assert!(!claims(
            "homeassistant/sensor/x/state",
            r#"{"unique_id":"fieldlink_casa_x"}"#
        ));
        assert!(!claims(t5, r#"{"unique_id":"fieldlink_casablanca_x"}"#));
    }

    #[test]
    fn both_topic_forms_of_the_gateways_configs_are_protected() {
        let c = contract();
        for t in [
            "homeassistant/sensor/fieldlink_casa_d_t/config",
            "homeassistant/sensor/node/fieldlink_casa_d_t/config",
            "homeassistant/sensor/fieldlink_casa_d/t/config",
        ] {
            assert!(c.protects(t), "{t}");
        }
        for t in [
            "homeassistant/sensor/node/mine/config",
            "homeassistant/sensor/fieldlink_casa_d_t/state",
            "homeassistant/status",
        ] {
            assert!(!c.protects(t), "{t}");
        }
    }
}
