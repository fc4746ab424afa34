//! The gateway file's top level and `mqtt:`: id, base topic, state directory, client id.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{at, GatewayFile, Validator};
use crate::{
    model::MqttModel,
    topics::{check_topic, is_id},
};

pub(super) struct Header {
    pub(super) id: String,
    pub(super) base_topic: String,
    pub(super) mqtt: MqttModel,
    pub(super) diagnostics_interval: Duration,
}

/// Where state lives unless `state_dir` says otherwise (systemd's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fieldlink";

impl Validator {
    pub(super) fn gateway(&mut self, file: &Path, gw: &GatewayFile) -> Option<Header> {
        let id = gw.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&gw.id),
                "id",
                format!("gateway id `{id}` may only use letters, digits, `-` and `_`"),
                Some("it becomes a topic level and part of the MQTT client id".into()),
            );
        }
        let base_topic = match &gw.base_topic {
            Some(b) => {
                match check_topic(&b.value) {
                    Err(e) => self.error(file, at(b), "base_topic", e, None),
                    Ok(Some(w)) => self.warn(file, at(b), "base_topic", w),
                    Ok(None) => {}
                }
                b.value.clone()
            }
            None => format!("fieldlink/{id}"),
        };
        let e = &gw.mqtt.embedded;
        if !e.enabled && gw.mqtt.upstream.is_none() {
            self.error(
                file,
                (0, 0),
                "mqtt.embedded.enabled",
                "no MQTT destination: the embedded broker is disabled and no upstream is set",
                Some("set `mqtt.embedded.enabled: true` or add `mqtt.upstream`".into()),
            );
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let state_dir = match &gw.state_dir {
            Some(d) if d.value.trim().is_empty() => {
                self.error(file, at(d), "state_dir", "empty path", None);
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(d) => dir.join(&d.value),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let upstream = gw
            .mqtt
            .upstream
            .as_ref()
            .map(|u| self.upstream(file, &u.value, &id, &state_dir));
        let (listen, embedded) = self.embedded(file, e);
        let client_id = match &gw.mqtt.client_id {
            Some(c) if c.value.is_empty() || c.value.len() > 256 => {
                self.error(
                    file,
                    at(c),
                    "mqtt.client_id",
                    "client id must be 1–256 bytes",
                    None,
                );
                String::new()
            }
            Some(c) => c.value.clone(),
            None => format!("fieldlink-{id}"),
        };
        // No effect any more: a warning only, whatever the value, so an older file never
        // stops the gateway for it.
        if let Some(k) = &gw.mqtt.keepalive {
            self.warn(
                file,
                at(k),
                "mqtt.keepalive",
                "has no effect: the gateway is linked to its embedded broker in process, \
                 without an MQTT connection (the upstream connection has \
                 `mqtt.upstream.keepalive`)",
            );
        }
        let keepalive = gw
            .mqtt
            .keepalive
            .as_ref()
            .map_or(Duration::from_secs(15), |k| k.value.0);
        let diagnostics_interval = self.positive_duration(
            file,
            gw.diagnostics_interval.as_ref(),
            "diagnostics_interval",
            Duration::from_secs(30),
        );
        let host = if listen.ip().is_unspecified() {
            if listen.is_ipv4() {
                "127.0.0.1".to_string()
            } else {
                "::1".to_string()
            }
        } else {
            listen.ip().to_string()
        };
        Some(Header {
            id,
            base_topic,
            mqtt: MqttModel {
                embedded,
                host,
                port: listen.port(),
                client_id,
                keepalive,
                upstream,
            },
            diagnostics_interval,
        })
    }
}
