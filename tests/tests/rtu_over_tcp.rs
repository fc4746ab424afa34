//! Modbus RTU over TCP (`kind: modbus_rtu_over_tcp`) end to end: the gateway connects to a
//! simulated serial-to-Ethernet converter in transparent mode (a TCP listener bridged byte
//! for byte to a pseudo-terminal line), behind which a tokio-modbus RTU server answers
//! for several unit ids: values in every type and order, writes, a late reply, garbage
//! on the line, a dropped connection and a unit that never answers.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, publisher, Gateway, Observer, Proxy};
use rumqttc::QoS;

const T: Duration = Duration::from_secs(10);

fn bus(port: u16, extra: &str) -> String {
    format!(
        "buses:\n  - {{ id: conv, kind: modbus_rtu_over_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms{extra} }}\ndevices:\n"
    )
}

/// Every value type in every word order, on three units behind one converter, and a
/// write that lands in the right unit's registers with the right function code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_on_three_units_behind_one_converter() {
    let server = SimServer::new();
    let cases: [(&str, ValueType, Value, &str); 6] = [
        ("u16", ValueType::U16, Value::Int(54321), "54321"),
        ("i16", ValueType::I16, Value::Int(-1234), "-1234"),
        ("u32", ValueType::U32, Value::Int(287_454_020), "287454020"),
        (
            "i32",
            ValueType::I32,
            Value::Int(-2_000_000_001),
            "-2000000001",
        ),
        ("f32", ValueType::F32, Value::Float(-123.5), "-123.5"),
        (
            "i64",
            ValueType::I64,
            Value::Int(-9_876_543_210),
            "-9876543210",
        ),
    ];
    let orders = [
        ("ABCD", WordOrder::Abcd),
        ("CDAB", WordOrder::Cdab),
        ("BADC", WordOrder::Badc),
        ("DCBA", WordOrder::Dcba),
    ];
    let mut expect = Vec::new();
    let mut mapping_devices = String::new();
    for unit in [1u8, 7, 247] {
        let dev = server.add(unit, SimDevice::new());
        let mut points = String::new();
        let mut addr = 0u16;
        for (oname, order) in orders {
            for (tname, ty, value, shown) in &cases {
                let regs = codec::encode(value, *ty, order).expect("encode");
                dev.set_registers(Table::Holding, addr, &regs);
                let topic = format!("rot/u{unit}/{oname}/{tname}");
                points += &format!(
                    "      - {{ topic: {topic}, table: holding, address: {addr}, type: {tname}, word_order: {oname} }}\n"
                );
                expect.push((topic, shown.to_string()));
                addr += ty.registers() + 1;
            }
        }
        points += &format!(
            "      - {{ topic: rot/u{unit}/set, table: holding, address: 200, type: f32, word_order: CDAB, writable: true }}\n"
        );
        mapping_devices += &format!(
            "  - id: u{unit}\n    bus: conv\n    unit: {unit}\n    poll_interval: 300ms\n    points:\n{points}"
        );
    }
    let port = server
        .clone()
        .spawn_rtu_over_tcp()
        .await
        .expect("converter");
    let mapping = bus(port, "") + &mapping_devices;
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "rot/#", QoS::AtMostOnce).await;
    for (topic, shown) in &expect {
        assert!(obs.wait_seen(topic, shown, T).await, "{topic} = {shown}");
    }
    let client = publisher(gw.broker_port()).await;
    client
        .publish("rot/u7/set/set", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    let r = obs
        .next_on("rot/u7/set/set/result", T)
        .await
        .expect("result");
    let v: serde_json::Value = serde_json::from_str(&r.payload).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    let bits = 21.5f32.to_bits();
    let dev7 = server.device(7).expect("unit 7");
    assert_eq!(
        dev7.registers(Table::Holding, 200, 2),
        vec![bits as u16, (bits >> 16) as u16],
        "CDAB: low word first, in unit 7"
    );
    for other in [1u8, 247] {
        let d = server.device(other).expect("unit");
        assert_eq!(
            d.registers(Table::Holding, 200, 2),
            vec![0, 0],
            "unit {other}"
        );
    }
    gw.stop().await;
}

/// A unit that answers after the timeout: its late reply is never taken for the answer to
/// the next request (another unit's, at other registers), so no wrong value is published;
/// a unit that never answers goes offline while its neighbour stays online with its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_never_taken_for_the_next_and_a_silent_unit_goes_offline() {
    let server = SimServer::new();
    let slow = server.add(1, SimDevice::new());
    let fine = server.add(2, SimDevice::new());
    slow.set_registers(Table::Holding, 0, &[1111]);
    fine.set_registers(Table::Holding, 0, &[2222]);
    let port = server
        .clone()
        .spawn_rtu_over_tcp()
        .await
        .expect("converter");
    let mapping = bus(port, "")
        + "  - { id: slow, bus: conv, unit: 1, poll_interval: 250ms, offline_after: 2, points: [{ topic: late/slow, table: holding, address: 0, publish: every_poll }] }\n"
        + "  - { id: fine, bus: conv, unit: 2, poll_interval: 250ms, points: [{ topic: late/fine, table: holding, address: 0, publish: every_poll }] }\n";
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("late/slow", "1111", T).await);
    assert!(obs.wait_seen("late/fine", "2222", T).await);
    // Unit 1 now answers 300 ms late (timeout 200 ms): every reply arrives while the
    // gateway already asks unit 2.
    slow.set_reply_delay(Duration::from_millis(300));
    assert!(
        obs.wait_seen("fieldlink/t/slow/availability", "offline", T)
            .await,
        "the late unit goes offline"
    );
    // What was published after the verdict (the observer keeps everything it saw).
    let all = obs.collect(Duration::from_secs(3)).await;
    let verdict = all
        .iter()
        .position(|m| m.topic == "fieldlink/t/slow/availability" && m.payload == "offline")
        .expect("the verdict is among the messages");
    let window = &all[verdict..];
    for m in window {
        if m.topic == "late/fine" {
            assert_eq!(m.payload, "2222", "unit 2 never shows unit 1's late reply");
        }
        assert_ne!(
            m.topic, "late/slow",
            "nothing published from a timed-out unit: {window:?}"
        );
    }
    assert!(
        window.iter().filter(|m| m.topic == "late/fine").count() >= 6,
        "unit 2 keeps being polled: {window:?}"
    );
    // A unit that never answers at all: the same.
    slow.set_reply_delay(Duration::ZERO);
    assert!(
        obs.wait_seen("fieldlink/t/slow/availability", "online", T)
            .await
    );
    slow.set_responding(false);
    assert!(
        obs.wait_seen("fieldlink/t/slow/availability", "offline", T)
            .await
    );
    assert!(obs.wait_seen("late/fine", "2222", T).await);
    gw.stop().await;
}

/// The converter's connection drops (a reboot, Wi-Fi): the devices go offline, the
/// gateway reconnects by itself with backoff, and the values come back; `connect_delay`
/// holds the first request back after every connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reopened_and_connect_delay_is_kept() {
    let server = SimServer::new();
    let dev = server.add(3, SimDevice::new());
    dev.set_registers(Table::Input, 10, &[4242]);
    let converter = server
        .clone()
        .spawn_rtu_over_tcp()
        .await
        .expect("converter");
    let proxy = Proxy::start(converter).await;
    let mapping = bus(proxy.port, ", connect_delay: 400ms")
        + "  - { id: m, bus: conv, unit: 3, poll_interval: 200ms, offline_after: 2, points: [{ topic: drop/v, table: input, address: 10, publish: every_poll }] }\n";
    let started = std::time::Instant::now();
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("drop/v", "4242", T).await);
    let first = dev.log().first().map(|r| r.at).expect("a request");
    assert!(
        first.duration_since(started) >= Duration::from_millis(400),
        "the first request waited connect_delay: {:?}",
        first.duration_since(started)
    );
    proxy.set_accepting(false);
    proxy.cut();
    assert!(
        obs.wait_seen("fieldlink/t/m/availability", "offline", T)
            .await
    );
    dev.set_registers(Table::Input, 10, &[4343]);
    dev.clear_log();
    let back = std::time::Instant::now();
    proxy.set_accepting(true);
    assert!(obs.wait_seen("drop/v", "4343", T).await, "values come back");
    assert!(
        obs.wait_seen("fieldlink/t/m/availability", "online", T)
            .await
    );
    let first = dev.log().first().map(|r| r.at).expect("a request");
    assert!(
        first >= back,
        "no request reached the device while the converter was away"
    );
    gw.stop().await;
}

/// Garbage on the line between polls (a converter that echoes, line noise) is discarded
/// before the next request, never decoded as a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_converter_is_discarded_not_decoded() {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };
    // A converter that, besides the real replies, sends 7 bytes of noise unasked after
    // every reply: the next request must see a clean line.
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[77]);
    let real = server
        .clone()
        .spawn_rtu_over_tcp()
        .await
        .expect("converter");
    let noisy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let noisy_port = noisy.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = noisy.accept().await {
            let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", real)).await else {
                continue;
            };
            tokio::spawn(async move {
                let mut req = [0u8; 256];
                let mut rep = [0u8; 256];
                loop {
                    let Ok(n) = client.read(&mut req).await else {
                        return;
                    };
                    if n == 0 || up.write_all(&req[..n]).await.is_err() {
                        return;
                    }
                    // The reply: 1 + 1 + 1 + 2 + 2 bytes for one register.
                    let mut got = 0;
                    while got < 7 {
                        match up.read(&mut rep[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got += k,
                        }
                    }
                    if client.write_all(&rep[..got]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    // Noise that looks like a reply from unit 1 with value 0xDEAD.
                    let _ = client.write_all(&[1, 3, 2, 0xDE, 0xAD, 0x00, 0x00]).await;
                }
            });
        }
    });
    let mapping = bus(noisy_port, "")
        + "  - { id: n, bus: conv, unit: 1, poll_interval: 150ms, points: [{ topic: noise/v, table: holding, address: 0, publish: every_poll }] }\n";
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "noise/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("noise/v", "77", T).await);
    let window = obs.collect(Duration::from_secs(2)).await;
    assert!(window.len() >= 5, "still polled: {window:?}");
    for m in &window {
        assert_eq!(m.payload, "77", "noise never decoded: {window:?}");
    }
    gw.stop().await;
}
