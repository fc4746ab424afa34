//! `mqtt.embedded`: the bounds of what the broker holds for offline clients
//! (`max_queued_messages`, `max_queued_bytes`, `max_queued_bytes_total`) and its store on
//! disk (`persistence`, `autosave_interval`).

use std::{path::Path, time::Duration};

use super::{Cx, EmbeddedFile, Validator};
use crate::model::{Persistence, QueueLimits};

/// Default `max_queued_messages` (Mosquitto's default).
pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
/// Default `max_queued_bytes`.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 20;
/// Default `max_queued_bytes_total`.
pub const DEFAULT_MAX_QUEUED_BYTES_TOTAL: usize = 16 << 20;
/// Default `autosave_interval`.
pub const DEFAULT_AUTOSAVE_INTERVAL: Duration = Duration::from_secs(10);
/// The store's file name under `state_dir`.
pub const STORE_FILE: &str = "broker.store";

impl Validator {
    /// The queue bounds and the store; `cx` is `mqtt.embedded`.
    pub(super) fn embedded_store(
        &mut self,
        cx: &Cx,
        e: &EmbeddedFile,
        state_dir: &Path,
    ) -> (QueueLimits, Option<Persistence>) {
        let max_messages = match &e.max_queued_messages {
            None => DEFAULT_MAX_QUEUED_MESSAGES,
            Some(m) if (1..=100_000).contains(&m.value) => m.value as usize,
            Some(m) => {
                self.error(
                    &cx.at("max_queued_messages"),
                    m,
                    format!("max_queued_messages {} is outside 1–100000", m.value),
                    Some(format!("the default is {DEFAULT_MAX_QUEUED_MESSAGES}")),
                );
                DEFAULT_MAX_QUEUED_MESSAGES
            }
        };
        let bytes = |v: &mut Validator,
                     key: &str,
                     f: Option<&super::Spanned<super::ByteSize>>,
                     default: usize| {
            match f {
                None => default,
                Some(b) if (1024..=1 << 32).contains(&b.value.0) => b.value.0 as usize,
                Some(b) => {
                    v.error(
                        &cx.at(key),
                        b,
                        format!("{key} {} bytes is outside 1KiB–4GiB", b.value.0),
                        Some(format!("e.g. `{}MiB`", default >> 20)),
                    );
                    default
                }
            }
        };
        let max_bytes = bytes(
            self,
            "max_queued_bytes",
            e.max_queued_bytes.as_ref(),
            DEFAULT_MAX_QUEUED_BYTES,
        );
        let mut max_bytes_total = bytes(
            self,
            "max_queued_bytes_total",
            e.max_queued_bytes_total.as_ref(),
            DEFAULT_MAX_QUEUED_BYTES_TOTAL,
        );
        if max_bytes_total < max_bytes {
            let (loc, which) = match (&e.max_queued_bytes_total, &e.max_queued_bytes) {
                (Some(t), _) => (super::at(t), "max_queued_bytes_total"),
                (None, Some(b)) => (super::at(b), "max_queued_bytes"),
                (None, None) => ((0, 0), "max_queued_bytes_total"),
            };
            self.error(
                &cx.at(which),
                loc,
                format!(
                    "max_queued_bytes_total ({max_bytes_total} bytes) is below max_queued_bytes ({max_bytes} bytes): one session could never hold what it may"
                ),
                Some("raise max_queued_bytes_total or lower max_queued_bytes".into()),
            );
            max_bytes_total = max_bytes;
        }
        let autosave_interval = self.positive_duration(
            &cx.at("autosave_interval"),
            e.autosave_interval.as_ref(),
            DEFAULT_AUTOSAVE_INTERVAL,
        );
        if let Some(a) = e
            .autosave_interval
            .as_ref()
            .filter(|a| a.value.0 > Duration::from_secs(3600))
        {
            self.error(
                &cx.at("autosave_interval"),
                a,
                "autosave_interval above 1h risks an hour of clients' messages on a crash",
                Some("use at most `1h`; the default is `10s`".into()),
            );
        }
        let persistence = e
            .persistence
            .as_ref()
            .is_none_or(|p| p.value)
            .then(|| Persistence {
                file: state_dir.join(STORE_FILE),
                autosave_interval,
            });
        (
            QueueLimits {
                max_messages,
                max_bytes,
                max_bytes_total,
            },
            persistence,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::{check_sources, Diagnostic};

    fn check(embedded: &str) -> Result<crate::model::EmbeddedBroker, Vec<Diagnostic>> {
        let gateway = format!(
            "id: t\nmappings: m.yaml\nstate_dir: /srv/fl\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:1883\"\n{embedded}"
        );
        check_sources(Path::new("/etc/fl/gateway.yaml"), &gateway, |_, _| {
            vec![(PathBuf::from("m.yaml"), "buses: []\ndevices: []\n".into())]
        })
        .map(|c| c.model.mqtt.embedded.expect("embedded broker"))
    }

    #[test]
    fn defaults_and_values() {
        let e = check("").expect("valid");
        assert_eq!(e.queues.max_messages, 1000);
        assert_eq!(e.queues.max_bytes, 1 << 20);
        assert_eq!(e.queues.max_bytes_total, 16 << 20);
        let p = e.persistence.expect("on by default");
        assert_eq!(p.file, Path::new("/srv/fl/broker.store"));
        assert_eq!(p.autosave_interval, std::time::Duration::from_secs(10));
        let e = check(
            "    max_queued_messages: 50\n    max_queued_bytes: 64KiB\n    max_queued_bytes_total: 1MiB\n    persistence: false\n",
        )
        .expect("valid");
        assert_eq!(
            (
                e.queues.max_messages,
                e.queues.max_bytes,
                e.queues.max_bytes_total
            ),
            (50, 64 << 10, 1 << 20)
        );
        assert!(e.persistence.is_none());
    }

    #[test]
    fn every_error_is_reported() {
        let d = check(
            "    max_queued_messages: 0\n    max_queued_bytes: 2MiB\n    max_queued_bytes_total: 1MiB\n    autosave_interval: 2h\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        for key in [
            "mqtt.embedded.max_queued_messages",
            "mqtt.embedded.max_queued_bytes_total",
            "mqtt.embedded.autosave_interval",
        ] {
            assert!(text.iter().any(|t| t.contains(key)), "{key}: {text:#?}");
        }
        assert!(
            text.iter().any(|t| t.contains("is below max_queued_bytes")),
            "{text:#?}"
        );
    }
}
