//! What systemd hears from the gateway (sd_notify): `READY=1` once the broker side and
//! every bus task run, `WATCHDOG=1` from a task on the gateway's own runtime,
//! `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` when it shuts down.
//! Without `NOTIFY_SOCKET` (not started by systemd with `Type=notify`) nothing is sent.
//!
//! The watchdog ping is a tokio task of the same runtime as the bus tasks and the MQTT
//! sides, not a thread of its own: when the runtime stops running tasks (a deadlock, a
//! task that blocks every worker), the pings stop and systemd restarts the gateway after
//! `WatchdogSec`. A single blocked worker of two is not detected.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// Send `states`; a failure is logged once (a watchdog ping is sent every few seconds),
/// never fatal.
fn notify(states: &[NotifyState]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            warn!(error = %e, "Cannot notify systemd.");
        }
    }
}

/// The gateway runs: the broker side and every bus task are up.
pub(crate) fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("Running.")]);
}

/// A reload begins (`RELOADING=1` with the monotonic time, as systemd 253's
/// `Type=notify-reload` requires; 252 takes it as a status).
pub(crate) fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("Reloading.")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// The gateway is stopping.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("Stopping.")]);
}

/// How often the watchdog is pinged when systemd asks for it (`WATCHDOG_USEC`): half
/// its period, as sd_watchdog_enabled(3) advises.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Ping the watchdog until shutdown, when systemd asks for it.
pub(crate) fn spawn_watchdog(mut shutdown: Shutdown) -> Option<JoinHandle<()>> {
    let every = watchdog_interval()?;
    info!(every = ?every, "Watchdog enabled.");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.recv() => return,
                _ = tick.tick() => {
                    debug!("Watchdog ping.");
                    notify(&[NotifyState::Watchdog]);
                }
            }
        }
    }))
}
