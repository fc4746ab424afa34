//! The device actor: the one loop every bus kind runs.
//!
//! A bus kind is a [`Driver`]: it reads a device, writes a point and waits for its own
//! events and timers. Everything else is here, once: when each device is polled, what a
//! failed poll means (offline after `offline_after` in a row, then exponential backoff up
//! to `max_backoff`; on a shared bus a failing device's tries take at most 1/20 of the bus
//! time, which spaces its retries but never its verdict: it is offline once it has failed
//! twice and `offline_after` poll intervals have passed since its first failure without
//! an answer), availability messages with their logs and counters, command batches (collapsed
//! per point, run ahead of the next poll, answered on `<topic>/set/result`), reads on
//! demand (the same road, right after the batch's commands: `reads`), the rewrites of
//! kept-alive values (`rewrite`), and the shutdown path, which answers every command and
//! read still queued.

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Instant, SystemTime},
};

use fieldlink_drivers::value::Value;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use super::cadence::Due;
use super::commission::{self as jobs, Exchange};
use super::device_json::DeviceJson;
use super::schedule::{bus_now, verdicts, Devices, Schedule, FAILING_SHARE};
use super::{availability, reads, rewrite, BusIo};
use crate::{
    commands::{self, Command, CommandError, GetError, Request},
    health::{Availability, DeviceStats, Stats},
    modbus_server::{DeviceSnapshot, Snapshots},
    model::{Bus, Device, Model, Point},
    publish::{payload, reading, Outgoing, PointState, Reading},
    shutdown::Shutdown,
};

/// Number of start offsets the polled devices are spread over inside their poll
/// interval, so a gateway with many devices does not burst all of them at every tick
/// (bursts cost memory in the broker and make slow subscribers skip), while devices in
/// the same slot still share wakeups.
pub const STAGGER_SLOTS: u32 = 10;

/// How a poll went.
#[derive(Debug)]
pub(crate) enum Polled {
    /// The device answered (at least one read).
    Answered,
    /// No good reply; the reason, for the logs.
    Failed(String),
    /// The poll did not run (the port is gone, shutdown): not counted either way.
    Skipped,
}

/// What a bus kind supplies to the actor: its I/O, and nothing of the loop.
pub(crate) trait Driver: Send {
    /// What [`Driver::event`] yields (a line's bytes, an edge).
    type Event: Send;

    /// Where the bus is, for the start log.
    fn endpoint(&self) -> String;

    /// Whether polled devices are spread over [`STAGGER_SLOTS`] start offsets, and a
    /// failing device's tries limited to 1/20 of a shared bus's time (Modbus: yes).
    fn shares_time(&self) -> bool {
        true
    }

    /// Set up at start (open lines, publish initial states).
    fn start(&mut self, _cx: &mut Cx) {}

    /// Whether device `d` is polled on its schedule now (a uart device sending on its own,
    /// a gpio line or a closed port: not).
    fn polls(&self, d: usize) -> bool;

    /// Poll device `d`: read it and publish its values through `cx`.
    fn poll(&mut self, d: usize, cx: &mut Cx) -> impl Future<Output = Polled> + Send;

    /// Poll only the points of device `d` that `due` says are due (points at their own
    /// cadence). Kinds whose points all follow their device's cadence keep this default:
    /// the whole device.
    fn poll_points(
        &mut self,
        d: usize,
        _due: Due<'_>,
        cx: &mut Cx,
    ) -> impl Future<Output = Polled> + Send {
        self.poll(d, cx)
    }

    /// Write a command; the reading the point holds afterwards.
    fn write(
        &mut self,
        c: &Command,
        cx: &mut Cx,
    ) -> impl Future<Output = Result<Reading, CommandError>> + Send;

    /// Read points `points` of device `d` now, for `<topic>/get` (in one exchange where
    /// the kind can merge them; none is repeated): the reading of each, in the order
    /// asked, or why it was not read. The actor publishes the readings and answers.
    fn read(
        &mut self,
        _d: usize,
        points: &[usize],
        _cx: &mut Cx,
    ) -> impl Future<Output = Vec<Result<Reading, GetError>>> + Send {
        let n = points.len();
        let no = GetError::NotReadable("this bus kind cannot read on demand".into());
        async move { vec![Err(no); n] }
    }

    /// Perform one exchange of a commissioning request (`commission`); Modbus kinds only.
    fn exchange(&mut self, ex: Exchange, _cx: &mut Cx) -> impl Future<Output = ()> + Send {
        ex.refuse();
        std::future::ready(())
    }

    /// Wait for the next event; never ready when the kind has none.
    fn event(&mut self) -> impl Future<Output = Self::Event> + Send;

    /// Handle an event.
    fn on_event(&mut self, _event: Self::Event, _cx: &mut Cx) {}

    /// The driver's next own timer (debounce, pulse, reopening a port).
    fn next_timer(&self) -> Option<TokioInstant> {
        None
    }

    /// Run the timers due at `now`.
    fn on_timer(&mut self, _now: TokioInstant, _cx: &mut Cx) {}

    /// Leave the bus at shutdown (outputs as configured), after the queue was answered.
    fn stop(&mut self, _cx: &mut Cx) {}

    /// A reload changed the bus's devices (`cx.bus` is the new bus already): device `j`
    /// of the new bus is `kept[j]` of the old one, unchanged, or new (`None`). Keep the
    /// state of the kept ones, leave the removed ones, set up the new ones.
    fn reconfigure(&mut self, kept: &[Option<usize>], cx: &mut Cx);
}

/// What a driver publishes through: the bus's devices, their point states, counters and
/// the messages of the current turn (sent as one batch when the turn ends).
pub(crate) struct Cx {
    /// The bus.
    pub(crate) bus: Arc<Bus>,
    /// Shared counters.
    pub(crate) stats: Arc<Stats>,
    /// The shutdown signal (a driver waiting for a reply stops waiting on it).
    pub(crate) shutdown: Shutdown,
    /// Counters of every device.
    counters: Vec<Arc<DeviceStats>>,
    /// Publish state of every point, by device and point.
    states: Vec<Vec<PointState>>,
    /// `<base>/<device>/availability` of every device.
    availability_topics: Vec<String>,
    /// Messages of this turn.
    messages: Vec<Outgoing>,
    /// Where they go.
    out: tokio::sync::mpsc::Sender<crate::publish::Batch>,
    /// Devices whose JSON object changed this turn (`json_topic`, `device_json.rs`).
    json: DeviceJson,
    // The Modbus server (#26): what the bus task reads of a served device is kept.
    /// The snapshots of the served devices, when `modbus_server:` is configured.
    snapshots: Option<Snapshots>,
    /// The snapshot of every device (`None`: not served).
    snapshot: Vec<Option<Arc<DeviceSnapshot>>>,
}

impl Cx {
    /// The context of a bus task starting on `bus`.
    fn new(
        model: &Model,
        bus: &Arc<Bus>,
        stats: Arc<Stats>,
        shutdown: Shutdown,
        out: tokio::sync::mpsc::Sender<crate::publish::Batch>,
        snapshots: Option<Snapshots>,
    ) -> Cx {
        let mut cx = Cx {
            states: bus
                .devices
                .iter()
                .map(|d| vec![PointState::default(); d.points.len()])
                .collect(),
            availability_topics: bus
                .devices
                .iter()
                .map(|d| model.availability_topic(&d.id))
                .collect(),
            counters: counters(&stats, bus),
            bus: bus.clone(),
            stats,
            shutdown,
            messages: Vec::new(),
            out,
            json: DeviceJson::new(bus.devices.len()),
            snapshots,
            snapshot: Vec::new(),
        };
        cx.attach_snapshots();
        cx
    }

    /// Take the snapshots of the bus's devices (at start, and after a reload, which made
    /// fresh ones for changed devices).
    fn attach_snapshots(&mut self) {
        let all = self.snapshots.as_ref();
        self.snapshot = all.map_or_else(Vec::new, |s| s.of_bus(&self.bus, &self.counters));
    }

    /// The snapshot of device `d`, when the Modbus server serves it.
    pub(crate) fn snapshot(&self, d: usize) -> Option<&Arc<DeviceSnapshot>> {
        self.snapshot.get(d)?.as_ref()
    }

    /// Device `d` of the bus.
    pub(crate) fn device(&self, d: usize) -> &Arc<Device> {
        &self.bus.devices[d]
    }

    /// Point `p` of device `d`, if both exist.
    pub(crate) fn point(&self, d: usize, p: usize) -> Option<&Point> {
        self.bus.devices.get(d)?.points.get(p)
    }

    /// Counters of device `d`.
    pub(crate) fn stats_of(&self, d: usize) -> &DeviceStats {
        &self.counters[d]
    }

    /// Publish point `p` of device `d` reading `value` if its publish policy says so
    /// (`started`: when the read began). Returns whether it was published.
    pub(crate) fn value(
        &mut self,
        d: usize,
        p: usize,
        value: &Value,
        started: TokioInstant,
        wall: SystemTime,
    ) -> bool {
        let r = reading(&self.bus.devices[d].points[p], value);
        self.reading(d, p, r, started, wall)
    }

    /// [`Cx::value`] of a reading already made (a rewrite's read-back).
    pub(crate) fn reading(
        &mut self,
        d: usize,
        p: usize,
        r: Reading,
        started: TokioInstant,
        wall: SystemTime,
    ) -> bool {
        let point = &self.bus.devices[d].points[p];
        let changes = DeviceJson::would_change(&self.bus.devices[d], &self.states[d][p], &r);
        if !self.states[d][p].should_publish(point, &r, started) {
            return false;
        }
        if changes {
            self.json.changed(d, wall);
        }
        self.messages
            .push(Outgoing::value(point, payload(point, r, wall)));
        self.counters[d].published.fetch_add(1, Relaxed);
        true
    }

    /// Publish point `p` of device `d` reading `r`, changed or not (a command's read-back,
    /// a heartbeat, an output's state at start).
    pub(crate) fn force(&mut self, d: usize, p: usize, r: Reading) {
        let point = &self.bus.devices[d].points[p];
        if DeviceJson::would_change(&self.bus.devices[d], &self.states[d][p], &r) {
            self.json.changed(d, SystemTime::now());
        }
        self.states[d][p].force(&r, TokioInstant::now());
        self.messages
            .push(Outgoing::value(point, payload(point, r, SystemTime::now())));
        self.counters[d].published.fetch_add(1, Relaxed);
    }

    /// Device `d` is online or offline (`why`: the reason, for the log). Publishes the
    /// retained availability when it changes: `online` ahead of this turn's values (a
    /// subscriber sees the device available before its state), `offline` after them.
    pub(crate) fn set_online(&mut self, d: usize, online: bool, why: Option<&str>) {
        if let Some(s) = self.snapshot(d) {
            s.set_online(online);
        }
        let st = &self.counters[d];
        let want = if online {
            Availability::Online
        } else {
            Availability::Offline
        };
        if st.availability() == want {
            return;
        }
        let (id, bus) = (&self.bus.devices[d].id, &self.bus.id);
        if online {
            info!(device = %id, bus = %bus, "Device online.");
        } else {
            warn!(device = %id, bus = %bus, error = why.unwrap_or(""), "Device offline.");
        }
        st.set_availability(want);
        let topic = &self.availability_topics[d];
        // A change back within the same turn: only the last state goes out.
        self.messages
            .retain(|m| m.slot.is_some() || m.topic != *topic);
        let m = availability(topic, online);
        if online {
            self.messages.insert(0, m);
        } else {
            self.messages.push(m);
        }
    }

    /// Send `m` with this turn's messages (a result).
    pub(crate) fn push(&mut self, m: Outgoing) {
        self.messages.push(m);
    }

    /// Answer command `c` on its result topic.
    pub(crate) fn answer(&mut self, c: &Command, outcome: Result<serde_json::Value, CommandError>) {
        c.complete(&outcome);
        if let Some(point) = self
            .bus
            .devices
            .get(c.device)
            .and_then(|d| d.points.get(c.point))
        {
            self.messages
                .push(commands::result(point, outcome, c.id.as_ref()));
        }
    }

    /// Send this turn's messages as one batch (nothing when there are none). The actor
    /// does it after every turn; a driver waiting long inside one (a UART reply) does it
    /// after every read, so readings meanwhile are not held back.
    pub(crate) async fn flush(&mut self) {
        self.json.flush(&self.bus, &self.states, &mut self.messages);
        if !self.messages.is_empty() {
            let _ = self.out.send(std::mem::take(&mut self.messages)).await;
        }
    }
}

/// What the runtime tells a running bus task: a reload.
#[derive(Debug)]
pub enum Control {
    /// Go on with `bus` (the same kind and transport, other devices): unchanged devices
    /// keep running with their state, changed ones restart, new ones start. `done` is
    /// answered once applied.
    Reconfigure {
        /// The new bus.
        bus: Arc<Bus>,
        /// For each of its devices, the index of the running device it keeps (defined
        /// the same, Home Assistant settings aside), or `None` to start it afresh. Decided by
        /// the caller ([`Control::reconfigure`]); the task does not compare again.
        kept: Vec<Option<usize>>,
        /// Index of its first device among all devices (their start offsets).
        first: usize,
        /// The configuration generation it belongs to.
        generation: u64,
        /// Answered once applied.
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Leave the bus and end (a reload replaces or removes it); commands still queued
    /// are answered "configuration reloading", not written.
    Stop,
}

impl Control {
    /// A reconfigure from the bus the task runs (`old`) to `new`: every device of `new`
    /// defined the same as one of `old` keeps running with its state.
    pub fn reconfigure(
        old: &Bus,
        new: Arc<Bus>,
        first: usize,
        generation: u64,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Control {
        let kept = new
            .devices
            .iter()
            .map(|n| old.devices.iter().position(|o| crate::model::same(o, n)))
            .collect();
        Control::Reconfigure {
            bus: new,
            kept,
            first,
            generation,
            done,
        }
    }
}

/// Why the loop ended.
enum End {
    Shutdown,
    Stop,
}

/// Run one bus with `driver` until shutdown (or a reload's [`Control::Stop`]).
pub(crate) async fn run<D: Driver>(
    model: Arc<Model>,
    bus: Arc<Bus>,
    first_index: usize,
    mut driver: D,
    io: BusIo,
) {
    let BusIo {
        out,
        mut commands,
        mut control,
        stats,
        mut shutdown,
        snapshots,
    } = io;
    // The runtime starts no task for a bus without devices (a reload that gives it some
    // starts one then).
    if bus.devices.is_empty() {
        return;
    }
    let slots = if driver.shares_time() {
        STAGGER_SLOTS.min(model.devices().count().max(1) as u32)
    } else {
        1
    };
    let mut devs = Devices::new(&bus, first_index, slots);
    let mut cx = Cx::new(&model, &bus, stats, shutdown.clone(), out, snapshots);
    info!(bus = %bus.id, endpoint = %driver.endpoint(), devices = bus.devices.len(), "Bus started.");
    driver.start(&mut cx);
    rewrite::start_online(&mut cx, 0..bus.devices.len());
    cx.flush().await;
    let end = loop {
        let due = (0..devs.schedule.len())
            .filter(|&d| driver.polls(d))
            .min_by_key(|&d| devs.schedule[d].next_due);
        let timer = driver.next_timer();
        let verdict = (0..devs.schedule.len())
            .filter_map(|d| devs.schedule[d].verdict_at(&bus_now(&cx, d)))
            .min();
        let rewrite = devs.rewrites.next_due();
        let wake = [
            due.map(|d| devs.schedule[d].next_due),
            timer,
            verdict,
            rewrite,
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            () = shutdown.recv() => break End::Shutdown,
            // A closed channel disables the branch (no busy loop).
            Some(c) = control.recv() => {
                if let Some(end) = apply(c, &model, &mut driver, &mut cx, &mut devs) {
                    break end;
                }
            }
            Some(first) = commands.recv() => {
                // A reload that came meanwhile applies first: commands routed after it
                // belong to the new configuration.
                let mut stop = None;
                while let Ok(c) = control.try_recv() {
                    stop = stop.or(apply(c, &model, &mut driver, &mut cx, &mut devs));
                }
                // Everything queued now goes ahead of the next poll; several commands
                // for the same point collapse to the newest, reads to one per device.
                let (sets, gets, asked) = reads::split(commands::drain(first, &mut commands));
                super::batch::run_commands(&mut driver, &mut cx, &mut devs, sets).await;
                reads::serve(&mut driver, &mut cx, &devs, gets).await;
                devs.jobs.start(asked, &cx.bus, || driver.endpoint());
                if let Some(end) = stop {
                    break end;
                }
            }
            // Timers and due polls before events: input that never stops coming must not
            // starve them.
            () = sleep_until(wake) => {
                let now = TokioInstant::now();
                if timer.is_some_and(|t| t <= now) {
                    driver.on_timer(now, &mut cx);
                }
                if verdict.is_some_and(|t| t <= now) {
                    verdicts(&mut cx, &mut devs, now);
                }
                if rewrite.is_some_and(|t| t <= now) {
                    devs.rewrites.run_due(&mut driver, &mut cx).await;
                }
                if let Some(d) = due.filter(|&d| devs.schedule[d].next_due <= now) {
                    let shared = driver.shares_time()
                        && (0..devs.schedule.len()).filter(|&i| driver.polls(i)).count() > 1;
                    poll(&mut driver, &mut cx, d, &mut devs.schedule[d], shared).await;
                }
            }
            // A commissioning exchange, when no poll is due.
            ex = devs.jobs.next() => driver.exchange(ex, &mut cx).await,
            event = driver.event() => driver.on_event(event, &mut cx),
        }
        cx.flush().await;
    };
    refuse_queued(&end, &mut commands, &mut cx);
    driver.stop(&mut cx);
    cx.flush().await;
    debug!(bus = %bus.id, "Bus stopped.");
}

/// Answer every command and read still queued: nobody is left waiting for a result that
/// never comes. By topic: a request queued before a reload the task took may carry the
/// indices of the old configuration.
fn refuse_queued(end: &End, commands: &mut tokio::sync::mpsc::Receiver<Request>, cx: &mut Cx) {
    let error = match end {
        End::Shutdown => CommandError::ShuttingDown,
        // Replaced or removed by a reload: the router refuses new ones the same way
        // until the new task runs.
        End::Stop => CommandError::BusRestarting,
    };
    commands.close();
    while let Ok(r) = commands.try_recv() {
        cx.messages.push(match r {
            Request::Set(c) => c.answer(Err(error.clone())),
            Request::Get(g) => reads::refused(&g, matches!(end, End::Shutdown)),
            Request::Commission(j) => {
                jobs::refuse(j, matches!(end, End::Shutdown));
                continue;
            }
        });
    }
}

/// The counters of every device of `bus` (fresh ones for a device `stats` does not
/// know, as in tests that build their own).
fn counters(stats: &Stats, bus: &Bus) -> Vec<Arc<DeviceStats>> {
    bus.devices
        .iter()
        .map(|d| {
            stats
                .device_by_id(&d.id)
                .unwrap_or_else(|| Arc::new(DeviceStats::new(&d.id)))
        })
        .collect()
}

/// Apply a control message; `Some` when the loop is to end.
fn apply<D: Driver>(
    c: Control,
    model: &Model,
    driver: &mut D,
    cx: &mut Cx,
    devs: &mut Devices,
) -> Option<End> {
    match c {
        Control::Stop => Some(End::Stop),
        Control::Reconfigure {
            bus,
            kept,
            first,
            generation,
            done,
        } => {
            reconfigure(model, driver, cx, devs, (bus, &kept), first, generation);
            let _ = done.send(());
            None
        }
    }
}

/// Go on with the devices of `bus`: a device whose definition is the same as before keeps
/// its schedule, failures, publish state and the driver's state for it; a changed one
/// starts afresh (its counters and availability, kept by id, go on); a removed one is
/// left (the runtime publishes it offline and clears its topics).
fn reconfigure<D: Driver>(
    model: &Model,
    driver: &mut D,
    cx: &mut Cx,
    devs: &mut Devices,
    (bus, kept): (Arc<Bus>, &[Option<usize>]),
    first: usize,
    generation: u64,
) {
    let now = TokioInstant::now();
    let mut schedule: Vec<Option<Schedule>> = devs.schedule.drain(..).map(Some).collect();
    let mut states: Vec<Option<Vec<PointState>>> = cx.states.drain(..).map(Some).collect();
    let mut new_schedule = Vec::with_capacity(bus.devices.len());
    let mut since = Vec::with_capacity(bus.devices.len());
    for (j, k) in kept.iter().enumerate() {
        let (s, st) = match k
            .and_then(|i| Some((schedule.get_mut(i)?.take()?, states.get_mut(i)?.take()?)))
        {
            Some(both) => both,
            None => (
                devs.fresh(&bus, first, j, now),
                vec![PointState::default(); bus.devices[j].points.len()],
            ),
        };
        new_schedule.push(s);
        cx.states.push(st);
        since.push(
            k.and_then(|i| devs.since.get(i).copied())
                .unwrap_or(generation),
        );
    }
    devs.schedule = new_schedule;
    devs.since = since;
    devs.generation = generation;
    cx.availability_topics = bus
        .devices
        .iter()
        .map(|d| model.availability_topic(&d.id))
        .collect();
    cx.counters = counters(&cx.stats, &bus);
    cx.json = DeviceJson::new(bus.devices.len());
    cx.bus = bus.clone();
    cx.attach_snapshots();
    driver.reconfigure(kept, cx);
    devs.rewrites.reconfigure(kept);
    let new = (0..kept.len()).filter(|&j| kept[j].is_none());
    rewrite::start_online(cx, new);
    info!(
        bus = %bus.id,
        devices = bus.devices.len(),
        kept = kept.iter().filter(|k| k.is_some()).count(),
        "Bus reconfigured."
    );
}

async fn sleep_until(t: Option<TokioInstant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Poll device `d` and schedule its next poll.
async fn poll<D: Driver>(
    driver: &mut D,
    cx: &mut Cx,
    d: usize,
    sched: &mut Schedule,
    shared: bool,
) {
    let began = TokioInstant::now();
    let started = Instant::now();
    let outcome = driver.poll_points(d, sched.cadence.begin(began), cx).await;
    let device = cx.device(d).clone();
    if !matches!(outcome, Polled::Skipped) {
        cx.stats_of(d).polls.fetch_add(1, Relaxed);
    }
    let ok = match outcome {
        Polled::Answered => {
            cx.stats_of(d)
                .last_poll_us
                .store(started.elapsed().as_micros() as u64, Relaxed);
            sched.failures = 0;
            sched.first_failure = None;
            sched.offline = false;
            cx.set_online(d, true, None);
            true
        }
        Polled::Failed(error) => {
            cx.stats_of(d).failed_polls.fetch_add(1, Relaxed);
            sched.failures = sched.failures.saturating_add(1);
            sched.first_failure.get_or_insert(began);
            debug!(device = %device.id, failures = sched.failures, error = %error, "Poll failed.");
            let late = sched
                .verdict_at(&device)
                .is_some_and(|t| t <= TokioInstant::now());
            if sched.failures >= device.offline_after || late {
                sched.offline = true;
                cx.set_online(d, false, Some(&error));
            }
            false
        }
        Polled::Skipped => true,
    };
    let interval = sched.cadence.tick();
    let now = TokioInstant::now();
    // A unit that does not answer holds a shared bus for its whole timeout (twice on
    // RTU, which listens for a late reply). From its second failure in a row (one lost
    // reply is line noise, not a dead unit) its next try waits until its tries take at
    // most 1/20 of the bus time, so its neighbours keep their cadence. Its verdict does
    // not wait for those tries ([`Schedule::verdict_at`]).
    let fair = if ok || !shared || sched.failures < 2 {
        now
    } else {
        now + (now - began) * FAILING_SHARE
    };
    let next = sched.cadence.end(sched.next_due, ok, now);
    sched.next_due = fair.max(if ok || sched.failures < device.offline_after {
        next
    } else {
        // Offline: exponential backoff from the poll interval, capped.
        let k = (sched.failures - device.offline_after).min(16);
        now + interval
            .saturating_mul(1 << k)
            .min(device.max_backoff.max(interval))
    });
}
