//! One JSON object per device (`json_topic`): after a turn of the bus task (a poll, an
//! event, a command's read-back) in which one of the device's points published a value
//! that is not the one it published before (a heartbeat or an `every_poll` repeat of the
//! same value is not a change), the device's object goes out, retained, in the same batch
//! as the values, through the normal path (upstream gets it too, with its prefix):
//!
//! ```json
//! {"potencia":1250,"energia":5321.7,"estado":"ON","ts":"2026-11-22T10:00:00.000Z"}
//! ```
//!
//! One key per point that has published a value (points not read yet are left out), in
//! the device's point order: the point's `key`, else its topic's last level. Values are
//! the ones the points' own topics carry: numbers as JSON numbers, named values and text
//! as strings, on/off as booleans; `ts` as in the points' JSON payloads (when the values
//! were read).

use std::time::SystemTime;

/// The key of the timestamp in a device's JSON object (no point may have it).
pub(crate) const TS_KEY: &str = "ts";

use crate::{
    model::{Bus, Device},
    publish::{Outgoing, PointState, Reading},
};

/// Which devices of a bus changed a value in the current turn, and when it was read.
#[derive(Debug, Default)]
pub(crate) struct DeviceJson {
    changed: Vec<Option<SystemTime>>,
}

impl DeviceJson {
    /// For a bus of `devices` devices.
    pub(crate) fn new(devices: usize) -> DeviceJson {
        DeviceJson {
            changed: vec![None; devices],
        }
    }

    /// Before point state `state` of `device` takes reading `r`: whether that would change
    /// the device's object (always `false` for a device without `json_topic`).
    pub(crate) fn would_change(device: &Device, state: &PointState, r: &Reading) -> bool {
        device.json_topic.is_some() && differs(state.last(), r)
    }

    /// Device `d` published a changed value read at `wall`.
    pub(crate) fn changed(&mut self, d: usize, wall: SystemTime) {
        if let Some(c) = self.changed.get_mut(d) {
            *c = Some(c.map_or(wall, |t| t.max(wall)));
        }
    }

    /// The objects of the devices of `bus` that changed this turn, onto `out`; the turn
    /// starts anew.
    pub(crate) fn flush(&mut self, bus: &Bus, states: &[Vec<PointState>], out: &mut Vec<Outgoing>) {
        for (d, c) in self.changed.iter_mut().enumerate() {
            let Some(wall) = c.take() else {
                continue;
            };
            if let (Some(dev), Some(st)) = (bus.devices.get(d), states.get(d)) {
                out.extend(object(dev, st, wall));
            }
        }
    }
}

/// Whether reading `r` is another value than `last` (numbers by the text they publish).
fn differs(last: Option<&Reading>, r: &Reading) -> bool {
    match (last, r) {
        (Some(Reading::Number(_, a)), Reading::Number(_, b)) => a != b,
        (Some(last), r) => last != r,
        (None, _) => true,
    }
}

/// The JSON object of `device` from its points' last published readings (`states`), with
/// `ts` at `wall`; `None` without a `json_topic` or before any point was read.
pub(crate) fn object(device: &Device, states: &[PointState], wall: SystemTime) -> Option<Outgoing> {
    let topic = device.json_topic.as_ref()?;
    let mut body = String::from("{");
    for (p, st) in device.points.iter().zip(states) {
        let Some(r) = st.last() else {
            continue;
        };
        if body.len() > 1 {
            body.push(',');
        }
        body.push_str(&serde_json::Value::String(p.json_key().to_string()).to_string());
        body.push(':');
        body.push_str(&r.json().to_string());
    }
    if body.len() == 1 {
        return None;
    }
    let ts = humantime::format_rfc3339_millis(wall).to_string();
    body.push_str(&format!(",\"{}\":\"{ts}\"}}", TS_KEY));
    Some(Outgoing {
        topic: topic.clone(),
        payload: body.into_bytes(),
        retain: true,
        qos: device.points.iter().map(|p| p.qos).max().unwrap_or(0),
        slot: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fieldlink_drivers::value::Value;
    use tokio::time::Instant;

    use super::*;
    use crate::{
        model::{test_point, DeviceKind, ValueType},
        publish::reading,
    };

    fn device() -> Device {
        let mut power = test_point(ValueType::U16);
        power.topic = "casa/medidor/potencia".into();
        let mut energy = test_point(ValueType::U32);
        energy.topic = "casa/medidor/energia".into();
        energy.scale = 0.1;
        energy.key = Some("kWh".into());
        let mut state = test_point(ValueType::U16);
        state.topic = "casa/medidor/estado".into();
        state.value_map = vec![("ON".into(), 1.0), ("OFF".into(), 0.0)];
        let mut name = test_point(ValueType::String { len: 8 });
        name.topic = "casa/medidor/nome".into();
        Device {
            id: "medidor".into(),
            poll_interval: Duration::from_secs(1),
            offline_after: 3,
            max_backoff: Duration::from_secs(60),
            kind: DeviceKind::Gpio,
            ha: Default::default(),
            points: vec![power, energy, state, name],
            json_topic: Some("casa/medidor/json".into()),
        }
    }

    #[test]
    fn keys_values_and_points_not_read_yet() {
        let d = device();
        let mut states = vec![PointState::default(); 4];
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(object(&d, &states, wall), None, "nothing read yet");
        let now = Instant::now();
        for (i, v) in [Value::Int(1250), Value::Int(53217), Value::Int(1)]
            .iter()
            .enumerate()
        {
            let r = reading(&d.points[i], v);
            assert!(DeviceJson::would_change(&d, &states[i], &r));
            states[i].force(&r, now);
            assert!(
                !DeviceJson::would_change(&d, &states[i], &r),
                "the same again"
            );
        }
        let m = object(&d, &states, wall).expect("an object");
        assert_eq!(m.topic, "casa/medidor/json");
        assert!(m.retain);
        assert_eq!(
            String::from_utf8(m.payload).expect("utf-8"),
            r#"{"potencia":1250,"kWh":5321.7,"estado":"ON","ts":"2023-11-14T22:13:20.123Z"}"#
        );
    }

    #[test]
    fn only_devices_that_changed_and_once_per_turn() {
        let d = device();
        let bus = Bus {
            id: "b".into(),
            kind: crate::model::BusKind::Gpio {
                backend: crate::model::GpioBackendKind::Simulated,
            },
            devices: vec![std::sync::Arc::new(d)],
        };
        let mut states = vec![vec![PointState::default(); 4]];
        let r = reading(&bus.devices[0].points[0], &Value::Int(7));
        states[0][0].force(&r, Instant::now());
        let mut json = DeviceJson::new(1);
        let mut out = Vec::new();
        json.flush(&bus, &states, &mut out);
        assert!(out.is_empty(), "no change, no object");
        json.changed(0, SystemTime::now());
        json.changed(0, SystemTime::now());
        json.flush(&bus, &states, &mut out);
        json.flush(&bus, &states, &mut out);
        assert_eq!(out.len(), 1);
    }
}
