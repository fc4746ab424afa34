//! fieldlink: polls field devices and maps every reading onto an MQTT topic tree.
//!
//! The entry point is [`run`]: `main` and the tests both call it with a validated
//! [`Model`] and a [`Shutdown`] signal ([`run_with`] takes [`Hooks`] for tests, benchmarks
//! and the demo).
//!
//! # Layout
//!
//! Data flows top to bottom: configuration files become a model, one task per bus polls
//! its devices, their readings become messages, and the MQTT sides carry them out;
//! commands come back the other way.
//!
//! - [`config`]: the YAML files a person writes (their structs' `///` docs are the user
//!   reference), loading with file:line:col diagnostics, and validation that collects
//!   every error and builds the model: one file per concern and one per bus kind.
//! - [`model`]: the validated, immutable runtime model (buses, devices, points).
//! - [`buses`]: one task per bus. One device actor (schedule, availability, backoff,
//!   commands, shutdown) serves every bus kind; `modbus`, `uart` and `gpio` supply only
//!   their I/O; its registry starts, reconfigures and stops the tasks. The bus kinds are
//!   Modbus TCP, Modbus RTU (both `modbus`), `uart` and `gpio`; [`buses`] lists every file
//!   a new kind touches.
//! - `publish`: from a decoded value to a message (scale, precision, payload, publish
//!   policy); `commands`: `<topic>/set` parsed and checked, routed to its bus, answered on
//!   `<topic>/set/result`, and `<topic>/get` (a read on demand) routed the same way and
//!   answered on `<topic>/get/result`; `topics`: the MQTT topic contract shared by both.
//! - [`broker`]: the embedded MQTT broker (rmqtt) hardened for a home LAN, and the
//!   in-process link the gateway publishes through; [`mqtt`]: the gateway's MQTT sides,
//!   the embedded one (its end of that link) and the upstream (cloud) broker with its
//!   disk store-and-forward queue.
//! - [`health`]: counters and the diagnostics document; [`shutdown`]: the stop signal.
//! - [`homeassistant`]: Home Assistant MQTT discovery, derived from the mappings.
//! - [`logs`]: the log line formatter that escapes what clients send.
//! - `runtime`: [`run`], which starts those parts in order and stops them in reverse;
//!   `reload`: live reload (SIGHUP), which plans what changed and has the bus registry
//!   restart only that; `service`: what systemd hears (ready, watchdog, reloading,
//!   stopping).
//! - [`demo`]: `fieldlink demo`, simulated devices on the embedded broker.
//! - [`commission`]: `fieldlink probe`, `scan` and `write`, for finding a device and its
//!   registers from the command line: directly, or through the running gateway
//!   (`<base>/bus/<id>/request`), whose bus task runs them between its polls.
//! - [`modbus_server`]: the Modbus TCP server (`modbus_server:`) that serves other
//!   Modbus masters the registers the bus tasks last read, and takes their writes down
//!   the road of `<topic>/set`.
//! - [`profiles_cmd`]: `fieldlink profiles`, the device profiles (shipped and the
//!   user's; they are read and expanded in [`config`]).

pub mod broker;
pub mod buses;
mod commands;
pub mod commission;
pub mod config;
pub mod demo;
pub mod health;
pub mod homeassistant;
pub mod logs;
pub mod modbus_server;
pub mod model;
pub mod mqtt;
pub mod profiles_cmd;
mod publish;
mod reload;
mod runtime;
mod service;
pub mod shutdown;
mod topics;

pub use health::Stats;
pub use model::Model;
pub use publish::Outgoing;
pub use runtime::{run, run_with, run_with_stats, Hooks, Loader, Reloads, RunError};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use topics::Topics;

/// Return freed heap pages to the kernel (glibc keeps them otherwise): after loading a
/// large configuration, and after the embedded broker served a burst of connections.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_heap() {
    // SAFETY: malloc_trim only returns free pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`trim_heap`] where glibc is not the allocator: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}
