//! The device actor driven through its I/O seam on tokio's paused clock: a Modbus bus task
//! over a scripted transport and a gpio bus task over the simulated board. Debounce,
//! heartbeat, `offline_after` and the offline backoff are checked to the millisecond of
//! virtual time, so minutes of schedule run in milliseconds and nothing depends on the
//! machine's load.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink::{buses, shutdown, Model, Outgoing, Stats};
use fieldlink_drivers::{
    gpio::{SimGpio, SimMode},
    modbus::{DriverError, ModbusTransport, ReadData, Table},
};
use fieldlink_tests::model;
use tokio::{sync::mpsc, time::Instant};

/// A message and the virtual time since the test began when the bus task sent it.
type Log = Arc<Mutex<Vec<(Duration, Outgoing)>>>;

/// Start `run` on the bus of `model`, recording every message with its virtual time.
fn record(model: &Model) -> (buses::BusIo, Log, Arc<Stats>, shutdown::ShutdownTrigger) {
    let stats = Arc::new(Stats::new(model));
    let (out, mut rx) = mpsc::channel::<Vec<Outgoing>>(1024);
    let log: Log = Arc::default();
    let l = log.clone();
    let t0 = Instant::now();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let at = t0.elapsed();
            l.lock()
                .expect("lock")
                .extend(batch.into_iter().map(|m| (at, m)));
        }
    });
    let (_commands_tx, commands) = mpsc::channel(16);
    // The command side is closed at once: these tests are about the schedule.
    drop(_commands_tx);
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
    (io, log, stats, trigger)
}

/// The payloads on `topic` with the whole milliseconds of virtual time they were sent at.
fn on(log: &Log, topic: &str) -> Vec<(u128, String)> {
    log.lock()
        .expect("lock")
        .iter()
        .filter(|(_, m)| m.topic == topic)
        .map(|(t, m)| {
            (
                t.as_millis(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect()
}

const GPIO: &str = "buses:\n  - id: io\n    kind: gpio\n    backend: simulated\ndevices:\n  - id: pi\n    bus: io\n    points:\n";

async fn gpio(mapping: &str, board: &SimGpio) -> (Log, shutdown::ShutdownTrigger) {
    let m = Arc::new(model(&format!("{GPIO}{mapping}"), ""));
    let (io, log, _stats, trigger) = record(&m);
    let bus = m.buses[0].clone();
    tokio::spawn(buses::run_gpio(m, bus, 0, Box::new(board.clone()), io));
    // The task sets the lines up and publishes their states before it waits.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    (log, trigger)
}

#[tokio::test(start_paused = true)]
async fn a_bouncing_contact_publishes_once_and_a_glitch_not_at_all() {
    let board = SimGpio::default();
    let (log, _stop) = gpio(
        "      - topic: casa/porta\n        pin: 17\n        pull: up\n        active_low: true\n        debounce: 60ms\n        values: {FECHADA: true, ABERTA: false}\n      - topic: casa/botao\n        pin: 5\n        pull: down\n        debounce: 0s\n",
        &board,
    )
    .await;
    // Pull-up, active-low, nothing driving the line: high = OFF = ABERTA.
    assert_eq!(board.mode(17), SimMode::Input(fieldlink::model::Pull::Up));
    assert_eq!(on(&log, "casa/porta"), [(0, "ABERTA".to_string())]);
    // Closes at 1 ms and bounces 5 times, 3 ms apart: the level is stable from 31 ms, so
    // it is published once, 60 ms later.
    for _ in 0..5 {
        board.drive(17, Some(false));
        tokio::time::sleep(Duration::from_millis(3)).await;
        board.drive(17, Some(true));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    board.drive(17, Some(false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        on(&log, "casa/porta"),
        [(0, "ABERTA".to_string()), (91, "FECHADA".to_string())]
    );
    // A 10 ms glitch that returns to the old level: nothing.
    board.drive(17, Some(true));
    tokio::time::sleep(Duration::from_millis(10)).await;
    board.drive(17, Some(false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on(&log, "casa/porta").len(), 2, "a glitch must not publish");
    // Without debounce every edge is a change, at once.
    board.drive(5, Some(true));
    board.drive(5, Some(false));
    board.drive(5, Some(true));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let botao: Vec<String> = on(&log, "casa/botao").into_iter().map(|(_, p)| p).collect();
    assert_eq!(botao, ["false", "true", "false", "true"]);
}

#[tokio::test(start_paused = true)]
async fn a_gpio_heartbeat_republishes_on_time_and_a_change_restarts_it() {
    let board = SimGpio::default();
    let (log, _stop) = gpio(
        "      - topic: casa/porta\n        pin: 4\n        heartbeat: 300ms\n",
        &board,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    board.drive(4, Some(true));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let times: Vec<(u128, String)> = on(&log, "casa/porta");
    let expect: Vec<(u128, String)> = [
        (0, "false"),
        (300, "false"),
        (600, "false"),
        (900, "false"),
        // The default debounce of an input is 20 ms.
        (1021, "true"),
        (1321, "true"),
        (1621, "true"),
    ]
    .into_iter()
    .map(|(t, p)| (t, p.to_string()))
    .collect();
    assert_eq!(times, expect);
}

/// A Modbus unit that answers only while `up` says so; every read is logged with its
/// virtual time.
struct Unit {
    up: Arc<Mutex<bool>>,
    reads: Arc<Mutex<Vec<Duration>>>,
    t0: Instant,
}

impl ModbusTransport for Unit {
    async fn read(
        &mut self,
        _unit: u8,
        _table: Table,
        _addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        self.reads.lock().expect("lock").push(self.t0.elapsed());
        if *self.up.lock().expect("lock") {
            Ok(ReadData::Registers(vec![42; usize::from(count)]))
        } else {
            Err(DriverError::Timeout(Duration::ZERO))
        }
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
        "scripted unit".into()
    }
}

/// The scripted unit's log, its switch, its reads, and the model.
type Scripted = (Log, Arc<Mutex<bool>>, Arc<Mutex<Vec<Duration>>>, Arc<Model>);

async fn modbus(device: &str, up: bool) -> Scripted {
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }}\ndevices:\n  - {{ id: u, bus: b, unit: 1, {device} }}\n"
    );
    let m = Arc::new(model(&mapping, ""));
    let (io, log, _stats, trigger) = record(&m);
    // Kept alive by the task for the whole test.
    std::mem::forget(trigger);
    let (up, reads) = (Arc::new(Mutex::new(up)), Arc::default());
    let unit = Unit {
        up: Arc::clone(&up),
        reads: Arc::clone(&reads),
        t0: Instant::now(),
    };
    let bus = m.buses[0].clone();
    tokio::spawn(buses::run_modbus(m.clone(), bus, 0, unit, io));
    (log, up, reads, m)
}

fn secs(reads: &Mutex<Vec<Duration>>) -> Vec<u64> {
    reads
        .lock()
        .expect("lock")
        .iter()
        .map(|d| d.as_secs())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn offline_after_failed_polls_then_backoff_to_the_cap_and_back_on_the_first_reply() {
    let (log, up, reads, m) = modbus(
        "poll_interval: 1s, offline_after: 3, max_backoff: 8s, points: [{ topic: f/t, table: holding, address: 0 }]",
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(40_500)).await;
    // Polls at 0, 1 and 2 s fail; offline after the third. Then 1, 2, 4, 8, 8, 8 s apart.
    assert_eq!(secs(&reads), [0, 1, 2, 3, 5, 9, 17, 25, 33]);
    assert_eq!(
        on(&log, &m.availability_topic("u")),
        [(2000, "offline".to_string())]
    );
    *up.lock().expect("lock") = true;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The try at 41 s answers: online, and the poll interval again.
    assert_eq!(secs(&reads)[9..], [41, 42, 43]);
    assert_eq!(
        on(&log, &m.availability_topic("u"))[1..],
        [(41_000, "online".to_string())]
    );
    assert_eq!(on(&log, "f/t"), [(41_000, "42".to_string())]);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_value_is_republished_at_its_heartbeat_only() {
    let (log, _up, reads, _m) = modbus(
        "poll_interval: 1s, points: [{ topic: f/t, table: holding, address: 0, heartbeat: 5s }]",
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    assert_eq!(secs(&reads).len(), 13, "polled every second");
    let times: Vec<u128> = on(&log, "f/t").into_iter().map(|(t, _)| t).collect();
    assert_eq!(times, [0, 5000, 10_000]);
}

/// A Modbus bus of scripted units that answer 42 on every register, recording which unit
/// was read when.
struct Units {
    reads: Arc<Mutex<Vec<(u8, Duration)>>>,
    t0: Instant,
}

impl ModbusTransport for Units {
    async fn read(
        &mut self,
        unit: u8,
        _table: Table,
        _addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        self.reads
            .lock()
            .expect("lock")
            .push((unit, self.t0.elapsed()));
        Ok(ReadData::Registers(vec![42; usize::from(count)]))
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
        "scripted units".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_an_unchanged_device_on_its_cadence_and_restarts_only_the_changed_one() {
    let bus = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }\ndevices:\n";
    let a = "  - { id: a, bus: b, unit: 1, poll_interval: 1s, points: [{ topic: f/a, table: holding, address: 0 }] }\n";
    let b = "  - { id: b, bus: b, unit: 2, poll_interval: 1s, points: [{ topic: f/b, table: holding, address: 0 }] }\n";
    // `b` gains a point; `c` is new.
    let b2 = "  - { id: b, bus: b, unit: 2, poll_interval: 1s, points: [{ topic: f/b, table: holding, address: 0 }, { topic: f/b2, table: holding, address: 1 }] }\n";
    let c = "  - { id: c, bus: b, unit: 3, poll_interval: 1s, points: [{ topic: f/c, table: holding, address: 0 }] }\n";
    let m = Arc::new(model(&format!("{bus}{a}{b}"), ""));
    let m2 = Arc::new(model(&format!("{bus}{a}{b2}{c}"), ""));
    let (mut io, log, _stats, trigger) = record(&m);
    std::mem::forget(trigger);
    let (control, control_rx) = mpsc::channel(1);
    io.control = control_rx;
    let reads: Arc<Mutex<Vec<(u8, Duration)>>> = Arc::default();
    let units = Units {
        reads: Arc::clone(&reads),
        t0: Instant::now(),
    };
    tokio::spawn(buses::run_modbus(
        m.clone(),
        m.buses[0].clone(),
        0,
        units,
        io,
    ));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (done, taken) = tokio::sync::oneshot::channel();
    control
        .send(buses::Control::reconfigure(
            &m.buses[0],
            m2.buses[0].clone(),
            0,
            1,
            done,
        ))
        .await
        .expect("the bus task takes control messages");
    taken.await.expect("the reload was applied");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let of = |u: u8| -> Vec<u128> {
        reads
            .lock()
            .expect("lock")
            .iter()
            .filter(|(unit, _)| *unit == u)
            .map(|(_, t)| t.as_millis())
            .collect()
    };
    // Two devices: start offsets 0 and 500 ms. `a` keeps its cadence across the reload
    // at 3.2 s: no poll missed, none extra.
    assert_eq!(of(1), [0, 1000, 2000, 3000, 4000, 5000, 6000]);
    // `b` restarts with the reload (its first poll at its start offset after it), `c`
    // starts at once.
    assert_eq!(of(2), [500, 1500, 2500, 3700, 4700, 5700]);
    assert_eq!(of(3), [3200, 4200, 5200]);
    // `a` kept its publish state: its unchanged value is not published again; the
    // restarted `b` publishes its values afresh; `c` publishes and goes online.
    assert_eq!(on(&log, "f/a"), [(0, "42".to_string())]);
    assert_eq!(
        on(&log, "f/b"),
        [(500, "42".to_string()), (3700, "42".to_string())]
    );
    assert_eq!(on(&log, "f/b2"), [(3700, "42".to_string())]);
    assert_eq!(on(&log, "f/c"), [(3200, "42".to_string())]);
    assert_eq!(
        on(&log, &m.availability_topic("b")),
        [(500, "online".to_string())]
    );
    assert_eq!(
        on(&log, &m.availability_topic("c")),
        [(3200, "online".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_gpio_reload_keeps_unchanged_lines_untouched_and_releases_removed_ones() {
    let head = "buses:\n  - { id: io, kind: gpio, backend: simulated }\ndevices:\n  - id: pi\n    bus: io\n";
    let relay =
        "      - { topic: casa/rele, pin: 17, mode: output, initial: true, on_shutdown: off }\n";
    let door = "      - { topic: casa/porta, pin: 4 }\n";
    // The device changes: the door line goes, a button line comes, the relay's line is
    // the same (its name in Home Assistant changes, which restarts nothing).
    let relay_renamed = "      - { topic: casa/rele, pin: 17, mode: output, initial: true, on_shutdown: off, homeassistant: { name: Bomba } }\n";
    let button = "      - { topic: casa/botao, pin: 5, debounce: 0s }\n";
    let m = Arc::new(model(&format!("{head}    points:\n{relay}{door}"), ""));
    let m2 = Arc::new(model(
        &format!("{head}    points:\n{relay_renamed}{button}"),
        "",
    ));
    let board = SimGpio::default();
    let (mut io, log, _stats, trigger) = record(&m);
    std::mem::forget(trigger);
    let (control, control_rx) = mpsc::channel(1);
    io.control = control_rx;
    tokio::spawn(buses::run_gpio(
        m.clone(),
        m.buses[0].clone(),
        0,
        Box::new(board.clone()),
        io,
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(board.history(17).len(), 1, "the relay set up once");
    // An edge on the door line that is still queued when the reload comes is dropped.
    board.drive(4, Some(true));
    let (done, taken) = tokio::sync::oneshot::channel();
    control
        .send(buses::Control::reconfigure(
            &m.buses[0],
            m2.buses[0].clone(),
            0,
            1,
            done,
        ))
        .await
        .expect("the bus task takes control messages");
    taken.await.expect("the reload was applied");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The relay was neither released nor driven again: its line kept running.
    assert_eq!(board.history(17).len(), 1, "the relay was not touched");
    assert!(!board.released(17));
    assert_eq!(board.mode(17), SimMode::Output);
    // The door line is released (and its late edge not published); the button is set up
    // and works.
    assert!(board.released(4));
    assert_eq!(on(&log, "casa/porta"), [(0, "false".to_string())]);
    assert_eq!(board.mode(5), SimMode::Input(fieldlink::model::Pull::None));
    board.drive(5, Some(true));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let botao: Vec<String> = on(&log, "casa/botao").into_iter().map(|(_, p)| p).collect();
    assert_eq!(botao, ["false", "true"]);
}
