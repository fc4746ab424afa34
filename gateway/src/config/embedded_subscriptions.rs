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
