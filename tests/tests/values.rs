//! Every type × word order reaches its topic with the right payload and retain flag;
//! scale/offset/precision; JSON payloads; bits; non-retained points.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;

const ORDERS: [(&str, WordOrder); 4] = [
    ("ABCD", WordOrder::Abcd),
    ("CDAB", WordOrder::Cdab),
    ("BADC", WordOrder::Badc),
    ("DCBA", WordOrder::Dcba),
];

fn cases() -> Vec<(&'static str, ValueType, Value, &'static str)> {
    vec![
        ("u16", ValueType::U16, Value::Int(54321), "54321"),
        ("i16", ValueType::I16, Value::Int(-12345), "-12345"),
        (
            "u32",
            ValueType::U32,
            Value::Int(3_000_000_001),
            "3000000001",
        ),
        (
            "i32",
            ValueType::I32,
            Value::Int(-2_000_000_001),
            "-2000000001",
        ),
        (
            "u64",
            ValueType::U64,
            Value::U64(12_345_678_901_234_567_890),
            "12345678901234567890",
        ),
        (
            "i64",
            ValueType::I64,
            Value::Int(-9_007_199_254_740_993),
            "-9007199254740993",
        ),
        (
            "f32",
            ValueType::F32,
            Value::Float(f64::from(-123.456f32)),
            "-123.456",
        ),
        (
            "f64",
            ValueType::F64,
            Value::Float(1234.5678901234),
            "1234.5678901234",
        ),
        (
            "string",
            ValueType::String { len: 10 },
            Value::Str("casa-1".into()),
            "casa-1",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_word_order_reaches_its_topic() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let mut points = String::new();
    let mut expected = Vec::new();
    let mut addr = 0u16;
    for (oname, order) in ORDERS {
        for (tname, ty, value, text) in cases() {
            let regs = codec::encode(&value, ty, order).expect("encode");
            dev.set_registers(Table::Holding, addr, &regs);
            let len = if let ValueType::String { len } = ty {
                format!("\n        length: {len}")
            } else {
                String::new()
            };
            points += &format!(
                "      - topic: t/{oname}/{tname}\n        table: holding\n        address: {addr}\n        type: {tname}\n        word_order: {oname}{len}\n"
            );
            expected.push((format!("t/{oname}/{tname}"), text.to_string()));
            addr += ty.registers() + 1;
        }
    }
    // Reference layouts written by hand (independent of the codec): 0x11223344 as u32.
    for (i, (oname, regs)) in [
        ("ABCD", [0x1122, 0x3344]),
        ("CDAB", [0x3344, 0x1122]),
        ("BADC", [0x2211, 0x4433]),
        ("DCBA", [0x4433, 0x2211]),
    ]
    .iter()
    .enumerate()
    {
        let a = 1000 + 2 * i as u16;
        dev.set_registers(Table::Holding, a, regs);
        points += &format!(
            "      - topic: ref/{oname}\n        table: holding\n        address: {a}\n        type: u32\n        word_order: {oname}\n"
        );
        expected.push((format!("ref/{oname}"), "287454020".into()));
    }
    // f32 123.456 = 0x42F6E979, meter style (CDAB).
    dev.set_registers(Table::Input, 0, &[0xE979, 0x42F6]);
    points += "      - topic: ref/f32-cdab\n        table: input\n        address: 0\n        type: f32\n        word_order: CDAB\n";
    expected.push(("ref/f32-cdab".into(), "123.456".into()));
    // Bits: coil, discrete, bit 3 of a register.
    dev.set_bit(Table::Coil, 5, true);
    dev.set_bit(Table::Discrete, 6, false);
    dev.set_registers(Table::Holding, 2000, &[0b1000]);
    points += "      - topic: bits/coil\n        table: coil\n        address: 5\n      - topic: bits/discrete\n        table: discrete\n        address: 6\n      - topic: bits/reg-bit3\n        table: holding\n        address: 2000\n        type: bool\n        bit: 3\n      - topic: bits/reg-bit2\n        table: holding\n        address: 2000\n        type: bool\n        bit: 2\n";
    expected.push(("bits/coil".into(), "true".into()));
    expected.push(("bits/discrete".into(), "false".into()));
    expected.push(("bits/reg-bit3".into(), "true".into()));
    expected.push(("bits/reg-bit2".into(), "false".into()));
    // Scale, offset, precision: raw -55 × 0.1 + 2 = -3.5 → "-3.50".
    dev.set_registers(
        Table::Input,
        10,
        &codec::encode(&Value::Int(-55), ValueType::I16, WordOrder::Abcd).expect("enc"),
    );
    points += "      - topic: casa/terreo/temperatura\n        table: input\n        address: 10\n        type: i16\n        scale: 0.1\n        offset: 2\n        precision: 2\n";
    expected.push(("casa/terreo/temperatura".into(), "-3.50".into()));
    // Scale without precision: 234 × 0.1 prints as 23.4, not 23.400000000000002.
    dev.set_registers(Table::Input, 11, &[234]);
    points += "      - topic: casa/terreo/umidade\n        table: input\n        address: 11\n        scale: 0.1\n";
    expected.push(("casa/terreo/umidade".into(), "23.4".into()));
    // Not retained.
    dev.set_registers(Table::Input, 12, &[7]);
    points += "      - topic: live/only\n        table: input\n        address: 12\n        retain: false\n";
    expected.push(("live/only".into(), "7".into()));
    // JSON payload.
    dev.set_registers(Table::Input, 13, &[1234]);
    points += "      - topic: casa/energia/potencia\n        table: input\n        address: 13\n        unit: W\n        payload: json\n";

    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - id: b\n    kind: modbus_tcp\n    host: 127.0.0.1\n    port: {port}\ndevices:\n  - id: d\n    bus: b\n    unit: 1\n    poll_interval: 200ms\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut live = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(
        live.wait_payload(
            "fieldlink/t/d/availability",
            "online",
            Duration::from_secs(10)
        )
        .await,
        "device online"
    );
    // Let one full cycle land, then look at what a new subscriber gets as retained state.
    let polls_dev = gw.stats.devices()[0].clone();
    let polls = &polls_dev.polls;
    let n = polls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(10), || {
            polls.load(std::sync::atomic::Ordering::Relaxed) > n
        })
        .await
    );
    let mut fresh = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    let state = fresh.snapshot(Duration::from_millis(800)).await;
    let mut failures = Vec::new();
    for (topic, payload) in &expected {
        if topic == "live/only" {
            continue;
        }
        match state.get(topic) {
            Some(m) if &m.payload == payload && m.retain => {}
            Some(m) => failures.push(format!(
                "{topic}: got {:?} (retain {}), want {payload:?} retained",
                m.payload, m.retain
            )),
            None => failures.push(format!("{topic}: no retained message")),
        }
    }
    assert!(
        failures.is_empty(),
        "wrong values:\n{}",
        failures.join("\n")
    );
    assert!(
        !state.contains_key("live/only"),
        "retain: false must not be retained"
    );
    // The non-retained point is still published to live subscribers.
    dev.set_registers(Table::Input, 12, &[8]);
    let m = live
        .next_matching(
            |m| m.topic == "live/only" && m.payload == "8",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        m.map(|m| (m.payload, m.retain)),
        Some(("8".to_string(), false))
    );
    let json = &state["casa/energia/potencia"];
    let v: serde_json::Value = serde_json::from_str(&json.payload).expect("valid JSON");
    assert_eq!(v["value"], serde_json::json!(1234));
    assert_eq!(v["unit"], "W");
    let ts = v["ts"].as_str().expect("ts string");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.contains('T'),
        "RFC 3339 ts: {ts}"
    );
    assert_eq!(state["fieldlink/t/status"].payload, "online");
    assert!(state["fieldlink/t/status"].retain);
    gw.stop().await;
}
