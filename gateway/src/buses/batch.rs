//! A batch of commands in the bus task: each checked against the configuration it was
//! routed under, collapsed per point, written through the driver, answered on its
//! `<topic>/set/result` and remembered for `rewrite_every`.

use tokio::time::Instant as TokioInstant;
use tracing::{info, warn};

use super::actor::{Cx, Driver};
use super::schedule::Devices;
use crate::commands::{self, Command, CommandError};

/// A command checked against an earlier configuration generation: the point it means
/// now, by its topic, when that point's device has not changed since; `false` when it
/// changed or is gone (the command was checked against a definition that no longer is).
fn resolve(c: &mut Command, cx: &Cx, devs: &Devices) -> bool {
    if c.generation == devs.generation {
        return true;
    }
    for (d, dev) in cx.bus.devices.iter().enumerate() {
        if let Some(p) = dev.points.iter().position(|p| p.topic == c.topic) {
            if devs.since[d] <= c.generation {
                (c.device, c.point) = (d, p);
                return true;
            }
            return false;
        }
    }
    false
}

/// Run a batch of commands in order; each is answered on its result topic.
pub(super) async fn run_commands<D: Driver>(
    driver: &mut D,
    cx: &mut Cx,
    devs: &mut Devices,
    batch: Vec<Command>,
) {
    let mut current = Vec::with_capacity(batch.len());
    for mut c in batch {
        if resolve(&mut c, cx, devs) {
            current.push(c);
        } else {
            cx.push(c.answer(Err(CommandError::Reloaded)));
        }
    }
    let batch = current;
    let mut superseded = Vec::new();
    let run = commands::collapse(batch, |c| cx.point(c.device, c.point), &mut superseded);
    for m in superseded {
        cx.push(m);
    }
    for c in run {
        let Some(topic) = cx.point(c.device, c.point).map(|p| p.topic.clone()) else {
            c.complete::<()>(&Err(CommandError::Reloaded));
            continue;
        };
        // Shutdown came while an earlier command of the batch ran: write nothing more.
        if cx.shutdown.is_shutdown() {
            cx.answer(&c, Err(CommandError::ShuttingDown));
            continue;
        }
        let device = cx.device(c.device).id.clone();
        let began = TokioInstant::now();
        let written = driver.write(&c, cx).await;
        devs.rewrites.commanded(cx, &c, &written, began);
        match written {
            Ok(r) => {
                info!(device = %device, topic = %topic, value = ?r.text(), "Command written.");
                let json = r.json();
                cx.force(c.device, c.point, r);
                cx.answer(&c, Ok(json));
            }
            Err(e) => {
                warn!(device = %device, topic = %topic, error = %e, "Command failed.");
                cx.answer(&c, Err(e));
            }
        }
    }
}
