//! A dead unit on a shared RS-485 bus must not starve its healthy neighbours: the bus task
//! runs against a transport whose dead unit answers nothing (each try holds the bus for the
//! whole `timeout`), on tokio's paused clock, so a minute of polling takes milliseconds.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use fieldlink::{buses, shutdown, Stats};
use fieldlink_drivers::modbus::{DriverError, ModbusTransport, ReadData, Table};
use fieldlink_tests::model;
use tokio::sync::mpsc;

/// Units 1 and 2 answer in 10 ms (a short RTU exchange); unit 3 is dead. A dead try
/// costs what it costs on the RTU transport: the timeout, then one more timeout of
/// listening for a late reply before the line is declared clean.
struct Bus485 {
    timeout: Duration,
    /// The dead unit.
    dead: u8,
    /// A unit that loses exactly one reply: (unit, its read number that times out).
    glitch: Option<(u8, u32)>,
    reads: std::collections::HashMap<u8, u32>,
    /// When each try of the dead unit began.
    dead_tries: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
}

impl ModbusTransport for Bus485 {
    async fn read(
        &mut self,
        unit: u8,
        _table: Table,
        _addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let n = self.reads.entry(unit).or_default();
        *n += 1;
        if unit == self.dead {
            if let Ok(mut t) = self.dead_tries.lock() {
                t.push(tokio::time::Instant::now());
            }
        }
        if unit == self.dead || self.glitch == Some((unit, *n)) {
            tokio::time::sleep(self.timeout * 2).await;
            return Err(DriverError::Timeout(self.timeout));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(ReadData::Registers(vec![7; usize::from(count)]))
    }

    async fn write_registers(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[u16],
        _multiple: bool,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    async fn write_coils(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[bool],
        _multiple: bool,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    fn endpoint(&self) -> String {
        "rs485 (test)".into()
    }
}

/// Polls of each unit during `run` of virtual time, with the bus `timeout` (text).
async fn polls(timeout: &str, run: Duration) -> (Vec<u64>, Arc<Stats>) {
    polls_with(timeout, run, 3, None).await
}

async fn polls_with(
    timeout: &str,
    run: Duration,
    dead: u8,
    glitch: Option<(u8, u32)>,
) -> (Vec<u64>, Arc<Stats>) {
    let mapping = format!(
        "buses:\n  - {{ id: rs485, kind: modbus_rtu, path: /dev/ttyUSB0, baud: 9600, timeout: {timeout} }}\ndevices:\n\
         \x20 - {{ id: u1, bus: rs485, unit: 1, poll_interval: 1s, points: [{{ topic: f/u1, table: holding, address: 0 }}] }}\n\
         \x20 - {{ id: u2, bus: rs485, unit: 2, poll_interval: 1s, points: [{{ topic: f/u2, table: holding, address: 0 }}] }}\n\
         \x20 - {{ id: u3, bus: rs485, unit: 3, poll_interval: 1s, points: [{{ topic: f/u3, table: holding, address: 0 }}] }}\n"
    );
    let model = Arc::new(model(&mapping, ""));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (_commands_tx, commands) = mpsc::channel(16);
    let (trigger, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands,
        // Nothing reloads here: a closed control channel.
        control: mpsc::channel(1).1,
        stats: stats.clone(),
        shutdown: sd,
        snapshots: None,
    };
    let busm = model.buses[0].clone();
    let task = tokio::spawn(buses::run_modbus(
        model.clone(),
        busm,
        0,
        Bus485 {
            timeout: humantime::parse_duration(timeout).expect("timeout"),
            dead,
            glitch,
            reads: Default::default(),
            dead_tries: Default::default(),
        },
        io,
    ));
    tokio::time::sleep(run).await;
    trigger.trigger();
    task.await.expect("bus task");
    let counts = stats
        .devices()
        .iter()
        .map(|d| d.polls.load(Relaxed))
        .collect();
    (counts, stats)
}

#[tokio::test(start_paused = true)]
async fn a_dead_unit_leaves_its_neighbours_nine_tenths_of_their_polls() {
    // (timeout, window, longest time until the dead unit is offline)
    for (timeout, window, offline_within) in [("1s", 120, 50), ("150ms", 20, 8), ("3s", 300, 150)] {
        let (counts, stats) = polls(timeout, Duration::from_secs(window)).await;
        eprintln!("timeout {timeout}, {window} s: {counts:?}");
        for (i, &n) in counts[..2].iter().enumerate() {
            assert!(
                n * 10 >= window * 9,
                "timeout {timeout}, {window} s: healthy unit {} polled {n} of {window} times ({counts:?})",
                i + 1
            );
        }
        assert!(counts[2] >= 3, "{timeout}: the dead unit is still probed");
        assert_eq!(
            stats.devices()[2].availability(),
            fieldlink::health::Availability::Offline,
            "timeout {timeout}"
        );
        let (_, early) = polls(timeout, Duration::from_secs(offline_within)).await;
        assert_eq!(
            early.devices()[2].availability(),
            fieldlink::health::Availability::Offline,
            "timeout {timeout}: offline within {offline_within} s"
        );
    }
}

/// One lost reply (line noise) does not push a healthy unit's next poll back: the share
/// applies from the second failure in a row.
#[tokio::test(start_paused = true)]
async fn one_lost_reply_does_not_cost_a_unit_its_cadence() {
    // No dead unit (unit 9 does not exist); unit 1 loses its fifth reply.
    let (counts, stats) = polls_with("1s", Duration::from_secs(30), 9, Some((1, 5))).await;
    assert!(counts[0] >= 29, "unit 1 keeps its cadence: {counts:?}");
    assert_eq!(stats.devices()[0].failed_polls.load(Relaxed), 1);
    assert_eq!(
        stats.devices()[0].availability(),
        fieldlink::health::Availability::Online
    );
}

/// What a run with a dead unit 3 looked like: polls per unit, when the dead unit's tries
/// began, and when its `offline` was published.
struct Run {
    counts: Vec<u64>,
    dead_tries: Vec<tokio::time::Instant>,
    offline_at: Option<tokio::time::Instant>,
}

/// Units 1 and 2 healthy, unit 3 dead from the start, for `run` of virtual time.
async fn run_with_dead_unit(timeout: Duration, run: Duration) -> Run {
    let mapping = format!(
        "buses:\n  - {{ id: rs485, kind: modbus_rtu, path: /dev/ttyUSB0, baud: 9600, timeout: {}ms }}\ndevices:\n\
         \x20 - {{ id: u1, bus: rs485, unit: 1, poll_interval: 1s, points: [{{ topic: f/u1, table: holding, address: 0 }}] }}\n\
         \x20 - {{ id: u2, bus: rs485, unit: 2, poll_interval: 1s, points: [{{ topic: f/u2, table: holding, address: 0 }}] }}\n\
         \x20 - {{ id: u3, bus: rs485, unit: 3, poll_interval: 1s, points: [{{ topic: f/u3, table: holding, address: 0 }}] }}\n",
        timeout.as_millis()
    );
    let model = Arc::new(model(&mapping, ""));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel::<Vec<fieldlink::Outgoing>>(1024);
    let offline_at: Arc<std::sync::Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let seen = offline_at.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for m in batch.iter() {
                if m.topic == "fieldlink/t/u3/availability" && m.payload == b"offline" {
                    if let Ok(mut o) = seen.lock() {
                        o.get_or_insert(tokio::time::Instant::now());
                    }
                }
            }
        }
    });
    let (_commands_tx, commands) = mpsc::channel(16);
    let (trigger, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands,
        control: mpsc::channel(1).1,
        stats: stats.clone(),
        shutdown: sd,
        snapshots: None,
    };
    let bus = Bus485 {
        timeout,
        dead: 3,
        glitch: None,
        reads: Default::default(),
        dead_tries: Default::default(),
    };
    let tries = bus.dead_tries.clone();
    let task = tokio::spawn(buses::run_modbus(
        model.clone(),
        model.buses[0].clone(),
        0,
        bus,
        io,
    ));
    tokio::time::sleep(run).await;
    trigger.trigger();
    task.await.expect("bus task");
    let counts = stats
        .devices()
        .iter()
        .map(|d| d.polls.load(Relaxed))
        .collect();
    let dead_tries = tries.lock().map(|t| t.clone()).unwrap_or_default();
    let offline_at = offline_at.lock().ok().and_then(|o| *o);
    Run {
        counts,
        dead_tries,
        offline_at,
    }
}

/// The fair share spaces out the dead unit's retries but not its verdict: it is
/// `offline` within `offline_after` × `poll_interval` + 2 × `timeout` of its first failed
/// poll (5 s at the defaults), while its neighbours keep at least 90 % of their polls in
/// the first 20 s and over two minutes.
#[tokio::test(start_paused = true)]
async fn a_dead_unit_is_offline_promptly_and_its_neighbours_keep_their_cadence() {
    for timeout_ms in [1000u64, 150, 300] {
        let timeout = Duration::from_millis(timeout_ms);
        for window in [20u64, 120] {
            let r = run_with_dead_unit(timeout, Duration::from_secs(window)).await;
            for (i, &n) in r.counts[..2].iter().enumerate() {
                assert!(
                    n * 10 >= window * 9,
                    "timeout {timeout:?}, {window} s: unit {} polled {n} of {window} times ({:?})",
                    i + 1,
                    r.counts
                );
            }
            let first = *r.dead_tries.first().expect("the dead unit was tried");
            let offline = r.offline_at.expect("the dead unit went offline");
            let bound = Duration::from_secs(3) + 2 * timeout;
            assert!(
                offline - first <= bound,
                "timeout {timeout:?}: offline {:?} after its first failed poll (bound {bound:?})",
                offline - first
            );
        }
    }
}
