//! The gateway file's top level and `mqtt:`: id, base topic, state directory, client id.

use std::{path::PathBuf, time::Duration};

use super::{Cx, GatewayFile, Validator};
use crate::{
    model::MqttModel,
    topics::{check_topic, is_id},
};

/// What the gateway file gives the model besides the buses.
pub(super) struct Header {
    /// Gateway id.
    pub(super) id: String,
    /// Root of the gateway's own topics.
    pub(super) base_topic: String,
    /// MQTT settings.
    pub(super) mqtt: MqttModel,
    /// How often diagnostics are published.
    pub(super) diagnostics_interval: Duration,
    /// Home Assistant discovery.
    pub(super) homeassistant: Option<crate::model::HomeAssistant>,
    /// Commissioning requests accepted (#24).
    pub(super) commissioning: bool,
}

/// Where state lives unless `state_dir` says otherwise (systemd's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fieldlink";

impl Validator {
    /// The gateway file; `cx` is its top.
    pub(super) fn gateway(&mut self, cx: &Cx, gw: &GatewayFile) -> Option<Header> {
        let id = gw.id.value.clone();
        if !is_id(&id) {
            self.error(
                &cx.at("id"),
                &gw.id,
                format!("gateway id `{id}` may only use letters, digits, `-` and `_`"),
                Some("it becomes a topic level and part of the MQTT client id".into()),
            );
        }
        let base_topic = match &gw.base_topic {
            Some(b) => {
                let bcx = cx.at("base_topic");
                match check_topic(&b.value) {
                    Err(e) => self.error(&bcx, b, e, None),
                    Ok(Some(w)) => self.warn(&bcx, b, w),
                    Ok(None) => {}
                }
                self.dotted_topic(&bcx, b);
                b.value.clone()
            }
            None => format!("fieldlink/{id}"),
        };
        let e = &gw.mqtt.embedded;
        if !e.enabled && gw.mqtt.upstream.is_none() {
            self.error(
                &cx.at("mqtt.embedded.enabled"),
                (0, 0),
                "no MQTT destination: the embedded broker is disabled and no upstream is set",
                Some("set `mqtt.embedded.enabled: true` or add `mqtt.upstream`".into()),
            );
        }
        let state_dir = match &gw.state_dir {
            Some(d) if d.value.trim().is_empty() => {
                self.error(&cx.at("state_dir"), d, "empty path", None);
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(d) => cx.dir().join(&d.value),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let upstream = gw
            .mqtt
            .upstream
            .as_ref()
            .map(|u| self.upstream(&cx.at("mqtt.upstream"), &u.value, &id, &state_dir));
        let embedded = self.embedded(&cx.at("mqtt.embedded"), e, &state_dir);
        let client_id = self.client_id(&cx.at("mqtt.client_id"), gw.mqtt.client_id.as_ref(), &id);
        // No effect any more: a warning only, whatever the value, so an older file never
        // stops the gateway for it.
        if let Some(k) = &gw.mqtt.keepalive {
            self.warn(
                &cx.at("mqtt.keepalive"),
                k,
                "has no effect: the gateway is linked to its embedded broker in process, \
                 without an MQTT connection (the upstream connection has \
                 `mqtt.upstream.keepalive`)",
            );
        }
        let diagnostics_interval = self.positive_duration(
            &cx.at("diagnostics_interval"),
            gw.diagnostics_interval.as_ref(),
            Duration::from_secs(30),
        );
        let homeassistant = self.homeassistant(
            cx,
            gw.homeassistant.as_ref(),
            embedded.is_some(),
            gw.mqtt.upstream.is_some(),
        );
        Some(Header {
            homeassistant,
            id,
            base_topic,
            mqtt: MqttModel {
                embedded,
                client_id,
                upstream,
            },
            diagnostics_interval,
            commissioning: self.commissioning(cx, gw),
        })
    }

    /// `commissioning: true` takes its requests from the embedded broker: without one it
    /// does nothing (a warning).
    fn commissioning(&mut self, cx: &Cx, gw: &GatewayFile) -> bool {
        let Some(c) = &gw.commissioning else {
            return false;
        };
        if c.value && !gw.mqtt.embedded.enabled {
            self.warn(
                &cx.at("commissioning"),
                c,
                "has no effect: commissioning requests come through the embedded broker, \
                 which is disabled (`mqtt.embedded.enabled: false`)",
            );
        }
        c.value
    }
}
