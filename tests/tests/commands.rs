//! Commands on `<topic>/set`: every writable type × word order lands in the right
//! registers with the right function code, the read-back is published, the result echoes
//! the id; every rejection reaches `<topic>/set/result` and nothing is written.

use std::time::{Duration, Instant};

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("result is JSON")
}

const ORDERS: [(&str, WordOrder); 4] = [
    ("ABCD", WordOrder::Abcd),
    ("CDAB", WordOrder::Cdab),
    ("BADC", WordOrder::Badc),
    ("DCBA", WordOrder::Dcba),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writable_type_and_order_lands_in_the_registers() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let cases: Vec<(&str, ValueType, &str, Value, &str)> = vec![
        ("u16", ValueType::U16, "54321", Value::Int(54321), "54321"),
        ("i16", ValueType::I16, "-1234", Value::Int(-1234), "-1234"),
        (
            "u32",
            ValueType::U32,
            "287454020",
            Value::Int(287_454_020),
            "287454020",
        ),
        (
            "i32",
            ValueType::I32,
            "-2000000001",
            Value::Int(-2_000_000_001),
            "-2000000001",
        ),
        (
            "u64",
            ValueType::U64,
            "12345678901234",
            Value::Int(12_345_678_901_234),
            "12345678901234",
        ),
        (
            "i64",
            ValueType::I64,
            "-9876543210",
            Value::Int(-9_876_543_210),
            "-9876543210",
        ),
        (
            "f32",
            ValueType::F32,
            "-123.456",
            Value::Float(f64::from(-123.456f32)),
            "-123.456",
        ),
        (
            "f64",
            ValueType::F64,
            "1234.5678901234",
            Value::Float(1234.5678901234),
            "1234.5678901234",
        ),
    ];
    let mut points = String::new();
    let mut expect = Vec::new();
    let mut addr = 0u16;
    for (oname, order) in ORDERS {
        for (tname, ty, input, raw, shown) in &cases {
            points += &format!(
                "      - {{ topic: w/{oname}/{tname}, table: holding, address: {addr}, type: {tname}, word_order: {oname}, writable: true }}\n"
            );
            let regs = codec::encode(raw, *ty, order).expect("encode");
            expect.push((format!("w/{oname}/{tname}"), addr, regs, *input, *shown));
            addr += ty.registers() + 1;
        }
    }
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 5s\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "w/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(
        obs.wait_seen("w/ABCD/u16", "0", Duration::from_secs(10))
            .await,
        "first poll"
    );
    // Independent reference layout: 0x11223344 as u32 in each order.
    let reference = [
        ("ABCD", [0x1122u16, 0x3344]),
        ("CDAB", [0x3344, 0x1122]),
        ("BADC", [0x2211, 0x4433]),
        ("DCBA", [0x4433, 0x2211]),
    ];
    for (i, (topic, addr, regs, input, shown)) in expect.iter().enumerate() {
        dev.clear_log();
        let id = format!("id-{i}");
        let body = format!("{{\"value\": {input}, \"id\": \"{id}\"}}");
        client
            .publish(format!("{topic}/set"), QoS::AtLeastOnce, false, body)
            .await
            .expect("publish");
        let res = obs
            .next_on(&format!("{topic}/set/result"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{topic}: no result"));
        let r = json(&res.payload);
        assert_eq!(r["ok"], true, "{topic}: {}", res.payload);
        assert_eq!(r["id"], id.as_str());
        assert_eq!(r["value"].to_string(), *shown, "{topic}: read-back value");
        assert!(!res.retain);
        let writes: Vec<_> = dev
            .log()
            .into_iter()
            .filter(|q| q.function == 6 || q.function == 16)
            .collect();
        assert_eq!(writes.len(), 1, "{topic}: one write");
        let w = &writes[0];
        let fc = if regs.len() == 1 { 6 } else { 16 };
        assert_eq!(
            (w.function, w.address, &w.written),
            (fc, *addr, regs),
            "{topic}"
        );
        assert_eq!(
            dev.registers(Table::Holding, *addr, regs.len() as u16),
            *regs
        );
        if topic.ends_with("/u32") {
            let order = topic.split('/').nth(1).expect("order");
            let want = reference.iter().find(|(o, _)| *o == order).expect("ref").1;
            assert_eq!(w.written, want.to_vec(), "{topic}: reference layout");
        }
        // The read-back appears on the state topic.
        let seen = obs.seen.clone();
        let ok = fieldlink_tests::eventually(Duration::from_secs(2), || {
            seen.lock()
                .expect("lock")
                .iter()
                .any(|m| &m.topic == topic && m.payload == *shown)
        })
        .await;
        assert!(ok, "{topic}: state topic shows {shown}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coils_bits_value_maps_scale_and_fc16_only_devices() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let fc16 = server.add(2, SimDevice::new());
    dev.set_registers(Table::Holding, 10, &[0b0001]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        r#"
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}
devices:
  - id: d
    bus: b
    unit: 1
    poll_interval: 5s
    points:
      - {{ topic: casa/garagem/luz, table: coil, address: 3, writable: true, values: {{ "ON": 1, "OFF": 0 }} }}
      - {{ topic: casa/terreo/alarme, table: holding, address: 10, type: bool, bit: 3, writable: true }}
      - {{ topic: casa/terreo/setpoint, table: holding, address: 20, type: i16, scale: 0.1, precision: 1, writable: true, min: 5, max: 30 }}
  - id: only16
    bus: b
    unit: 2
    poll_interval: 5s
    write_multiple: true
    points:
      - {{ topic: casa/bomba/velocidade, table: holding, address: 0, writable: true }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(
        obs.wait_seen("casa/garagem/luz", "OFF", Duration::from_secs(10))
            .await
    );

    client
        .publish("casa/garagem/luz/set", QoS::AtLeastOnce, false, "ON")
        .await
        .expect("pub");
    let r = obs
        .next_on("casa/garagem/luz/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(
        json(&r.payload),
        serde_json::json!({"ok": true, "value": "ON"})
    );
    let w = dev
        .log()
        .into_iter()
        .find(|q| q.function == 5)
        .expect("FC05");
    assert_eq!((w.address, w.written.clone()), (3, vec![1]));
    assert!(
        obs.wait_seen("casa/garagem/luz", "ON", Duration::from_secs(2))
            .await
    );

    dev.clear_log();
    client
        .publish("casa/terreo/alarme/set", QoS::AtLeastOnce, false, "true")
        .await
        .expect("pub");
    let r = obs
        .next_on("casa/terreo/alarme/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(json(&r.payload)["ok"], true, "{}", r.payload);
    let log = dev.log();
    assert_eq!(log[0].function, 3, "read-modify-write reads first");
    let w = log.iter().find(|q| q.function == 6).expect("FC06");
    assert_eq!(w.written, vec![0b1001], "bit 3 set, bit 0 kept");

    dev.clear_log();
    client
        .publish("casa/terreo/setpoint/set", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("pub");
    let r = obs
        .next_on("casa/terreo/setpoint/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(
        json(&r.payload),
        serde_json::json!({"ok": true, "value": 21.5})
    );
    let w = dev
        .log()
        .into_iter()
        .find(|q| q.function == 6)
        .expect("FC06");
    assert_eq!(
        (w.address, w.written.clone()),
        (20, vec![215]),
        "inverse of scale 0.1"
    );

    client
        .publish(
            "casa/bomba/velocidade/set",
            QoS::AtLeastOnce,
            false,
            "{\"value\": 1500}",
        )
        .await
        .expect("pub");
    let r = obs
        .next_on("casa/bomba/velocidade/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(json(&r.payload)["ok"], true);
    let w = fc16
        .log()
        .into_iter()
        .find(|q| q.function == 16)
        .expect("FC16 even for one register");
    assert_eq!((w.address, w.written.clone()), (0, vec![1500]));
    assert!(!fc16.log().iter().any(|q| q.function == 6));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_a_reason_and_writes_nothing() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let dead = server.add(2, SimDevice::new());
    let slow = server.add(3, SimDevice::new());
    dev.add_holes(Table::Holding, [50]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        r#"
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}
  - {{ id: b2, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}
  - {{ id: b3, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}
devices:
  - id: d
    bus: b
    poll_interval: 5s
    points:
      - {{ topic: r/sp, table: holding, address: 0, writable: true, max: 100 }}
      - {{ topic: r/u16, table: holding, address: 1, writable: true }}
      - {{ topic: r/name, table: holding, address: 2, type: string, length: 4, writable: true }}
      - {{ topic: r/hole, table: holding, address: 50, writable: true }}
  - id: dead
    bus: b2
    unit: 2
    poll_interval: 100ms
    offline_after: 2
    points:
      - {{ topic: r/dead, table: holding, address: 0, writable: true }}
  - id: slow
    bus: b3
    unit: 3
    poll_interval: 1h
    offline_after: 1000
    points:
      - {{ topic: r/slow, table: holding, address: 0, writable: true }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "r/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(obs.wait_seen("r/sp", "0", Duration::from_secs(10)).await);
    dead.set_responding(false);
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(5), || {
            gw.stats.devices()[1].availability() == fieldlink::health::Availability::Offline
        })
        .await
    );
    slow.set_responding(false);
    for d in [&dev, &dead, &slow] {
        d.clear_log();
    }
    let cases: [(&str, &str, &str); 7] = [
        (
            "r/sp",
            "{\"value\": 300, \"id\": 7}",
            "value 300 above max 100",
        ),
        ("r/sp", "{not json", "unparsable payload"),
        ("r/u16", "abc", "wrong type"),
        ("r/u16", "70000", "does not fit u16"),
        ("r/name", "too long", "out of range"),
        ("r/dead", "1", "offline"),
        ("r/u16", "{\"id\": \"x\"}", "needs a \"value\""),
    ];
    for (topic, payload, reason) in cases {
        client
            .publish(format!("{topic}/set"), QoS::AtLeastOnce, false, payload)
            .await
            .expect("pub");
        let r = obs
            .next_on(&format!("{topic}/set/result"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{topic} {payload}: no result"));
        let v = json(&r.payload);
        assert_eq!(v["ok"], false, "{payload}");
        let err = v["error"].as_str().expect("error text");
        assert!(
            err.contains(reason),
            "{payload}: `{err}` should say `{reason}`"
        );
        if payload.contains("\"id\": 7") {
            assert_eq!(v["id"], 7);
        }
    }
    let writes = |d: &SimDevice| d.log().iter().filter(|q| q.function >= 5).count();
    assert_eq!(
        writes(&dev) + writes(&dead) + writes(&slow),
        0,
        "nothing written"
    );

    // Reasons that come from the device itself.
    client
        .publish("r/hole/set", QoS::AtLeastOnce, false, "5")
        .await
        .expect("pub");
    let r = obs
        .next_on("r/hole/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(
        json(&r.payload)["error"],
        "device exception 0x02 (illegal data address)"
    );
    let t0 = Instant::now();
    client
        .publish(
            "r/slow/set",
            QoS::AtLeastOnce,
            false,
            "{\"value\": 5, \"id\": \"t\"}",
        )
        .await
        .expect("pub");
    let r = obs
        .next_on("r/slow/set/result", Duration::from_secs(5))
        .await
        .expect("result");
    let v = json(&r.payload);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("timeout")),
        "{v}"
    );
    assert_eq!(v["id"], "t");
    assert!(t0.elapsed() < Duration::from_secs(2));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_goes_ahead_of_the_next_poll() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mut points =
        String::from("      - { topic: p/sp, table: holding, address: 0, writable: true }\n");
    for i in 1..60u16 {
        points += &format!(
            "      - {{ topic: p/v{i}, table: holding, address: {} }}\n",
            i * 20
        );
    }
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    max_gap: 0\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "p/sp/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    // Polling: the commands below land between polls.
    let polls_dev = gw.stats.devices()[0].clone();
    let polls = &polls_dev.polls;
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(10), || {
            polls.load(std::sync::atomic::Ordering::Relaxed) >= 2
        })
        .await
    );
    for round in 0..5 {
        dev.clear_log();
        let sent = Instant::now();
        client
            .publish(
                "p/sp/set",
                QoS::AtLeastOnce,
                false,
                format!("{}", 100 + round),
            )
            .await
            .expect("pub");
        let r = obs
            .next_on("p/sp/set/result", Duration::from_secs(5))
            .await
            .expect("result");
        assert_eq!(json(&r.payload)["ok"], true);
        let log = dev.log();
        let wi = log.iter().position(|q| q.function == 6).expect("the write");
        // A poll cycle is 60 reads; at most the rest of the one in flight may precede the
        // write, never a cycle that started after the command.
        let reads_before = log[..wi]
            .iter()
            .filter(|q| q.at >= sent && q.function == 3)
            .count();
        assert!(
            reads_before <= 60,
            "round {round}: {reads_before} reads went before the write"
        );
        // The write is followed by its read-back of the same register.
        assert_eq!(
            (log[wi + 1].function, log[wi + 1].address),
            (3, 0),
            "read-back"
        );
        assert!(log[wi].at.duration_since(sent) < Duration::from_millis(100));
    }
    gw.stop().await;
}

/// Commands still queued when the gateway stops are answered ("gateway shutting down"),
/// not dropped; the one being written completes; nothing queued is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_at_shutdown_are_answered() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 3s }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 1h\n    points:\n      - {{ topic: q/a, table: holding, address: 0, writable: true }}\n      - {{ topic: q/b, table: holding, address: 1, writable: true }}\n      - {{ topic: q/c, table: holding, address: 2, writable: true }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "q/#", QoS::AtLeastOnce).await;
    assert!(obs.wait_seen("q/a", "0", Duration::from_secs(10)).await);
    let client = publisher(gw.broker_port()).await;
    // The device takes 600 ms to answer: A is being written while B and C queue.
    dev.set_reply_delay(Duration::from_millis(600));
    dev.clear_log();
    client
        .publish("q/a/set", QoS::AtLeastOnce, false, "1")
        .await
        .expect("pub");
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(5), || dev
            .log()
            .iter()
            .any(|q| q.function == 6))
        .await,
        "A reaches the device"
    );
    for (t, v) in [("q/b/set", "2"), ("q/c/set", "3")] {
        client
            .publish(t, QoS::AtLeastOnce, false, v)
            .await
            .expect("pub");
    }
    // The broker routed both (the gateway takes a command at the same step).
    assert!(obs.wait_seen("q/b/set", "2", Duration::from_secs(5)).await);
    assert!(obs.wait_seen("q/c/set", "3", Duration::from_secs(5)).await);
    gw.stop().await;
    let results = obs.collect(Duration::from_millis(300)).await;
    let result = |topic: &str| {
        results
            .iter()
            .find(|m| m.topic == topic)
            .map(|m| json(&m.payload))
            .unwrap_or_else(|| panic!("no {topic}: {results:?}"))
    };
    assert_eq!(result("q/a/set/result")["ok"], true);
    for t in ["q/b/set/result", "q/c/set/result"] {
        let r = result(t);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"], "gateway shutting down; command not written");
    }
    let writes: Vec<u16> = dev
        .log()
        .iter()
        .filter(|q| q.function == 6)
        .map(|q| q.address)
        .collect();
    assert_eq!(writes, vec![0], "only A was written");
}

/// 64-bit commands are parsed as integers from their text, never through `f64`: in range
/// they land exactly in the registers (2^53 + 1 stays odd), out of range they are refused
/// with the type's range and nothing is written — as plain text and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_bit_commands_are_exact_or_refused() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 5s\n    points:\n      - {{ topic: w/u64, table: holding, address: 0, type: u64, writable: true }}\n      - {{ topic: w/i64, table: holding, address: 10, type: i64, writable: true }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "w/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert!(obs.wait_seen("w/u64", "0", Duration::from_secs(10)).await);
    // (topic, address, payload, the registers expected; None: refused with this text)
    let u64_range = "does not fit u64 (0 to 18446744073709551615)";
    let i64_range = "does not fit i64 (-9223372036854775808 to 9223372036854775807)";
    // The registers written, or the refusal's text.
    type Outcome = Result<[u16; 4], String>;
    let cases: [(&str, u16, String, Outcome); 8] = [
        ("w/u64", 0, "9007199254740993".into(), Ok([0x20, 0, 0, 1])),
        (
            "w/u64",
            0,
            r#"{"value": 9007199254740993}"#.into(),
            Ok([0x20, 0, 0, 1]),
        ),
        (
            "w/u64",
            0,
            "18446744073709551615".into(),
            Ok([0xffff, 0xffff, 0xffff, 0xffff]),
        ),
        (
            "w/u64",
            0,
            "18446744073709551616".into(),
            Err(format!("value 18446744073709551616 {u64_range}")),
        ),
        (
            "w/u64",
            0,
            r#"{"value": 18446744073709551616}"#.into(),
            Err(format!("value 18446744073709551616 {u64_range}")),
        ),
        (
            "w/i64",
            10,
            "-9223372036854775808".into(),
            Ok([0x8000, 0, 0, 0]),
        ),
        (
            "w/i64",
            10,
            r#"{"value": -9223372036854775809}"#.into(),
            Err(format!("value -9223372036854775809 {i64_range}")),
        ),
        (
            "w/i64",
            10,
            "9223372036854775808".into(),
            Err(format!("value 9223372036854775808 {i64_range}")),
        ),
    ];
    for (topic, addr, payload, want) in cases {
        dev.clear_log();
        let before = dev.registers(Table::Holding, addr, 4);
        client
            .publish(
                format!("{topic}/set"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .expect("publish");
        let res = obs
            .next_on(&format!("{topic}/set/result"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{topic} {payload}: no result"));
        let r = json(&res.payload);
        match want {
            Ok(regs) => {
                assert_eq!(r["ok"], true, "{payload}: {}", res.payload);
                assert_eq!(
                    dev.registers(Table::Holding, addr, 4),
                    regs,
                    "{payload}: registers"
                );
            }
            Err(text) => {
                assert_eq!(r["ok"], false, "{payload}: {}", res.payload);
                assert_eq!(r["error"], format!("out of range: {text}"), "{payload}");
                assert!(
                    dev.log()
                        .iter()
                        .all(|q| q.function != 16 && q.function != 6),
                    "{payload}: nothing written"
                );
                assert_eq!(dev.registers(Table::Holding, addr, 4), before);
            }
        }
    }
    gw.stop().await;
}
