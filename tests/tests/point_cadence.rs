//! Points at their own cadence (`poll_interval` on a point), counted at the device.
//!
//! On tokio's paused clock, the bus task talks to the simulator that the tokio-modbus
//! server serves (`SimDevice::handle`, in process: a socket would let the paused clock
//! jump past its replies), so two minutes of polling take milliseconds and the requests
//! are counted per address in the simulator's own log. The last test runs the whole
//! gateway against a real `SimServer` over TCP on a measured window.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink::{buses, shutdown, Outgoing, Stats};
use fieldlink_drivers::{
    modbus::{client::exception_name, DriverError, ModbusTransport, ReadData, Table},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;
use tokio::time::Instant;
use tokio_modbus::{Request, Response};

/// The simulator as a transport: each exchange takes 5 ms; a request the device does not
/// answer costs the 1 s timeout, and so does a read starting at an address in `silent`
/// (registers behind a converter that lost them).
struct InProcess {
    dev: Arc<SimDevice>,
    silent: Arc<Mutex<Vec<u16>>>,
    /// When each read began (virtual milliseconds since the start) and its address.
    times: Arc<Mutex<Vec<(u128, u16)>>>,
    t0: Instant,
}

const TIMEOUT: Duration = Duration::from_secs(1);

impl ModbusTransport for InProcess {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let req = match table {
            Table::Holding => Request::ReadHoldingRegisters(addr, count),
            Table::Input => Request::ReadInputRegisters(addr, count),
            Table::Coil => Request::ReadCoils(addr, count),
            Table::Discrete => Request::ReadDiscreteInputs(addr, count),
        };
        self.times
            .lock()
            .expect("lock")
            .push((self.t0.elapsed().as_millis(), addr));
        let answer = self.dev.handle(unit, &req);
        if self.silent.lock().expect("lock").contains(&addr) {
            tokio::time::sleep(TIMEOUT).await;
            return Err(DriverError::Timeout(TIMEOUT));
        }
        match answer {
            Ok(Some(rsp)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                match rsp {
                    Response::ReadHoldingRegisters(r) | Response::ReadInputRegisters(r) => {
                        Ok(ReadData::Registers(r))
                    }
                    Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => {
                        Ok(ReadData::Bits(b))
                    }
                    other => Err(DriverError::Protocol(format!("{other:?}"))),
                }
            }
            Ok(None) => {
                tokio::time::sleep(TIMEOUT).await;
                Err(DriverError::Timeout(TIMEOUT))
            }
            Err(e) => {
                let code = u8::from(e);
                Err(DriverError::Exception {
                    code,
                    name: exception_name(code),
                })
            }
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
        "simulator (in process)".into()
    }
}

/// Messages with the virtual time the bus task sent them at.
type Log = Arc<Mutex<Vec<(Duration, Outgoing)>>>;

/// A running meter: its simulator, the addresses that go unanswered, the messages, and
/// the moment it started.
struct Meter {
    dev: Arc<SimDevice>,
    silent: Arc<Mutex<Vec<u16>>>,
    times: Arc<Mutex<Vec<(u128, u16)>>>,
    log: Log,
    t0: Instant,
}

/// Run the device `meter` (unit 1, the given points, YAML flow entries) at `poll_interval`
/// against a fresh simulator.
fn start(poll_interval: &str, points: &[&str]) -> Meter {
    let points: String = points.iter().map(|p| format!("      - {p}\n")).collect();
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502 }}\ndevices:\n  - id: meter\n    bus: b\n    poll_interval: {poll_interval}\n    points:\n{points}"
    );
    let m = Arc::new(model(&mapping, ""));
    let stats = Arc::new(Stats::new(&m));
    let (out, mut rx) = tokio::sync::mpsc::channel::<Vec<Outgoing>>(1024);
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let l = log.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let at = t0.elapsed();
            l.lock()
                .expect("lock")
                .extend(batch.into_iter().map(|m| (at, m)));
        }
    });
    let (trigger, sd) = shutdown::channel();
    // Kept alive with the task for the whole test.
    std::mem::forget(trigger);
    let (_commands_tx, commands) = tokio::sync::mpsc::channel(1);
    let io = buses::BusIo {
        out,
        commands,
        control: tokio::sync::mpsc::channel(1).1,
        stats,
        shutdown: sd,
        snapshots: None,
    };
    let dev = SimDevice::new();
    let bus = m.buses[0].clone();
    let silent: Arc<Mutex<Vec<u16>>> = Arc::default();
    let times: Arc<Mutex<Vec<(u128, u16)>>> = Arc::default();
    let transport = InProcess {
        dev: dev.clone(),
        silent: silent.clone(),
        times: times.clone(),
        t0,
    };
    tokio::spawn(buses::run_modbus(m, bus, 0, transport, io));
    Meter {
        dev,
        silent,
        times,
        log,
        t0,
    }
}

/// Sleep until `at` after `t0` (virtual time).
async fn until(t0: Instant, at: Duration) {
    tokio::time::sleep_until(t0 + at).await;
}

/// The reads the simulator saw starting at `address`, and those covering it.
fn reads(dev: &SimDevice, address: u16) -> (usize, usize) {
    let log = dev.log();
    let at = log.iter().filter(|r| r.address == address).count();
    let covering = log
        .iter()
        .filter(|r| {
            r.address <= address && u32::from(address) < u32::from(r.address) + u32::from(r.count)
        })
        .count();
    (at, covering)
}

/// `(milliseconds, payload)` of every message on `topic`.
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

/// The device's next poll is when its earliest cadence is due: a device at 2 s with one
/// point at 3 s reads the others at 0, 2, 4, 6, 8 s and that point at 0, 3, 6, 9 s.
#[tokio::test(start_paused = true)]
async fn each_cadence_keeps_its_own_time() {
    let Meter { times, t0, .. } = start(
        "2s",
        &[
            "{ topic: m/a, table: holding, address: 0 }",
            "{ topic: m/b, table: holding, address: 500, poll_interval: 3s }",
        ],
    );
    until(t0, Duration::from_millis(9_500)).await;
    let at = |address: u16| -> Vec<u128> {
        let times = times.lock().expect("lock");
        times
            .iter()
            .filter(|(_, a)| *a == address)
            .map(|(t, _)| *t / 100 * 100)
            .collect()
    };
    assert_eq!(at(0), [0, 2000, 4000, 6000, 8000]);
    assert_eq!(at(500), [0, 3000, 6000, 9000]);
}

/// A meter polled every second with its energy total at 60 s, far from the power
/// registers: over two minutes the power address is read about 120 times, the energy
/// address 2 or 3 times, and a change of the energy total shows at its next read.
#[tokio::test(start_paused = true)]
async fn a_point_at_sixty_seconds_is_read_twice_in_two_minutes() {
    let Meter { dev, log, t0, .. } = start(
        "1s",
        &[
            "{ topic: m/power, table: input, address: 0 }",
            "{ topic: m/energy, table: input, address: 1000, poll_interval: 60s }",
        ],
    );
    until(t0, Duration::from_millis(30_500)).await;
    dev.set_registers(Table::Input, 0, &[230]);
    dev.set_registers(Table::Input, 1000, &[7]);
    until(t0, Duration::from_millis(120_500)).await;
    let (fast, _) = reads(&dev, 0);
    let (slow, _) = reads(&dev, 1000);
    eprintln!("in 120 s: address 0 read {fast} times, address 1000 {slow} times");
    assert!(
        (119..=122).contains(&fast),
        "power read {fast} times in 120 s"
    );
    assert!((2..=3).contains(&slow), "energy read {slow} times in 120 s");
    assert_eq!(dev.log().len(), fast + slow, "no other request");
    // Power shows its change at the next second, energy at its next read (60 s).
    let power = on(&log, "m/power");
    assert_eq!(power[1].1, "230");
    assert!((31_000..31_100).contains(&power[1].0), "{power:?}");
    let energy = on(&log, "m/energy");
    assert_eq!(energy.len(), 2, "{energy:?}");
    assert_eq!(energy[1].1, "7");
    assert!((60_000..60_100).contains(&energy[1].0), "{energy:?}");
}

/// Between two points read every second, a point at 60 s costs no request of its own:
/// it rides along in their read and its change is published at the next second. One at
/// an hour right after them is not covered by that read: read with the others only when
/// it is due.
#[tokio::test(start_paused = true)]
async fn a_slow_point_inside_a_fast_read_rides_along() {
    let Meter { dev, log, t0, .. } = start(
        "1s",
        &[
            "{ topic: m/voltage, table: holding, address: 0 }",
            "{ topic: m/energy, table: holding, address: 1, poll_interval: 60s }",
            "{ topic: m/current, table: holding, address: 2 }",
            "{ topic: m/serial, table: holding, address: 3, poll_interval: 1h }",
        ],
    );
    until(t0, Duration::from_millis(10_500)).await;
    dev.set_registers(Table::Holding, 1, &[42]);
    dev.set_registers(Table::Holding, 3, &[9]);
    until(t0, Duration::from_millis(120_500)).await;
    let log_dev = dev.log();
    // One request per second, all starting at the first point: none of their own.
    assert!(
        (119..=122).contains(&log_dev.len()),
        "{} requests",
        log_dev.len()
    );
    assert!(log_dev.iter().all(|r| r.address == 0), "{log_dev:?}");
    let spans: Vec<u16> = log_dev.iter().map(|r| r.count).collect();
    assert_eq!(
        spans.iter().filter(|c| **c == 4).count(),
        1,
        "the hour point at start only"
    );
    assert!(
        spans.iter().filter(|c| **c != 4).all(|c| *c == 3),
        "{spans:?}"
    );
    let energy = on(&log, "m/energy");
    assert_eq!(energy.len(), 2, "{energy:?}");
    assert_eq!(energy[1].1, "42");
    assert!(
        (11_000..11_100).contains(&energy[1].0),
        "published at the next second: {energy:?}"
    );
    assert_eq!(
        on(&log, "m/serial").len(),
        1,
        "read at start only, due again in an hour"
    );
}

/// Availability follows every failed poll of the device, whichever cadence it read: a
/// slow point whose read times out makes the device offline after `offline_after` polls
/// (its read is tried again with every fast poll), and online again once it answers;
/// a device that stops answering goes offline on its fast polls.
#[tokio::test(start_paused = true)]
async fn failing_polls_of_either_cadence_drive_availability() {
    let Meter {
        dev,
        silent,
        log,
        t0,
        ..
    } = start(
        "1s",
        &[
            "{ topic: m/power, table: input, address: 0 }",
            "{ topic: m/energy, table: input, address: 1000, poll_interval: 60s }",
        ],
    );
    let avail = "fieldlink/t/meter/availability";
    // Only the 60 s read gets no answer from 50 s on.
    until(t0, Duration::from_secs(50)).await;
    let states = on(&log, avail);
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].1, "online");
    silent.lock().expect("lock").push(1000);
    until(t0, Duration::from_secs(70)).await;
    let states = on(&log, avail);
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[1].1, "offline");
    // Tries at 60, 61 and 62 s, each ending with the 1 s timeout.
    assert!((63_000..64_100).contains(&states[1].0), "{states:?}");
    let slow_tries = reads(&dev, 1000).0;
    assert!(
        slow_tries >= 3,
        "the 60 s read was tried with the fast polls: {slow_tries}"
    );
    silent.lock().expect("lock").clear();
    until(t0, Duration::from_secs(140)).await;
    let states = on(&log, avail);
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[2].1, "online");
    // The whole device goes quiet: offline after three fast polls.
    let quiet_from = t0.elapsed();
    dev.set_responding(false);
    until(t0, quiet_from + Duration::from_secs(10)).await;
    let states = on(&log, avail);
    assert_eq!(states.len(), 4, "{states:?}");
    assert_eq!(states[3].1, "offline");
    let after = states[3].0 - quiet_from.as_millis();
    assert!(
        (2_000..5_000).contains(&after),
        "offline {after} ms after it stopped answering"
    );
}

/// The whole gateway against a tokio-modbus server over TCP, on a measured window: the
/// 1 s point is read about a tenth as often as the 100 ms ones, the 1 h point between
/// them never on its own, and a change of it reaches a subscriber within a few polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_each_point_at_its_cadence() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: meter\n    bus: b\n    poll_interval: 100ms\n    points:\n\
         \x20     - {{ topic: e/a, table: holding, address: 0 }}\n\
         \x20     - {{ topic: e/ride, table: holding, address: 1, poll_interval: 1h }}\n\
         \x20     - {{ topic: e/b, table: holding, address: 2 }}\n\
         \x20     - {{ topic: e/slow, table: holding, address: 300, poll_interval: 1s }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(
        obs.wait_payload(
            "fieldlink/t/meter/availability",
            "online",
            Duration::from_secs(10)
        )
        .await
    );
    dev.clear_log();
    let slow_reads = || dev.log().iter().filter(|r| r.address == 300).count();
    assert!(fieldlink_tests::eventually(Duration::from_secs(20), || slow_reads() >= 4).await);
    let log = dev.log();
    let fast = log.iter().filter(|r| r.address == 0).count();
    let slow = log.iter().filter(|r| r.address == 300).count();
    eprintln!("100 ms point read {fast} times, 1 s point {slow} times");
    assert!(
        fast >= 4 * slow,
        "{fast} fast reads against {slow} slow ones"
    );
    assert!(
        log.iter().all(|r| r.address == 0 || r.address == 300),
        "no read of its own for the hour point: {log:?}"
    );
    assert!(
        log.iter().filter(|r| r.address == 0).all(|r| r.count == 3),
        "the hour point rides along in every fast read"
    );
    dev.set_registers(Table::Holding, 1, &[77]);
    assert!(
        obs.wait_payload("e/ride", "77", Duration::from_secs(3))
            .await,
        "the hour point's change published with the next fast read"
    );
    gw.stop().await;
}
