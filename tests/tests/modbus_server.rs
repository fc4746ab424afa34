//! The Modbus TCP server end to end (issue #26), as another Modbus master sees it: the real
//! gateway configured from YAML (`modbus_server:`) polls tokio-modbus simulators, and the
//! real `mbpoll` (libmodbus) and tokio-modbus's client read and write over TCP.
//!
//! What is checked: every served value equals the device's, in every table, for both
//! clients; unpolled addresses and spanning requests get 02, an unknown unit 0x0A, an
//! offline device 0x0B; mbpoll's writes on writable points land on the device with their
//! `/set/result`, and writes the checks refuse (03) or on other registers (02) write
//! nothing; on the paused clock, four clients hammering the server do not move a poll.
//! The network side alone (framing, fuzz, `allow`, timeouts): `gateway/tests/
//! modbus_server_front.rs` and `modbus_server_robustness.rs`; the gateway side asked
//! directly: `modbus_server_backend.rs`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fieldlink::{
    modbus_server::{Backend, Exception, ReadData, ServerStats, Snapshots, Write, WriteFuture},
    shutdown, Hooks,
};
use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{mbpoll, modbus_bus, model, Gateway, Observer};
use rumqttc::QoS;
use tokio_modbus::{
    client::{Reader, Writer},
    ExceptionCode, Slave,
};

const T: Duration = Duration::from_secs(10);

/// Device `m` at unit 3: every table, a scaled setpoint with min/max, a CDAB i32, a
/// read-only status, a writable coil; registers 7–9 are a gap one read bridges.
fn mapping(port: u16) -> String {
    format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\n\
devices:\n  - id: m\n    bus: b\n    unit: 3\n    poll_interval: 200ms\n    offline_after: 1\n    points:\n\
\x20     - {{ topic: m/setpoint, table: holding, address: 0, scale: 0.1, min: 5, max: 30, writable: true }}\n\
\x20     - {{ topic: m/offset, table: holding, address: 2, type: i32, word_order: CDAB, writable: true }}\n\
\x20     - {{ topic: m/status, table: holding, address: 6 }}\n\
\x20     - {{ topic: m/mode, table: holding, address: 10 }}\n\
\x20     - {{ topic: m/energy, table: input, address: 0, type: f32, word_order: CDAB }}\n\
\x20     - {{ topic: m/relay, table: coil, address: 0, writable: true }}\n\
\x20     - {{ topic: m/lamp, table: coil, address: 1 }}\n\
\x20     - {{ topic: m/door, table: discrete, address: 0 }}\n\
\x20     - {{ topic: m/window, table: discrete, address: 2 }}\n"
    )
}

async fn device() -> (Arc<SimDevice>, u16) {
    let server = SimServer::new();
    let dev = server.add(3, SimDevice::new());
    let holding: Vec<u16> = (0..20).map(|a| 0xA000 + a).collect();
    dev.set_registers(Table::Holding, 0, &holding);
    dev.set_registers(Table::Holding, 0, &[215]);
    dev.set_registers(Table::Input, 0, &[0x4CCD, 0x4148]);
    dev.set_bit(Table::Coil, 0, true);
    dev.set_bit(Table::Coil, 1, false);
    for (a, v) in [(0, true), (1, false), (2, true)] {
        dev.set_bit(Table::Discrete, a, v);
    }
    (dev.clone(), server.spawn_local().await.expect("sim"))
}

/// The gateway on `mapping` with `modbus_server:` (YAML `extra` lines under it), and the
/// address the server listens on (a listener the test bound).
async fn start(mapping: &str, extra: &str) -> (Gateway, SocketAddr) {
    let model = model(
        mapping,
        &format!("modbus_server:\n  listen: \"127.0.0.1:5020\"\n{extra}"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hooks = Hooks {
        modbus_listener: Some(listener),
        ..Hooks::default()
    };
    (Gateway::start_with(model, hooks).await, addr)
}

/// What the device holds, as tokio-modbus reads it: registers as `u16`, bits as 0/1.
fn held(dev: &SimDevice, table: Table, start: u16, count: u16) -> Vec<i64> {
    (start..start + count)
        .map(|a| {
            if table.is_bits() {
                i64::from(dev.bit(table, a))
            } else {
                i64::from(dev.registers(table, a, 1)[0])
            }
        })
        .collect()
}

/// Read with tokio-modbus's client: the values, or the exception.
async fn read(
    addr: SocketAddr,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
) -> Result<Vec<i64>, ExceptionCode> {
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
        .await
        .expect("connect");
    let bits =
        |r: Result<Vec<bool>, ExceptionCode>| r.map(|v| v.into_iter().map(i64::from).collect());
    let regs =
        |r: Result<Vec<u16>, ExceptionCode>| r.map(|v| v.into_iter().map(i64::from).collect());
    let r = match table {
        Table::Holding => regs(ctx.read_holding_registers(start, count).await.expect("io")),
        Table::Input => regs(ctx.read_input_registers(start, count).await.expect("io")),
        Table::Coil => bits(ctx.read_coils(start, count).await.expect("io")),
        Table::Discrete => bits(ctx.read_discrete_inputs(start, count).await.expect("io")),
    };
    let _ = tokio_modbus::client::Client::disconnect(&mut ctx).await;
    r
}

/// Every range the gateway polls of `m`, the bridged gap 7–9 included.
const POLLED: [(Table, u16, u16); 4] = [
    (Table::Holding, 0, 11),
    (Table::Input, 0, 2),
    (Table::Coil, 0, 2),
    (Table::Discrete, 0, 3),
];

const AVAILABILITY: &str = "fieldlink/t/m/availability";

/// Wait until `m` is `online`: the bus task publishes that after a poll's reads, all of
/// which it recorded for the server before. The observer sees what comes next.
async fn online(gw: &Gateway) -> Observer {
    let mut obs = Observer::connect(gw.broker_port(), AVAILABILITY, QoS::AtLeastOnce).await;
    assert!(
        obs.wait_payload(AVAILABILITY, "online", T).await,
        "online within 10 s"
    );
    obs
}

// mbpoll runs to its end on a worker thread; the other one serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_masters_read_what_the_device_holds_in_every_table() {
    let (dev, port) = device().await;
    let (gw, addr) = start(&mapping(port), "").await;
    let mut obs = online(&gw).await;
    let bin = mbpoll::mbpoll();
    for (table, start, count) in POLLED {
        let want = held(&dev, table, start, count);
        assert_eq!(read(addr, 3, table, start, count).await, Ok(want.clone()));
        if let Some(bin) = &bin {
            let got = mbpoll::read(bin, addr.port(), 3, table, start, count);
            assert_eq!(got, Ok(want), "mbpoll {table} {start}+{count}");
        }
    }
    // The gap alone, and the second word of a float.
    assert_eq!(
        read(addr, 3, Table::Holding, 7, 3).await,
        Ok(vec![0xA007, 0xA008, 0xA009])
    );
    assert_eq!(read(addr, 3, Table::Input, 1, 1).await, Ok(vec![0x4148]));
    // Not polled, spanning, another unit.
    for (table, start, count) in [
        (Table::Holding, 11, 1),
        (Table::Holding, 9, 4),
        (Table::Input, 2, 1),
        (Table::Coil, 1, 2),
        (Table::Discrete, 3, 1),
    ] {
        assert_eq!(
            read(addr, 3, table, start, count).await,
            Err(ExceptionCode::IllegalDataAddress),
            "{table} {start}+{count}"
        );
    }
    assert_eq!(
        read(addr, 1, Table::Holding, 0, 1).await,
        Err(ExceptionCode::GatewayPathUnavailable)
    );
    if let Some(bin) = &bin {
        let e = mbpoll::read(bin, addr.port(), 3, Table::Holding, 9, 4).expect_err("spanning");
        assert!(e.contains("Illegal data address"), "{e}");
        let e = mbpoll::read(bin, addr.port(), 9, Table::Holding, 0, 1).expect_err("unit 9");
        assert!(e.contains("Gateway path unavailable"), "{e}");
    }
    // Offline: 0x0B, never the last values; served again once it answers.
    dev.set_responding(false);
    assert!(obs.wait_payload(AVAILABILITY, "offline", T).await);
    assert_eq!(
        read(addr, 3, Table::Holding, 0, 1).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    if let Some(bin) = &bin {
        let e = mbpoll::read(bin, addr.port(), 3, Table::Coil, 0, 2).expect_err("offline");
        assert!(e.contains("Target device failed to respond"), "{e}");
    }
    dev.set_responding(true);
    assert!(obs.wait_payload(AVAILABILITY, "online", T).await);
    for (table, start, count) in POLLED {
        let want = held(&dev, table, start, count);
        assert_eq!(read(addr, 3, table, start, count).await, Ok(want));
    }
    // The counters are in the diagnostics document.
    let diag = gw.stats.to_json();
    assert!(
        diag["modbus_server"]["requests"].as_u64().unwrap_or(0) >= 10,
        "{diag}"
    );
    assert!(
        diag["modbus_server"]["clients"]["127.0.0.1"].is_object(),
        "{diag}"
    );
    gw.stop().await;
}

/// The `/set/result` of `topic`.
async fn result(obs: &mut Observer, topic: &str) -> serde_json::Value {
    let m = obs
        .next_on(&format!("{topic}/set/result"), T)
        .await
        .unwrap_or_else(|| panic!("no result on {topic}/set/result"));
    serde_json::from_str(&m.payload).expect("JSON result")
}

// mbpoll runs to its end on a worker thread; the other one serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_writes_take_the_road_of_set() {
    let Some(bin) = mbpoll::mbpoll() else { return };
    let (dev, port) = device().await;
    let (gw, addr) = start(&mapping(port), "  writes: true\n").await;
    let mut obs = Observer::connect(gw.broker_port(), "m/+/set/result", QoS::AtLeastOnce).await;
    online(&gw).await;
    let p = addr.port();
    // 25.0 on the scaled setpoint: 250 at the device, answered on /set/result.
    assert_eq!(mbpoll::write(&bin, p, 3, Table::Holding, 0, &[250]), Ok(()));
    assert_eq!(dev.registers(Table::Holding, 0, 1), vec![250]);
    let r = result(&mut obs, "m/setpoint").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], 25.0, "{r}");
    // Both words of the CDAB i32 in one FC16: -2 is 0xFFFE 0xFFFF, low word first.
    assert_eq!(
        mbpoll::write(&bin, p, 3, Table::Holding, 2, &[0xFFFE, 0xFFFF]),
        Ok(())
    );
    assert_eq!(dev.registers(Table::Holding, 2, 2), vec![0xFFFE, 0xFFFF]);
    assert_eq!(result(&mut obs, "m/offset").await["value"], -2);
    // The coil.
    assert_eq!(mbpoll::write(&bin, p, 3, Table::Coil, 0, &[0]), Ok(()));
    assert!(!dev.bit(Table::Coil, 0));
    assert_eq!(result(&mut obs, "m/relay").await["value"], false);
    // Read back into what is served.
    assert_eq!(
        read(addr, 3, Table::Holding, 0, 4).await,
        Ok(vec![250, 0xA001, 0xFFFE, 0xFFFF])
    );

    // Refused: above max (40.0 > 30), half the i32, a read-only register, a gap, a
    // read-only coil. Nothing is written.
    let before = dev.log().len();
    let refused: [(Table, u16, &[i64], &str); 5] = [
        (Table::Holding, 0, &[400], "Illegal data value"),
        (Table::Holding, 2, &[1], "Illegal data address"),
        (Table::Holding, 6, &[1], "Illegal data address"),
        (Table::Holding, 8, &[1], "Illegal data address"),
        (Table::Coil, 1, &[1], "Illegal data address"),
    ];
    for (table, a, values, why) in refused {
        let e = mbpoll::write(&bin, p, 3, table, a, values).expect_err("refused");
        assert!(e.contains(why), "{table} {a}: {e}");
    }
    assert_eq!(dev.registers(Table::Holding, 0, 1), vec![250]);
    assert_eq!(dev.registers(Table::Holding, 6, 1), vec![0xA006]);
    assert!(!dev.bit(Table::Coil, 1));
    assert!(
        !dev.log()[before..]
            .iter()
            .any(|r| matches!(r.function, 5 | 6 | 15 | 16)),
        "a refused write reached the device"
    );
    // Writes through tokio-modbus too: FC06 below min is refused with 03.
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(3))
        .await
        .expect("connect");
    assert_eq!(
        ctx.write_single_register(0, 10).await.expect("io"),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(ctx.write_single_register(0, 55).await.expect("io"), Ok(()));
    assert_eq!(dev.registers(Table::Holding, 0, 1), vec![55]);
    gw.stop().await;
}

/// The gateway side of a served device for the paused-clock test: its snapshot, as the
/// gateway's backend reads it (served at unit 3; no writes).
struct Snapshot(Snapshots);

impl Backend for Snapshot {
    fn read(&self, unit: u8, table: Table, start: u16, count: u16) -> Result<ReadData, Exception> {
        let snap = self
            .0
            .get("m")
            .filter(|_| unit == 3)
            .ok_or(Exception::GATEWAY_PATH_UNAVAILABLE)?;
        snap.read(table, start, count, tokio::time::Instant::now())
    }

    fn write(&self, _unit: u8, _write: Write, _client: SocketAddr) -> WriteFuture {
        Box::pin(async { Err(Exception::ILLEGAL_FUNCTION) })
    }
}

/// On tokio's paused clock, a bus task polls `m` every second while four clients read from
/// the server 4 000 times a second: every poll is at its second, none missed.
#[tokio::test(start_paused = true)]
async fn polls_keep_their_cadence_while_clients_hammer_the_server() {
    let (_dev, port) = device().await;
    let mapping = mapping(port)
        .replace("poll_interval: 200ms", "poll_interval: 1s")
        .replace("address: 10 }", "address: 10, publish: every_poll }");
    let model = Arc::new(model(
        &mapping,
        "modbus_server:\n  listen: \"127.0.0.1:5020\"\n",
    ));
    let snapshots = Snapshots::new(&model).expect("served");
    // When (virtual time) each poll's reading of `m/mode` (published every poll) came.
    let (mut rx, stop, bus) = modbus_bus(&model, port, Some(snapshots.clone()));
    let polled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = polled.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            if batch.iter().any(|m| m.topic == "m/mode") {
                p.lock().expect("lock").push(tokio::time::Instant::now());
            }
        }
    });
    let (server_stop, sd) = shutdown::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let settings = Arc::new(model.modbus_server.clone().expect("server"));
    let server_stats = Arc::new(ServerStats::new());
    let server = tokio::spawn(fieldlink::modbus_server::serve(
        listener,
        settings,
        Arc::new(Snapshot(snapshots)),
        server_stats.clone(),
        sd,
    ));
    let mut first = false;
    for _ in 0..10_000 {
        if read(addr, 3, Table::Holding, 0, 11).await.is_ok() {
            first = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(first, "served after the first poll");
    let t0 = tokio::time::Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    let halt = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u16 {
        let (answered, halt) = (answered.clone(), halt.clone());
        clients.push(tokio::spawn(async move {
            let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(3))
                .await
                .expect("connect");
            while !halt.load(Ordering::Relaxed) {
                let regs = ctx
                    .read_holding_registers(c, 4)
                    .await
                    .expect("io")
                    .expect("served");
                assert_eq!(regs[3], 0xA003 + c, "client {c}");
                answered.fetch_add(1, Ordering::Relaxed);
                // The paused clock moves only while every task waits: each client sends
                // its next request 1 ms (virtual) later, 4 000 requests a second in all.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    halt.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let polls: Vec<Duration> = polled
        .lock()
        .expect("lock")
        .iter()
        .filter(|at| **at >= t0)
        .map(|at| *at - t0)
        .collect();
    assert!(
        answered.load(Ordering::Relaxed) >= 30_000,
        "the clients were answered {} times",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        (9..=11).contains(&polls.len()),
        "{} polls in 10 s: {polls:?}",
        polls.len()
    );
    for w in polls.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(990) && gap <= Duration::from_millis(1_010),
            "a poll moved: {polls:?}"
        );
    }
    assert_eq!(server_stats.exceptions(0x0B), 0, "every read served fresh");
    stop.trigger();
    server_stop.trigger();
    bus.await.expect("bus task");
    server.await.expect("server");
}
