//! When each device of a bus is polled: its schedule (start offsets, cadence, the fair
//! share of a failing device on a shared bus) and the availability verdict that does not
//! wait for spaced-out tries.

use std::sync::Arc;

use tokio::time::Instant as TokioInstant;

use super::actor::Cx;
use super::cadence::Groups;
use crate::model::{Bus, Device};

/// After its second failed poll in a row on a bus with several polled devices, a device
/// waits this many times the failed poll's duration before its next try (its tries then
/// take at most 1/20 of the bus time).
pub(super) const FAILING_SHARE: u32 = 19;

/// The schedule of one device.
pub(super) struct Schedule {
    pub(super) next_due: TokioInstant,
    pub(super) failures: u32,
    /// When the first of the failed polls in a row began (`None` while answering).
    pub(super) first_failure: Option<TokioInstant>,
    /// Declared offline since its last answer.
    pub(super) offline: bool,
    // Points at their own cadence (#23).
    /// Its points grouped by cadence, each group's due time.
    pub(super) cadence: Groups,
}

impl Schedule {
    /// When a failing device that is still online is declared offline without another
    /// try: `offline_after` poll intervals (its shortest cadence) after its first failure
    /// began (when its `offline_after`-th poll at its cadence would have ended), once it
    /// failed at least twice in a row (one lost reply is line noise; with fewer tries
    /// than that the fair share spaced its retries out).
    pub(super) fn verdict_at(&self, device: &Device) -> Option<TokioInstant> {
        if self.offline || self.failures < 2.min(device.offline_after) {
            return None;
        }
        let first = self.first_failure?;
        Some(first + self.cadence.tick() * device.offline_after)
    }
}

/// The state the actor keeps per device besides the driver's.
pub(super) struct Devices {
    pub(super) schedule: Vec<Schedule>,
    /// The configuration generation each device's definition dates from.
    pub(super) since: Vec<u64>,
    /// The generation the bus runs now.
    pub(super) generation: u64,
    /// Start offsets the polled devices are spread over.
    pub(super) slots: u32,
    /// Writes (#23): the values kept alive by `rewrite_every`.
    pub(super) rewrites: super::rewrite::Rewrites,
    /// Commissioning requests running on the bus (#24).
    pub(super) jobs: super::commission::Jobs,
}

impl Devices {
    /// The devices of `bus` (its first device is `first` of all) at start: each first
    /// polled at its offset among `slots`.
    pub(super) fn new(bus: &Bus, first: usize, slots: u32) -> Devices {
        let mut devs = Devices {
            schedule: Vec::new(),
            since: vec![0; bus.devices.len()],
            generation: 0,
            slots,
            rewrites: Default::default(),
            jobs: Default::default(),
        };
        let now = TokioInstant::now();
        devs.schedule = (0..bus.devices.len())
            .map(|i| devs.fresh(bus, first, i, now))
            .collect();
        devs
    }

    /// A first poll for device `i` of a bus whose first device is `first`: spread
    /// over the stagger slots.
    pub(super) fn fresh(&self, bus: &Bus, first: usize, i: usize, now: TokioInstant) -> Schedule {
        let mut cadence = Groups::new(&bus.devices[i], now);
        let next_due = now + cadence.tick() / self.slots * ((first + i) as u32 % self.slots);
        cadence.start_at(next_due);
        Schedule {
            next_due,
            failures: 0,
            first_failure: None,
            offline: false,
            cadence,
        }
    }
}

/// The device `d` of the bus the task runs now.
pub(super) fn bus_now(cx: &Cx, d: usize) -> Arc<Device> {
    cx.device(d).clone()
}

/// Declare offline every failing device whose verdict is due (its retries were spaced
/// out by the fair share, so its count of failures lags behind the time it has failed).
pub(super) fn verdicts(cx: &mut Cx, devs: &mut Devices, now: TokioInstant) {
    for d in 0..devs.schedule.len() {
        let device = bus_now(cx, d);
        let s = &mut devs.schedule[d];
        if s.verdict_at(&device).is_some_and(|t| t <= now) {
            s.offline = true;
            let why = format!(
                "no answer for {:?} ({} failed polls, retries spaced out on the shared bus)",
                s.first_failure.map(|f| now - f).unwrap_or_default(),
                s.failures
            );
            cx.set_online(d, false, Some(&why));
        }
    }
}
