//! The bus tasks: one task owns each bus (the actor pattern) and serialises all traffic
//! on it.
//!
//! # Layout
//!
//! - [`actor`](self): the one device actor every bus kind runs. It owns the poll schedule
//!   (devices spread over [`STAGGER_SLOTS`] offsets), availability changes with their logs
//!   and counters, the offline backoff and the fair share of a shared bus, command intake
//!   (a batch collapsed per point and run ahead of the next poll) and the shutdown path
//!   that answers every command still queued.
//! - `reads`: reads on demand (`<topic>/get`): the requests of a batch per device, served
//!   by one read of each device after the batch's commands, ahead of the next poll.
//! - `commission`: commissioning requests through the running gateway, each in a task
//!   of its own whose Modbus exchanges the bus task performs one per turn, after the
//!   polls that are due.
//! - `modbus`, `uart`, `gpio`: what a bus kind supplies, and nothing of the loop: read a
//!   device, write a point, wait for an event (a line, an edge), and its own timers.
//! - `batch`: a batch of commands run in the bus task (checked against its configuration
//!   generation, collapsed per point, written, answered).
//! - `schedule`: when each device is polled (offsets, cadence, the fair share of a
//!   failing device) and the availability verdict that does not wait for its tries.
//! - `cadence`: points at their own cadence: a device's points grouped by poll interval,
//!   which groups a poll reads, and `check`'s requests per minute.
//! - `rewrite`: values kept alive by `rewrite_every` (written again through the driver),
//!   and the availability of devices that are only written (`write_only`).
//! - `scale`: scale factor registers (`scale_register`): read with their values as
//!   items of the read plan, applied to the values read in the same poll.
//! - `registry`: the running bus tasks by bus id (`Buses`): started by the runtime,
//!   reconfigured or stopped by a reload, and the one list of which bus kind runs which
//!   driver.
//!
//! A new bus kind touches, and only touches: one file here implementing `Driver` (or a
//! transport for an existing driver) and its line in `registry`'s spawn; one file under
//! `config/` for its schema and its name in `config::mapping`'s kind list; one variant of
//! `model::BusKind` (and of `model::DeviceKind` / `model::Source` when its devices or
//! points carry settings of their own); and the list of bus kinds in `lib.rs`.

mod actor;
mod batch;
mod cadence;
mod commission;
pub(crate) mod device_json;
mod gpio;
mod modbus;
mod reads;
mod registry;
mod rewrite;
mod scale;
mod schedule;
mod uart;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{health::Stats, publish::Outgoing, shutdown::Shutdown};

/// What [`BusIo::commands`] carries: commands and reads on demand (`<topic>/get`); tests
/// drive a bus task with it.
pub use crate::commands::{Command, Get, Reply, Request};
pub use actor::{Control, STAGGER_SLOTS};
use actor::{Cx, Driver, Polled};
pub use cadence::requests_per_minute;
pub use gpio::run_gpio;
pub use modbus::run_modbus;
pub(crate) use registry::{open_gpio, Buses};
pub use scale::scale_registers;
pub use uart::run_uart;

/// The channels a bus task talks through.
pub struct BusIo {
    /// Messages for the MQTT side, one batch per poll, event or command batch.
    pub out: mpsc::Sender<crate::publish::Batch>,
    /// Validated commands and reads on demand for this bus's devices.
    pub commands: mpsc::Receiver<Request>,
    /// Reloads ([`Control`]); a closed channel when nothing reloads.
    pub control: mpsc::Receiver<Control>,
    /// Shared counters.
    pub stats: Arc<Stats>,
    /// The shutdown signal.
    pub shutdown: Shutdown,
    /// The snapshots the Modbus server serves (`modbus_server:`), which the task
    /// records its served devices' reads into; `None` without a Modbus server.
    pub snapshots: Option<crate::modbus_server::Snapshots>,
}

/// The retained availability message of a device.
pub fn availability(topic: &str, online: bool) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        payload: if online {
            b"online".to_vec()
        } else {
            b"offline".to_vec()
        },
        retain: true,
        qos: 1,
        slot: None,
    }
}
