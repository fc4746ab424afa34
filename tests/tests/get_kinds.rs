//! Reads on demand (`<topic>/get`) on the other bus kinds, end to end through the
//! embedded broker: a GPIO line is read at once; a UART device with a `query` is asked;
//! a UART device sending on its own and a command-only point say why they cannot be read.

use std::{sync::Arc, time::Duration};

use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;

const T: Duration = Duration::from_secs(10);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The next `/get/result` on `topic`, as JSON.
async fn get_result(obs: &mut Observer, topic: &str) -> serde_json::Value {
    let r = obs
        .next_on(&format!("{topic}/get/result"), T)
        .await
        .unwrap_or_else(|| panic!("no {topic}/get/result"));
    json(&r.payload)
}

/// A GPIO input is read at once (before its debounce would publish the new level), an
/// output gives its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpio_lines_are_read_at_once() {
    let board = fieldlink_drivers::gpio::SimGpio::default();
    let mapping = "buses:\n  - id: io\n    kind: gpio\n    backend: simulated\ndevices:\n  - id: pi\n    bus: io\n    points:\n      - { topic: casa/porta, pin: 17, debounce: 1h }\n      - { topic: casa/rele, pin: 27, mode: output, initial: true }\n";
    let mut hooks = fieldlink::Hooks::default();
    hooks.gpio.insert("io".into(), board.clone());
    let gw = Gateway::start_with(model(mapping, ""), hooks).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("casa/porta", "false", T).await);
    let client = publisher(gw.broker_port()).await;
    // The debounce would publish the new level an hour from now.
    board.drive(17, Some(true));
    for t in ["casa/porta/get", "casa/rele/get"] {
        client
            .publish(t, QoS::AtLeastOnce, false, "")
            .await
            .expect("publish");
    }
    let v = get_result(&mut obs, "casa/porta").await;
    assert_eq!(v, serde_json::json!({"ok": true, "value": true}));
    assert!(obs.wait_seen("casa/porta", "true", T).await);
    let v = get_result(&mut obs, "casa/rele").await;
    assert_eq!(v, serde_json::json!({"ok": true, "value": true}));
    gw.stop().await;
}

/// UART: a polled device is sent its query and answers with the value; a device sending
/// on its own and a command-only point answer why they cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uart_query_devices_are_asked_and_the_others_say_why_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut port, _keeper, path) = fieldlink_drivers::sim::pty_pair().expect("pty pair");
    let queries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let q = queries.clone();
    // A CO₂ sensor that answers `READ` with a new reading each time.
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        while let Ok(n @ 1..) = port.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.starts_with(b"READ") {
                    let n = q.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let reply = format!("{{\"co2\": {}}}\n", 600 + n);
                    let _ = port.write_all(reply.as_bytes()).await;
                }
            }
        }
    });
    let mapping = format!(
        "buses:\n  - {{ id: s, kind: uart, path: {path}, baud: 9600, timeout: 500ms }}\ndevices:\n  - id: co2\n    bus: s\n    query: \"READ\\n\"\n    poll_interval: 1h\n    parser: {{ kind: json }}\n    points:\n      - {{ topic: casa/co2, field: co2, type: u16 }}\n  - id: clima\n    bus: s\n    poll_interval: 1h\n    parser: {{ kind: key_value }}\n    points:\n      - {{ topic: casa/temperatura, field: T }}\n  - id: reles\n    bus: s\n    points:\n      - {{ topic: casa/bomba, type: bool, command: \"R1 {{value}}\\n\" }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("casa/co2", "601", T).await, "first poll");
    let client = publisher(gw.broker_port()).await;
    let ask = |t: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(t, QoS::AtLeastOnce, false, "{\"id\":1}")
                .await
                .expect("publish");
        }
    };
    ask("casa/co2/get").await;
    let v = get_result(&mut obs, "casa/co2").await;
    assert_eq!(v, serde_json::json!({"ok": true, "value": 602, "id": 1}));
    assert!(obs.wait_seen("casa/co2", "602", T).await);
    assert_eq!(queries.load(std::sync::atomic::Ordering::SeqCst), 2);
    ask("casa/temperatura/get").await;
    let v = get_result(&mut obs, "casa/temperatura").await;
    assert_eq!(
        v["error"],
        "not readable on demand: the device sends its lines on its own (no `query`); its next \
         line is published when it comes",
        "{v}"
    );
    ask("casa/bomba/get").await;
    let v = get_result(&mut obs, "casa/bomba").await;
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "not readable on demand: the point only takes commands; it has no value to read", "id": 1})
    );
    assert_eq!(queries.load(std::sync::atomic::Ordering::SeqCst), 2);
    gw.stop().await;
}
