//! The Modbus server's gateway side (`modbus_server:`, issue #26), asked directly through
//! its `Backend` as the network side asks it: the real gateway (`run_with`) polls
//! tokio-modbus simulators (`SimServer`) and hands its backend over through `Hooks`.
//!
//! What is checked: every polled range of every table is served as the device holds it,
//! bridged gaps included; unpolled and spanning requests get 02, an unknown unit 0x0A; an
//! offline device 0x0B, and a value past its age 0x0B (on the paused clock, a bus task
//! over TCP); writes of whole writable points land on the device, are read back into
//! what is served and answered on `/set/result`, and writes the checks refuse (03) or
//! that are not a writable point's (02) write nothing; a reload that changes a served
//! device serves nothing of it until it is read again, while an unchanged one keeps its
//! values.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink::{
    modbus_server::{Backend, Exception, ReadData, Snapshots, Table, Write},
    model::{Allow, ModbusServer, Model},
    Hooks, Outgoing, Reloads,
};
use fieldlink_drivers::{
    modbus::{codec, WordOrder},
    sim::{SimDevice, SimServer},
    value::{Value, ValueType},
};
use fieldlink_tests::{eventually, modbus_bus, model_from, Gateway, Observer};
use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(10);

const GATEWAY: &str = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n";

/// The served device `m` (unit 1) of every table, with bridged gaps (the planner's
/// `max_gap` is 8) and a far register that is read alone.
fn mapping(port: u16, extra: &str) -> String {
    format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\n\
devices:\n  - id: m\n    bus: b\n    unit: 1\n    poll_interval: 200ms\n    offline_after: 1\n    points:\n\
\x20     - {{ topic: m/setpoint, table: holding, address: 0, scale: 0.1, min: 5, max: 30, writable: true }}\n\
\x20     - {{ topic: m/offset, table: holding, address: 2, type: i32, word_order: CDAB, writable: true }}\n\
\x20     - {{ topic: m/limit, table: holding, address: 4, type: u32, max: 1000, writable: true }}\n\
\x20     - {{ topic: m/status, table: holding, address: 6 }}\n\
\x20     - {{ topic: m/mode, table: holding, address: 10 }}\n\
\x20     - {{ topic: m/flag, table: holding, address: 12, type: bool, bit: 3, writable: true }}\n\
\x20     - {{ topic: m/far, table: holding, address: 40 }}\n\
\x20     - {{ topic: m/energy, table: input, address: 0, type: u32 }}\n\
\x20     - {{ topic: m/temp, table: input, address: 5, type: i16 }}\n\
\x20     - {{ topic: m/relay, table: coil, address: 0, writable: true }}\n\
\x20     - {{ topic: m/lamp, table: coil, address: 2 }}\n\
\x20     - {{ topic: m/door, table: discrete, address: 0 }}\n\
\x20     - {{ topic: m/window, table: discrete, address: 3 }}\n{extra}"
    )
}

/// The model of `mapping` with the Modbus server serving `units`.
fn served(mapping: &str, units: &[(u8, &str)], writes: bool) -> Model {
    let mut m = model_from(GATEWAY, mapping);
    m.modbus_server = Some(settings(units, writes));
    m
}

fn settings(units: &[(u8, &str)], writes: bool) -> ModbusServer {
    ModbusServer {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow: Allow::loopback(),
        max_age: None,
        max_connections: 8,
        writes,
        units: units.iter().map(|(u, d)| (*u, d.to_string())).collect(),
        idle_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(5),
    }
}

/// The simulator of device `m`: every address of every table holds something.
async fn device() -> (Arc<SimDevice>, u16) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let holding: Vec<u16> = (0..50).map(|a| 1000 + a).collect();
    dev.set_registers(Table::Holding, 0, &holding);
    dev.set_registers(Table::Holding, 0, &[215]);
    dev.set_registers(Table::Holding, 4, &[0, 500]);
    dev.set_registers(Table::Holding, 12, &[0b1000]);
    let input: Vec<u16> = (0..10).map(|a| 2000 + a).collect();
    dev.set_registers(Table::Input, 0, &input);
    for (a, v) in [(0, true), (1, true), (2, false), (3, true)] {
        dev.set_bit(Table::Coil, a, v);
        dev.set_bit(Table::Discrete, a, !v);
    }
    let port = server.spawn_local().await.expect("sim");
    (dev, port)
}

/// The gateway on `model` and its Modbus backend.
async fn start(model: Model) -> (Gateway, Arc<dyn Backend>) {
    start_with(model, Hooks::default()).await
}

async fn start_with(model: Model, mut hooks: Hooks) -> (Gateway, Arc<dyn Backend>) {
    let (tx, rx) = oneshot::channel();
    hooks.modbus_backend = Some(tx);
    hooks.modbus_listener = Some(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let gw = Gateway::start_with(model, hooks).await;
    let backend = tokio::time::timeout(T, rx)
        .await
        .expect("backend within 10 s")
        .expect("backend sent");
    (gw, backend)
}

/// What `SimDevice` holds, as a read of it would answer.
fn held(dev: &SimDevice, table: Table, start: u16, count: u16) -> ReadData {
    if table.is_bits() {
        ReadData::Bits((start..start + count).map(|a| dev.bit(table, a)).collect())
    } else {
        ReadData::Registers(dev.registers(table, start, count))
    }
}

/// Every range the gateway polls of `m`, gaps included.
const POLLED: [(Table, u16, u16); 5] = [
    (Table::Holding, 0, 13),
    (Table::Holding, 40, 1),
    (Table::Input, 0, 6),
    (Table::Coil, 0, 3),
    (Table::Discrete, 0, 4),
];

/// Wait until every polled range of unit 1 is served.
async fn first_poll(backend: &Arc<dyn Backend>) {
    let b = backend.clone();
    let all = move || POLLED.iter().all(|&(t, s, n)| b.read(1, t, s, n).is_ok());
    assert!(eventually(T, all).await, "served within 10 s");
}

const CLIENT: &str = "127.0.0.1:40123";

fn client() -> SocketAddr {
    CLIENT.parse().expect("addr")
}

fn regs(table: Table, start: u16, r: &[u16]) -> Write {
    Write {
        table,
        start,
        data: ReadData::Registers(r.to_vec()),
    }
}

/// The writes the simulator was asked for (FC05/06/15/16).
fn writes(dev: &SimDevice) -> usize {
    dev.log()
        .iter()
        .filter(|r| matches!(r.function, 5 | 6 | 15 | 16))
        .count()
}

#[tokio::test]
async fn every_polled_address_is_served_as_the_device_holds_it_and_nothing_else() {
    let (dev, port) = device().await;
    let (gw, backend) = start(served(&mapping(port, ""), &[(1, "m")], false)).await;
    first_poll(&backend).await;
    for (table, start, count) in POLLED {
        assert_eq!(
            backend.read(1, table, start, count),
            Ok(held(&dev, table, start, count)),
            "{table} {start}+{count}"
        );
    }
    // Bridged gaps alone, and parts of points.
    assert_eq!(
        backend.read(1, Table::Holding, 7, 3),
        Ok(ReadData::Registers(vec![1007, 1008, 1009]))
    );
    assert_eq!(
        backend.read(1, Table::Input, 3, 1),
        Ok(ReadData::Registers(vec![2003]))
    );
    assert_eq!(
        backend.read(1, Table::Coil, 1, 1),
        Ok(ReadData::Bits(vec![true]))
    );
    let address = Err(Exception::ILLEGAL_DATA_ADDRESS);
    for (table, start, count) in [
        (Table::Holding, 20, 1),
        (Table::Holding, 12, 2),
        (Table::Holding, 39, 2),
        (Table::Input, 6, 1),
        (Table::Input, 4, 4),
        (Table::Coil, 3, 1),
        (Table::Discrete, 2, 3),
    ] {
        assert_eq!(
            backend.read(1, table, start, count),
            address,
            "{table} {start}+{count}"
        );
    }
    assert_eq!(
        backend.read(7, Table::Holding, 0, 1),
        Err(Exception::GATEWAY_PATH_UNAVAILABLE)
    );
    // Writes are off: refused before anything is looked at.
    let w = backend
        .write(1, regs(Table::Holding, 0, &[100]), client())
        .await;
    assert_eq!(w, Err(Exception::ILLEGAL_FUNCTION));
    assert_eq!(writes(&dev), 0);
    gw.stop().await;
}

#[tokio::test]
async fn an_offline_device_is_not_served_until_it_answers_again() {
    let (dev, port) = device().await;
    let model = served(&mapping(port, ""), &[(1, "m")], false);
    let (gw, backend) = start(model).await;
    let mut obs = Observer::connect(
        gw.broker_port(),
        "fieldlink/t/m/availability",
        QoS::AtLeastOnce,
    )
    .await;
    first_poll(&backend).await;
    dev.set_responding(false);
    let topic = "fieldlink/t/m/availability";
    assert!(
        obs.wait_payload(topic, "offline", T).await,
        "offline within 10 s"
    );
    for (table, start, count) in POLLED {
        assert_eq!(
            backend.read(1, table, start, count),
            Err(Exception::GATEWAY_TARGET_FAILED)
        );
    }
    // Unpolled stays 02: the device's state does not change what is polled.
    assert_eq!(
        backend.read(1, Table::Holding, 20, 1),
        Err(Exception::ILLEGAL_DATA_ADDRESS)
    );
    dev.set_responding(true);
    assert!(
        obs.wait_payload(topic, "online", T).await,
        "online within 10 s"
    );
    first_poll(&backend).await;
    gw.stop().await;
}

/// What the bus task published.
type Log = Arc<Mutex<Vec<Outgoing>>>;

/// On the paused clock, a bus task over TCP: a value is served for 3 × its cadence after
/// the read that produced it, and then not, though the device stays online (it answers,
/// with an exception).
#[tokio::test(start_paused = true)]
async fn a_value_past_its_age_is_not_served() {
    let (dev, port) = device().await;
    let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 1, timeout: 5s }\ndevices:\n  - id: m\n    bus: b\n    poll_interval: 1s\n    points:\n      - { topic: m/a, table: holding, address: 0, type: u32 }\n";
    let model = Arc::new(served(mapping, &[(1, "m")], false));
    let snapshots = Snapshots::new(&model).expect("served");
    let (mut rx, stop, task) = modbus_bus(&model, port, Some(snapshots.clone()));
    let log: Log = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            l.lock().expect("lock").extend(b);
        }
    });
    let snap = snapshots.get("m").expect("snapshot");
    let now = tokio::time::Instant::now;
    for _ in 0..10_000 {
        if snap.read(Table::Holding, 0, 2, now()).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Read at most 1 ms ago; from now on the device refuses every read.
    let seen = now();
    dev.set_max_read(0);
    assert_eq!(
        snap.read(Table::Holding, 0, 2, seen),
        Ok(ReadData::Registers(vec![215, 1001]))
    );
    tokio::time::sleep_until(seen + Duration::from_millis(2_990)).await;
    assert!(
        snap.read(Table::Holding, 0, 2, now()).is_ok(),
        "younger than 3 s"
    );
    tokio::time::sleep_until(seen + Duration::from_secs(3)).await;
    assert_eq!(
        snap.read(Table::Holding, 0, 2, now()),
        Err(Exception::GATEWAY_TARGET_FAILED)
    );
    assert!(snap.online(), "online all along: it answers");
    assert!(dev.request_count() >= 3, "polled meanwhile");
    stop.trigger();
    task.await.expect("bus task");
}

/// The `/set/result` of `topic` (after the one `skip` says to skip).
async fn result(obs: &mut Observer, topic: &str) -> serde_json::Value {
    let m = obs
        .next_on(&format!("{topic}/set/result"), T)
        .await
        .unwrap_or_else(|| panic!("no result on {topic}/set/result"));
    serde_json::from_str(&m.payload).expect("JSON result")
}

#[tokio::test]
async fn writes_of_whole_writable_points_land_and_others_write_nothing() {
    let (dev, port) = device().await;
    let (gw, backend) = start(served(&mapping(port, ""), &[(1, "m")], true)).await;
    let mut obs = Observer::connect(gw.broker_port(), "m/#", QoS::AtLeastOnce).await;
    first_poll(&backend).await;
    let id = serde_json::json!({ "modbus": CLIENT });

    // FC06 on a scaled u16 within min/max: 25.0.
    let w = backend
        .write(1, regs(Table::Holding, 0, &[250]), client())
        .await;
    assert_eq!(w, Ok(()));
    assert_eq!(dev.registers(Table::Holding, 0, 1), [250]);
    let r = result(&mut obs, "m/setpoint").await;
    assert_eq!((&r["ok"], &r["id"]), (&true.into(), &id), "{r}");
    assert_eq!(r["value"].as_f64(), Some(25.0), "{r}");
    assert_eq!(
        backend.read(1, Table::Holding, 0, 1),
        Ok(ReadData::Registers(vec![250])),
        "the read-back is served"
    );

    // FC16 of an i32 in CDAB order.
    let words = codec::encode(&Value::Int(-123_456), ValueType::I32, WordOrder::Cdab).expect("enc");
    let w = backend
        .write(1, regs(Table::Holding, 2, &words), client())
        .await;
    assert_eq!(w, Ok(()));
    assert_eq!(dev.registers(Table::Holding, 2, 2), words);
    assert_eq!(
        result(&mut obs, "m/offset").await["value"].as_f64(),
        Some(-123_456.0)
    );
    assert_eq!(
        backend.read(1, Table::Holding, 2, 2),
        Ok(ReadData::Registers(words.clone()))
    );

    // FC05 on a coil.
    dev.set_bit(Table::Coil, 0, false);
    let coil = Write {
        table: Table::Coil,
        start: 0,
        data: ReadData::Bits(vec![true]),
    };
    assert_eq!(backend.write(1, coil, client()).await, Ok(()));
    assert!(dev.bit(Table::Coil, 0));
    assert_eq!(result(&mut obs, "m/relay").await["ok"], true);
    assert_eq!(
        backend.read(1, Table::Coil, 0, 1),
        Ok(ReadData::Bits(vec![true]))
    );

    // Refused, nothing written: above max (30.1), below min (4.9), and a write of two
    // points of which one is above its max (neither is written).
    let before = writes(&dev);
    let refused = [
        (
            regs(Table::Holding, 0, &[301]),
            Exception::ILLEGAL_DATA_VALUE,
        ),
        (
            regs(Table::Holding, 0, &[49]),
            Exception::ILLEGAL_DATA_VALUE,
        ),
        (
            regs(Table::Holding, 2, &[1, 0, 0, 5000]),
            Exception::ILLEGAL_DATA_VALUE,
        ),
        // Not a writable point's register: read-only, a gap, past any point.
        (
            regs(Table::Holding, 6, &[1]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        (
            regs(Table::Holding, 1, &[1]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        (
            regs(Table::Holding, 30, &[1]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        // Half a u32, either half; a point and a half.
        (
            regs(Table::Holding, 4, &[0]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        (
            regs(Table::Holding, 5, &[7]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        (
            regs(Table::Holding, 2, &[1, 0, 0]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        // A bit of a register is written through `/set` only.
        (
            regs(Table::Holding, 12, &[0]),
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
        // A coil that is not writable.
        (
            Write {
                table: Table::Coil,
                start: 2,
                data: ReadData::Bits(vec![true]),
            },
            Exception::ILLEGAL_DATA_ADDRESS,
        ),
    ];
    for (w, e) in refused {
        let what = format!("{w:?}");
        assert_eq!(backend.write(1, w, client()).await, Err(e), "{what}");
    }
    assert_eq!(
        backend
            .write(9, regs(Table::Holding, 0, &[250]), client())
            .await,
        Err(Exception::GATEWAY_PATH_UNAVAILABLE)
    );
    assert_eq!(writes(&dev), before, "nothing written");
    assert_eq!(dev.registers(Table::Holding, 0, 6), {
        let mut r = vec![250, 1001];
        r.extend(&words);
        r.extend([0, 500]);
        r
    });

    // Two points in one FC16 (i32 and u32): both land, both answered, and these are
    // the first results since the coil's (a refused write never became a command).
    let w = backend
        .write(1, regs(Table::Holding, 2, &[7, 0, 0, 999]), client())
        .await;
    assert_eq!(w, Ok(()));
    assert_eq!(dev.registers(Table::Holding, 2, 4), [7, 0, 0, 999]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = obs
            .next_matching(|m| m.topic.ends_with("/set/result"), T)
            .await
            .expect("a result");
        let v: serde_json::Value = serde_json::from_str(&m.payload).expect("JSON");
        got.push((m.topic, v["value"].as_f64()));
    }
    assert_eq!(
        got,
        [
            ("m/offset/set/result".to_string(), Some(7.0)),
            ("m/limit/set/result".to_string(), Some(999.0)),
        ]
    );
    gw.stop().await;
}

/// A write the device refuses gets the device's exception; one it never answers 0x0B.
#[tokio::test]
async fn a_write_the_device_refuses_or_never_answers_says_so() {
    let (dev, port) = device().await;
    let (gw, backend) = start(served(&mapping(port, ""), &[(1, "m")], true)).await;
    first_poll(&backend).await;
    dev.add_holes(Table::Holding, [0]);
    let w = backend
        .write(1, regs(Table::Holding, 0, &[100]), client())
        .await;
    assert_eq!(w, Err(Exception::ILLEGAL_DATA_ADDRESS), "the device's 02");
    dev.set_responding(false);
    let w = backend
        .write(1, regs(Table::Holding, 2, &[1, 0]), client())
        .await;
    assert_eq!(w, Err(Exception::GATEWAY_TARGET_FAILED));
    gw.stop().await;
}

/// The Modbus server of the reload test: units 1 (`m`) and 2 (`n`), every value kept
/// for an hour (only a reload empties a snapshot there).
fn kept_an_hour() -> ModbusServer {
    ModbusServer {
        max_age: Some(Duration::from_secs(3600)),
        ..settings(&[(1, "m"), (2, "n")], false)
    }
}

/// The gateway file and a mapping that the test replaces, read again by each reload.
fn loader(mapping: Arc<Mutex<String>>) -> fieldlink::Loader {
    Arc::new(move || {
        let text = mapping.lock().expect("lock").clone();
        let mut c =
            fieldlink::config::check_sources(Path::new("/gateway.yaml"), GATEWAY, |_, _| {
                vec![(PathBuf::from("mapping.yaml"), text.clone())]
            })?;
        c.model.modbus_server = Some(kept_an_hour());
        Ok(c)
    })
}

#[tokio::test]
async fn a_reload_serves_nothing_of_a_changed_device_until_it_is_read_again() {
    let (dev, port) = device().await;
    // `n` reads the same simulated device as `m` (unit 1), on a bus of its own; both
    // stay online through a long run of failed polls.
    let with_n = |address: u16| {
        let n = format!(
            "  - {{ id: c, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\ndevices:\n  - id: n\n    bus: c\n    unit: 1\n    poll_interval: 200ms\n    offline_after: 1000\n    points:\n      - {{ topic: n/a, table: holding, address: {address} }}\n"
        );
        mapping(port, "")
            .replace("offline_after: 1\n", "offline_after: 1000\n")
            .replacen("devices:\n", &n, 1)
    };
    let text = Arc::new(Mutex::new(with_n(20)));
    let (reload, requests) = mpsc::channel(1);
    let hooks = Hooks {
        reloads: Some(Reloads {
            requests,
            load: loader(text.clone()),
        }),
        ..Hooks::default()
    };
    let mut model = model_from(GATEWAY, &with_n(20));
    model.modbus_server = Some(kept_an_hour());
    let (gw, backend) = start_with(model, hooks).await;
    first_poll(&backend).await;
    let b = backend.clone();
    assert!(eventually(T, || b.read(2, Table::Holding, 20, 1).is_ok()).await);
    // From now on the device answers nothing: what is served was read before.
    dev.set_responding(false);
    let m_before = backend.read(1, Table::Holding, 0, 13);
    assert!(m_before.is_ok());
    *text.lock().expect("lock") = with_n(21);
    let stats = gw.stats.clone();
    reload.send(()).await.expect("reload");
    assert!(
        eventually(T, || stats.reloads().is_some()).await,
        "reloaded within 10 s"
    );
    assert_eq!(
        backend.read(2, Table::Holding, 21, 1),
        Err(Exception::GATEWAY_TARGET_FAILED),
        "changed: nothing read since"
    );
    assert_eq!(
        backend.read(2, Table::Holding, 20, 1),
        Err(Exception::ILLEGAL_DATA_ADDRESS),
        "no longer polled"
    );
    assert_eq!(
        backend.read(1, Table::Holding, 0, 13),
        m_before,
        "unchanged: what it read before"
    );
    dev.set_responding(true);
    let b = backend.clone();
    assert!(eventually(T, || b.read(2, Table::Holding, 21, 1).is_ok()).await);
    assert_eq!(
        backend.read(2, Table::Holding, 21, 1),
        Ok(ReadData::Registers(vec![1021]))
    );
    gw.stop().await;
}
