//! Where a line goes: the awaited acknowledgement, the awaited reply, a device sending on
//! its own, or nobody.

use std::{sync::atomic::Ordering::Relaxed, time::SystemTime};

use fieldlink_drivers::uart::{FieldValue, Parsed};
use tracing::debug;

use super::{fields::to_value, Awaited, Uart, Waited};
use crate::{buses::Cx, model::Device};

impl Uart {
    /// Dispatch one line; returns how the wait for `awaited` ended, if this line ends it.
    pub(super) fn line(&mut self, line: &str, awaited: Awaited<'_>, cx: &mut Cx) -> Option<Waited> {
        // 1. The acknowledgement a command waits for.
        if let Awaited::Ack(re) = awaited {
            if re.is_match(line) {
                return Some(Waited::Done);
            }
        }
        // 2. The reply a polled device waits for.
        if let Awaited::Reply(d) = awaited {
            if self.accept(d, line, cx) {
                return Some(Waited::Done);
            }
        }
        // 3. A device sending on its own.
        for d in 0..self.last_seen.len() {
            if self.listens(d) && self.accept(d, line, cx) {
                cx.stats_of(d).polls.fetch_add(1, Relaxed);
                return None;
            }
        }
        // 4. A reply of a polled device that came too late (its poll timed out): not ours
        // to publish, and not the acknowledgement either.
        if (0..self.last_seen.len()).any(|d| self.polled(d) && self.parses(d, line)) {
            self.count(|c| &c.garbage);
            debug!(bus = %self.bus.id, line = %line.escape_debug(), "Late or unsolicited reply dropped.");
            return None;
        }
        // 5. Nobody's: the wrong acknowledgement, or garbage.
        if let Awaited::Ack(_) = awaited {
            return Some(Waited::WrongAck(line.escape_debug().to_string()));
        }
        self.count(|c| &c.garbage);
        debug!(bus = %self.bus.id, line = %line.escape_debug(), "Garbage line.");
        None
    }

    /// Whether device `d`'s parser accepts `line` and finds one of its fields.
    fn parses(&self, d: usize, line: &str) -> bool {
        let dev = &self.bus.devices[d];
        dev.uart()
            .and_then(|u| u.parser.as_ref())
            .and_then(|p| p.parse(line))
            .is_some_and(|parsed| !fields_of(dev, &parsed).is_empty())
    }

    /// Offer a line to device `d`: taken when its parser accepts the line and it carries
    /// at least one of the device's fields. Publishes what changed.
    fn accept(&mut self, d: usize, line: &str, cx: &mut Cx) -> bool {
        let bus = self.bus.clone();
        let dev = &bus.devices[d];
        let Some(parser) = dev.uart().and_then(|u| u.parser.as_ref()) else {
            return false;
        };
        let Some(parsed) = parser.parse(line) else {
            return false;
        };
        let found = fields_of(dev, &parsed);
        if found.is_empty() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let wall = SystemTime::now();
        for (p, fv) in found {
            let point = &dev.points[p];
            let value = to_value(point, &fv);
            if self.captured(d, p, &value) {
                continue;
            }
            match value {
                Ok(v) => {
                    cx.value(d, p, &v, now, wall);
                }
                Err(e) => {
                    self.count(|c| &c.bad_values);
                    debug!(topic = %point.topic, error = %e, "Bad value in line.");
                }
            }
        }
        self.last_seen[d] = tokio::time::Instant::now();
        cx.set_online(d, true, None);
        true
    }
}

/// The points of `dev` whose field is in the parsed line, with the field's value.
fn fields_of(dev: &Device, parsed: &Parsed<'_>) -> Vec<(usize, FieldValue)> {
    dev.points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let f = p.uart()?.field.as_ref()?;
            parsed.get(f).map(|v| (i, v))
        })
        .collect()
}
