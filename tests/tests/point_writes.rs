//! How points are written (#23): `write_address` (a separate write register),
//! `write_only` (never read) and `rewrite_every` (a kept-alive setpoint).
//!
//! `write_address` and `write_only` run end to end: the gateway with its embedded broker,
//! a tokio-modbus server of this test on 127.0.0.1 port 0 (`SimServer`), commands on
//! `<topic>/set`, and what the server's registers hold and which requests it counted.
//! `rewrite_every` runs on tokio's paused clock: the Modbus bus task is driven through
//! its command and reload channels, over a transport that hands every request to the
//! same `SimDevice`s the server uses (no socket: virtual time must not race real I/O), so
//! every write is counted at the device with its virtual time; a last test reloads the
//! running gateway (as SIGHUP does, through `Hooks::reloads`) and counts the rewrites at
//! the TCP server.

use std::{
    borrow::Cow,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use fieldlink::{buses, shutdown, Model, Outgoing, Stats};
use fieldlink_drivers::{
    modbus::{codec, DriverError, ModbusTransport, ReadData, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{capture_logs, eventually, model, publisher, Gateway, Observer};
use rumqttc::QoS;
use tokio::{sync::mpsc, time::Instant};
use tokio_modbus::{Request, Response};

/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(10);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("result is JSON")
}

/// Send `value` to `<topic>/set` and return its `/set/result` as JSON.
async fn set(
    client: &rumqttc::AsyncClient,
    obs: &mut Observer,
    topic: &str,
    value: &str,
) -> serde_json::Value {
    client
        .publish(format!("{topic}/set"), QoS::AtLeastOnce, false, value)
        .await
        .expect("publish");
    let res = obs
        .next_on(&format!("{topic}/set/result"), T)
        .await
        .unwrap_or_else(|| panic!("{topic}: no /set/result"));
    json(&res.payload)
}

/// The requests `dev` got with `function` at `address` of `table`.
fn requests(dev: &SimDevice, function: u8, table: Table, address: u16) -> usize {
    dev.log()
        .iter()
        .filter(|r| r.function == function && r.table == table && r.address == address)
        .count()
}

/// Reads of `dev` whose range covers `address` of `table`.
fn reads_covering(dev: &SimDevice, table: Table, address: u16) -> usize {
    dev.log()
        .iter()
        .filter(|r| {
            matches!(r.function, 1..=4)
                && r.table == table
                && (r.address..r.address.saturating_add(r.count)).contains(&address)
        })
        .count()
}

/// A device entry: `id` on bus `b` at `unit`, polled every `poll`; `points` are the
/// inside of flow maps.
fn device(id: &str, unit: u8, poll: &str, points: &[&str]) -> String {
    let mut s = format!(
        "  - id: {id}\n    bus: b\n    unit: {unit}\n    poll_interval: {poll}\n    points:\n"
    );
    for p in points {
        s.push_str(&format!("      - {{ {p} }}\n"));
    }
    s
}

/// A mapping with one Modbus TCP bus `b` on 127.0.0.1:`port` and `devices`.
fn mapping(port: u16, devices: &[String]) -> String {
    format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\ndevices:\n{}",
        devices.concat()
    )
}

// ---------------------------------------------------------------------------------------
// write_address

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_lands_at_write_address_and_the_state_keeps_reading_address() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    // What the device reports: setpoint 21.5 at 0, a u32 limit of 5000 (CDAB) at 10,
    // coil 0 off, and bit 2 of register 30 clear; register 31 (where that bit is
    // written) has bits 0 and 7 set, which a read-modify-write must keep.
    dev.set_registers(Table::Holding, 0, &[215]);
    let limit = codec::encode(&Value::Int(5000), ValueType::U32, WordOrder::Cdab).expect("enc");
    dev.set_registers(Table::Holding, 10, &limit);
    dev.set_registers(Table::Holding, 30, &[0]);
    dev.set_registers(Table::Holding, 31, &[0x81]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = mapping(
        port,
        &[device(
            "bomba",
            1,
            "300ms",
            &[
                "topic: casa/bomba/setpoint, table: holding, address: 0, type: i16, scale: 0.1, writable: true, write_address: 1000",
                "topic: casa/bomba/limite, table: holding, address: 10, type: u32, word_order: CDAB, writable: true, write_address: 20",
                "topic: casa/bomba/ligada, table: coil, address: 0, writable: true, write_address: 7",
                "topic: casa/bomba/eco, table: holding, address: 30, type: bool, bit: 2, writable: true, write_address: 31",
            ],
        )],
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(obs.wait_seen("casa/bomba/setpoint", "21.5", T).await);
    assert!(obs.wait_seen("casa/bomba/eco", "false", T).await);

    // A scaled i16: 23.0 is 230 at write_address (FC06); address 0 still holds 215 and
    // is what the result reads back.
    let r = set(&client, &mut obs, "casa/bomba/setpoint", "23").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["value"],
        serde_json::json!(21.5),
        "read back at `address`"
    );
    assert_eq!(dev.registers(Table::Holding, 1000, 1), [230]);
    assert_eq!(dev.registers(Table::Holding, 0, 1), [215]);
    assert_eq!(requests(&dev, 6, Table::Holding, 1000), 1);
    assert_eq!(
        requests(&dev, 6, Table::Holding, 0),
        0,
        "nothing written at address"
    );

    // A u32 in CDAB order: two registers at 20 (FC16), in the point's word order.
    let r = set(&client, &mut obs, "casa/bomba/limite", "70000").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], serde_json::json!(5000));
    let want = codec::encode(&Value::Int(70000), ValueType::U32, WordOrder::Cdab).expect("enc");
    assert_eq!(dev.registers(Table::Holding, 20, 2), want);
    assert_eq!(dev.registers(Table::Holding, 10, 2), limit);
    assert_eq!(requests(&dev, 16, Table::Holding, 20), 1);

    // A coil: FC05 at coil 7; coil 0 untouched.
    let r = set(&client, &mut obs, "casa/bomba/ligada", "true").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], false, "coil 0 read back");
    assert!(dev.bit(Table::Coil, 7));
    assert!(!dev.bit(Table::Coil, 0));
    assert_eq!(requests(&dev, 5, Table::Coil, 7), 1);

    // A bit: read-modify-write of register 31 (bits 0 and 7 kept); register 30 untouched.
    let r = set(&client, &mut obs, "casa/bomba/eco", "true").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], false, "bit 2 of register 30 read back");
    assert_eq!(dev.registers(Table::Holding, 31, 1), [0x85]);
    assert_eq!(dev.registers(Table::Holding, 30, 1), [0]);
    assert_eq!(requests(&dev, 3, Table::Holding, 31), 1, "the RMW read");
    assert_eq!(requests(&dev, 6, Table::Holding, 31), 1);

    // The device takes the setpoint over: the state follows `address`, at the next poll.
    dev.set_registers(Table::Holding, 0, &[230]);
    assert!(obs.wait_seen("casa/bomba/setpoint", "23.0", T).await);
    assert!(
        reads_covering(&dev, Table::Holding, 0) > 2,
        "address 0 is polled"
    );
    assert_eq!(
        reads_covering(&dev, Table::Holding, 1000),
        0,
        "write_address is not"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// write_only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_point_is_never_read_and_publishes_what_the_device_acknowledged() {
    let server = SimServer::new();
    let vent = server.add(1, SimDevice::new());
    let siren = server.add(2, SimDevice::new());
    vent.set_registers(Table::Input, 0, &[187]);
    // What a read would find there (a register that reads back something else).
    vent.set_registers(Table::Holding, 50, &[999]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = mapping(
        port,
        &[
            device(
                "vent",
                1,
                "200ms",
                &[
                    "topic: casa/vent/temp, table: input, address: 0, scale: 0.1",
                    "topic: casa/vent/velocidade, table: holding, address: 50, write_only: true",
                    "topic: casa/vent/boost, table: coil, address: 5, write_only: true",
                ],
            ),
            device(
                "sirene",
                2,
                "200ms",
                &["topic: casa/sirene/volume, table: holding, address: 0, write_only: true"],
            ),
        ],
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(obs.wait_seen("casa/vent/temp", "18.7", T).await);
    // A device of write-only points is never polled, and is online (retained).
    assert!(
        obs.wait_seen("fieldlink/t/sirene/availability", "online", T)
            .await
    );
    let stats = gw.stats.clone();
    let polls = |id: &str| {
        stats
            .device_by_id(id)
            .map(|d| (d.polls.load(Relaxed), d.failed_polls.load(Relaxed)))
    };
    assert!(eventually(T, || polls("vent").is_some_and(|(p, _)| p >= 5)).await);
    assert_eq!(polls("sirene"), Some((0, 0)));
    assert_eq!(
        siren.request_count(),
        0,
        "nothing is asked of a write-only device"
    );
    assert_eq!(reads_covering(&vent, Table::Holding, 50), 0);
    assert_eq!(reads_covering(&vent, Table::Coil, 5), 0);
    assert!(
        !obs.seen
            .lock()
            .expect("lock")
            .iter()
            .any(|m| m.topic.starts_with("casa/vent/velocidade") || m.topic == "casa/vent/boost"),
        "nothing published for a write-only point before it is written"
    );

    // Written, not read back: the result and the retained state are the value written.
    let r = set(&client, &mut obs, "casa/vent/velocidade", "3").await;
    assert_eq!(r, serde_json::json!({"ok": true, "value": 3}));
    assert_eq!(vent.registers(Table::Holding, 50, 1), [3]);
    assert!(obs.wait_seen("casa/vent/velocidade", "3", T).await);
    let r = set(&client, &mut obs, "casa/vent/boost", "ON").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(vent.bit(Table::Coil, 5));
    assert!(obs.wait_seen("casa/vent/boost", "true", T).await);
    let r = set(&client, &mut obs, "casa/sirene/volume", "7").await;
    assert_eq!(r, serde_json::json!({"ok": true, "value": 7}));
    assert_eq!(siren.registers(Table::Holding, 0, 1), [7]);
    // A subscriber that comes later gets the written values as retained states.
    let late = Observer::connect(gw.broker_port(), "casa/#", QoS::AtLeastOnce).await;
    assert!(
        eventually(T, || {
            let seen = late.seen.lock().expect("lock");
            [
                "casa/vent/velocidade:3",
                "casa/vent/boost:true",
                "casa/sirene/volume:7",
            ]
            .iter()
            .all(|want| {
                seen.iter()
                    .any(|m| m.retain && format!("{}:{}", m.topic, m.payload) == *want)
            })
        })
        .await,
        "retained states: {:?}",
        late.seen.lock().expect("lock")
    );
    // Polls go on; the write-only registers are still never read.
    let before = polls("vent").map_or(0, |(p, _)| p);
    assert!(eventually(T, || polls("vent").is_some_and(|(p, _)| p >= before + 3)).await);
    assert_eq!(reads_covering(&vent, Table::Holding, 50), 0);
    assert_eq!(reads_covering(&vent, Table::Coil, 5), 0);
    let siren_log: Vec<u8> = siren.log().iter().map(|r| r.function).collect();
    assert_eq!(siren_log, [6], "one write, no read");

    // A write the device does not answer takes it offline; the next one is still sent
    // (nothing else would bring it back) and, answered, brings it online again.
    // (The availability and the result may arrive in either order.)
    let seen = obs.seen.clone();
    let availability = |mark: usize, payload: &str| {
        let seen = seen.clone();
        let payload = payload.to_string();
        eventually(T, move || {
            seen.lock().expect("lock")[mark..]
                .iter()
                .any(|m| m.topic == "fieldlink/t/sirene/availability" && m.payload == payload)
        })
    };
    siren.set_responding(false);
    let mark = obs.seen.lock().expect("lock").len();
    let r = set(&client, &mut obs, "casa/sirene/volume", "8").await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(availability(mark, "offline").await);
    siren.set_responding(true);
    let mark = obs.seen.lock().expect("lock").len();
    let r = set(&client, &mut obs, "casa/sirene/volume", "9").await;
    assert_eq!(r, serde_json::json!({"ok": true, "value": 9}));
    assert!(availability(mark, "online").await);
    assert_eq!(polls("sirene"), Some((0, 0)));
    gw.stop().await;
}

#[test]
fn home_assistant_sees_a_write_only_point_as_the_entity_a_read_one_would_be() {
    let mapping = mapping(
        502,
        &[device(
            "d",
            1,
            "1s",
            &[
                "topic: casa/velocidade, table: holding, address: 0, write_only: true",
                "topic: casa/boost, table: coil, address: 0, write_only: true",
                "topic: casa/modo, table: holding, address: 1, write_only: true, values: {AUTO: 0, MANUAL: 1, OFF: 2}",
                "topic: casa/lida, table: holding, address: 2, writable: true",
            ],
        )],
    );
    let m = model(&mapping, "");
    let configs = fieldlink::homeassistant::configs(&m);
    let of = |topic: &str| {
        configs
            .iter()
            .find(|c| c.payload["state_topic"] == topic)
            .unwrap_or_else(|| panic!("no config with state_topic {topic}: {configs:#?}"))
    };
    for (topic, component) in [
        ("casa/velocidade", "number"),
        ("casa/boost", "switch"),
        ("casa/modo", "select"),
        ("casa/lida", "number"),
    ] {
        let c = of(topic);
        assert_eq!(c.component.name(), component, "{topic}");
        assert_eq!(
            c.payload["command_topic"],
            format!("{topic}/set"),
            "{topic}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// rewrite_every, on the paused clock

/// Every write a [`Direct`] transport passed on: virtual time since the start, unit,
/// address, values.
type Writes = Arc<Mutex<Vec<(Duration, u8, u16, Vec<u16>)>>>;

/// Hands every request to the `SimDevice` of its unit, as the TCP server would; a device
/// that does not answer costs the `timeout`, as on the wire.
struct Direct {
    server: SimServer,
    timeout: Duration,
    writes: Writes,
    t0: Instant,
}

impl Direct {
    async fn call(&mut self, unit: u8, req: Request<'_>) -> Result<Response, DriverError> {
        let Some(dev) = self.server.device(unit) else {
            tokio::time::sleep(self.timeout).await;
            return Err(DriverError::Timeout(self.timeout));
        };
        match dev.handle(unit, &req) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => {
                tokio::time::sleep(self.timeout).await;
                Err(DriverError::Timeout(self.timeout))
            }
            Err(e) => Err(DriverError::Exception {
                code: u8::from(e),
                name: "exception",
            }),
        }
    }

    fn written(&self, unit: u8, addr: u16, values: Vec<u16>) {
        self.writes
            .lock()
            .expect("lock")
            .push((self.t0.elapsed(), unit, addr, values));
    }
}

impl ModbusTransport for Direct {
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
        match self.call(unit, req).await? {
            Response::ReadHoldingRegisters(r) | Response::ReadInputRegisters(r) => {
                Ok(ReadData::Registers(r))
            }
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Ok(ReadData::Bits(b)),
            other => Err(DriverError::Protocol(format!("{other:?}"))),
        }
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let req = if values.len() == 1 && !multiple {
            Request::WriteSingleRegister(addr, values[0])
        } else {
            Request::WriteMultipleRegisters(addr, Cow::Borrowed(values))
        };
        self.call(unit, req).await?;
        self.written(unit, addr, values.to_vec());
        Ok(())
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let req = if values.len() == 1 && !multiple {
            Request::WriteSingleCoil(addr, values[0])
        } else {
            Request::WriteMultipleCoils(addr, Cow::Borrowed(values))
        };
        self.call(unit, req).await?;
        self.written(unit, addr, values.iter().map(|b| u16::from(*b)).collect());
        Ok(())
    }

    fn endpoint(&self) -> String {
        "sim devices (direct)".into()
    }
}

/// A bus task on the paused clock and its handles.
struct Bench {
    commands: mpsc::Sender<buses::Command>,
    control: mpsc::Sender<buses::Control>,
    log: Arc<Mutex<Vec<(Duration, Outgoing)>>>,
    writes: Writes,
    stats: Arc<Stats>,
    model: Arc<Model>,
    stop: shutdown::ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    t0: Instant,
}

const BUS: &str =
    "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502, timeout: 1s }\ndevices:\n";

/// Run the Modbus bus of `devices` (appended to [`BUS`]) over `server`.
fn bench(server: &SimServer, devices: &str) -> Bench {
    let model = Arc::new(model(&format!("{BUS}{devices}"), ""));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel::<Vec<Outgoing>>(1024);
    let log: Arc<Mutex<Vec<(Duration, Outgoing)>>> = Arc::default();
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
    let (commands, commands_rx) = mpsc::channel(16);
    let (control, control_rx) = mpsc::channel(4);
    let (stop, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands: commands_rx,
        control: control_rx,
        stats: stats.clone(),
        shutdown: sd,
    };
    let writes: Writes = Arc::default();
    let transport = Direct {
        server: server.clone(),
        timeout: Duration::from_secs(1),
        writes: writes.clone(),
        t0,
    };
    let bus = model.buses[0].clone();
    let task = tokio::spawn(buses::run_modbus(model.clone(), bus, 0, transport, io));
    Bench {
        commands,
        control,
        log,
        writes,
        stats,
        model,
        stop,
        task,
        t0,
    }
}

impl Bench {
    /// Send a `/set` of `value` for point `p` of device `d` (as the router would).
    async fn set(&self, d: usize, p: usize, value: i64) {
        let topic = self.model.buses[0].devices[d].points[p].topic.clone();
        let c = buses::Command {
            device: d,
            point: p,
            topic,
            generation: 0,
            value: Value::Int(value),
            id: Some(serde_json::json!(format!("set-{value}"))),
        };
        self.commands.send(c).await.expect("bus task runs");
        // The task takes it at once (the clock does not move while it can run).
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Sleep until `at` since the start (virtual time).
    async fn until(&self, at: Duration) {
        tokio::time::sleep_until(self.t0 + at).await;
    }

    /// The writes of `unit` as (whole seconds of virtual time, first value).
    fn writes_of(&self, unit: u8) -> Vec<(u64, u16)> {
        self.writes
            .lock()
            .expect("lock")
            .iter()
            .filter(|w| w.1 == unit)
            .map(|w| (w.0.as_secs(), w.3[0]))
            .collect()
    }

    /// The payloads published on `topic`.
    fn on(&self, topic: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, m)| m.topic == topic)
            .map(|(_, m)| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    fn counters(&self, id: &str) -> (u64, u64) {
        self.stats.device_by_id(id).map_or((0, 0), |d| {
            (d.rewrites.load(Relaxed), d.rewrite_errors.load(Relaxed))
        })
    }
}

/// `(second, value)` for each of `seconds`.
fn at(seconds: &[u64], value: u16) -> Vec<(u64, u16)> {
    seconds.iter().map(|s| (*s, value)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_kept_value_is_rewritten_every_period_until_a_new_set_replaces_it() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let mut b = bench(
        &server,
        &device(
            "inversor",
            1,
            "1h",
            &["topic: casa/inversor/limite, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.until(Duration::from_secs(2)).await;
    b.set(0, 0, 50).await;
    b.until(Duration::from_secs(40)).await;
    // Written by the command at 2 s, then again every 10 s.
    assert_eq!(b.writes_of(1), at(&[2, 12, 22, 32], 50));
    assert_eq!(
        requests(&dev, 6, Table::Holding, 0),
        4,
        "counted at the device"
    );
    assert_eq!(b.counters("inversor"), (3, 0));
    // A rewrite answers nothing and publishes only what changed (nothing here).
    assert_eq!(b.on("casa/inversor/limite/set/result").len(), 1);
    assert_eq!(b.on("casa/inversor/limite"), ["0", "50"]);

    // A new /set at 40 s replaces the kept value; the period restarts from its write.
    b.set(0, 0, 60).await;
    b.until(Duration::from_secs(75)).await;
    let w = b.writes_of(1);
    assert_eq!(w[4..], at(&[40, 50, 60, 70], 60), "{w:?}");
    assert!(
        !w[4..].iter().any(|x| x.1 == 50),
        "the old value is never written again"
    );
    assert_eq!(b.counters("inversor"), (6, 0));
    assert_eq!(b.on("casa/inversor/limite/set/result").len(), 2);

    // Shutdown ends it.
    b.stop.trigger();
    (&mut b.task).await.expect("bus task ends");
    let n = b.writes_of(1).len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(b.writes_of(1).len(), n);
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_publishes_its_read_back_when_it_changed() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let b = bench(
        &server,
        &device(
            "bomba",
            1,
            "5s",
            &["topic: casa/bomba/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.until(Duration::from_secs(1)).await;
    b.set(0, 0, 40).await;
    // The device falls back to 0 at 3 s (its master went quiet, say); the poll at 5 s
    // publishes it, the rewrite at 11 s puts 40 back and publishes that change; the
    // rewrite at 21 s changes nothing and publishes nothing.
    b.until(Duration::from_secs(3)).await;
    dev.set_registers(Table::Holding, 0, &[0]);
    b.until(Duration::from_secs(25)).await;
    assert_eq!(b.on("casa/bomba/alvo"), ["0", "40", "0", "40"]);
    assert_eq!(dev.registers(Table::Holding, 0, 1), [40]);
    assert_eq!(b.counters("bomba"), (2, 0));
    assert_eq!(
        b.on("casa/bomba/alvo/set/result").len(),
        1,
        "rewrites answer nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_rewrite_is_counted_warned_once_and_tried_again_after_the_period() {
    let logs = capture_logs();
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let b = bench(
        &server,
        &device(
            "caldeira",
            1,
            "1h",
            &["topic: casa/caldeira/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.set(0, 0, 40).await;
    b.until(Duration::from_secs(11)).await;
    assert_eq!(b.counters("caldeira"), (1, 0));
    // The device stops answering at 11 s: the rewrites at 20, 31 and 42 s fail (each
    // costs the 1 s timeout; the next comes a period after it), counted, warned once.
    dev.set_responding(false);
    b.until(Duration::from_secs(50)).await;
    assert_eq!(b.counters("caldeira"), (1, 3));
    // At the device: the command at 0 s, the rewrites at 10, 20, 31 and 42 s.
    assert_eq!(requests(&dev, 6, Table::Holding, 0), 5, "{:?}", dev.log());
    let logged = |text: &str| {
        String::from_utf8_lossy(&logs.lock().expect("lock"))
            .lines()
            .filter(|l| l.contains(text) && l.contains("casa/caldeira/alvo"))
            .count()
    };
    assert_eq!(
        logged("Rewrite failed."),
        1,
        "WARN once while it keeps failing"
    );
    // Back at 50 s: the rewrite at 53 s goes through.
    dev.set_responding(true);
    b.until(Duration::from_secs(54)).await;
    assert_eq!(b.counters("caldeira"), (2, 3));
    assert_eq!(requests(&dev, 6, Table::Holding, 0), 6);
    assert_eq!(logged("Rewrite acknowledged again."), 1);
    assert_eq!(
        b.on("casa/caldeira/alvo/set/result").len(),
        1,
        "rewrites answer nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_the_device_ends_its_rewrites_and_an_unchanged_one_keeps_them() {
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    server.add(2, SimDevice::new());
    let device = |id: &str, unit: u8, poll: &str| {
        let point = format!(
            "topic: casa/{id}/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"
        );
        device(id, unit, poll, &[&point])
    };
    let b = bench(
        &server,
        &format!("{}{}", device("a", 1, "1h"), device("b", 2, "1h")),
    );
    b.set(0, 0, 11).await;
    b.set(1, 0, 22).await;
    b.until(Duration::from_secs(15)).await;
    assert_eq!(b.writes_of(1), at(&[0, 10], 11));
    assert_eq!(b.writes_of(2), at(&[0, 10], 22));

    // The reload at 15 s changes device `a` (its poll interval) and keeps `b`, as
    // `fieldlink` does on SIGHUP (the same `Control` the bus registry sends).
    let new = model(
        &format!("{BUS}{}{}", device("a", 1, "2h"), device("b", 2, "1h")),
        "",
    );
    let (done, applied) = tokio::sync::oneshot::channel();
    let c = buses::Control::reconfigure(&b.model.buses[0], new.buses[0].clone(), 0, 1, done);
    assert!(matches!(&c, buses::Control::Reconfigure { kept, .. } if *kept == [None, Some(1)]));
    b.control.send(c).await.expect("bus task runs");
    applied.await.expect("reload applied");
    b.until(Duration::from_secs(45)).await;
    assert_eq!(
        b.writes_of(1),
        at(&[0, 10], 11),
        "changed device: no more rewrites"
    );
    assert_eq!(
        b.writes_of(2),
        at(&[0, 10, 20, 30, 40], 22),
        "unchanged device: rewritten on its period across the reload"
    );
}

/// Writes of `value` at `dev` (FC06).
fn writes_of(dev: &SimDevice, value: u16) -> usize {
    dev.log()
        .iter()
        .filter(|r| r.function == 6 && r.written.first() == Some(&value))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_running_gateway_ends_the_rewrites_of_the_device_it_changes() {
    let server = SimServer::new();
    let a = server.add(1, SimDevice::new());
    let b = server.add(2, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let point = |id: &str| {
        format!("topic: casa/{id}/alvo, table: holding, address: 0, writable: true, rewrite_every: 200ms")
    };
    let text = |poll_a: &str| {
        mapping(
            port,
            &[
                device("a", 1, poll_a, &[&point("a")]),
                device("b", 2, "1s", &[&point("b")]),
            ],
        )
    };
    let current = Arc::new(Mutex::new(text("1s")));
    let gateway = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n";
    let source = current.clone();
    let load: fieldlink::Loader = Arc::new(move || {
        let mapping = source.lock().expect("lock").clone();
        fieldlink::config::check_sources(std::path::Path::new("/gateway.yaml"), gateway, |_, _| {
            vec![("mapping.yaml".into(), mapping)]
        })
    });
    let (reload, requests) = mpsc::channel(1);
    let hooks = fieldlink::Hooks {
        reloads: Some(fieldlink::Reloads { requests, load }),
        ..Default::default()
    };
    let gw = Gateway::start_with(model(&text("1s"), ""), hooks).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert_eq!(
        set(&client, &mut obs, "casa/a/alvo", "11").await["ok"],
        true
    );
    assert_eq!(
        set(&client, &mut obs, "casa/b/alvo", "22").await["ok"],
        true
    );
    assert!(eventually(T, || writes_of(&a, 11) >= 3 && writes_of(&b, 22) >= 3).await);

    // Device `a` changes (its poll interval), `b` does not.
    *current.lock().expect("lock") = text("2s");
    let reloads = || gw.stats.reloads().map_or(0, |r| r.count);
    reload.send(()).await.expect("reload request");
    assert!(eventually(T, || reloads() == 1).await, "reload applied");
    let last = gw.stats.reloads().and_then(|r| r.last).expect("outcome");
    assert_eq!((last.changed, last.kept), (1, 1));
    let (after_a, after_b) = (writes_of(&a, 11), writes_of(&b, 22));
    // `b` goes on being rewritten; `a`, not once more.
    assert!(eventually(T, || writes_of(&b, 22) >= after_b + 5).await);
    assert_eq!(writes_of(&a, 11), after_a, "{:?}", a.log());
    gw.stop().await;
}
