//! Reads on demand: a publish on `<topic>/get` (any payload; the `id` of a JSON object is
//! echoed) asks the bus task that owns the point to read it as soon as the bus is free.
//! Here: the request, the router's side of it (checked and queued, or answered at once),
//! why a read did not happen, and the `<topic>/get/result` message. The bus task's side
//! (pending reads per device, one read for all of them) is `buses::reads`.

use std::sync::atomic::Ordering::Relaxed;

use fieldlink_drivers::modbus::DriverError;
use thiserror::Error;
use tokio::sync::mpsc;

use super::{error::device_text, reply, Request, Router, Routes};
use crate::{health::Availability, publish::Outgoing, topics::PointRef};

/// A read on demand for a bus task.
#[derive(Clone, Debug)]
pub struct Get {
    /// Device index within the bus.
    pub device: usize,
    /// Point index within the device.
    pub point: usize,
    /// The point's topic (a bus task that was reconfigured meanwhile finds the point by
    /// it).
    pub topic: String,
    /// The configuration generation the request was routed by.
    pub generation: u64,
    /// The caller's id, echoed in the result.
    pub id: Option<serde_json::Value>,
}

/// Why a point was not read. The `Display` texts are the `error` field of
/// `<topic>/get/result`; README "Reading a point on demand" lists how they start, and a
/// unit test below checks that list against these variants.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GetError {
    /// The point, or its device, cannot be read on demand (the reason says why).
    #[error("not readable on demand: {0}")]
    NotReadable(String),
    /// The device is offline: nothing is sent to it.
    #[error("device `{0}` is offline")]
    Offline(String),
    /// The bus task has too many requests waiting.
    #[error("request queue full, try again")]
    QueueFull,
    /// The device or the transport failed the read.
    #[error("{}", device_text(.0))]
    Device(DriverError),
    /// The device answered, but its reply does not hold a value of the point's type.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
    /// A UART device did not answer its query in time (as text, e.g. `2s`).
    #[error("no reply within {0}")]
    NoReply(String),
    /// A UART device answered its query without the point's field.
    #[error("the reply has no value for this point")]
    NotInReply,
    /// The serial port (UART) is not open.
    #[error("serial port {0} is not available")]
    PortUnavailable(String),
    /// The serial port was lost while the reply was awaited.
    #[error("serial port lost ({0}) before the reply")]
    PortLost(String),
    /// A GPIO line could not be read.
    #[error("gpio error: {0}")]
    Gpio(String),
    /// The gateway stopped before reading.
    #[error("gateway shutting down; not read")]
    ShuttingDown,
    /// The point's bus is being restarted by a configuration reload.
    #[error("configuration reloading: the bus restarts; not read, send it again")]
    BusRestarting,
    /// A configuration reload removed the point while the request waited.
    #[error("configuration reloaded: the point is gone")]
    Removed,
}

/// The `<topic>/get/result` message of point topic `topic`.
pub fn get_result_on(
    topic: &str,
    outcome: Result<serde_json::Value, GetError>,
    id: Option<&serde_json::Value>,
) -> Outgoing {
    reply(
        crate::topics::Topics::get_result(topic),
        outcome.map_err(|e| e.to_string()),
        id,
    )
}

/// The caller's id in a `/get` payload: any payload asks for a read, and a JSON object's
/// `id` is echoed.
fn request_id(payload: &[u8]) -> Option<serde_json::Value> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut m)) => m.remove("id"),
        _ => None,
    }
}

impl Router {
    /// A publish on `<topic>/get` of the point at `route`: queued to its bus task, or
    /// answered here when it cannot be read (the result message).
    pub(super) fn get(&self, routes: &Routes, route: PointRef, payload: &[u8]) -> Option<Outgoing> {
        let device = &routes.model.buses[route.bus].devices[route.device];
        let point = &device.points[route.point];
        let id = request_id(payload);
        let refuse = |e: GetError| Some(get_result_on(&point.topic, Err(e), id.as_ref()));
        if let Err(why) = point.readable() {
            return refuse(GetError::NotReadable(why.into()));
        }
        let offline = routes
            .devices
            .get(route.stats_index)
            .is_some_and(|s| s.availability() == Availability::Offline);
        if offline {
            return refuse(GetError::Offline(device.id.clone()));
        }
        let get = Get {
            device: route.device,
            point: route.point,
            topic: point.topic.clone(),
            generation: routes.generation,
            id: id.clone(),
        };
        match routes.buses[route.bus].try_send(Request::Get(get)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => refuse(GetError::QueueFull),
            // The bus task has ended: a reload restarts it, or the gateway is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => refuse(if self.restarting.load(Relaxed) {
                GetError::BusRestarting
            } else {
                GetError::ShuttingDown
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn any_payload_asks_and_a_json_id_is_echoed() {
        assert_eq!(request_id(b""), None);
        assert_eq!(request_id(b"now please"), None);
        assert_eq!(request_id(b"42"), None);
        assert_eq!(request_id(b"{\"id\":\"r1\"}"), Some("r1".into()));
        assert_eq!(request_id(b"{\"id\":7,\"x\":1}"), Some(7.into()));
        assert_eq!(request_id(b"{\"value\":1}"), None);
        assert_eq!(request_id(b"{broken"), None);
        let m = get_result_on("casa/t", Ok(21.5.into()), Some(&"r1".into()));
        assert_eq!(m.topic, "casa/t/get/result");
        assert!(!m.retain);
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"ok": true, "value": 21.5, "id": "r1"})
        );
        let m = get_result_on("casa/t", Err(GetError::QueueFull), None);
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"ok": false, "error": "request queue full, try again"})
        );
    }

    /// Every result text starts with one of the prefixes README "Reading a point on
    /// demand" lists.
    #[test]
    fn every_text_starts_as_the_readme_says() {
        let prefixes = super::super::readme_prefixes("`/get/result` error texts start with:");
        assert!(prefixes.len() >= 9, "{prefixes:?}");
        let all = [
            GetError::NotReadable("the point only takes commands".into()),
            GetError::Offline("d".into()),
            GetError::QueueFull,
            GetError::Device(DriverError::Exception {
                code: 2,
                name: "illegal data address",
            }),
            GetError::Device(DriverError::Timeout(Duration::from_secs(1))),
            GetError::Device(DriverError::Io("reset".into())),
            GetError::Device(DriverError::NotConnected("refused".into())),
            GetError::Device(DriverError::Protocol("short".into())),
            GetError::Decode("short reply".into()),
            GetError::NoReply("2s".into()),
            GetError::NotInReply,
            GetError::PortUnavailable("/dev/ttyUSB0".into()),
            GetError::PortLost("hang-up".into()),
            GetError::Gpio("busy".into()),
            GetError::ShuttingDown,
            GetError::BusRestarting,
            GetError::Removed,
        ];
        for e in all {
            let t = e.to_string();
            assert!(
                prefixes.iter().any(|p| t.starts_with(p.as_str())),
                "`{t}` starts with none of {prefixes:?}"
            );
        }
    }
}
