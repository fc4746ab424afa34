//! Kept-alive setpoints (`rewrite_every`) and the availability of devices that are only
//! written (`write_only`), for every bus kind: the actor calls these hooks, and every
//! write goes through the driver's own write path.
//!
//! **Rewrites.** After a `/set` of a point with `rewrite_every` was written, its value is
//! kept and written again whenever `rewrite_every` has passed since the point's last
//! write (the actor wakes for it). A rewrite publishes its read-back through the point's
//! publish policy (not forced) and answers nothing on `/set/result`. One that fails is
//! counted (`rewrite_errors`), logged at WARN once per run of failures, and tried again a
//! period later; the first that succeeds after failures is logged at INFO. Rewriting
//! stops when:
//! - a new `/set` of the point is written: its value is kept from then on, the period
//!   counted from its write;
//! - a new `/set` fails before reaching the device or is not acknowledged: nothing is
//!   kept (the old value is not written over a newer command, the failed one not behind
//!   the caller's back); a `/set` refused before it reached the bus task (out of range,
//!   device offline, ...) changes nothing;
//! - a reload changes or removes the point's device (an unchanged device keeps its kept
//!   values and their periods), or replaces the whole bus task (its transport changed);
//! - the gateway stops.
//!
//! **Devices of `write_only` points only** are never polled. Such a device is `online`
//! from its start and after every write it answered (an exception is an answer), and
//! `offline` after a write that got no answer (timeout, connection); the command router
//! does not refuse commands to it while offline, since a write is the only way to learn
//! it is back.

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, SystemTime},
};

use fieldlink_drivers::modbus::DriverError;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use super::{Cx, Driver};
use crate::{
    commands::{Command, CommandError},
    publish::Reading,
};

/// The values kept alive on one bus.
#[derive(Default)]
pub(super) struct Rewrites {
    kept: Vec<Kept>,
}

/// One point's kept value.
struct Kept {
    /// The command as last written (device, point and raw value; no id).
    command: Command,
    period: Duration,
    /// When it is written again.
    next: TokioInstant,
    /// Its last rewrite failed (logged once per run of failures).
    failing: bool,
}

impl Rewrites {
    /// When the next rewrite is due (the actor's wake-up includes it).
    pub(super) fn next_due(&self) -> Option<TokioInstant> {
        self.kept.iter().map(|k| k.next).min()
    }

    /// How many values are kept alive.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
    }

    /// `/set` command `c` was written with `outcome` at `began`: keep its value (when
    /// its point has `rewrite_every`) or stop keeping the old one; the availability of a
    /// device that is only written follows.
    pub(super) fn commanded(
        &mut self,
        cx: &mut Cx,
        c: &Command,
        outcome: &Result<Reading, CommandError>,
        began: TokioInstant,
    ) {
        availability(cx, c.device, outcome);
        let Some((topic, period)) = cx
            .point(c.device, c.point)
            .and_then(|p| Some((&p.topic, p.rewrite_every?)))
        else {
            return;
        };
        let at = self
            .kept
            .iter()
            .position(|k| k.command.device == c.device && k.command.point == c.point);
        // A failed read-back still wrote the value.
        let written = matches!(outcome, Ok(_) | Err(CommandError::ReadBack(_)));
        match (written, at) {
            (true, at) => {
                let k = Kept {
                    command: Command {
                        id: None,
                        reply: None,
                        ..c.clone()
                    },
                    period,
                    next: after(began, period),
                    failing: false,
                };
                match at {
                    Some(i) => self.kept[i] = k,
                    None => self.kept.push(k),
                }
            }
            (false, Some(i)) => {
                let device = &cx.device(c.device).id;
                info!(device = %device, topic = %topic, "Rewrites stopped: the new value was not written.");
                self.kept.swap_remove(i);
            }
            (false, None) => {}
        }
    }

    /// Write again every kept value that is due (until shutdown is requested).
    pub(super) async fn run_due<D: Driver>(&mut self, driver: &mut D, cx: &mut Cx) {
        for i in 0..self.kept.len() {
            if self.kept[i].next > TokioInstant::now() {
                continue;
            }
            if cx.shutdown.is_shutdown() {
                return;
            }
            let c = self.kept[i].command.clone();
            let (began, wall) = (TokioInstant::now(), SystemTime::now());
            let outcome = driver.write(&c, cx).await;
            availability(cx, c.device, &outcome);
            let Some(topic) = cx.point(c.device, c.point).map(|p| p.topic.clone()) else {
                continue;
            };
            let device = cx.device(c.device).id.clone();
            let k = &mut self.kept[i];
            match outcome {
                Ok(r) => {
                    cx.stats_of(c.device).rewrites.fetch_add(1, Relaxed);
                    if std::mem::take(&mut k.failing) {
                        info!(device = %device, topic = %topic, "Rewrite acknowledged again.");
                    } else {
                        debug!(device = %device, topic = %topic, "Rewritten.");
                    }
                    k.next = after(began, k.period);
                    cx.reading(c.device, c.point, r, began, wall);
                }
                Err(e) => {
                    cx.stats_of(c.device).rewrite_errors.fetch_add(1, Relaxed);
                    if std::mem::replace(&mut k.failing, true) {
                        debug!(device = %device, topic = %topic, error = %e, "Rewrite failed again.");
                    } else {
                        warn!(device = %device, topic = %topic, error = %e, retry_in = ?k.period, "Rewrite failed.");
                    }
                    k.next = TokioInstant::now() + k.period;
                }
            }
        }
    }

    /// A reload: device `j` of the new bus is `kept[j]` of the old one, unchanged, or new.
    /// The values of unchanged devices are kept (with their periods); the others end.
    pub(super) fn reconfigure(&mut self, kept: &[Option<usize>]) {
        self.kept.retain_mut(
            |k| match kept.iter().position(|o| *o == Some(k.command.device)) {
                Some(j) => {
                    k.command.device = j;
                    true
                }
                None => false,
            },
        );
    }
}

/// When a value written at `began` is due again: a period later, and never at once
/// (after a write slower than the period).
fn after(began: TokioInstant, period: Duration) -> TokioInstant {
    let next = began + period;
    let now = TokioInstant::now();
    if next <= now {
        now + period
    } else {
        next
    }
}

/// Devices `which` that are only written (never polled) start `online`.
pub(super) fn start_online(cx: &mut Cx, which: impl Iterator<Item = usize>) {
    for d in which {
        if !cx.device(d).polled() {
            cx.set_online(d, true, None);
        }
    }
}

/// A device that is only written is online after a write it answered, offline after one
/// it did not.
fn availability(cx: &mut Cx, d: usize, outcome: &Result<Reading, CommandError>) {
    if cx.device(d).polled() {
        return;
    }
    match outcome {
        Ok(_) | Err(CommandError::Device(DriverError::Exception { .. })) => {
            cx.set_online(d, true, None);
        }
        Err(CommandError::Device(e)) => cx.set_online(d, false, Some(&e.to_string())),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldlink_drivers::value::Value;

    fn kept(device: usize, point: usize, next: TokioInstant) -> Kept {
        Kept {
            command: Command {
                device,
                point,
                topic: format!("t/{device}/{point}"),
                generation: 0,
                value: Value::Int(1),
                id: None,
                reply: None,
            },
            period: Duration::from_secs(10),
            next,
            failing: false,
        }
    }

    #[test]
    fn the_next_write_is_a_period_later_and_never_at_once() {
        let p = Duration::from_secs(10);
        let now = TokioInstant::now();
        assert!(after(now, p) >= now + p);
        // A write that began 12 s ago (slower than the period): a whole period from now.
        let Some(began) = now.checked_sub(Duration::from_secs(12)) else {
            return;
        };
        let next = after(began, p);
        assert!(next >= now + p && next > began + p, "{:?}", next - now);
    }

    #[test]
    fn a_reload_keeps_the_values_of_unchanged_devices_under_their_new_index() {
        let t0 = TokioInstant::now();
        let s = Duration::from_secs;
        let mut r = Rewrites {
            kept: vec![
                kept(0, 1, t0 + s(3)),
                kept(1, 0, t0 + s(5)),
                kept(2, 2, t0 + s(7)),
            ],
        };
        assert_eq!(r.next_due(), Some(t0 + s(3)));
        // Old device 0 changed (new 1 is fresh), old 1 is gone, old 2 is new device 0.
        r.reconfigure(&[Some(2), None]);
        assert_eq!(r.len(), 1);
        let k = &r.kept[0];
        assert_eq!((k.command.device, k.command.point), (0, 2));
        assert_eq!(r.next_due(), Some(t0 + s(7)), "its period goes on");
        r.reconfigure(&[]);
        assert_eq!(r.next_due(), None);
    }
}
