//! `expire_after` of a point read at its own cadence, when the mapping gives none: Home
//! Assistant marks the value unavailable after three publications that did not come.

use std::time::Duration;

use crate::model::{Point, PublishMode};

/// How many missed publications make the value expire.
const MISSED: u32 = 3;

/// The default `expire_after` of point `p`: only for a point with its own
/// `poll_interval`, and only where its publications come at a known pace: three times
/// its cadence with `publish: every_poll`, three times the longer of its cadence and its
/// `heartbeat` with a heartbeat (a heartbeat is kept at the reads), in whole seconds
/// rounded up. `None` otherwise (on change alone, a value may rightly stay the same for
/// days; a `write_only` point is published only when written).
pub(super) fn default_for(p: &Point) -> Option<Duration> {
    if p.readable().is_err() {
        return None;
    }
    let cadence = p.poll_interval?;
    let pace = match (p.publish, p.heartbeat) {
        (PublishMode::EveryPoll, _) => cadence,
        (PublishMode::OnChange { .. }, Some(h)) => cadence.max(h),
        (PublishMode::OnChange { .. }, None) => return None,
    };
    let d = pace.saturating_mul(MISSED);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Some(Duration::from_secs(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::model::{test_point, ValueType};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn from_the_cadence_and_the_heartbeat() {
        let mut p = test_point(ValueType::U16);
        // The device's cadence: nothing (the device's availability says enough).
        p.publish = PublishMode::EveryPoll;
        assert_eq!(default_for(&p), None);
        p.poll_interval = Some(60 * S);
        assert_eq!(default_for(&p), Some(180 * S));
        // On change: only with a heartbeat, from the longer of the two.
        p.publish = PublishMode::OnChange { deadband: 0.0 };
        assert_eq!(default_for(&p), None);
        p.heartbeat = Some(300 * S);
        assert_eq!(default_for(&p), Some(900 * S));
        p.heartbeat = Some(10 * S);
        assert_eq!(default_for(&p), Some(180 * S));
        // Whole seconds, rounded up.
        p.publish = PublishMode::EveryPoll;
        p.poll_interval = Some(Duration::from_millis(200));
        assert_eq!(default_for(&p), Some(S));
        p.poll_interval = Some(Duration::from_millis(1500));
        assert_eq!(default_for(&p), Some(5 * S));
    }

    /// The discovery configs as Home Assistant gets them: the default on sensors with
    /// their own cadence, the mapping's own value first, nothing on other components.
    #[test]
    fn in_the_discovery_configs() {
        let gateway =
            "id: casa\nmappings: m.yaml\nmqtt:\n  embedded:\n    listen: 127.0.0.1:1883\n";
        let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1 }\ndevices:\n  - id: meter\n    bus: b\n    points:\n\
            \x20     - { topic: m/power, table: input, address: 0, publish: every_poll }\n\
            \x20     - { topic: m/energy, table: input, address: 10, poll_interval: 1m, publish: every_poll }\n\
            \x20     - { topic: m/serial, table: input, address: 20, poll_interval: 1h, heartbeat: 1h }\n\
            \x20     - { topic: m/total, table: input, address: 30, poll_interval: 1m, publish: every_poll, homeassistant: { expire_after: 10m } }\n\
            \x20     - { topic: m/limit, table: holding, address: 40, poll_interval: 1m, publish: every_poll, writable: true }\n\
            \x20     - { topic: m/firmware, table: input, address: 50, poll_interval: 1h }\n";
        let checked = crate::config::check_sources(Path::new("/g.yaml"), gateway, |_, _| {
            vec![(Path::new("/m.yaml").to_path_buf(), mapping.to_string())]
        })
        .unwrap_or_else(|d| panic!("{d:?}"));
        let expire = |topic: &str| -> Option<Value> {
            let c = super::super::configs(&checked.model)
                .into_iter()
                .find(|c| c.payload["state_topic"] == topic)
                .unwrap_or_else(|| panic!("no config for {topic}"));
            c.payload.get("expire_after").cloned()
        };
        assert_eq!(expire("m/power"), None, "the device's cadence");
        assert_eq!(expire("m/energy"), Some(180.into()));
        assert_eq!(expire("m/serial"), Some(10800.into()));
        assert_eq!(expire("m/total"), Some(600.into()), "the mapping's own");
        assert_eq!(expire("m/limit"), None, "a number does not expire");
        assert_eq!(expire("m/firmware"), None, "on change alone");
    }
}
