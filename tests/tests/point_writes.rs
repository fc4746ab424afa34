//! How points are written (#23): `write_address` (a separate write register) and
//! `write_only` (never read), end to end: the gateway with its embedded broker, a
//! tokio-modbus server of this test on 127.0.0.1 port 0 (`SimServer`), commands on
//! `<topic>/set`, and what the server's registers hold and which requests it counted.
//! `rewrite_every` is in `point_rewrites.rs`.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually, model,
    points::{device, mapping, requests, set},
    publisher, Gateway, Observer,
};
use rumqttc::QoS;

/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(10);

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
    vent.set_registers(Table::Input, 0, &[187]);
    // What a read would find there (a register that reads back something else).
    vent.set_registers(Table::Holding, 50, &[999]);
    let port = server.spawn_local().await.expect("sim");
    let points = [
        "topic: casa/vent/temp, table: input, address: 0, scale: 0.1",
        "topic: casa/vent/velocidade, table: holding, address: 50, write_only: true",
        "topic: casa/vent/boost, table: coil, address: 5, write_only: true",
    ];
    let gw = Gateway::start(model(
        &mapping(port, &[device("vent", 1, "200ms", &points)]),
        "",
    ))
    .await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtLeastOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(obs.wait_seen("casa/vent/temp", "18.7", T).await);
    let stats = gw.stats.clone();
    let polls = move || {
        stats
            .device_by_id("vent")
            .map_or(0, |d| d.polls.load(Relaxed))
    };
    assert!(eventually(T, || polls() >= 5).await);
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
    assert_eq!(requests(&vent, 6, Table::Holding, 50), 1);
    assert!(obs.wait_seen("casa/vent/velocidade", "3", T).await);
    let r = set(&client, &mut obs, "casa/vent/boost", "ON").await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(vent.bit(Table::Coil, 5));
    assert!(obs.wait_seen("casa/vent/boost", "true", T).await);
    // A subscriber that comes later gets the written values as retained states.
    let late = Observer::connect(gw.broker_port(), "casa/vent/#", QoS::AtLeastOnce).await;
    assert!(
        eventually(T, || {
            let seen = late.seen.lock().expect("lock");
            ["casa/vent/velocidade:3", "casa/vent/boost:true"]
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
    let before = polls();
    assert!(eventually(T, || polls() >= before + 3).await);
    assert_eq!(reads_covering(&vent, Table::Holding, 50), 0);
    assert_eq!(reads_covering(&vent, Table::Coil, 5), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_of_write_only_points_is_never_polled_and_online_while_its_writes_are_answered() {
    let server = SimServer::new();
    let siren = server.add(2, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let point = "topic: casa/sirene/volume, table: holding, address: 0, write_only: true";
    let gw = Gateway::start(model(
        &mapping(port, &[device("sirene", 2, "200ms", &[point])]),
        "",
    ))
    .await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    let client = publisher(gw.broker_port()).await;
    const AVAILABILITY: &str = "fieldlink/t/sirene/availability";
    // Online from the start (retained), though never polled.
    assert!(obs.wait_seen(AVAILABILITY, "online", T).await);
    let stats = gw.stats.clone();
    let polls = move || {
        stats
            .device_by_id("sirene")
            .map(|d| (d.polls.load(Relaxed), d.failed_polls.load(Relaxed)))
    };
    let r = set(&client, &mut obs, "casa/sirene/volume", "7").await;
    assert_eq!(r, serde_json::json!({"ok": true, "value": 7}));
    assert_eq!(siren.registers(Table::Holding, 0, 1), [7]);
    let functions: Vec<u8> = siren.log().iter().map(|r| r.function).collect();
    assert_eq!(functions, [6], "one write, nothing read");

    // A write the device does not answer takes it offline; the next one is still sent
    // (nothing else would bring it back) and, answered, brings it online again. (The
    // availability and the result may arrive in either order.)
    let seen = obs.seen.clone();
    let availability = |mark: usize, payload: &str| {
        let seen = seen.clone();
        let payload = payload.to_string();
        eventually(T, move || {
            seen.lock().expect("lock")[mark..]
                .iter()
                .any(|m| m.topic == AVAILABILITY && m.payload == payload)
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
    assert_eq!(polls(), Some((0, 0)));
    let functions: Vec<u8> = siren.log().iter().map(|r| r.function).collect();
    assert_eq!(functions, [6, 6, 6], "writes only");
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
