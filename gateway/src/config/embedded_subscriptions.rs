//! `mqtt.embedded.max_subscriptions` and `max_subscriptions_total`: the bounds on
//! subscriptions, per client and for all clients together.

use super::{Cx, EmbeddedFile, Validator};

/// Default most subscriptions per client: Home Assistant subscribes to each entity's
/// state and availability topics once (a few per entity); at 2 000 entities that stays
/// well below.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
/// Default most subscriptions of all clients together: Home Assistant at its bound, and
/// as much again for every other client.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS_TOTAL: usize = 20_000;
/// Highest value either key accepts.
const MOST: u32 = 1_000_000;

impl Validator {
    /// The two bounds, with every problem collected; `cx` is `mqtt.embedded`.
    pub(super) fn embedded_subscriptions(&mut self, cx: &Cx, e: &EmbeddedFile) -> (usize, usize) {
        let mut bound = |key: &str, v: Option<&super::Spanned<u32>>, default: usize| match v {
            None => default,
            Some(m) if (1..=MOST).contains(&m.value) => m.value as usize,
            Some(m) => {
                self.error(
                    &cx.at(key),
                    m,
                    format!("{key} {} is outside 1–{MOST}", m.value),
                    None,
                );
                default
            }
        };
        let per_client = bound(
            "max_subscriptions",
            e.max_subscriptions.as_ref(),
            DEFAULT_MAX_SUBSCRIPTIONS,
        );
        let total = bound(
            "max_subscriptions_total",
            e.max_subscriptions_total.as_ref(),
            DEFAULT_MAX_SUBSCRIPTIONS_TOTAL.max(per_client),
        );
        if total < per_client {
            if let Some(t) = &e.max_subscriptions_total {
                self.error(
                    &cx.at("max_subscriptions_total"),
                    t,
                    format!(
                        "max_subscriptions_total {total} is below max_subscriptions {per_client}"
                    ),
                    Some("raise `max_subscriptions_total`, or lower `max_subscriptions`".into()),
                );
            }
        }
        (per_client, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(embedded: &str) -> Result<(usize, usize), Vec<String>> {
        let gateway = format!(
            "id: t\nmappings: m.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:1883\"\n{embedded}"
        );
        let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\ndevices:\n  - id: d\n    bus: b\n    points:\n      - { topic: casa/a, table: holding, address: 0 }\n";
        crate::config::check_sources(std::path::Path::new("/g.yaml"), &gateway, |_, _| {
            vec![("m.yaml".into(), mapping.to_string())]
        })
        .map(|c| {
            let e = c.model.mqtt.embedded.expect("embedded");
            (e.max_subscriptions, e.max_subscriptions_total)
        })
        .map_err(|d| {
            d.iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect()
        })
    }

    #[test]
    fn defaults_values_and_errors() {
        assert_eq!(
            check(""),
            Ok((DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_MAX_SUBSCRIPTIONS_TOTAL))
        );
        assert_eq!(
            check("    max_subscriptions: 50000\n"),
            Ok((50_000, 50_000)),
            "the total's default grows with the per-client bound"
        );
        assert_eq!(
            check("    max_subscriptions: 100\n    max_subscriptions_total: 500\n"),
            Ok((100, 500))
        );
        let errors = check("    max_subscriptions: 0\n    max_subscriptions_total: 2000000\n")
            .expect_err("out of range");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("mqtt.embedded.max_subscriptions:"),
            "{errors:?}"
        );
        let errors = check("    max_subscriptions: 500\n    max_subscriptions_total: 100\n")
            .expect_err("total below per client");
        assert!(
            errors[0].contains("max_subscriptions_total 100 is below max_subscriptions 500"),
            "{errors:?}"
        );
    }
}
